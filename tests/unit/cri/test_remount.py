"""Which container mounts need re-binding after their source was mounted again (pure logic)."""

import os
import subprocess
import time
from pathlib import Path

from cri.runtime.remount import (
    MountWatch,
    current_mount_table,
    mount_in,
    mount_table,
    stale_mounts,
)

MOUNTINFO = """\
22 1 0:21 / /proc rw,relatime - proc proc rw
51 30 0:50 / /var/lib/k/pods/u/volumes/kubernetes.io~csi/data/mount rw - fuse.s3fs s3fs rw
52 30 0:50 / /var/lib/k/pods/u/volumes/kubernetes.io~csi/data/mount rw - fuse.s3fs s3fs rw
53 30 0:51 /sub /mnt/with\\040space rw - tmpfs t rw
54 30 0:52 / /var/lib/k/pods/u/volumes/kubernetes.io~csi/data/mount rw - fuse.s3fs s3fs rw
"""
TARGET = "/var/lib/k/pods/u/volumes/kubernetes.io~csi/data/mount"


def test_mount_table_names_the_top_mount_by_device_and_root() -> None:
    table = mount_table(MOUNTINFO)
    assert table[TARGET] == "0:52 /"  # the last mount on the path is the visible one
    assert table["/mnt/with space"] == "0:51 /sub"
    assert table["/proc"] == "0:21 /"


def test_stale_mounts_are_sources_mounted_again_not_gone_ones() -> None:
    table = mount_table(MOUNTINFO)
    hosts = {"/data": TARGET, "/gone": "/var/lib/k/pods/u/volumes/x/gone"}
    assert list(stale_mounts({"/data": "0:50 /", "/gone": "0:9 /"}, hosts, table)) == [
        ("/data", "0:52 /")
    ]
    assert list(stale_mounts({"/data": "0:52 /"}, hosts, table)) == []


def test_mount_watch_wakes_on_a_mount_and_closes_at_once(
    require_root: None, tmp_path: Path
) -> None:
    hits: list[float] = []
    watch = MountWatch(lambda: hits.append(time.monotonic()))
    try:
        target = tmp_path / "m"
        target.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "kpy-test", str(target)], check=True)
        try:
            deadline = time.monotonic() + 5
            while not hits and time.monotonic() < deadline:
                time.sleep(0.02)
            assert hits
        finally:
            subprocess.run(["umount", str(target)], check=True)
    finally:
        started = time.monotonic()
        watch.close()
        assert time.monotonic() - started < 0.5


def test_mount_in_reads_a_process_view() -> None:
    assert mount_in(os.getpid(), "/proc") == current_mount_table()["/proc"]
    assert mount_in(os.getpid(), "/no/such/mount") is None
    assert mount_in(2**22 + 12345, "/proc") is None  # no such process
