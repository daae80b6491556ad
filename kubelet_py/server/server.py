"""The kubelet's HTTPS API on :10250 (and plain /healthz on 127.0.0.1:10248), with aiohttp.

    kubectl logs ──▶ kube-apiserver ──(kubelet client cert)──▶ https://<node IP>:10250
        /containerLogs/{ns}/{pod}/{container}   CRI log files, streamed (logs.py)
        /pods                                   the pods this node runs (PodList)
        /stats/summary                          node, pod and container usage (kubelet_py.stats)
        /metrics                                the agent's own metrics (Prometheus text)
        /metrics/resource                       what metrics-server scrapes
        /metrics/cadvisor                       per-container usage, cAdvisor's names (a subset)
        /healthz                                ping, log, syncloop
        /configz                                {"kubeletconfig": <the agent's config>}
        /exec/{ns}/{pod}/{container}            kubectl exec  ┐ CRI Exec/Attach/PortForward give
        /attach/{ns}/{pod}/{container}          kubectl attach ├ a URL of the runtime's streaming
        /portForward/{ns}/{pod}                 port-forward  ┘ server; proxied (streamproxy.py)

Every request on the HTTPS port is authenticated and authorized first (auth.py):
without credentials 401, without permission 403, and neither reaches a handler.
The serving certificate is self-signed and kept in <root-dir>/pki (certs.py), unless a
CA-signed one from a kubelet-serving CSR is there (pki/kubelet-server-current.pem, kept
fresh by kubelet_py.bootstrap.rotation); `use_serving_cert()` swaps a renewed one in for
new TLS handshakes without touching connections already open.

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
from typing import Any, BinaryIO, Protocol

import grpc
from aiohttp import web
from cri_api.v1 import api_pb2

from cri.streaming import ExecOptions, OptionsError, parse_exec_options
from kubelet_py.agent.apiclient import ApiClient
from kubelet_py.agent.cri_client import CRIError, CRIRuntime
from kubelet_py.agent.criconfig import CONTAINER_NAME, POD_UID
from kubelet_py.agent.model import Pod
from kubelet_py.server.auth import (
    AuthenticationError,
    Authenticator,
    AuthorizationError,
    Authorizer,
    request_attributes,
)
from kubelet_py.server.certs import ISSUED_SERVING_CERT, ensure_serving_cert
from kubelet_py.server.config import ServerConfig
from kubelet_py.server.logs import (
    LogOptions,
    LogRequestError,
    attempts,
    open_log,
    parse_log_options,
    stream_log,
)
from kubelet_py.server.streamproxy import proxy_stream

log = logging.getLogger("kubelet_py.server")

_ALIVE_STATES = (
    api_pb2.ContainerState.CONTAINER_CREATED,
    api_pb2.ContainerState.CONTAINER_RUNNING,
)
STARTUP_GRACE_S = 120.0


class StatsSource(Protocol):
    """What /stats/summary and /metrics/* need (kubelet_py.stats.SummaryProvider)."""

    async def summary(
        self, *, cpu_and_memory_only: bool = False, times: dict[str, int] | None = None
    ) -> dict[str, Any]: ...


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
    stats: StatsSource | None = None
    """Usage figures for /stats/summary and /metrics/resource."""
    metrics: Callable[[], Awaitable[str]] | None = None
    """The agent's own metrics in Prometheus text format, for /metrics."""


def _text(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/plain")


def _compact_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _prometheus(text: str) -> web.Response:
    resp = web.Response(body=text.encode())
    resp.content_type = "text/plain"
    resp.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    return resp


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
        self._tls: ssl.SSLContext | None = None
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
        cert_dir = self.config.cert_dir or self.host.root / "pki"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        issued = cert_dir / ISSUED_SERVING_CERT
        if self.config.tls_cert_file is not None and self.config.tls_private_key_file is not None:
            # tlsCertFile/tlsPrivateKeyFile of the KubeletConfiguration win over everything
            ctx.load_cert_chain(self.config.tls_cert_file, self.config.tls_private_key_file)
        else:
            try:
                ctx.load_cert_chain(issued)
                log.info("serving with the CA-signed certificate %s", issued)
            except (OSError, ssl.SSLError):
                cert, key = ensure_serving_cert(cert_dir, self.host.node_name, self.host.node_ip)
                ctx.load_cert_chain(cert, key)
        ca = self._client_ca()
        if ca:
            ctx.load_verify_locations(cadata=ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        self._tls = ctx
        return ctx

    def use_serving_cert(self, pem_file: str) -> None:
        """Serve new TLS connections with a (renewed) cert+key PEM; open ones keep theirs."""
        if self._tls is not None:
            self._tls.load_cert_chain(pem_file)
            log.info("serving certificate replaced by %s for new connections", pem_file)

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
        app.router.add_get("/stats/summary", self.stats_summary)
        app.router.add_post("/stats/summary", self.stats_summary)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/metrics/resource", self.metrics_resource)
        app.router.add_get("/metrics/cadvisor", self.metrics_cadvisor)
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

    # ---- stats and metrics ----------------------------------------------------------------------

    async def stats_summary(self, request: web.Request) -> web.Response:
        """GET /stats/summary[?only_cpu_and_memory=true]: the stats/v1alpha1 Summary."""
        if self.host.stats is None:
            return _text(404, "404 page not found\n")
        only = request.query.get("only_cpu_and_memory", "").lower() == "true"
        try:
            summary = await self.host.stats.summary(cpu_and_memory_only=only)
        except Exception as err:  # noqa: BLE001 - any failure is this request's 500
            log.warning("stats summary failed: %s", err)
            return _text(500, f"Internal Error: failed to get node info: {err}")
        return web.json_response(summary, dumps=_compact_json)

    async def metrics(self, request: web.Request) -> web.Response:
        if self.host.metrics is None:
            return _text(404, "404 page not found\n")
        return _prometheus(await self.host.metrics())

    async def metrics_resource(self, request: web.Request) -> web.Response:
        from kubelet_py.metrics.resource import resource_metrics_text  # only this handler needs it

        if self.host.stats is None:
            return _text(404, "404 page not found\n")
        times: dict[str, int] = {}
        try:
            summary = await self.host.stats.summary(cpu_and_memory_only=True, times=times)
        except Exception as err:  # noqa: BLE001 - reported as resource_scrape_error 1
            log.warning("resource metrics: stats summary failed: %s", err)
            return _prometheus(resource_metrics_text(None))
        return _prometheus(resource_metrics_text(summary, at_ns=times))

    async def metrics_cadvisor(self, request: web.Request) -> web.Response:
        from kubelet_py.metrics.cadvisor import cadvisor_metrics_text  # only this handler needs it

        if self.host.stats is None:
            return _text(404, "404 page not found\n")
        times: dict[str, int] = {}
        try:
            summary = await self.host.stats.summary(times=times)
        except Exception as err:  # noqa: BLE001 - any failure is this request's 500
            return _text(500, f"Internal Error: {err}")
        return _prometheus(cadvisor_metrics_text(summary, at_ns=times))

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

    # ---- exec, attach, port-forward (the runtime's streaming server, streamproxy.py) ------------

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

    async def _ready_sandbox(self, pod: Pod) -> str:
        try:
            listed = await self.host.cri.list_pod_sandbox({POD_UID: pod.uid})
        except CRIError as err:
            raise web.HTTPInternalServerError(text=f"asking the runtime failed: {err}") from err
        ready = [s for s in listed if s.state == api_pb2.PodSandboxState.SANDBOX_READY]
        if not ready:
            raise web.HTTPNotFound(text="no running sandbox for the pod")
        ready.sort(key=lambda s: s.created_at)
        return str(ready[-1].id)

    def _options(self, request: web.Request, *, attach: bool) -> ExecOptions:
        try:
            return parse_exec_options(request.query, attach=attach)
        except OptionsError as err:
            raise web.HTTPBadRequest(text=str(err)) from err

    @staticmethod
    def _runtime_failed(what: str, err: CRIError) -> web.HTTPException:
        if err.code == grpc.StatusCode.NOT_FOUND:
            return web.HTTPNotFound(text=f"{what}: {err}")
        if err.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
            return web.HTTPBadRequest(text=f"{what}: {err}")
        return web.HTTPInternalServerError(text=f"{what}: {err}")

    async def exec(self, request: web.Request) -> web.StreamResponse:
        opts = self._options(request, attach=False)
        pod = self._streaming_pod(request)
        cid = await self._running_container(pod, request.match_info["container"])
        req = api_pb2.ExecRequest(
            container_id=cid,
            cmd=opts.command,
            tty=opts.tty,
            stdin=opts.stdin,
            stdout=opts.stdout,
            stderr=opts.stderr,
        )
        try:
            url = await self.host.cri.exec(req)
        except CRIError as err:
            raise self._runtime_failed("exec", err) from err
        return await proxy_stream(request, url)

    async def attach(self, request: web.Request) -> web.StreamResponse:
        opts = self._options(request, attach=True)
        pod = self._streaming_pod(request)
        cid = await self._running_container(pod, request.match_info["container"])
        req = api_pb2.AttachRequest(
            container_id=cid,
            tty=opts.tty,
            stdin=opts.stdin,
            stdout=opts.stdout,
            stderr=opts.stderr,
        )
        try:
            url = await self.host.cri.attach(req)
        except CRIError as err:
            raise self._runtime_failed("attach", err) from err
        return await proxy_stream(request, url)

    async def port_forward(self, request: web.Request) -> web.StreamResponse:
        pod = self._streaming_pod(request)
        sandbox_id = await self._ready_sandbox(pod)
        try:
            ports = [int(p) for p in request.query.getall("port", [])]
        except ValueError as err:
            raise web.HTTPBadRequest(text=f"invalid port: {err}") from err
        try:
            url = await self.host.cri.port_forward(sandbox_id, ports)
        except CRIError as err:
            raise self._runtime_failed("port-forward", err) from err
        return await proxy_stream(request, url)
