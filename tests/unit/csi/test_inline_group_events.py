"""Inline volumes' attributes, fsGroup mounts, the node's pod bookkeeping and its Events."""

from pathlib import Path

import pytest

from csi_volumes.api.csi.v1 import csi_pb2
from csi_volumes.errors import CsiCallError
from csi_volumes.kube_events import event_body
from csi_volumes.s3.mounters import mount_command
from csi_volumes.s3.node import mount_group_of, pod_of
from csi_volumes.s3.params import (
    Credentials,
    Mounter,
    MountOptions,
    VolumeRef,
    parse_credentials,
    parse_inline_volume,
)
from csi_volumes.s3.state import StagedVolume, StateStore

CREDS = Credentials(endpoint="http://127.0.0.1:8333", access_key_id="AK", secret_access_key="SK")


def test_inline_attributes_name_an_existing_bucket_and_prefix() -> None:
    ref, options = parse_inline_volume(
        {
            "bucket": "shared-data",
            "prefix": "/team/a/",
            "mounter": "rclone",
            "readOnly": "true",
            "csi.storage.k8s.io/ephemeral": "true",
            "csi.storage.k8s.io/pod.name": "p",
        }
    )
    assert ref == VolumeRef("shared-data", "team/a")
    assert ref.volume_id == "shared-data/team/a"
    assert options.mounter is Mounter.RCLONE and options.read_only


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({}, "needs volumeAttributes.bucket"),
        ({"bucket": "Not_A_Bucket"}, "not a valid S3 bucket name"),
        ({"bucket": "ok-bucket", "prefix": "a/../b"}, "not a valid key prefix"),
        ({"bucket": "ok-bucket", "layout": "prefix"}, "unknown volumeAttributes"),
        ({"bucket": "ok-bucket", "umask": "99"}, "octal umask"),
    ],
)
def test_bad_inline_attributes_are_invalid_argument(attrs: dict[str, str], message: str) -> None:
    with pytest.raises(CsiCallError, match=message) as err:
        parse_inline_volume(attrs)
    assert err.value.code.name == "INVALID_ARGUMENT"


def test_inline_volume_without_secret_names_the_pod_field() -> None:
    with pytest.raises(CsiCallError, match="nodePublishSecretRef"):
        parse_credentials(
            {},
            call="NodePublishVolume",
            where="an inline volume needs a nodePublishSecretRef to a Secret",
        )


def _cmd(mounter: Mounter, umask: int | None, group: int | None) -> tuple[str, ...]:
    return mount_command(
        ref=VolumeRef("b"),
        creds=CREDS,
        options=MountOptions(mounter=mounter, gid=7, umask=umask),
        mountpoint=Path("/mnt/s"),
        work_dir=Path("/w"),
        mount_group=group,
    ).argv


def test_mount_group_with_rclone_is_kernel_checked_and_group_writable() -> None:
    argv = _cmd(Mounter.RCLONE, 0o022, 2000)
    assert argv[argv.index("--gid") + 1] == "2000"  # the pod's fsGroup beats the class's gid
    assert argv[argv.index("--umask") + 1] == "0002"
    assert "--default-permissions" in argv
    assert "--default-permissions" not in _cmd(Mounter.RCLONE, 0o022, None)


def test_mount_group_with_s3fs_opens_group_and_others() -> None:
    opts = _cmd(Mounter.S3FS, 0o027, 2000)[-1].split(",")
    assert "gid=2000" in opts and "umask=0000" in opts
    assert "gid=7" in _cmd(Mounter.S3FS, 0o027, None)[-1].split(",")


def test_mount_group_and_pod_from_requests() -> None:
    cap = csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(volume_mount_group="2000")
    )
    assert mount_group_of(cap, call="X") == 2000
    assert mount_group_of(csi_pb2.VolumeCapability(), call="X") is None
    bad = csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(volume_mount_group="wheel")
    )
    with pytest.raises(CsiCallError, match="not a numeric group id"):
        mount_group_of(bad, call="X")
    ctx = {
        "csi.storage.k8s.io/pod.namespace": "ns",
        "csi.storage.k8s.io/pod.name": "web",
        "csi.storage.k8s.io/pod.uid": "u-1",
    }
    assert pod_of(ctx) == ("ns", "web", "u-1")
    assert pod_of({}) is None


def test_state_keeps_inline_group_and_pods(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    vol = StagedVolume(
        volume_id="csi-0123",
        staging_path="/x/mnt",
        options=MountOptions(),
        creds=CREDS,
        read_only=False,
        ephemeral=True,
        source="bucket-a/team",
        mount_group=2000,
    ).with_target("/pods/u/mount", False, ("ns", "web", "u-1"))
    store.save(vol)
    back = store.load("csi-0123")
    assert back == vol
    assert back.ref == VolumeRef("bucket-a", "team")
    assert back.without_target("/pods/u/mount").pods == {}


def test_event_body_is_a_pod_event() -> None:
    body = event_body(
        ("ns", "web", "u-1"),
        warning=False,
        reason="VolumeRemounted",
        message="remounted",
        component="s3.csi.kubelet-py.io",
        host="node1",
    )
    assert body["metadata"]["namespace"] == "ns"
    assert body["metadata"]["name"].startswith("web.")
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "ns",
        "name": "web",
        "uid": "u-1",
    }
    assert (body["type"], body["reason"]) == ("Normal", "VolumeRemounted")
    assert body["source"] == {"component": "s3.csi.kubelet-py.io", "host": "node1"}
