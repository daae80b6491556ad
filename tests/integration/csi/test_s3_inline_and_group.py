"""Inline ephemeral volumes and fsGroup mounts (VOLUME_MOUNT_GROUP), over gRPC, real SeaweedFS."""

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from csi_volumes.api.csi.v1 import csi_pb2
from tests.integration.csi.conftest import CsiClient, Driver, fuse_daemons_under, mount_cap
from tests.integration.csi.test_s3_driver import (
    code_of,
    create,
    delete,
    publish,
    unique,
    unpublish,
    unstage,
)
from tests.support.seaweedfs import SeaweedS3

Mode = csi_pb2.VolumeCapability.AccessMode
EPHEMERAL = "csi.storage.k8s.io/ephemeral"


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    return [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(prefix)
    ]


def publish_inline(
    client: CsiClient, target: Path, attrs: dict[str, str], secrets: dict[str, str]
) -> None:
    client.node.NodePublishVolume(
        csi_pb2.NodePublishVolumeRequest(
            volume_id="csi-" + "ab" * 32,
            target_path=str(target),
            volume_capability=mount_cap(Mode.SINGLE_NODE_WRITER),
            secrets=secrets,
            volume_context={
                EPHEMERAL: "true",
                "csi.storage.k8s.io/pod.name": "inline-pod",
                "csi.storage.k8s.io/pod.namespace": "default",
                "csi.storage.k8s.io/pod.uid": "uid-1",
                **attrs,
            },
        ),
        timeout=90,
    )


def test_inline_ephemeral_volume_mounts_an_existing_bucket(
    seaweed: SeaweedS3, make_driver: Callable[..., Driver], csi_root: Path
) -> None:
    """Publish without stage (csi.storage.k8s.io/ephemeral=true): the bucket/prefix named by the
    attributes is mounted, written, and the mount goes with the unpublish; the data stays."""
    driver = make_driver("node1")
    client = driver.client
    assert client is not None
    bucket = unique("inline")
    seaweed.client().create_bucket(Bucket=bucket)
    target = csi_root / "pod-inline" / "mount"
    target.parent.mkdir()
    attrs = {"bucket": bucket, "prefix": "team/a"}
    publish_inline(client, target, attrs, seaweed.secrets())
    publish_inline(client, target, attrs, seaweed.secrets())  # idempotent
    (target / "hello.txt").write_text("from an inline volume")
    assert len(_mounts_under(csi_root)) == 2  # the FUSE mount in the state dir + the bind
    unpublish_inline = csi_pb2.NodeUnpublishVolumeRequest(
        volume_id="csi-" + "ab" * 32, target_path=str(target)
    )
    client.node.NodeUnpublishVolume(unpublish_inline, timeout=60)
    client.node.NodeUnpublishVolume(unpublish_inline, timeout=60)  # idempotent
    assert _mounts_under(csi_root) == []
    assert not list((driver.state_dir / "volumes").iterdir())
    _wait_no_daemons(csi_root)  # s3fs ends a moment after its unmount
    got = seaweed.client().get_object(Bucket=bucket, Key="team/a/hello.txt")["Body"].read()
    assert got == b"from an inline volume"


def test_inline_volume_errors_leave_nothing_behind(
    seaweed: SeaweedS3, make_driver: Callable[..., Driver], csi_root: Path
) -> None:
    driver = make_driver("node1")
    client = driver.client
    assert client is not None
    target = csi_root / "pod-bad" / "mount"
    target.parent.mkdir()
    good = seaweed.secrets()
    missing = unique("missing")
    cases = [
        ({}, good, grpc.StatusCode.INVALID_ARGUMENT, "volumeAttributes.bucket"),
        ({"bucket": "ok-bucket"}, {}, grpc.StatusCode.INVALID_ARGUMENT, "nodePublishSecretRef"),
        ({"bucket": missing}, good, grpc.StatusCode.NOT_FOUND, "NoSuchBucket"),
    ]
    for attrs, secrets, code, text in cases:
        with pytest.raises(grpc.RpcError) as err:
            publish_inline(client, target, attrs, secrets)
        assert err.value.code() == code, err.value.details()
        assert text in str(err.value.details())
    assert _mounts_under(csi_root) == []
    assert fuse_daemons_under(csi_root) == []
    assert not list((driver.state_dir / "volumes").iterdir())


def _wait_no_daemons(root: Path, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while fuse_daemons_under(root):
        assert time.monotonic() < deadline, f"FUSE daemons left: {fuse_daemons_under(root)}"
        time.sleep(0.1)


def _group_cap(group: str) -> csi_pb2.VolumeCapability:
    cap = mount_cap()
    cap.mount.volume_mount_group = group
    return cap


def _as_user(uid: int, groups: str, script: str) -> subprocess.CompletedProcess[str]:
    """Run `script` as uid:uid with supplementary `groups` (how a pod's fsGroup is given)."""
    grp = [f"--groups={groups}"] if groups else ["--clear-groups"]
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", *grp, "sh", "-c", script],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("mounter", ["s3fs", "rclone"])
def test_volume_mount_group_gives_the_pods_fsgroup(
    seaweed: SeaweedS3, make_driver: Callable[..., Driver], csi_root: Path, mounter: str
) -> None:
    """VOLUME_MOUNT_GROUP: staged for fsGroup 2000, a non-root user holding group 2000 as a
    supplementary group writes; files are group 2000; another fsGroup on the node is refused."""
    client = make_driver("node1").client
    assert client is not None
    caps = client.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), timeout=10)
    rpc = csi_pb2.NodeServiceCapability.RPC
    assert rpc.VOLUME_MOUNT_GROUP in [c.rpc.type for c in caps.capabilities]
    vol = create(client, seaweed, unique("pvc"), mounter=mounter)
    staging, target, other = (csi_root / n for n in ("staging", "pod-a", "pod-b"))
    staging.mkdir()
    client.node.NodeStageVolume(
        csi_pb2.NodeStageVolumeRequest(
            volume_id=vol.volume_id,
            staging_target_path=str(staging),
            volume_capability=_group_cap("2000"),
            secrets=seaweed.secrets(),
            volume_context=vol.volume_context,
        ),
        timeout=90,
    )

    def publish_for(path: Path, group: str) -> None:
        client.node.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(
                volume_id=vol.volume_id,
                staging_target_path=str(staging),
                target_path=str(path),
                volume_capability=_group_cap(group),
                volume_context=vol.volume_context,
            ),
            timeout=90,
        )

    publish_for(target, "2000")
    r = _as_user(1000, "2000", f"mkdir {target}/d && echo hi > {target}/d/f && cat {target}/d/f")
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    assert (target / "d" / "f").stat().st_gid == 2000
    assert (target / "d").stat().st_mode & 0o070 == 0o070
    if mounter == "rclone":  # the kernel checks: a user without the group cannot write
        r = _as_user(1001, "", f"echo no > {target}/outsider")
        assert r.returncode != 0 and "Permission denied" in r.stderr

    # another pod on this node with another fsGroup cannot share the mount
    assert code_of(lambda: publish_for(other, "3000")) == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError, match="need the same fsGroup"):
        publish_for(other, "3000")
    # a pod without fsGroup may (it asks for nothing)
    publish(client, vol, staging, other)
    for t in (target, other):
        unpublish(client, vol, t)
    unstage(client, vol, staging)
    delete(client, seaweed, vol)
