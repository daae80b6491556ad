"""The mount table parser and the node's on-disk volume records."""

import stat
from pathlib import Path

from csi_volumes.mountinfo import parse_mountinfo
from csi_volumes.s3.params import CacheMode, Credentials, Mounter, MountOptions
from csi_volumes.s3.state import StagedVolume, StateStore

SAMPLE = (
    "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext4 /dev/sda1 rw\n"
    "90 36 0:77 / /var/lib/s rw,nosuid,nodev - fuse.s3fs s3fs rw,user_id=0\n"
    "91 36 0:77 / /pods/a ro,nosuid,nodev - fuse.s3fs s3fs rw,user_id=0\n"
)


def test_parse_mountinfo_unescapes_and_reads_fstype() -> None:
    """Mount points are unescaped, fstype and read-only flag come from their fields."""
    entries = parse_mountinfo(SAMPLE)
    assert [e.mountpoint for e in entries] == ["/mnt/with space", "/var/lib/s", "/pods/a"]
    assert entries[1].fstype == "fuse.s3fs" and entries[1].source == "s3fs"
    assert entries[2].read_only and not entries[1].read_only


def test_state_round_trip_and_private_files(tmp_path: Path) -> None:
    """A staged volume with targets survives a reload; state and credentials are private."""
    store = StateStore(tmp_path / "state")
    volume = (
        StagedVolume(
            volume_id="bucket/pvc-1",
            staging_path="/var/lib/kubelet/plugins/x/globalmount",
            options=MountOptions(
                mounter=Mounter.RCLONE, cache=CacheMode.WRITES, uid=5, umask=0o027
            ),
            creds=Credentials(endpoint="http://h:1", access_key_id="a", secret_access_key="s"),
            read_only=False,
        )
        .with_target("/pods/a", False)
        .with_target("/pods/b", True)
    )
    store.save(volume)
    assert store.load("bucket/pvc-1") == volume
    assert StateStore(tmp_path / "state").all() == [volume]
    assert volume.without_target("/pods/a").targets == {"/pods/b": True}
    record = store.work_dir("bucket/pvc-1") / "record.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    store.forget("bucket/pvc-1")
    assert store.load("bucket/pvc-1") is None and store.all() == []
