"""The CRI gRPC server on a unix socket.

Serves `runtime.v1.ImageService` (and `runtime.v1.RuntimeService` once a
runtime is attached). A service that is not attached is simply not registered,
so its calls answer UNIMPLEMENTED rather than crash. With a runtime, the
streaming server (exec/attach/port-forward URLs) listens on `stream_address`,
loopback by default.
"""

import asyncio
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2_grpc

from cri.images import ImageService
from cri.runtime.service import RuntimeService
from cri.server.images_grpc import ImageServiceServicer
from cri.server.runtime_grpc import RuntimeServiceServicer
from cri.streaming import StreamingServer
from cri.streaming.server import DEFAULT_ADDRESS


class CRIServer:
    def __init__(
        self,
        *,
        socket_path: Path,
        images: ImageService,
        runtime: RuntimeService | None = None,
        stream_address: str = DEFAULT_ADDRESS,
    ) -> None:
        self.socket_path = socket_path
        self.images = images
        self.runtime = runtime
        self.streaming = (
            StreamingServer(runtime, address=stream_address) if runtime is not None else None
        )
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        server = grpc.aio.server()
        servicer = ImageServiceServicer(self.images)
        api_pb2_grpc.add_ImageServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        if self.runtime is not None:
            if self.streaming is not None:
                await self.streaming.start()
            rt = RuntimeServiceServicer(self.runtime, self.streaming)
            api_pb2_grpc.add_RuntimeServiceServicer_to_server(rt, server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"unix://{self.socket_path}")
        await server.start()
        self.socket_path.chmod(0o660)
        self._server = server

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        if self.streaming is not None:
            await self.streaming.stop()
        self.socket_path.unlink(missing_ok=True)

    async def run(self) -> None:
        """Serve until cancelled."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.stop())
