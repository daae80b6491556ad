"""The S3 CSI driver driven over gRPC as a CO would, against a real SeaweedFS."""

import uuid
from collections.abc import Callable
from pathlib import Path

from csi_volumes.api.csi.v1 import csi_pb2
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
    assert node_caps == {rpc.STAGE_UNSTAGE_VOLUME, rpc.GET_VOLUME_STATS}
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
