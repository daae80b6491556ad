"""The S3 CSI driver as a gRPC service on a unix socket (Identity, Controller, Node).

    S3Driver.run(): recover recorded mounts ─▶ serve csi.v1 on the endpoint ─▶ [registration
    socket for the kubelet's plugin watcher] ─▶ periodic mount health checks ─▶ until cancelled

The servicers are thin: they call `S3Controller` / `S3Node` and turn a `CsiCallError`
into the call's gRPC status. Stopping the driver never unmounts anything: the FUSE
daemons run in sessions of their own and keep serving.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import wrappers_pb2

from csi_volumes import __version__
from csi_volumes.api.csi.v1 import csi_pb2, csi_pb2_grpc
from csi_volumes.errors import CsiCallError
from csi_volumes.kube_events import EventSink
from csi_volumes.registration import RegistrationServer
from csi_volumes.s3.controller import S3Controller
from csi_volumes.s3.node import NodeConfig, S3Node

log = logging.getLogger("csi_volumes.s3.server")

DRIVER_NAME = "s3.csi.kubelet-py.io"
T = TypeVar("T")


async def _guard(context: Any, call: str, fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return await fn()
    except CsiCallError as err:
        log.info("%s failed: %s: %s", call, err.code.name, err.message)
        await context.abort(grpc.StatusCode[err.code.name], err.message)
        raise  # abort() raises; this is for the type checker
    except Exception as err:
        log.exception("%s failed unexpectedly", call)
        await context.abort(grpc.StatusCode.INTERNAL, f"{call}: {type(err).__name__}: {err}")
        raise


class IdentityServicer(csi_pb2_grpc.IdentityServicer):
    def __init__(self, *, name: str, controller: bool, ready: Callable[[], str]) -> None:
        self.name = name
        self.controller = controller
        self.ready = ready

    async def GetPluginInfo(self, request: Any, context: Any) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=self.name, vendor_version=__version__)

    async def GetPluginCapabilities(
        self, request: Any, context: Any
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        svc = csi_pb2.PluginCapability.Service
        caps = [csi_pb2.PluginCapability(service=svc(type=svc.CONTROLLER_SERVICE))]
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=caps if self.controller else [])

    async def Probe(self, request: Any, context: Any) -> csi_pb2.ProbeResponse:
        problem = self.ready()
        if problem:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, problem)
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))


class ControllerServicer(csi_pb2_grpc.ControllerServicer):
    def __init__(self, controller: S3Controller) -> None:
        self.c = controller

    async def CreateVolume(self, request: Any, context: Any) -> Any:
        return await _guard(context, "CreateVolume", lambda: self.c.create_volume(request))

    async def DeleteVolume(self, request: Any, context: Any) -> Any:
        return await _guard(context, "DeleteVolume", lambda: self.c.delete_volume(request))

    async def ValidateVolumeCapabilities(self, request: Any, context: Any) -> Any:
        return await _guard(context, "ValidateVolumeCapabilities", lambda: self.c.validate(request))

    async def ControllerGetCapabilities(self, request: Any, context: Any) -> Any:
        return self.c.capabilities()


class NodeServicer(csi_pb2_grpc.NodeServicer):
    def __init__(self, node: S3Node) -> None:
        self.n = node

    async def NodeStageVolume(self, request: Any, context: Any) -> Any:
        return await _guard(context, "NodeStageVolume", lambda: self.n.stage(request))

    async def NodeUnstageVolume(self, request: Any, context: Any) -> Any:
        return await _guard(context, "NodeUnstageVolume", lambda: self.n.unstage(request))

    async def NodePublishVolume(self, request: Any, context: Any) -> Any:
        return await _guard(context, "NodePublishVolume", lambda: self.n.publish(request))

    async def NodeUnpublishVolume(self, request: Any, context: Any) -> Any:
        return await _guard(context, "NodeUnpublishVolume", lambda: self.n.unpublish(request))

    async def NodeGetVolumeStats(self, request: Any, context: Any) -> Any:
        return await _guard(context, "NodeGetVolumeStats", lambda: self.n.volume_stats(request))

    async def NodeGetCapabilities(self, request: Any, context: Any) -> Any:
        return self.n.capabilities()

    async def NodeGetInfo(self, request: Any, context: Any) -> Any:
        return self.n.info()


@dataclass(frozen=True)
class DriverConfig:
    endpoint: Path  # the CSI unix socket
    node_id: str
    state_dir: Path
    name: str = DRIVER_NAME
    controller: bool = True
    node: bool = True
    health_interval_s: float = 10.0
    registration_dir: Path | None = None  # the kubelet's plugins_registry, if any
    kubeconfig: Path | None = None  # to post volume Events on pods (else in-cluster, or none)


def _missing_mounters() -> str:
    import shutil

    if shutil.which("s3fs") is None:
        return "missing required dependency: s3fs (Debian package s3fs) is not on PATH"
    return ""


class S3Driver:
    def __init__(self, config: DriverConfig) -> None:
        self.config = config
        self.events = EventSink(config.kubeconfig, component=config.name, host=config.node_id)
        self.node = S3Node(
            NodeConfig(node_id=config.node_id, state_dir=config.state_dir), events=self.events
        )
        self.controller = S3Controller()
        self._server: grpc.aio.Server | None = None
        self.started = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        if cfg.node:
            await self.node.recover()
        cfg.endpoint.parent.mkdir(parents=True, exist_ok=True)
        cfg.endpoint.unlink(missing_ok=True)
        server = grpc.aio.server()
        csi_pb2_grpc.add_IdentityServicer_to_server(
            IdentityServicer(name=cfg.name, controller=cfg.controller, ready=_missing_mounters),
            server,
        )
        if cfg.controller:
            # The generated bases (abstract in their .pyi) answer UNIMPLEMENTED for the
            # RPCs a driver without that capability does not serve, as the spec asks.
            controller = ControllerServicer(self.controller)  # type: ignore[abstract]
            csi_pb2_grpc.add_ControllerServicer_to_server(controller, server)
        if cfg.node:
            node = NodeServicer(self.node)  # type: ignore[abstract]
            csi_pb2_grpc.add_NodeServicer_to_server(node, server)
        server.add_insecure_port(f"unix://{cfg.endpoint}")
        await server.start()
        cfg.endpoint.chmod(0o660)
        self._server = server
        log.info("serving CSI %s on %s (node %s)", cfg.name, cfg.endpoint, cfg.node_id)

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.events.drain()
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        self.config.endpoint.unlink(missing_ok=True)

    async def run(self) -> None:
        """Serve until cancelled; mounts stay up after."""
        await self.start()
        try:
            async with asyncio.TaskGroup() as tg:
                if self.config.registration_dir is not None:
                    reg = RegistrationServer(
                        registration_dir=self.config.registration_dir,
                        driver_name=self.config.name,
                        endpoint=self.config.endpoint,
                    )
                    tg.create_task(reg.run(), name="csi-registration")
                if self.config.node and self.config.health_interval_s > 0:
                    tg.create_task(
                        self.node.run_checks(self.config.health_interval_s),
                        name="csi-mount-health",
                    )
                self.started.set()
                await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.stop())
