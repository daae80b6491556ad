"""kubelet-py's OCI executor against runc (and crun): one container's whole life, many times.

Run as root from the repository root:

    python3 bench/oci_executor.py [--runs 50] [--warmup 3]

One bundle (a busybox rootfs, a config.json shaped like cri/runtime/translate.py's:
default capabilities, masked and read-only paths, the devices cgroup, new mount/pid/net/
ipc/uts namespaces, a cgroupsPath beneath this process's own memory cgroup) runs `true`
through each executor's CLI, as conmon would drive it:

    create --bundle B --pid-file P ID   →  start ID  →  wait for the init  →  delete ID

The bench process is the init's subreaper (as conmon is), so "wait" is a waitpid on
the PID from the pid file, not a poll. Runs alternate ours / runc / ours / runc … so
neither side sees a systematically different machine (other work on the machine shows
as spread, in p99). Ours is the launcher `python3 -m cri.oci.launcher` writes (the
interpreter with -IS, which is what the runtime service hands conmon), so the figures
include interpreter start-up three times per run (create, start, delete).

crun is tried once; on a hybrid cgroup layout it refuses, and its message goes into
the table instead of figures.

Printed: p50, p99, mean and min of the total, the p50 of each phase, and the floors
(`python3 -IS -c pass` and `runc --version`: what merely starting each costs).
Everything the runs create is removed at the end: state dirs, the bundle, and every
cgroup directory under the bench's scope (and ancestors that did not exist before).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import CgroupScope, median, percentile
from cri.oci import launcher
from cri.runtime.translate import (
    DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
)

PR_SET_CHILD_SUBREAPER = 36
PHASES = ("create", "start", "wait", "delete")


def build_rootfs(root: Path) -> None:
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp"):
        (root / d).mkdir(parents=True)
    busybox = shutil.which("busybox")
    if busybox is None:
        sys.exit("busybox is needed (Debian: busybox-static)")
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in ("sh", "true"):
        (root / "bin" / applet).symlink_to("busybox")
    root.chmod(0o755)


def spec(rootfs: Path, cgroups_path: str) -> dict[str, object]:
    caps = list(DEFAULT_CAPABILITIES)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["true"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": False,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": "bench",
        "mounts": [
            {
                "destination": "/proc",
                "type": "proc",
                "source": "proc",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": [
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("mount", "pid", "network", "ipc", "uts")],
            "cgroupsPath": cgroups_path,
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "maskedPaths": list(DEFAULT_MASKED_PATHS),
            "readonlyPaths": list(DEFAULT_READONLY_PATHS),
        },
    }


class Runtime:
    def __init__(self, name: str, binary: str, root: Path) -> None:
        self.name = name
        self.binary = binary
        self.root = root
        self.totals: list[float] = []
        self.phases: dict[str, list[float]] = {p: [] for p in PHASES}
        self.error = ""

    def cmd(self, *args: str) -> None:
        # The container inherits create's stdio: a file, never a pipe we would wait on.
        with tempfile.TemporaryFile() as err:
            proc = subprocess.run(
                [self.binary, f"--root={self.root}", *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                err.seek(0)
                lines = err.read().decode(errors="replace").strip().splitlines() or ["(no output)"]
                raise RuntimeError(f"{' '.join(args[:1])}: {lines[-1]}")

    def once(self, bundle: Path, cid: str, *, record: bool) -> None:
        pid_file = bundle / f"{self.name}.pid"
        t0 = time.perf_counter()
        self.cmd("create", "--bundle", str(bundle), "--pid-file", str(pid_file), cid)
        t1 = time.perf_counter()
        pid = int(pid_file.read_text())
        self.cmd("start", cid)
        t2 = time.perf_counter()
        os.waitpid(pid, 0)  # we are the subreaper: the init is our child now
        t3 = time.perf_counter()
        self.cmd("delete", cid)
        t4 = time.perf_counter()
        if record:
            self.totals.append((t4 - t0) * 1000)
            for name, a, b in zip(PHASES, (t0, t1, t2, t3), (t1, t2, t3, t4), strict=True):
                self.phases[name].append((b - a) * 1000)


def floor_ms(argv: list[str], n: int = 20) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append((time.perf_counter() - t0) * 1000)
    return median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    work = Path(tempfile.mkdtemp(prefix="bench-oci-"))
    scope = CgroupScope(f"kpo-bench-{os.getpid()}")
    status = 0
    try:
        rootfs = work / "rootfs"
        build_rootfs(rootfs)
        ours_bin = launcher.write_launcher(str(work / "kubelet-py-oci"))
        runtimes = [Runtime("kubelet-py-oci", ours_bin, work / "state-ours")]
        runc = shutil.which("runc")
        if runc:
            runtimes.append(Runtime("runc", runc, work / "state-runc"))
        crun = Runtime("crun", shutil.which("crun") or "", work / "state-crun")
        bundles = {}
        for rt in [*runtimes, crun]:
            bundle = work / f"bundle-{rt.name}"
            bundle.mkdir()
            doc = spec(rootfs, f"{scope.path}/{rt.name}")
            (bundle / "config.json").write_text(json.dumps(doc))
            bundles[rt.name] = bundle
        if crun.binary:
            try:
                crun.once(bundles["crun"], "c0", record=False)
            except RuntimeError as err:
                crun.error = str(err)
            with_cleanup(lambda: crun.cmd("delete", "--force", "c0"))
        else:
            crun.error = "not installed (apt-get install crun)"
        print(f"warming up ({args.warmup} runs each), then {args.runs} runs each, alternating",
              file=sys.stderr)  # fmt: skip
        for i in range(args.warmup + args.runs):
            for rt in runtimes:
                try:
                    rt.once(bundles[rt.name], f"b{i}", record=i >= args.warmup)
                except RuntimeError as err:
                    rt.error = str(err)
                    with_cleanup(lambda rt=rt, i=i: rt.cmd("delete", "--force", f"b{i}"))
                    raise
        py_floor = floor_ms([sys.executable, "-IS", "-c", "pass"])
        runc_floor = floor_ms([runc, "--version"]) if runc else float("nan")
        report(runtimes, crun, args.runs, py_floor, runc_floor)
        ours = runtimes[0]
        if len(runtimes) > 1 and median(ours.totals) >= median(runtimes[1].totals):
            status = 1
    finally:
        left = scope.remove()
        shutil.rmtree(work, ignore_errors=True)
        if left:
            print(f"cgroup directories that would not go: {left}", file=sys.stderr)
            status = 2
    return status


def with_cleanup(action: Callable[[], None]) -> None:
    try:
        action()
    except RuntimeError:
        pass


def report(runtimes: list[Runtime], crun: Runtime, runs: int, py_floor: float,
           runc_floor: float) -> None:  # fmt: skip
    print()
    print(f"one container's life (create, start, wait, delete), {runs} runs each, ms")
    head = ("executor", "p50", "p99", "mean", "min", "create", "start", "wait", "delete")
    print("{:<16} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7}".format(*head))
    row = "{:<16} {:>7.1f} {:>7.1f} {:>7.1f} {:>7.1f} {:>8.1f} {:>7.1f} {:>7.1f} {:>7.1f}"
    for rt in runtimes:
        t = rt.totals
        print(row.format(rt.name, median(t), percentile(t, 99), sum(t) / len(t), min(t),
                         *(median(rt.phases[p]) for p in PHASES)))  # fmt: skip
    print(f"{'crun':<16} {crun.error or 'ran (not measured)'}")
    print()
    print(f"floors: python3 -IS -c pass {py_floor:.1f} ms; runc --version {runc_floor:.1f} ms "
          f"(ours starts an interpreter 3 times a run)")  # fmt: skip
    print(f"load average at the end: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    sys.exit(main())
