"""Fixtures for the tests that run inside the cgroup v2 guest (tests/support/guest.py).

The guest boots with `cgroup_no_v1=all` and this pytest runs as root in the root
cgroup. `runtime` is our RuntimeService (conmon + runc, the CgroupV2 driver) on its own
event loop, with the busybox image imported from the OCI layout the host built with
umoci (`$KUBELET_PY_GUEST_INPUTS/oci`, tag `busybox`).
"""

import asyncio
import os
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cri.images import ImageService
from cri.runtime.model import ContainerConfig, ContainerState, Resources, SandboxConfig
from cri.runtime.service import RuntimeService
from cri.runtime.state import ContainerRecord

IMAGE = "example.com/test/busybox:busybox"
CGROUP_PARENT = "kubelet-py-test"
CGROUP_ROOT = Path("/sys/fs/cgroup")

T = TypeVar("T")


@pytest.fixture(scope="session", autouse=True)
def cgroup2_only() -> None:
    """Everything here assumes the guest's layout: fail at once anywhere else."""
    if os.environ.get("KUBELET_PY_GUEST") != "1" or os.geteuid() != 0:
        pytest.fail("these tests run as root inside the cgroup v2 guest only")
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    types = {m[1]: m[2] for m in mounts}
    if types.get("/sys/fs/cgroup") != "cgroup2" or any(m[2] == "cgroup" for m in mounts):
        pytest.fail(f"/sys/fs/cgroup is not a cgroup2-only hierarchy: {types}")


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image store with the host-built busybox layout imported."""
    layout = Path(os.environ["KUBELET_PY_GUEST_INPUTS"]) / "oci"
    root = tmp_path_factory.mktemp("images")

    async def load() -> None:
        svc = ImageService(root)
        await svc.import_image(layout, name=IMAGE)
        await svc.close()

    asyncio.run(load())
    return root


class Runtime:
    """A RuntimeService on a private event loop, with blocking helpers for tests."""

    def __init__(self, root: Path, image_root: Path) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self.images = ImageService(image_root)
        self.svc = RuntimeService(
            root / "runtime", images=self.images, cgroup_parent_name=CGROUP_PARENT
        )
        self.run(self.svc.start())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @property
    def base(self) -> Path:
        return CGROUP_ROOT / self.svc.cgroups.base.lstrip("/")

    def pod(self, name: str, *, cgroup_parent: str = "") -> str:
        config = SandboxConfig(
            name=name,
            uid=f"uid-{name}",
            namespace="cgroupv2",
            hostname=name,
            log_directory=str(self.root / "logs" / name),
            cgroup_parent=cgroup_parent,
        )
        return self.run(self.svc.run_pod_sandbox(config))

    def container(
        self, pod_id: str, name: str, command: list[str], resources: Resources | None = None
    ) -> str:
        """Create and start a container; return its ID."""
        config = ContainerConfig(
            name=name,
            image=IMAGE,
            command=tuple(command),
            log_path=f"{name}.log",
            resources=resources or Resources(),
        )
        ctr_id = self.run(self.svc.create_container(pod_id, config))
        self.run(self.svc.start_container(ctr_id))
        return ctr_id

    def record(self, ctr_id: str) -> ContainerRecord:
        return self.svc.container(ctr_id)

    def cgroup(self, ctr_id: str) -> Path:
        """The container's cgroup directory."""
        return CGROUP_ROOT / self.record(ctr_id).cgroup_path.lstrip("/")

    def pod_cgroup(self, pod_id: str) -> Path:
        return CGROUP_ROOT / self.svc.sandbox(pod_id).cgroup_path.lstrip("/")

    def wait_exited(self, ctr_id: str, timeout_s: float = 60) -> ContainerRecord:
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.record(ctr_id)
            if record.state == ContainerState.EXITED.value:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"container {ctr_id[:12]} did not exit: {record}")
            self.run(asyncio.sleep(0.1))

    def log(self, ctr_id: str) -> list[str]:
        """The container's output lines (the text field of the CRI log lines)."""
        path = Path(self.record(ctr_id).log_path)
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return [line.split(" ", 3)[3] for line in lines if line.count(" ") >= 3]

    def remove_all(self) -> None:
        for sandbox in self.svc.sandboxes():
            self.run(self.svc.stop_pod_sandbox(sandbox.id))
            self.run(self.svc.remove_pod_sandbox(sandbox.id))

    def close(self) -> None:
        try:
            self.remove_all()
            self.run(self.svc.close())
            self.run(self.images.close())
        finally:
            self.loop.close()


def cgroup_dirs(top: Path) -> list[str]:
    """Every cgroup directory beneath `top` (not `top` itself), relative to it."""
    return sorted(str(p.relative_to(top)) for p in top.rglob("*") if p.is_dir())


def read_kv(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


@pytest.fixture
def runtime(image_root: Path, tmp_path: Path) -> Iterator[Runtime]:
    """A fresh runtime; afterwards every sandbox is removed and no cgroup is left."""
    rt = Runtime(tmp_path, image_root)
    base = rt.base
    try:
        yield rt
    finally:
        rt.close()
    assert not base.exists(), f"cgroups left behind: {base} {cgroup_dirs(base)}"
