"""The S3 driver under failure: S3 outage, driver killed, FUSE daemon killed; and rclone."""

import concurrent.futures
import errno
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from csi_volumes.api.csi.v1 import csi_pb2
from tests.integration.csi.conftest import Driver, fuse_daemons_under
from tests.integration.csi.test_s3_driver import (
    create,
    delete,
    publish,
    stage,
    unique,
    unpublish,
    unstage,
)
from tests.support.seaweedfs import SeaweedS3


def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def dead(path: Path) -> bool:
    try:
        os.statvfs(path)
    except OSError as err:
        return err.errno == errno.ENOTCONN
    return False


def events(driver: Driver) -> list[dict[str, str]]:
    path = driver.state_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def own_seaweed(require_root: None, tmp_path: Path) -> Iterator[SeaweedS3]:
    """A SeaweedFS of this test's own, which the test may stop and start."""
    server = SeaweedS3(tmp_path / "seaweed")
    try:
        server.start()
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        yield server
    finally:
        server.stop()


def test_s3_outage_gives_io_errors_then_recovers(
    own_seaweed: SeaweedS3, make_driver: Callable[..., Driver], csi_root: Path
) -> None:
    """With S3 stopped, writes fail with an I/O error in bounded time; then recover."""
    client = make_driver("node1").client
    assert client is not None
    vol = create(client, own_seaweed, unique("pvc"))
    staging, target = csi_root / "staging", csi_root / "target"
    staging.mkdir()
    stage(client, own_seaweed, vol, staging)
    publish(client, vol, staging, target)
    (target / "before.txt").write_text("written before the outage")

    own_seaweed.stop()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    started = time.monotonic()
    future = pool.submit((target / "during.txt").write_text, "written during the outage")
    with pytest.raises(OSError) as err:
        future.result(timeout=120)
    assert err.value.errno in (errno.EIO, errno.ENOTCONN, errno.EPERM, errno.EACCES, errno.ECOMM)
    assert time.monotonic() - started < 120

    own_seaweed.start()
    eventually(
        lambda: (target / "before.txt").read_text() == "written before the outage",
        60,
        "reads after S3 is back",
    )
    (target / "after.txt").write_text("written after the outage")
    keys = [
        o["Key"]
        for o in own_seaweed.client().list_objects_v2(Bucket=vol.volume_id).get("Contents", [])
    ]
    assert "after.txt" in keys and "before.txt" in keys
    pool.shutdown()
    unpublish(client, vol, target)
    unstage(client, vol, staging)
    delete(client, own_seaweed, vol)


def test_driver_killed_and_restarted_while_mounted(
    seaweed: SeaweedS3, make_driver: Callable[..., Driver], csi_root: Path
) -> None:
    """kill -9 of the driver leaves the mount serving; a restarted driver re-adopts it."""
    driver = make_driver("node1")
    client = driver.client
    assert client is not None
    vol = create(client, seaweed, unique("pvc"))
    staging, target = csi_root / "staging", csi_root / "target"
    staging.mkdir()
    stage(client, seaweed, vol, staging)
    publish(client, vol, staging, target)
    (target / "a.txt").write_text("before the kill")
    daemons = fuse_daemons_under(csi_root)
    assert daemons

    driver.kill()
    assert fuse_daemons_under(csi_root) == daemons
    (target / "b.txt").write_text("while the driver is down")
    assert (target / "a.txt").read_text() == "before the kill"

    client = driver.start()
    publish(client, vol, staging, target)  # idempotent against the recorded publish
    stats = client.node.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(target))
    )
    assert stats.usage
    assert fuse_daemons_under(csi_root) == daemons  # no second mount
    assert (target / "b.txt").read_text() == "while the driver is down"
    unpublish(client, vol, target)
    unstage(client, vol, staging)
    eventually(
        lambda: not fuse_daemons_under(csi_root), 20, "the FUSE daemon to exit after unstage"
    )
    delete(client, seaweed, vol)


def test_killed_fuse_daemon_is_detected_and_remounted(
    seaweed: SeaweedS3, make_driver: Callable[..., Driver], csi_root: Path
) -> None:
    """A dead FUSE mount is remounted by the periodic check and by NodeGetVolumeStats."""
    driver = make_driver("node1", health_interval_s=1.0)
    client = driver.client
    assert client is not None
    vol = create(client, seaweed, unique("pvc"))
    staging, target = csi_root / "staging", csi_root / "target"
    staging.mkdir()
    stage(client, seaweed, vol, staging)
    publish(client, vol, staging, target)
    (target / "kept.txt").write_text("survives the remount")

    for pid in fuse_daemons_under(csi_root):
        os.kill(pid, signal.SIGKILL)
    eventually(lambda: dead(target), 10, "the mount to die")
    # the periodic check finds it and remounts staging and the target
    eventually(
        lambda: not dead(target) and (target / "kept.txt").exists(), 30, "the periodic remount"
    )
    assert (target / "kept.txt").read_text() == "survives the remount"
    reasons = [e["reason"] for e in events(driver)]
    assert "VolumeMountDead" in reasons and "VolumeRemounted" in reasons
    assert "Transport endpoint is not connected" in driver.log_path.read_text()

    # with the periodic check off, NodeGetVolumeStats detects and repairs it
    driver.kill()
    driver.health_interval_s = 0
    client = driver.start()
    for pid in fuse_daemons_under(csi_root):
        os.kill(pid, signal.SIGKILL)
    eventually(lambda: dead(target), 10, "the mount to die")
    client.node.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(target))
    )
    assert (target / "kept.txt").read_text() == "survives the remount"
    assert [e["reason"] for e in events(driver)].count("VolumeRemounted") == 2
    unpublish(client, vol, target)
    unstage(client, vol, staging)
    delete(client, seaweed, vol)


def test_rclone_mounter(
    seaweed: SeaweedS3, make_driver: Callable[..., Driver], csi_root: Path
) -> None:
    """mounter=rclone stages through rclone mount; files land in the bucket."""
    client = make_driver("node1").client
    assert client is not None
    vol = create(client, seaweed, unique("pvc"), mounter="rclone", cache="writes")
    staging, target = csi_root / "staging", csi_root / "target"
    staging.mkdir()
    stage(client, seaweed, vol, staging)
    publish(client, vol, staging, target)
    (target / "r.txt").write_text("through rclone")
    assert (target / "r.txt").read_text() == "through rclone"
    unpublish(client, vol, target)
    unstage(client, vol, staging)  # rclone flushes its write cache before the unmount completes
    keys = [
        o["Key"] for o in seaweed.client().list_objects_v2(Bucket=vol.volume_id).get("Contents", [])
    ]
    assert "r.txt" in keys
    delete(client, seaweed, vol)
