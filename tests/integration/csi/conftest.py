"""Fixtures for the S3 CSI driver tests: a real SeaweedFS, driver processes, a CO-like client.

Each test gets its own directory (sockets, state, staging and target paths) under a
unique temp dir; teardown unmounts everything beneath it, stops the driver it started and
ends the FUSE daemons whose command line names that directory (by PID), even on failure.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from csi_volumes.api.csi.v1 import csi_pb2, csi_pb2_grpc
from csi_volumes.mountinfo import mounts
from tests.support.seaweedfs import SeaweedS3

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def seaweed(require_root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server on loopback for the session; fails loudly if it cannot start."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        yield server
    finally:
        server.stop()


class CsiClient:
    """What a CO holds: the three CSI services on one socket."""

    def __init__(self, socket: Path) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def mount_cap(
    mode: int = csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER,
) -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode),
    )


class Driver:
    """`kubelet-py-csi s3` as a separate process, killable and restartable."""

    def __init__(
        self,
        root: Path,
        node_id: str,
        *,
        health_interval_s: float = 1.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.extra_args = extra_args
        self.root = root
        self.node_id = node_id
        self.socket = root / f"{node_id}.sock"
        self.state_dir = root / f"{node_id}-state"
        self.log_path = root / f"{node_id}-driver.log"
        self.health_interval_s = health_interval_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: CsiClient | None = None

    def start(self) -> CsiClient:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        argv = [
            sys.executable, "-m", "csi_volumes.cli", "s3",
            "--endpoint", f"unix://{self.socket}", "--node-id", self.node_id,
            "--state-dir", str(self.state_dir),
            "--health-interval-s", str(self.health_interval_s),
            *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"driver exited: {self.log_path.read_text()[-2000:]}")
            if self.socket.exists():
                client = CsiClient(self.socket)
                try:
                    client.identity.Probe(csi_pb2.ProbeRequest(), timeout=2)
                except grpc.RpcError:
                    client.close()
                else:
                    self.client = client
                    return client
            time.sleep(0.1)
        pytest.fail(f"driver did not serve on {self.socket}: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


def fuse_daemons_under(root: Path) -> list[int]:
    """PIDs of s3fs/rclone processes whose command line names a path under `root`."""
    pids = []
    needle = str(root).encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and (b"s3fs" in cmdline or b"rclone" in cmdline):
            pids.append(int(proc.name))
    return pids


def cleanup_mounts(root: Path) -> None:
    prefix = str(root) + "/"
    for _ in range(32):
        ours = [m.mountpoint for m in mounts() if m.mountpoint.startswith(prefix)]
        if not ours:
            break
        subprocess.run(["umount", "-l", ours[-1]], check=False, capture_output=True)
    deadline = time.monotonic() + 10
    while fuse_daemons_under(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in fuse_daemons_under(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def csi_root(require_root: None) -> Iterator[Path]:
    """A unique directory for one test's sockets, state and mount points; cleaned up after."""
    root = Path(f"/tmp/kpy-csi-{uuid.uuid4().hex[:10]}")
    root.mkdir()
    try:
        yield root
    finally:
        cleanup_mounts(root)
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)


@pytest.fixture
def make_driver(csi_root: Path) -> Iterator[Callable[..., Driver]]:
    """Start a driver process for a node id in this test's directory; all stopped after."""
    started: list[Driver] = []

    def make(node_id: str, **kwargs: Any) -> Driver:
        d = Driver(csi_root, node_id, **kwargs)
        started.append(d)
        d.start()
        return d

    try:
        yield make
    finally:
        for d in started:
            d.kill()
        cleanup_mounts(csi_root)
