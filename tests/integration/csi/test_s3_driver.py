"""The S3 CSI driver driven over gRPC as a CO would, against a real SeaweedFS."""

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from csi_volumes.api.csi.v1 import csi_pb2
from csi_volumes.registration import PluginInfo, get_plugin_info, notify_registration_status
from tests.integration.csi.conftest import CsiClient, Driver, mount_cap
from tests.support.seaweedfs import SeaweedS3

Mode = csi_pb2.VolumeCapability.AccessMode


def create(client: CsiClient, seaweed: SeaweedS3, name: str, **params: str) -> csi_pb2.Volume:
    resp = client.controller.CreateVolume(
        csi_pb2.CreateVolumeRequest(
            name=name,
            volume_capabilities=[mount_cap()],
            parameters=params,
            secrets=seaweed.secrets(),
        ),
        timeout=30,
    )
    return resp.volume


def stage(
    client: CsiClient, seaweed: SeaweedS3, vol: csi_pb2.Volume, staging: Path, **kw: object
) -> None:
    client.node.NodeStageVolume(
        csi_pb2.NodeStageVolumeRequest(
            volume_id=vol.volume_id,
            staging_target_path=str(staging),
            volume_capability=kw.get("cap", mount_cap()),  # type: ignore[arg-type]
            secrets=kw.get("secrets", seaweed.secrets()),  # type: ignore[arg-type]
            volume_context=vol.volume_context,
        ),
        timeout=90,
    )


def publish(
    client: CsiClient, vol: csi_pb2.Volume, staging: Path, target: Path, *, readonly: bool = False
) -> None:
    client.node.NodePublishVolume(
        csi_pb2.NodePublishVolumeRequest(
            volume_id=vol.volume_id,
            staging_target_path=str(staging),
            target_path=str(target),
            volume_capability=mount_cap(),
            readonly=readonly,
            volume_context=vol.volume_context,
        ),
        timeout=90,
    )


def unpublish(client: CsiClient, vol: csi_pb2.Volume, target: Path) -> None:
    client.node.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=str(target)),
        timeout=60,
    )


def unstage(client: CsiClient, vol: csi_pb2.Volume, staging: Path) -> None:
    client.node.NodeUnstageVolume(
        csi_pb2.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging)),
        timeout=60,
    )


def delete(client: CsiClient, seaweed: SeaweedS3, vol: csi_pb2.Volume) -> None:
    client.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=vol.volume_id, secrets=seaweed.secrets()), timeout=60
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_identity_and_capabilities(make_driver: Callable[..., Driver]) -> None:
    """Identity names the driver and offers the controller; the node stages and reports stats."""
    client = make_driver("node1").client
    assert client is not None
    info = client.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert info.name == "s3.csi.kubelet-py.io" and info.vendor_version
    caps = client.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest())
    assert [c.service.type for c in caps.capabilities] == [
        csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE
    ]
    assert client.identity.Probe(csi_pb2.ProbeRequest()).ready.value is True
    assert client.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id == "node1"
    node_caps = {
        c.rpc.type
        for c in client.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest()).capabilities
    }
    rpc = csi_pb2.NodeServiceCapability.RPC
    assert node_caps == {rpc.STAGE_UNSTAGE_VOLUME, rpc.GET_VOLUME_STATS, rpc.VOLUME_MOUNT_GROUP}
    ctl = client.controller.ControllerGetCapabilities(csi_pb2.ControllerGetCapabilitiesRequest())
    assert [c.rpc.type for c in ctl.capabilities] == [
        csi_pb2.ControllerServiceCapability.RPC.CREATE_DELETE_VOLUME
    ]


def test_bucket_volume_written_on_one_node_read_on_another(
    seaweed: SeaweedS3, make_driver: Callable[..., Driver], csi_root: Path
) -> None:
    """Write on node1 (stage, publish), read back on node2; delete removes the bucket."""
    node1 = make_driver("node1").client
    node2 = make_driver("node2").client
    assert node1 is not None and node2 is not None
    vol = create(node1, seaweed, unique("pvc"))
    assert "/" not in vol.volume_id
    assert vol.volume_id in [b["Name"] for b in seaweed.client().list_buckets()["Buckets"]]

    staging, target = csi_root / "n1-staging", csi_root / "n1-pod" / "vol"
    staging.mkdir()
    stage(node1, seaweed, vol, staging)
    stage(node1, seaweed, vol, staging)  # idempotent
    publish(node1, vol, staging, target)
    publish(node1, vol, staging, target)  # idempotent
    (target / "hello.txt").write_text("from node1")
    (target / "dir").mkdir()
    (target / "dir" / "blob.bin").write_bytes(bytes(range(256)) * 4096)
    stats = node1.node.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(target))
    )
    assert {u.unit for u in stats.usage} == {csi_pb2.VolumeUsage.BYTES, csi_pb2.VolumeUsage.INODES}
    unpublish(node1, vol, target)
    unpublish(node1, vol, target)  # idempotent
    assert not target.exists()
    unstage(node1, vol, staging)
    unstage(node1, vol, staging)  # idempotent

    staging2, target2 = csi_root / "n2-staging", csi_root / "n2-pod" / "vol"
    staging2.mkdir()
    stage(node2, seaweed, vol, staging2)
    publish(node2, vol, staging2, target2)
    assert (target2 / "hello.txt").read_text() == "from node1"
    assert (target2 / "dir" / "blob.bin").read_bytes() == bytes(range(256)) * 4096
    unpublish(node2, vol, target2)
    unstage(node2, vol, staging2)

    delete(node1, seaweed, vol)
    delete(node1, seaweed, vol)  # idempotent
    assert vol.volume_id not in [b["Name"] for b in seaweed.client().list_buckets()["Buckets"]]


def test_prefix_volume_shared_by_two_publishes_and_read_only(
    seaweed: SeaweedS3, make_driver: Callable[..., Driver], csi_root: Path
) -> None:
    """A prefix volume: two publishes share writes, a read-only publish refuses them."""
    client = make_driver("node1").client
    assert client is not None
    shared = unique("shared")
    seaweed.client().create_bucket(Bucket=shared)
    vol = create(client, seaweed, unique("pvc"), bucket=shared, uid="1234", gid="2345", umask="022")
    assert vol.volume_id.startswith(f"{shared}/")
    assert vol.volume_context["layout"] == "prefix"
    staging, a, b, ro = (csi_root / n for n in ("staging", "pod-a", "pod-b", "pod-ro"))
    staging.mkdir()
    stage(client, seaweed, vol, staging)
    publish(client, vol, staging, a)
    publish(client, vol, staging, b)
    publish(client, vol, staging, ro, readonly=True)
    (a / "from-a.txt").write_text("a wrote this")
    assert (b / "from-a.txt").read_text() == "a wrote this"
    (b / "from-b.txt").write_text("b wrote this")
    assert sorted(p.name for p in a.iterdir()) == ["from-a.txt", "from-b.txt"]
    st = (a / "from-a.txt").stat()
    assert (st.st_uid, st.st_gid) == (1234, 2345)
    assert (ro / "from-b.txt").read_text() == "b wrote this"
    with pytest.raises(OSError, match="Read-only file system"):
        (ro / "nope.txt").write_text("x")
    # the same target again with another read-only flag is incompatible
    with pytest.raises(grpc.RpcError) as err:
        publish(client, vol, staging, ro, readonly=False)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    for t in (a, b, ro):
        unpublish(client, vol, t)
    unstage(client, vol, staging)
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=shared).get("Contents", [])]
    prefix = vol.volume_id.split("/", 1)[1]
    assert f"{prefix}/from-a.txt" in keys
    delete(client, seaweed, vol)
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=shared).get("Contents", [])]
    assert not [k for k in keys if k.startswith(f"{prefix}/")]
    assert shared in [x["Name"] for x in seaweed.client().list_buckets()["Buckets"]]


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()  # type: ignore[no-any-return]


def test_spec_error_codes(
    seaweed: SeaweedS3, make_driver: Callable[..., Driver], csi_root: Path
) -> None:
    """Missing fields, unsupported capabilities and unknown volumes get the spec's codes."""
    client = make_driver("node1").client
    assert client is not None
    ctl, node = client.controller, client.node
    block = csi_pb2.VolumeCapability(
        block=csi_pb2.VolumeCapability.BlockVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER),
    )
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert (
        code_of(
            lambda: ctl.CreateVolume(
                csi_pb2.CreateVolumeRequest(
                    volume_capabilities=[mount_cap()], secrets=seaweed.secrets()
                )
            )
        )
        == invalid
    )
    assert (
        code_of(
            lambda: ctl.CreateVolume(
                csi_pb2.CreateVolumeRequest(name="x", secrets=seaweed.secrets())
            )
        )
        == invalid
    )
    assert (
        code_of(
            lambda: ctl.CreateVolume(
                csi_pb2.CreateVolumeRequest(
                    name="x", volume_capabilities=[block], secrets=seaweed.secrets()
                )
            )
        )
        == invalid
    )
    assert (
        code_of(
            lambda: ctl.CreateVolume(
                csi_pb2.CreateVolumeRequest(name="x", volume_capabilities=[mount_cap()])
            )
        )
        == invalid
    )
    name = unique("pvc")
    vol = create(client, seaweed, name)
    assert create(client, seaweed, name).volume_id == vol.volume_id  # idempotent
    assert (
        code_of(lambda: create(client, seaweed, name, uid="42")) == grpc.StatusCode.ALREADY_EXISTS
    )
    ok = ctl.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=vol.volume_id, volume_capabilities=[mount_cap()], secrets=seaweed.secrets()
        )
    )
    assert ok.confirmed.volume_capabilities[0].HasField("mount")
    not_ok = ctl.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=vol.volume_id, volume_capabilities=[block], secrets=seaweed.secrets()
        )
    )
    assert not not_ok.HasField("confirmed") and "block" in not_ok.message
    missing = grpc.StatusCode.NOT_FOUND
    assert (
        code_of(
            lambda: ctl.ValidateVolumeCapabilities(
                csi_pb2.ValidateVolumeCapabilitiesRequest(
                    volume_id=unique("gone"),
                    volume_capabilities=[mount_cap()],
                    secrets=seaweed.secrets(),
                )
            )
        )
        == missing
    )
    ctl.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=unique("never-existed"), secrets=seaweed.secrets())
    )
    staging, target = csi_root / "staging", csi_root / "target"
    staging.mkdir()
    assert (
        code_of(
            lambda: node.NodeStageVolume(
                csi_pb2.NodeStageVolumeRequest(
                    volume_id=vol.volume_id,
                    volume_capability=mount_cap(),
                    secrets=seaweed.secrets(),
                )
            )
        )
        == invalid
    )
    assert (
        code_of(
            lambda: node.NodeStageVolume(
                csi_pb2.NodeStageVolumeRequest(
                    volume_id=vol.volume_id,
                    staging_target_path=str(staging),
                    secrets=seaweed.secrets(),
                )
            )
        )
        == invalid
    )
    assert (
        code_of(
            lambda: node.NodeStageVolume(
                csi_pb2.NodeStageVolumeRequest(
                    volume_id=vol.volume_id,
                    staging_target_path=str(staging),
                    volume_capability=block,
                    secrets=seaweed.secrets(),
                )
            )
        )
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (
        code_of(
            lambda: stage(
                client, seaweed, csi_pb2.Volume(volume_id=unique("no-such-bucket")), staging
            )
        )
        == missing
    )
    # publish before stage, and without a staging path
    assert (
        code_of(lambda: publish(client, vol, staging, target))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (
        code_of(
            lambda: node.NodePublishVolume(
                csi_pb2.NodePublishVolumeRequest(
                    volume_id=vol.volume_id, target_path=str(target), volume_capability=mount_cap()
                )
            )
        )
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (
        code_of(
            lambda: node.NodeGetVolumeStats(
                csi_pb2.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(target))
            )
        )
        == missing
    )
    # unpublish / unstage of what is not there are successes (idempotent)
    unpublish(client, vol, target)
    unstage(client, vol, staging)
    delete(client, seaweed, vol)


def test_wrong_credentials_report_the_s3_error(
    seaweed: SeaweedS3, make_driver: Callable[..., Driver], csi_root: Path
) -> None:
    """A wrong secret key fails NodeStageVolume with UNAUTHENTICATED and S3's error code."""
    client = make_driver("node1").client
    assert client is not None
    vol = create(client, seaweed, unique("pvc"))
    staging = csi_root / "staging"
    staging.mkdir()
    with pytest.raises(grpc.RpcError) as err:
        stage(client, seaweed, vol, staging, secrets=seaweed.secrets(secret_key="wrong-secret-key"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "SignatureDoesNotMatch" in (err.value.details() or "")
    assert vol.volume_id in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        create(client, seaweed, unique("pvc"), layout="bogus")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    delete(client, seaweed, vol)


def test_registration_socket_answers_the_kubelet(
    make_driver: Callable[..., Driver], csi_root: Path
) -> None:
    """--registration-dir serves pluginregistration.v1 as node-driver-registrar does."""
    registry = csi_root / "plugins_registry"
    driver = make_driver("node1", extra_args=("--registration-dir", str(registry)))
    sock = registry / "s3.csi.kubelet-py.io-reg.sock"

    async def talk() -> PluginInfo:
        for _ in range(100):
            if sock.exists():
                break
            await asyncio.sleep(0.05)
        info = await get_plugin_info(sock)
        await notify_registration_status(sock, registered=True)
        return info

    info = asyncio.run(talk())
    assert info == PluginInfo(
        type="CSIPlugin",
        name="s3.csi.kubelet-py.io",
        endpoint=str(driver.socket),
        supported_versions=("1.0.0",),
    )
    assert "registered with the kubelet" in driver.log_path.read_text()
