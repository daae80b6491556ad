"""A running `kubelet-py cri serve` with the busybox test image imported, and crictl."""

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cri.images import ImageService
from kubelet_py.devcluster.build import ensure_go_tool
from tests.support.images import ImageBuilder

IMAGE = "example.com/test/busybox:busybox"
CGROUP_PARENT = f"kpy-rt-{uuid.uuid4().hex[:8]}"
"""Unique per run: other engineers' runs share the machine (and the parent cgroup)."""
NONROOT_IMAGE = "example.com/test/nonroot:nonroot"


@pytest.fixture(scope="session")
def runtime_images(require_root: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image store with busybox and nonroot imported from umoci-built layouts."""
    builder = ImageBuilder(tmp_path_factory.mktemp("runtime-image-builds"))
    root = tmp_path_factory.mktemp("runtime-node")
    layout = builder.busybox().layout
    builder.nonroot()

    async def load() -> None:
        svc = ImageService(root / "images")
        await svc.import_image(layout, name=IMAGE)
        await svc.import_image(layout, name=NONROOT_IMAGE)
        await svc.close()

    asyncio.run(load())
    return root


@dataclass
class CRI:
    """A CRI server process and a crictl bound to it."""

    root: Path
    socket: Path
    crictl_bin: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    work: Path
    oci_runtime: str = "kubelet-py-oci"
    monitor: str = "conmon"

    def crictl(self, *args: str, check: bool = True, timeout_s: float = 60) -> str:
        endpoint = f"unix://{self.socket}"
        config = self.work / "crictl.yaml"
        if not config.exists():
            config.write_text(f"runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\n")
        out = subprocess.run(
            [str(self.crictl_bin), "--config", str(config), "--runtime-endpoint", endpoint,
             "--image-endpoint", endpoint,
             "--timeout", f"{int(timeout_s)}s", *args],
            capture_output=True, text=True, timeout=timeout_s + 10, check=False,
        )  # fmt: skip
        if check and out.returncode != 0:
            raise AssertionError(f"crictl {' '.join(args)} failed: {out.stderr}")
        return out.stdout if check else out.stdout + out.stderr

    def write_json(self, name: str, doc: dict[str, object]) -> Path:
        path = self.work / name
        path.write_text(json.dumps(doc))
        return path

    def pod_config(self, name: str, **extra: object) -> Path:
        doc: dict[str, object] = {
            "metadata": {"name": name, "namespace": "test", "uid": f"uid-{name}", "attempt": 0},
            "hostname": name,
            "log_directory": str(self.work / "logs" / name),
            "linux": {},
        }
        doc.update(extra)
        return self.write_json(f"pod-{name}.json", doc)

    def container_config(self, name: str, command: list[str], **extra: object) -> Path:
        doc: dict[str, object] = {
            "metadata": {"name": name},
            "image": {"image": IMAGE},
            "command": command,
            "log_path": f"{name}/0.log",
            "linux": {},
        }
        doc.update(extra)
        return self.write_json(f"ctr-{name}.json", doc)

    def run_container(
        self, pod: str, name: str, command: list[str], **extra: object
    ) -> tuple[str, str]:
        """runp + create + start; returns (pod id, container id)."""
        pod_cfg = self.pod_config(pod)
        pod_id = self.crictl("runp", str(pod_cfg)).strip()
        ctr_cfg = self.container_config(name, command, **extra)
        ctr_id = self.crictl("create", pod_id, str(ctr_cfg), str(pod_cfg)).strip()
        self.crictl("start", ctr_id)
        return pod_id, ctr_id

    def inspect(self, ctr_id: str) -> dict[str, object]:
        doc: dict[str, object] = json.loads(self.crictl("inspect", ctr_id))
        return doc

    def wait_state(self, ctr_id: str, state: str, timeout_s: float = 20) -> dict[str, object]:
        deadline = time.monotonic() + timeout_s
        while True:
            doc = self.inspect(ctr_id)
            status = doc["status"]
            assert isinstance(status, dict)
            if status["state"] == state:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"container {ctr_id[:12]} not {state}: {status}")
            time.sleep(0.1)

    def cleanup_all(self) -> None:
        for pod_id in self.crictl("pods", "-q", check=False).split():
            if len(pod_id) == 64:
                self.crictl("stopp", pod_id, check=False)
                self.crictl("rmp", pod_id, check=False)


def start_server(
    root: Path,
    socket: Path,
    log_path: Path,
    oci_runtime: str = "kubelet-py-oci",
    monitor: str = "conmon",
) -> subprocess.Popen[bytes]:
    ready_line = b"serving CRI v1 on"
    seen = log_path.read_bytes().count(ready_line) if log_path.exists() else 0
    log = log_path.open("ab")
    proc = subprocess.Popen(
        ["python3", "-m", "kubelet_py", "cri", "serve", "--root", str(root), "--socket",
         str(socket), "--cgroup-parent", CGROUP_PARENT, "--oci-runtime", oci_runtime,
         "--monitor", monitor],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + 30
    # the socket file exists from bind(), before the server listens: wait for its own word
    while log_path.read_bytes().count(ready_line) <= seen:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"cri serve did not start: {log_path.read_text()}")
        time.sleep(0.05)
    return proc


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture(
    params=[
        ("kubelet-py-oci", "conmon"),
        ("runc", "conmon"),
        ("kubelet-py-oci", "node"),
        ("runc", "node"),
    ],
    ids=["kubelet-py-oci", "runc", "kubelet-py-oci-node", "runc-node"],
)
def cri(runtime_images: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[CRI]:
    """A fresh CRI server on a shared image store, for each OCI executor (runc, ours) under
    each monitor (a conmon per container, the node-wide monitor); every pod removed after."""
    crictl_bin = ensure_go_tool("crictl")
    socket = tmp_path / "cri.sock"
    log_path = tmp_path / "cri.log"
    oci, monitor = request.param
    proc = start_server(runtime_images, socket, log_path, oci, monitor)
    handle = CRI(runtime_images, socket, crictl_bin, proc, log_path, tmp_path, oci, monitor)
    try:
        yield handle
    finally:
        if handle.proc.poll() is not None:  # a test killed it: bring one up to clean up
            handle.proc = start_server(runtime_images, socket, log_path, oci, monitor)
        handle.cleanup_all()
        stop_server(handle.proc)
