"""The agent's side of the CRI seam: `runtime.v1` over gRPC on a unix socket.

The agent talks to any CRI runtime this way — kubelet-py's own (served
in-process or by `kubelet-py cri serve`) or containerd's. `CRIRuntime` is the
narrow interface the pod workers need; `GrpcCRI` is its only implementation.
"""

import time
from typing import Any, Protocol

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

from kubelet_py.metrics import kubelet as metrics
from kubelet_py.metrics.kubelet import operation_name


class CRIError(Exception):
    """A CRI call failed; `code` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class CRIRuntime(Protocol):
    async def version(self) -> Any: ...
    async def status(self) -> Any: ...
    async def run_pod_sandbox(self, config: Any) -> str: ...
    async def stop_pod_sandbox(self, sandbox_id: str) -> None: ...
    async def remove_pod_sandbox(self, sandbox_id: str) -> None: ...
    async def pod_sandbox_status(self, sandbox_id: str) -> Any: ...
    async def list_pod_sandbox(self, labels: dict[str, str] | None = None) -> list[Any]: ...
    async def create_container(self, sandbox_id: str, config: Any, sandbox_config: Any) -> str: ...
    async def start_container(self, container_id: str) -> None: ...
    async def stop_container(self, container_id: str, timeout_s: int) -> None: ...
    async def remove_container(self, container_id: str) -> None: ...
    async def list_containers(self, labels: dict[str, str] | None = None) -> list[Any]: ...
    async def container_status(self, container_id: str) -> Any: ...
    async def exec_sync(self, container_id: str, cmd: list[str], timeout_s: int) -> Any: ...
    async def exec(self, request: Any) -> str: ...
    async def attach(self, request: Any) -> str: ...
    async def port_forward(self, sandbox_id: str, ports: list[int]) -> str: ...
    async def pull_image(self, image: str, auth: Any | None, sandbox_config: Any) -> str: ...
    async def image_status(self, image: str) -> Any: ...
    async def list_images(self) -> list[Any]: ...
    async def image_fs_info(self) -> Any: ...
    async def remove_image(self, image: str) -> None: ...
    async def reopen_container_log(self, container_id: str) -> None: ...


class GrpcCRI:
    def __init__(self, endpoint: str) -> None:
        target = endpoint if endpoint.startswith("unix:") else f"unix://{endpoint}"
        self._channel = grpc.aio.insecure_channel(target)
        self._rt = api_pb2_grpc.RuntimeServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._img = api_pb2_grpc.ImageServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, fn: Any, request: Any, timeout_s: float = 120.0) -> Any:
        # upstream's instrumented runtime service: one count, one duration, errors per call
        op = operation_name(type(request).__name__.removesuffix("Request"))
        started = time.monotonic()
        try:
            return await fn(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            metrics.runtime_operations_errors.inc(op)
            raise CRIError(err.code(), err.details() or str(err.code())) from err
        finally:
            metrics.runtime_operations.inc(op)
            metrics.runtime_operations_duration.observe(time.monotonic() - started, op)

    async def version(self) -> Any:
        return await self._call(self._rt.Version, api_pb2.VersionRequest(version="v1"))

    async def status(self) -> Any:
        return await self._call(self._rt.Status, api_pb2.StatusRequest())

    async def run_pod_sandbox(self, config: Any) -> str:
        resp = await self._call(self._rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=config))
        return str(resp.pod_sandbox_id)

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        await self._call(
            self._rt.StopPodSandbox, api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
        )

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        await self._call(
            self._rt.RemovePodSandbox, api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
        )

    async def pod_sandbox_status(self, sandbox_id: str) -> Any:
        resp = await self._call(
            self._rt.PodSandboxStatus, api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)
        )
        return resp.status

    async def list_pod_sandbox_stats(self, labels: dict[str, str] | None = None) -> list[Any]:
        req = api_pb2.ListPodSandboxStatsRequest()
        if labels:
            req.filter.label_selector.update(labels)
        resp = await self._call(self._rt.ListPodSandboxStats, req, timeout_s=30)
        return list(resp.stats)

    async def pod_sandbox_stats(self, sandbox_id: str) -> Any:
        resp = await self._call(
            self._rt.PodSandboxStats,
            api_pb2.PodSandboxStatsRequest(pod_sandbox_id=sandbox_id),
            timeout_s=30,
        )
        return resp.stats

    async def list_container_stats(self, labels: dict[str, str] | None = None) -> list[Any]:
        req = api_pb2.ListContainerStatsRequest()
        if labels:
            req.filter.label_selector.update(labels)
        resp = await self._call(self._rt.ListContainerStats, req, timeout_s=30)
        return list(resp.stats)

    async def list_pod_sandbox(self, labels: dict[str, str] | None = None) -> list[Any]:
        req = api_pb2.ListPodSandboxRequest()
        if labels:
            req.filter.label_selector.update(labels)
        resp = await self._call(self._rt.ListPodSandbox, req)
        return list(resp.items)

    async def create_container(self, sandbox_id: str, config: Any, sandbox_config: Any) -> str:
        resp = await self._call(
            self._rt.CreateContainer,
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
            ),
        )
        return str(resp.container_id)

    async def start_container(self, container_id: str) -> None:
        await self._call(
            self._rt.StartContainer, api_pb2.StartContainerRequest(container_id=container_id)
        )

    async def stop_container(self, container_id: str, timeout_s: int) -> None:
        await self._call(
            self._rt.StopContainer,
            api_pb2.StopContainerRequest(container_id=container_id, timeout=timeout_s),
            timeout_s=timeout_s + 30,
        )

    async def remove_container(self, container_id: str) -> None:
        await self._call(
            self._rt.RemoveContainer, api_pb2.RemoveContainerRequest(container_id=container_id)
        )

    async def list_containers(self, labels: dict[str, str] | None = None) -> list[Any]:
        req = api_pb2.ListContainersRequest()
        if labels:
            req.filter.label_selector.update(labels)
        resp = await self._call(self._rt.ListContainers, req)
        return list(resp.containers)

    async def container_status(self, container_id: str) -> Any:
        resp = await self._call(
            self._rt.ContainerStatus, api_pb2.ContainerStatusRequest(container_id=container_id)
        )
        return resp.status

    async def exec_sync(self, container_id: str, cmd: list[str], timeout_s: int) -> Any:
        return await self._call(
            self._rt.ExecSync,
            api_pb2.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout_s),
            timeout_s=timeout_s + 10,
        )

    async def exec(self, request: Any) -> str:
        """The streaming URL for an api_pb2.ExecRequest."""
        return str((await self._call(self._rt.Exec, request, timeout_s=30)).url)

    async def attach(self, request: Any) -> str:
        return str((await self._call(self._rt.Attach, request, timeout_s=30)).url)

    async def port_forward(self, sandbox_id: str, ports: list[int]) -> str:
        req = api_pb2.PortForwardRequest(pod_sandbox_id=sandbox_id, port=ports)
        return str((await self._call(self._rt.PortForward, req, timeout_s=30)).url)

    async def pull_image(self, image: str, auth: Any | None, sandbox_config: Any) -> str:
        req = api_pb2.PullImageRequest(
            image=api_pb2.ImageSpec(image=image), sandbox_config=sandbox_config
        )
        if auth is not None:
            req.auth.CopyFrom(auth)
        resp = await self._call(self._img.PullImage, req, timeout_s=600)
        return str(resp.image_ref)

    async def image_status(self, image: str) -> Any:
        resp = await self._call(
            self._img.ImageStatus, api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image))
        )
        return resp.image if resp.HasField("image") else None

    async def list_images(self) -> list[Any]:
        resp = await self._call(self._img.ListImages, api_pb2.ListImagesRequest())
        return list(resp.images)

    async def image_fs_info(self) -> Any:
        return await self._call(self._img.ImageFsInfo, api_pb2.ImageFsInfoRequest())

    async def remove_image(self, image: str) -> None:
        await self._call(
            self._img.RemoveImage, api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image))
        )

    async def reopen_container_log(self, container_id: str) -> None:
        await self._call(
            self._rt.ReopenContainerLog,
            api_pb2.ReopenContainerLogRequest(container_id=container_id),
        )
