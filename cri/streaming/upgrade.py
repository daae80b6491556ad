"""HTTP/1.1 upgrade of a streaming request to SPDY/3.1 or WebSocket, with protocol negotiation.

    Upgrade: SPDY/3.1   + X-Stream-Protocol-Version: v4.channel.k8s.io, …  ─▶ 101, SpdyConnection
    Upgrade: websocket  + Sec-WebSocket-Protocol: v5.channel.k8s.io, …     ─▶ 101, WebSocketSession

The client's list is walked in its order and the first protocol we speak wins (both
Kubernetes' SPDY and WebSocket servers do so). Asking for none picks the oldest one.
"""

import asyncio
from collections.abc import Callable

from aiohttp import web

from cri.streaming.channels import Session, SpdySession, WebSocketSession
from cri.streaming.spdy import SpdyConnection

HEADER_PROTOCOL = "X-Stream-Protocol-Version"
HEADER_ACCEPTED = "X-Accepted-Stream-Protocol-Versions"
HEADER_WS_PROTOCOL = "Sec-WebSocket-Protocol"
EXEC_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
WS_EXEC_PROTOCOLS = (
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
)
PORT_FORWARD_PROTOCOLS = ("portforward.k8s.io",)
WS_TUNNEL_PREFIX = "SPDY/3.1+"
"""kubectl port-forward over WebSockets tunnels SPDY: subprotocol SPDY/3.1+portforward.k8s.io."""


def _listed(request: web.Request, header: str) -> list[str]:
    out: list[str] = []
    for value in request.headers.getall(header, []):
        out += [p.strip() for p in value.split(",") if p.strip()]
    return out


def is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def negotiate(request: web.Request, server: tuple[str, ...]) -> str:
    """The SPDY protocol the client asked for first that we speak ("" if it asked for none)."""
    client = _listed(request, HEADER_PROTOCOL)
    if not client:
        return ""
    for proto in client:
        if proto in server:
            return proto
    raise web.HTTPForbidden(
        text=f"unable to upgrade: unable to negotiate protocol: client supports {client}, "
        f"server accepts {list(server)}",
        headers={HEADER_ACCEPTED: ", ".join(server)},
    )


def negotiate_websocket(request: web.Request, server: tuple[str, ...]) -> str:
    client = _listed(request, HEADER_WS_PROTOCOL)
    if not client:
        return ""
    for proto in client:
        if proto in server:
            return proto
    raise web.HTTPForbidden(
        text=f"unable to upgrade: requested protocol(s) are not supported: {client}; "
        f"supports {list(server)}"
    )


async def upgrade_spdy(
    request: web.Request, protocol: str
) -> tuple[web.StreamResponse, SpdyConnection]:
    """Answer 101 and take the connection over: every further byte goes to the session."""
    if request.headers.get("Upgrade", "").lower() != "spdy/3.1":
        raise web.HTTPBadRequest(text="unable to upgrade: missing upgrade headers in request")
    transport = request.transport
    protocol_handler = request.protocol
    if transport is None:
        raise ConnectionResetError("the client went away")
    resp = web.StreamResponse(status=101)
    resp.headers["Connection"] = "Upgrade"
    resp.headers["Upgrade"] = "SPDY/3.1"
    if protocol:
        resp.headers[HEADER_PROTOCOL] = protocol
    resp.force_close()

    async def drain() -> None:
        await protocol_handler._drain_helper()

    conn = SpdyConnection(
        transport.write,
        drain,
        pause=transport.pause_reading,
        resume=transport.resume_reading,
    )
    # Before the 101 goes out, so no frame of the client can reach the HTTP parser.
    protocol_handler.set_parser(conn)  # type: ignore[arg-type]
    protocol_handler.keep_alive(False)
    await resp.prepare(request)
    return resp, conn


async def upgrade_websocket(request: web.Request, protocol: str) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=(protocol,) if protocol else (), compress=False)
    await ws.prepare(request)
    return ws


async def open_remotecommand(
    request: web.Request,
) -> tuple[web.StreamResponse, Session, str]:
    """Upgrade an exec/attach request by its Upgrade header; the session and the protocol."""
    if is_websocket(request):
        protocol = negotiate_websocket(request, WS_EXEC_PROTOCOLS)
        ws = await upgrade_websocket(request, protocol)
        return ws, WebSocketSession(ws, protocol or "channel.k8s.io"), protocol or "channel.k8s.io"
    protocol = negotiate(request, EXEC_PROTOCOLS)
    resp, conn = await upgrade_spdy(request, protocol)
    return resp, SpdySession(conn), protocol


def watch_closing(
    done: asyncio.Event, goaway: Callable[[], None], closing: asyncio.Event | None
) -> asyncio.Task[None]:
    """A task that ends the session when the server shuts down."""

    async def watch() -> None:
        if closing is None:
            await done.wait()
            return
        finished = asyncio.ensure_future(done.wait())
        stop = asyncio.ensure_future(closing.wait())
        try:
            await asyncio.wait({finished, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished.cancel()
            stop.cancel()
        if stop.done() and not stop.cancelled():
            goaway()

    return asyncio.create_task(watch(), name="streaming-watch-closing")
