"""The kubelet's HTTPS API on :10250 (and plain /healthz on 127.0.0.1:10248), with aiohttp.

    kubectl logs ──▶ kube-apiserver ──(kubelet client cert)──▶ https://<node IP>:10250
        /containerLogs/{ns}/{pod}/{container}   CRI log files, streamed (logs.py)
        /pods                                   the pods this node runs (PodList)
        /healthz                                ping, log, syncloop
        /configz                                {"kubeletconfig": <the agent's config>}
        /exec/{ns}/{pod}/{container}            kubectl exec, SPDY/3.1 upgrade (streaming.py)
        /attach/{ns}/{pod}/{container}          kubectl attach (conmon's attach socket)
        /portForward/{ns}/{pod}                 kubectl port-forward (into the pod's netns)

Every request on the HTTPS port is authenticated and authorized first (auth.py):
without credentials 401, without permission 403, and neither reaches a handler.
The serving certificate is self-signed and kept in <root-dir>/pki (certs.py).

Without an API server (a standalone node) there is nobody to ask for TokenReviews or
SubjectAccessReviews: the HTTPS API is then served only with --client-ca-file (or
--anonymous-auth), and everyone it authenticates is allowed.
"""

import asyncio
import dataclasses
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import grpc
from aiohttp import web
from cri_api.v1 import api_pb2

from kubelet_py.agent.apiclient import ApiClient
from kubelet_py.agent.cri_client import CRIError, CRIRuntime
from kubelet_py.agent.criconfig import CONTAINER_NAME, POD_UID
from kubelet_py.agent.model import Pod
from kubelet_py.server import streaming
from kubelet_py.server.auth import (
    AuthenticationError,
    Authenticator,
    AuthorizationError,
    Authorizer,
    request_attributes,
)
from kubelet_py.server.certs import ensure_serving_cert
from kubelet_py.server.config import ServerConfig
from kubelet_py.server.logs import (
    LogOptions,
    LogRequestError,
    attempts,
    open_log,
    parse_log_options,
    stream_log,
)

log = logging.getLogger("kubelet_py.server")

_ALIVE_STATES = (
    api_pb2.ContainerState.CONTAINER_CREATED,
    api_pb2.ContainerState.CONTAINER_RUNNING,
)
STARTUP_GRACE_S = 120.0


@dataclass(frozen=True)
class KubeletHost:
    """What the API needs from the node agent (narrow on purpose)."""

    node_name: str
    node_ip: str
    root: Path
    log_root: Path
    cri: CRIRuntime
    api: ApiClient | None
    pods: Callable[[], Iterable[Pod]]
    """The pods the agent runs now (its workers' pods)."""
    waiting: Callable[[str, str], tuple[str, str] | None]
    """(pod UID, container name) -> (reason, message) of a container waiting to start."""
    ready: asyncio.Event
    """Set once the agent has synced its pod sources and runs its loops."""
    configz: Callable[[], Any]
    """The agent's configuration (a dataclass), for /configz."""


def _text(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/plain")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def config_json(obj: Any) -> Any:
    """A configuration object as JSON: dataclass fields in camelCase, paths as strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {_camel(f.name): config_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): config_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [config_json(v) for v in obj]
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return str(obj)


class KubeletServer:
    def __init__(self, config: ServerConfig, host: KubeletHost) -> None:
        self.config = config
        self.host = host
        self.authn = Authenticator(
            host.api, anonymous=config.anonymous_auth, valid_ttl_s=config.authn_cache_ttl_s
        )
        self.authz = Authorizer(
            host.api,
            allowed_ttl_s=config.authz_allowed_ttl_s,
            denied_ttl_s=config.authz_denied_ttl_s,
        )
        self.started = asyncio.Event()
        self._closing = asyncio.Event()
        self._born = time.monotonic()

    # ---- serving ------------------------------------------------------------------------

    def _client_ca(self) -> str | None:
        if self.config.client_ca_file is not None:
            return self.config.client_ca_file.read_text()
        api = self.host.api
        if api is not None and api.cfg.ca_pem:
            return api.cfg.ca_pem.decode()
        return None

    def ssl_context(self) -> ssl.SSLContext:
        """TLS for :10250: our serving cert; client certs optional, verified if sent."""
        if self.config.tls_cert_file is not None and self.config.tls_private_key_file is not None:
            cert, key = self.config.tls_cert_file, self.config.tls_private_key_file
        else:
            cert_dir = self.config.cert_dir or self.host.root / "pki"
            cert, key = ensure_serving_cert(cert_dir, self.host.node_name, self.host.node_ip)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        ca = self._client_ca()
        if ca:
            ctx.load_verify_locations(cadata=ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def https_enabled(self) -> bool:
        if self.config.port == 0:
            return False
        if self.host.api is not None or self.config.anonymous_auth:
            return True
        return self._client_ca() is not None

    def app(self) -> web.Application:
        """The HTTPS API: every route behind authentication and authorization."""
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self.container_logs)
        app.router.add_get("/pods", self.pods)
        app.router.add_get("/pods/", self.pods)
        app.router.add_get("/configz", self.configz)
        for verb in ("GET", "POST"):
            for path in ("{pod}/{container}", "{pod}/{uid}/{container}"):
                app.router.add_route(verb, f"/exec/{{namespace}}/{path}", self.exec)
                app.router.add_route(verb, f"/attach/{{namespace}}/{path}", self.attach)
            for path in ("{pod}", "{pod}/{uid}"):
                app.router.add_route(verb, f"/portForward/{{namespace}}/{path}", self.port_forward)
        self._add_healthz(app)
        return app

    def healthz_app(self) -> web.Application:
        app = web.Application()
        self._add_healthz(app)
        return app

    def _add_healthz(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/healthz/{check}", self.healthz)

    async def run(self) -> None:
        """Serve until cancelled."""
        runners: list[web.AppRunner] = []
        try:
            if self.config.healthz_port:
                runner = web.AppRunner(self.healthz_app(), access_log=None, shutdown_timeout=1.0)
                await runner.setup()
                runners.append(runner)
                await web.TCPSite(
                    runner, self.config.healthz_bind_address, self.config.healthz_port
                ).start()
                log.info(
                    "serving /healthz on http://%s:%d",
                    self.config.healthz_bind_address,
                    self.config.healthz_port,
                )
            if self.https_enabled():
                ctx = await asyncio.to_thread(self.ssl_context)
                runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
                await runner.setup()
                runners.append(runner)
                await web.TCPSite(
                    runner, self.config.address, self.config.port, ssl_context=ctx
                ).start()
                log.info(
                    "serving the kubelet API on https://%s:%d (anonymous auth %s)",
                    self.config.address,
                    self.config.port,
                    "on" if self.config.anonymous_auth else "off",
                )
            elif self.config.port:
                log.warning(
                    "not serving the kubelet API: no API server to authorize requests and no "
                    "--client-ca-file to authenticate them"
                )
            self.started.set()
            await asyncio.Event().wait()
        finally:
            self._closing.set()
            for runner in reversed(runners):
                await runner.cleanup()

    # ---- authentication and authorization ---------------------------------------------------

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        try:
            user = await self.authn.authenticate(peercert, request.headers.get("Authorization"))
        except AuthenticationError as err:
            log.debug("%s %s: unauthenticated: %s", request.method, request.path, err)
            user = None
        if user is None:
            return _text(401, "Unauthorized")
        attrs = request_attributes(request.method, request.path, self.host.node_name)
        for attr in attrs:
            try:
                allowed = await self.authz.allowed(user, attr)
            except AuthorizationError:
                return _text(
                    500,
                    f"Authorization error (user={user.name}, verb={attr.verb}, "
                    f"resource={attr.resource}, subresource={attr.subresource})",
                )
            if allowed:
                return await handler(request)
        subs = " ".join(a.subresource for a in attrs)
        log.debug("forbidden: %s %s for %s", request.method, request.path, user.name)
        return _text(
            403,
            f"Forbidden (user={user.name}, verb={attrs[0].verb}, resource={attrs[0].resource}, "
            f"subresource(s)=[{subs}])\n",
        )

    # ---- handlers ---------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        checks = {"ping": self._ok, "log": self._ok, "syncloop": self._syncloop}
        name = request.match_info.get("check")
        if name is not None:
            if name not in checks:
                return _text(404, "404 page not found\n")
            ok, why = await checks[name]()
            return _text(200, "ok") if ok else _text(500, f"internal server error: {why}\n")
        excluded = set(request.query.getall("exclude", []))
        lines, failed = [], False
        for check, fn in checks.items():
            if check in excluded:
                lines.append(f"[+]{check} excluded: ok")
                continue
            ok, _ = await fn()
            failed |= not ok
            lines.append(f"[+]{check} ok" if ok else f"[-]{check} failed: reason withheld")
        if failed:
            return _text(500, "\n".join([*lines, "healthz check failed"]) + "\n")
        if "verbose" in request.query:
            return _text(200, "\n".join([*lines, "healthz check passed"]) + "\n")
        return _text(200, "ok")

    async def _ok(self) -> tuple[bool, str]:
        return True, ""

    async def _syncloop(self) -> tuple[bool, str]:
        if self.host.ready.is_set() or time.monotonic() - self._born < STARTUP_GRACE_S:
            return True, ""
        return False, f"the node agent has not become ready in {STARTUP_GRACE_S:.0f} s"

    async def pods(self, request: web.Request) -> web.Response:
        items = [dict(p.raw) for p in self.host.pods() if p.raw]
        body = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        return web.json_response(body)

    async def configz(self, request: web.Request) -> web.Response:
        cfg = {
            "kind": "KubeletConfiguration",
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            **config_json(self.host.configz()),
        }
        return web.json_response({"kubeletconfig": cfg})

    def _find_pod(self, namespace: str, name: str) -> Pod | None:
        found = [p for p in self.host.pods() if p.namespace == namespace and p.name == name]
        found.sort(key=lambda p: p.terminating)  # a live pod before one on its way out
        return found[0] if found else None

    def _waiting_message(self, pod: Pod, container: str) -> str:
        waiting = self.host.waiting(pod.uid, container)
        if waiting is not None:
            reason = waiting[0]
        elif any(c.name == container for c in pod.containers) and any(
            c.restart_policy != "Always" for c in pod.init_containers
        ):
            reason = "PodInitializing"
        else:
            reason = "ContainerCreating"
        detail = {
            "ErrImagePull": "image can't be pulled",
            "ImagePullBackOff": "trying and failing to pull image",
        }.get(reason, reason)
        return f'container "{container}" in pod "{pod.name}" is waiting to start: {detail}'

    async def container_logs(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        pod_name = request.match_info["pod"]
        container = request.match_info["container"]
        try:
            opts = parse_log_options(request.query, now_ns=time.time_ns())
        except LogRequestError as err:
            return _text(err.status, err.message)
        pod = self._find_pod(namespace, pod_name)
        if pod is None:
            return _text(404, f'pod "{pod_name}" does not exist')
        names = {c.name for c in (*pod.containers, *pod.init_containers)}
        names |= {
            str(c.get("name")) for c in (pod.raw.get("spec") or {}).get("ephemeralContainers") or ()
        }
        if container not in names:
            return _text(404, f'container "{container}" not found in pod "{pod_name}"')
        cdir = self.host.log_root / f"{pod.namespace}_{pod.name}_{pod.uid}" / container
        found = await asyncio.to_thread(attempts, cdir)
        if opts.previous:
            # The attempt the pod status reports as lastState: the one before the latest,
            # or, after the first crash, the latest while it waits to be restarted.
            if len(found) >= 2:
                attempt = found[-2]
            elif (
                found
                and self.host.waiting(pod.uid, container) is not None
                and not await self._container_alive(pod.uid, container, found[-1])
            ):
                attempt = found[-1]
            else:
                return _text(
                    400,
                    f'previous terminated container "{container}" in pod "{pod_name}" not found',
                )
        else:
            if not found:
                return _text(400, self._waiting_message(pod, container))
            attempt = found[-1]
        try:
            f = await asyncio.to_thread(open_log, cdir / f"{attempt}.log", opts.tail_lines)
        except OSError as err:
            return _text(400, f'failed to open log file for container "{container}": {err}')
        return await self._stream(request, f, opts, pod.uid, container, attempt)

    async def _stream(
        self,
        request: web.Request,
        f: BinaryIO,
        opts: LogOptions,
        uid: str,
        container: str,
        attempt: int,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)
        resp.content_type = "text/plain"
        resp.charset = "utf-8"
        try:
            await resp.prepare(request)
        except (ConnectionError, OSError):
            f.close()
            return resp

        async def write(data: bytes) -> bool:
            transport = request.transport
            if transport is None or transport.is_closing():
                return False
            if data:
                try:
                    await resp.write(data)
                except (ConnectionError, OSError):
                    return False
            return True

        async def still_running() -> bool:
            return await self._container_alive(uid, container, attempt)

        await stream_log(f, opts, write, still_running=still_running, stopping=self._closing.is_set)
        try:
            await resp.write_eof()
        except (ConnectionError, OSError):
            pass
        return resp

    async def _container_alive(self, uid: str, container: str, attempt: int) -> bool:
        """Whether attempt `attempt` of the container may still write to its log."""
        cri = self.host.cri
        try:
            listed = await cri.list_containers({POD_UID: uid, CONTAINER_NAME: container})
            match = [c for c in listed if c.metadata.attempt == attempt]
            if not match:
                return False  # removed, or never made it to the runtime
            status = await cri.container_status(match[0].id)
        except CRIError as err:
            if err.code == grpc.StatusCode.NOT_FOUND:
                return False
            log.debug("asking the runtime about %s/%s failed: %s", uid, container, err)
            return True  # the runtime is unsure, not the container gone: keep following
        return status.state in _ALIVE_STATES

    # ---- exec, attach, port-forward (streaming.py) --------------------------------------------

    def _runtime_root(self) -> Path:
        """Where the embedded runtime keeps its records (the agent's <root>/runtime)."""
        return self.host.root / "runtime"

    def _streaming_pod(self, request: web.Request) -> Pod:
        namespace = request.match_info["namespace"]
        pod_name = request.match_info["pod"]
        pod = self._find_pod(namespace, pod_name)
        uid = request.match_info.get("uid")
        if pod is None or (uid and pod.uid != uid):
            raise web.HTTPNotFound(text=f'pod "{pod_name}" does not exist')
        return pod

    async def _running_container(self, pod: Pod, container: str) -> str:
        try:
            listed = await self.host.cri.list_containers(
                {POD_UID: pod.uid, CONTAINER_NAME: container}
            )
        except CRIError as err:
            raise web.HTTPInternalServerError(text=f"asking the runtime failed: {err}") from err
        running = [c for c in listed if c.state == api_pb2.ContainerState.CONTAINER_RUNNING]
        if not running:
            names = {c.name for c in (*pod.containers, *pod.init_containers)}
            if container not in names:
                raise web.HTTPNotFound(
                    text=f'container "{container}" not found in pod "{pod.name}"'
                )
            raise web.HTTPBadRequest(text=f'container "{container}" is not running')
        running.sort(key=lambda c: c.metadata.attempt)
        return str(running[-1].id)

    async def _start_exec(
        self, container_id: str, opts: streaming.ExecOptions
    ) -> streaming.ExecProcess:
        from cri.runtime.executor import ConmonExecutor

        root = self._runtime_root()
        record = json.loads(
            await asyncio.to_thread(
                (root / "containers" / container_id / "container.json").read_text
            )
        )
        executor = ConmonExecutor(state_dir=root)
        proc: streaming.ExecProcess = await executor.exec_stream(
            container_id,
            opts.command,
            tty=opts.tty,
            stdin=opts.stdin,
            user=record.get("user") or None,
            env=list(record.get("env") or []),
            cwd=record.get("cwd") or None,
        )
        return proc

    def _sandbox_netns(self, uid: str) -> str | None:
        ready = []
        for path in (self._runtime_root() / "sandboxes").glob("*/sandbox.json"):
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if rec.get("uid") == uid and rec.get("state") == "SANDBOX_READY":
                ready.append(rec)
        if not ready:
            raise web.HTTPNotFound(text="no running sandbox for the pod")
        ready.sort(key=lambda r: int(r.get("created_at_ns") or 0))
        netns = ready[-1].get("netns")
        return str(netns) if netns else None

    async def exec(self, request: web.Request) -> web.StreamResponse:
        opts = streaming.parse_exec_options(request.query)
        pod = self._streaming_pod(request)
        cid = await self._running_container(pod, request.match_info["container"])
        return await streaming.serve_exec(
            request, opts, lambda o: self._start_exec(cid, o), closing=self._closing
        )

    async def attach(self, request: web.Request) -> web.StreamResponse:
        opts = streaming.parse_exec_options(request.query, attach=True)
        pod = self._streaming_pod(request)
        cid = await self._running_container(pod, request.match_info["container"])
        root = self._runtime_root()
        return await streaming.serve_attach(request, opts, root, cid, closing=self._closing)

    async def port_forward(self, request: web.Request) -> web.StreamResponse:
        pod = self._streaming_pod(request)
        netns = await asyncio.to_thread(self._sandbox_netns, pod.uid)
        what = f"{pod.name}_{pod.namespace}, uid {pod.uid}"
        return await streaming.serve_port_forward(request, netns, what, closing=self._closing)
