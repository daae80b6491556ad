"""The CRI streaming server: where Exec, Attach and PortForward send their clients.

    crictl / kubelet ──Exec(container, cmd, tty…)──▶ CRI gRPC ──▶ StreamingServer.get_exec()
          │                                                       └─ a single-use token, 60 s
          ◀── ExecResponse{url: http://127.0.0.1:<port>/exec/<token>} ──┘
          └──HTTP upgrade (SPDY/3.1 or WebSocket) to the URL──▶ exec / attach / port-forward

As in containerd: the gRPC call only records what was asked for and returns a URL; the
token in it is random, can be used once and expires after `token_ttl_s`. The server listens
on a configurable address, loopback by default (a kubelet on the same node proxies to it).
"""

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web

from cri.streaming.channels import ExecOptions
from cri.streaming.portforward import serve_port_forward
from cri.streaming.remotecommand import (
    ExecProcess,
    connect_attach,
    serve_attach,
    serve_exec,
)
from cri.streaming.upgrade import open_remotecommand

log = logging.getLogger("cri.streaming.server")

DEFAULT_ADDRESS = "127.0.0.1:0"
TOKEN_TTL_S = 60.0
MAX_IN_FLIGHT = 1000


class StreamingError(Exception):
    """The streaming server cannot take the request (bad address, too many in flight)."""


class StreamingRuntime(Protocol):
    """What the server needs from the runtime (cri.runtime.service.RuntimeService)."""

    async def exec_stream(
        self, container_id: str, argv: list[str], *, tty: bool = False, stdin: bool = False
    ) -> ExecProcess: ...

    def attach_paths(self, container_id: str) -> tuple[Path, Path]: ...

    def sandbox_netns_of(self, sandbox_id: str) -> str | None: ...


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    options: ExecOptions


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    options: ExecOptions


@dataclass(frozen=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...]


Request = ExecRequest | AttachRequest | PortForwardRequest


def parse_address(address: str) -> tuple[str, int]:
    """host:port (IPv6 in brackets); the host must be one clients can reach, not a wildcard."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise StreamingError(f"stream address {address!r} is not host:port")
    if host in ("0.0.0.0", "::"):  # noqa: S104 — refused, not bound
        raise StreamingError(
            f"stream address {address!r}: give the address clients reach, not a wildcard"
        )
    return host, int(port)


class StreamingServer:
    def __init__(
        self,
        runtime: StreamingRuntime,
        *,
        address: str = DEFAULT_ADDRESS,
        token_ttl_s: float = TOKEN_TTL_S,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime
        self.host, self.port = parse_address(address)
        self.token_ttl_s = token_ttl_s
        self.max_in_flight = max_in_flight
        self.clock = clock
        self._requests: dict[str, tuple[float, Request]] = {}
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()

    # ---- tokens -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _issue(self, kind: str, request: Request) -> str:
        now = self.clock()
        for token, (expires, _) in list(self._requests.items()):
            if expires <= now:
                del self._requests[token]
        if len(self._requests) >= self.max_in_flight:
            raise StreamingError(
                f"{len(self._requests)} streaming requests are waiting to be used; try later"
            )
        token = secrets.token_urlsafe(12)
        self._requests[token] = (now + self.token_ttl_s, request)
        return f"{self.base_url}/{kind}/{token}"

    def get_exec(self, request: ExecRequest) -> str:
        return self._issue("exec", request)

    def get_attach(self, request: AttachRequest) -> str:
        return self._issue("attach", request)

    def get_port_forward(self, request: PortForwardRequest) -> str:
        return self._issue("portforward", request)

    def _consume(self, token: str) -> Request:
        """The request behind a token, once; 404 when unknown, used or expired."""
        entry = self._requests.pop(token, None)
        if entry is None or entry[0] <= self.clock():
            raise web.HTTPNotFound(text=f"streaming token {token!r} is unknown or expired")
        return entry[1]

    # ---- serving ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        for verb in ("GET", "POST"):
            app.router.add_route(verb, "/exec/{token}", self._exec)
            app.router.add_route(verb, "/attach/{token}", self._attach)
            app.router.add_route(verb, "/portforward/{token}", self._port_forward)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        if self.port == 0:
            self.port = int(runner.addresses[0][1])  # the port the kernel picked
        log.info("streaming server on %s", self.base_url)

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        req = self._consume(request.match_info["token"])
        if not isinstance(req, ExecRequest):
            raise web.HTTPNotFound(text="the token is not for an exec")
        cid = req.container_id

        async def start(opts: ExecOptions) -> ExecProcess:
            return await self.runtime.exec_stream(cid, opts.command, tty=opts.tty, stdin=opts.stdin)

        resp, session, protocol = await open_remotecommand(request)
        await serve_exec(session, protocol, req.options, start, closing=self._closing)
        return resp

    async def _attach(self, request: web.Request) -> web.StreamResponse:
        req = self._consume(request.match_info["token"])
        if not isinstance(req, AttachRequest):
            raise web.HTTPNotFound(text="the token is not for an attach")
        try:
            socket_dir, ctl = self.runtime.attach_paths(req.container_id)
            sock = await connect_attach(socket_dir)
        except Exception as err:
            raise web.HTTPBadRequest(text=f"attach to {req.container_id[:12]}: {err}") from err
        try:
            resp, session, protocol = await open_remotecommand(request)
        except BaseException:
            sock.close()
            raise
        await serve_attach(session, protocol, req.options, sock, ctl, closing=self._closing)
        return resp

    async def _port_forward(self, request: web.Request) -> web.StreamResponse:
        req = self._consume(request.match_info["token"])
        if not isinstance(req, PortForwardRequest):
            raise web.HTTPNotFound(text="the token is not for a port-forward")
        try:
            netns = self.runtime.sandbox_netns_of(req.sandbox_id)
        except Exception as err:
            raise web.HTTPBadRequest(text=f"port-forward to {req.sandbox_id[:12]}: {err}") from err
        what = f"sandbox {req.sandbox_id[:12]}"
        return await serve_port_forward(request, netns, what, closing=self._closing)
