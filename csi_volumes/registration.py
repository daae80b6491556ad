"""Kubelet plugin registration (`pluginregistration.v1.Registration`), both sides.

The driver side does what kubernetes-csi's node-driver-registrar does: serve
`Registration` on `<registration-dir>/<driver>-reg.sock`, answering GetInfo with
type "CSIPlugin", the driver name, the CSI endpoint and the CSI versions it speaks; the
kubelet's plugin watcher finds the socket, calls GetInfo, then NotifyRegistrationStatus.

The kubelet side needs only `get_plugin_info` and `notify_registration_status`, which
talk to such a socket (ours or node-driver-registrar's).
"""

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from csi_volumes.api.pluginregistration.v1 import api_pb2, api_pb2_grpc

log = logging.getLogger("csi_volumes.registration")

CSI_PLUGIN = "CSIPlugin"  # k8s.io/kubelet/pkg/apis/pluginregistration/v1 constants.go
SUPPORTED_CSI_VERSIONS = ("1.0.0",)


def registration_socket(registration_dir: Path, driver_name: str) -> Path:
    return registration_dir / f"{driver_name}-reg.sock"


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self, *, driver_name: str, endpoint: Path) -> None:
        self.driver_name = driver_name
        self.endpoint = endpoint
        self.registered = asyncio.Event()
        self.last_error = ""

    async def GetInfo(self, request: Any, context: Any) -> api_pb2.PluginInfo:
        return api_pb2.PluginInfo(
            type=CSI_PLUGIN,
            name=self.driver_name,
            endpoint=str(self.endpoint),
            supported_versions=list(SUPPORTED_CSI_VERSIONS),
        )

    async def NotifyRegistrationStatus(
        self, request: api_pb2.RegistrationStatus, context: Any
    ) -> api_pb2.RegistrationStatusResponse:
        if request.plugin_registered:
            log.info("registered with the kubelet as %s", self.driver_name)
            self.registered.set()
        else:
            self.last_error = request.error
            log.error("the kubelet refused to register %s: %s", self.driver_name, request.error)
        return api_pb2.RegistrationStatusResponse()


class RegistrationServer:
    def __init__(self, *, registration_dir: Path, driver_name: str, endpoint: Path) -> None:
        self.socket = registration_socket(registration_dir, driver_name)
        self.servicer = _Registration(driver_name=driver_name, endpoint=endpoint)

    async def run(self) -> None:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        server = grpc.aio.server()
        api_pb2_grpc.add_RegistrationServicer_to_server(self.servicer, server)
        server.add_insecure_port(f"unix://{self.socket}")
        await server.start()
        log.info("registration socket %s", self.socket)
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(server.stop(1.0))
            self.socket.unlink(missing_ok=True)


@dataclass(frozen=True)
class PluginInfo:
    type: str
    name: str
    endpoint: str
    supported_versions: tuple[str, ...]


async def get_plugin_info(socket: Path, *, timeout_s: float = 5.0) -> PluginInfo:
    """The kubelet side's GetInfo on a registration socket."""
    async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
        stub = api_pb2_grpc.RegistrationStub(channel)
        info = await stub.GetInfo(api_pb2.InfoRequest(), timeout=timeout_s)
    return PluginInfo(
        type=info.type,
        name=info.name,
        endpoint=info.endpoint,
        supported_versions=tuple(info.supported_versions),
    )


async def notify_registration_status(
    socket: Path, *, registered: bool, error: str = "", timeout_s: float = 5.0
) -> None:
    async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
        stub = api_pb2_grpc.RegistrationStub(channel)
        await stub.NotifyRegistrationStatus(
            api_pb2.RegistrationStatus(plugin_registered=registered, error=error),
            timeout=timeout_s,
        )
