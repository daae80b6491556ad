"""The plugin watcher against a real registration socket and a small CSI node service
in-process (gRPC over unix sockets in a temp dir, no root), with a recording fake API."""

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import grpc
import pytest

import csi_volumes.registration
from csi_volumes.api.csi.v1 import csi_pb2, csi_pb2_grpc
from csi_volumes.registration import RegistrationServer
from kubelet_py.agent.apiclient import ApiError
from kubelet_py.agent.csi import NODE_ID_ANNOTATION, CsiVolumes


class FakeApi:
    """Just enough of the API for CSINode: one object store, every call recorded."""

    def __init__(self) -> None:
        self.objects: dict[str, Any] = {"/api/v1/nodes/n1": {"metadata": {"uid": "node-uid"}}}
        self.calls: list[tuple[str, str]] = []

    async def get(self, path: str, **params: str) -> Any:
        self.calls.append(("GET", path))
        if path not in self.objects:
            raise ApiError(404, "NotFound", path)
        return self.objects[path]

    async def create(self, path: str, body: Any) -> Any:
        self.calls.append(("POST", path))
        self.objects[f"{path}/{body['metadata']['name']}"] = body
        return body

    async def put(self, path: str, body: Any) -> Any:
        self.calls.append(("PUT", path))
        self.objects[path] = body
        return body

    async def patch(self, path: str, body: Any, *, kind: str = "strategic") -> Any:
        self.calls.append(("PATCH", path))
        self.objects.setdefault("patches", []).append(body)
        return body


class Node(csi_pb2_grpc.NodeServicer):
    async def NodeGetInfo(self, request: Any, context: Any) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(node_id="node-id-7", max_volumes_per_node=4)

    async def NodeGetCapabilities(
        self, request: Any, context: Any
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        rpc = csi_pb2.NodeServiceCapability.RPC
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[csi_pb2.NodeServiceCapability(rpc=rpc(type=rpc.STAGE_UNSTAGE_VOLUME))]
        )


CSINODE = "/apis/storage.k8s.io/v1/csinodes/n1"


async def _wait(cond: Any, what: str) -> None:
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_register_publish_and_unregister(tmp_path: Path) -> None:
    """A socket appears → GetInfo, NodeGetInfo, CSINode created with the driver; removed → gone."""

    async def scenario() -> None:
        endpoint = tmp_path / "csi.sock"
        server = grpc.aio.server()
        csi_pb2_grpc.add_NodeServicer_to_server(Node(), server)
        server.add_insecure_port(f"unix://{endpoint}")
        await server.start()
        reg_dir = tmp_path / "plugins_registry"
        registration = RegistrationServer(
            registration_dir=reg_dir, driver_name="d.example", endpoint=endpoint
        )
        api = FakeApi()
        csi = CsiVolumes(tmp_path / "root", node_name="n1", api=api, registration_dir=reg_dir)
        watcher = asyncio.create_task(csi.run())
        reg_task = asyncio.create_task(registration.run())
        try:
            await _wait(lambda: registration.servicer.registered.is_set(), "registration")
            node = api.objects[CSINODE]
            assert node["metadata"]["ownerReferences"][0]["uid"] == "node-uid"
            assert node["spec"]["drivers"] == [
                {"name": "d.example", "nodeID": "node-id-7", "allocatable": {"count": 4}}
            ]
            assert csi.drivers["d.example"].info.stage_unstage
            assert api.objects["patches"][-1]["metadata"]["annotations"] == {
                NODE_ID_ANNOTATION: '{"d.example": "node-id-7"}'
            }
            reg_task.cancel()  # the driver goes away: its registration socket is removed
            with contextlib.suppress(asyncio.CancelledError):
                await reg_task
            await _wait(lambda: "d.example" not in csi.drivers, "unregistration")
            assert api.objects[CSINODE]["spec"]["drivers"] == []
            assert api.objects["patches"][-1]["metadata"]["annotations"] == {
                NODE_ID_ANNOTATION: None
            }
        finally:
            watcher.cancel()
            reg_task.cancel()
            for t in (watcher, reg_task):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await csi.close()
            await server.stop(0)

    asyncio.run(scenario())


def test_a_plugin_without_a_1x_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registration answering with a CSI version the kubelet does not speak is told so."""
    monkeypatch.setattr(csi_volumes.registration, "SUPPORTED_CSI_VERSIONS", ("0.3.0",))

    async def scenario() -> None:
        reg_dir = tmp_path / "plugins_registry"
        registration = RegistrationServer(
            registration_dir=reg_dir, driver_name="old.example", endpoint=tmp_path / "x.sock"
        )
        api = FakeApi()
        csi = CsiVolumes(tmp_path / "root", node_name="n1", api=api, registration_dir=reg_dir)
        watcher = asyncio.create_task(csi.run())
        reg_task = asyncio.create_task(registration.run())
        try:
            await _wait(lambda: bool(registration.servicer.last_error), "a refusal")
            assert "speaks 1.x" in registration.servicer.last_error
            assert not csi.drivers
            assert CSINODE not in api.objects
        finally:
            for t in (watcher, reg_task):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await csi.close()

    asyncio.run(scenario())
