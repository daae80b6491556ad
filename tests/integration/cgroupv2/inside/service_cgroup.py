"""Run the runtime as a service manager would: alone in a delegated, non-root cgroup.

    python -m tests.integration.cgroupv2.inside.service_cgroup CGROUP_DIR WORK IMAGE_ROOT

Moves this process into CGROUP_DIR (e.g. /sys/fs/cgroup/kubelet.slice/kubelet-py.service,
whose controllers the caller enabled, as systemd's Delegate=yes would), then starts a pod
with a container limited to 64 MiB and 16 pids, prints the limits its cgroup got, and
removes everything again. Exit 0 when the limits were applied.
"""

import asyncio
import os
import sys
from pathlib import Path

from cri.images import ImageService
from cri.runtime.model import ContainerConfig, Resources, SandboxConfig
from cri.runtime.service import RuntimeService

IMAGE = "example.com/test/busybox:busybox"


async def main(cgroup: Path, work: Path, image_root: Path) -> int:
    print(f"own cgroup: {cgroup.relative_to('/sys/fs/cgroup')}", flush=True)
    images = ImageService(image_root)
    runtime = RuntimeService(work / "runtime", images=images, cgroup_parent_name="kubelet-py")
    await runtime.start()
    try:
        pod = await runtime.run_pod_sandbox(
            SandboxConfig(name="svc", uid="uid-svc", namespace="cgroupv2",
                          log_directory=str(work / "logs"))
        )  # fmt: skip
        try:
            ctr = await runtime.create_container(
                pod,
                ContainerConfig(
                    name="main", image=IMAGE, command=("sleep", "60"), log_path="main.log",
                    resources=Resources(memory_limit_bytes=64 << 20, pids_limit=16),
                ),
            )  # fmt: skip
            await runtime.start_container(ctr)
            d = Path("/sys/fs/cgroup") / runtime.container(ctr).cgroup_path.lstrip("/")
            memory = (d / "memory.max").read_text().strip()
            pids = (d / "pids.max").read_text().strip()
            print(f"memory.max={memory} pids.max={pids}", flush=True)
            return 0 if (memory, pids) == (str(64 << 20), "16") else 1
        finally:
            await runtime.stop_pod_sandbox(pod)
            await runtime.remove_pod_sandbox(pod)
    finally:
        await runtime.close()
        await images.close()


if __name__ == "__main__":
    target = Path(sys.argv[1])
    (target / "cgroup.procs").write_text(str(os.getpid()))  # before any thread exists
    sys.exit(asyncio.run(main(target, Path(sys.argv[2]), Path(sys.argv[3]))))
