"""Bundles for kubelet-py-oci: a busybox rootfs, a translate.py-shaped config.json, a cgroup
path beneath this process's own memory cgroup, and a check that the machine is left as found.
"""

import contextlib
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cri.oci import launcher
from cri.runtime.translate import DEFAULT_CAPABILITIES, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS

HERE = Path(__file__).parent
BUSYBOX_APPLETS = (
    "sh", "true", "false", "sleep", "echo", "cat", "ls", "id", "hostname", "mkdir", "touch",
    "grep", "wc", "head", "tr", "unshare", "chown", "ps", "stat", "mount", "readlink", "env", "tty",
)  # fmt: skip


def own_memory_cgroup() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(","):
            return path
    raise AssertionError("this process has no memory cgroup")


def hierarchies() -> list[Path]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        mountpoint = left.split()[4]
        if right.split()[0] in ("cgroup", "cgroup2") and mountpoint.startswith("/sys/fs/cgroup"):
            out.append(Path(mountpoint))
    return out


def cgroup_dirs_named(top: str) -> set[str]:
    """`ls -d /sys/fs/cgroup/*/<top>`: which hierarchies have that directory."""
    return {str(h / top) for h in hierarchies() if (h / top).is_dir()}


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="session")
def oci_cli(require_root: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The executor as conmon runs it: the fast launcher (`python -IS`)."""
    return launcher.write_launcher(str(tmp_path_factory.mktemp("oci-bin") / "kubelet-py-oci"))


@pytest.fixture(scope="session")
def rootfs(require_root: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/bin/busybox and its applets, an /etc/passwd with an unprivileged user."""
    root = tmp_path_factory.mktemp("oci-rootfs")
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp"):
        (root / d).mkdir()
    busybox = shutil.which("busybox")
    assert busybox, "busybox is needed (Debian: busybox-static)"
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\napp:x:1000:\n")
    (root / "tmp").chmod(0o1777)
    root.chmod(0o755)  # pytest makes 0700 dirs; uid 1000 must reach its cwd
    return root


class Cgroups:
    """The cgroup path a test's containers go under, and the leak check around it."""

    def __init__(self) -> None:
        self.own = own_memory_cgroup()
        self.base = f"{self.own}/kpo-test-{uuid.uuid4().hex[:10]}"
        self.top = self.own.strip("/").split("/")[0]
        self.before = cgroup_dirs_named(self.top)
        parts = self.own.strip("/").split("/")
        self.existed = {
            h / "/".join(parts[: i + 1]): (h / "/".join(parts[: i + 1])).is_dir()
            for h in hierarchies()
            for i in range(len(parts))
        }

    def path(self, name: str) -> str:
        return f"{self.base}/{name}"

    def leftovers(self) -> list[str]:
        """Every directory of ours still there: under the base, or a prefix made for us."""
        left = [str(h / self.base.strip("/")) for h in hierarchies()
                if (h / self.base.strip("/")).exists()]  # fmt: skip
        left += [str(d) for d, existed in self.existed.items() if not existed and d.is_dir()]
        return left

    def cleanup(self) -> None:
        """The safety net after a failed test: remove what is ours, deepest first, if empty."""
        for h in hierarchies():
            top = h / self.base.strip("/")
            if top.is_dir():
                for d in sorted(top.rglob("*"), key=lambda p: -len(p.parts)):
                    if d.is_dir():
                        with contextlib.suppress(OSError):
                            d.rmdir()
                with contextlib.suppress(OSError):
                    top.rmdir()
        for d in sorted(self.existed, key=lambda p: -len(p.parts)):
            if not self.existed[d] and d.is_dir():
                with contextlib.suppress(OSError):
                    d.rmdir()


class OCI:
    """Bundles and CLI calls for one test, with everything removed afterwards."""

    def __init__(self, cli: str, rootfs: Path, work: Path, cgroups: Cgroups) -> None:
        self.cli = cli
        self.rootfs = rootfs
        self.work = work
        self.root = work / "state"
        self.cgroups = cgroups
        self.ids: list[str] = []
        self.monitors: list[subprocess.Popen[str]] = []

    def spec(self, name: str, args: list[str], **changes: Any) -> dict[str, Any]:
        """A config.json shaped like translate.py's (default caps, masks, limits, namespaces)."""
        caps = list(DEFAULT_CAPABILITIES)
        doc: dict[str, Any] = {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": 0, "gid": 0, "additionalGids": []},
                "args": args,
                "env": ["PATH=/bin", "HOSTNAME=ctr"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": False,
            },
            "root": {"path": str(self.rootfs), "readonly": False},
            "hostname": "ctr-" + name,
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
                "cgroupsPath": self.cgroups.path(name),
                "resources": {"devices": [{"allow": False, "access": "rwm"}]},
                "maskedPaths": list(DEFAULT_MASKED_PATHS),
                "readonlyPaths": list(DEFAULT_READONLY_PATHS),
            },
        }
        for key, value in changes.items():
            section, _, field = key.partition("__")
            if field:
                doc[section][field] = value
            else:
                doc[section] = value
        return doc

    def bundle(self, name: str, spec: dict[str, Any]) -> Path:
        bundle = self.work / f"bundle-{name}"
        bundle.mkdir(exist_ok=True)
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    def run(
        self, *args: str, check: bool = True, timeout_s: float = 30
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.cli, f"--root={self.root}", *args],
            capture_output=True, text=True, timeout=timeout_s, check=False,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"kubelet-py-oci {' '.join(args)}: {proc.stderr}")
        return proc

    def state(self, cid: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.run("state", cid).stdout)
        return doc

    def create(self, name: str, spec: dict[str, Any], *flags: str) -> "Monitored":
        """create under a test monitor (a subreaper, like conmon); returns its handle."""
        bundle = self.bundle(name, spec)
        log = self.work / f"{name}.log"
        mon = subprocess.Popen(
            [sys.executable, str(HERE / "monitor.py"), self.cli, str(self.root), str(bundle),
             name, str(log), *flags],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.monitors.append(mon)
        assert mon.stdout is not None
        first = mon.stdout.readline().strip()
        self.ids.append(name)
        return Monitored(name, mon, first, log)

    def wait_status(self, cid: str, status: str, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while self.state(cid)["status"] != status:
            assert time.monotonic() < deadline, f"{cid} never became {status}"
            time.sleep(0.02)

    def close(self) -> None:
        for cid in self.ids:
            self.run("delete", "--force", cid, check=False)
        for mon in self.monitors:
            try:
                mon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                mon.kill()
                mon.wait()


class Monitored:
    """A container created under monitor.py."""

    def __init__(self, cid: str, proc: subprocess.Popen[str], first_line: str, log: Path) -> None:
        self.id = cid
        self.proc = proc
        self.first_line = first_line
        self.log = log
        self.pid = int(first_line.split()[1]) if first_line.startswith("created ") else 0

    def exit_code(self, timeout_s: float = 30) -> int:
        assert self.proc.stdout is not None
        out, _ = self.proc.communicate(timeout=timeout_s)
        line = out.strip().splitlines()[-1]
        assert line.startswith("exited "), out
        return int(line.split()[1])

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def oci(oci_cli: str, rootfs: Path, tmp_path: Path) -> Iterator[OCI]:
    """A per-test state root and cgroup base; afterwards the machine must be as it was."""
    cgroups = Cgroups()
    handle = OCI(oci_cli, rootfs, tmp_path, cgroups)
    try:
        yield handle
    finally:
        handle.close()
        left = cgroups.leftovers()
        appeared = cgroup_dirs_named(cgroups.top) - cgroups.before
        cgroups.cleanup()
        assert left == [], f"cgroup directories left behind: {left}"
        # `ls -d /sys/fs/cgroup/*/<top>` shows no hierarchy it did not show before.
        assert appeared == set(), f"new cgroup directories: {appeared}"
        states = list(handle.root.iterdir()) if handle.root.exists() else []
        assert states == [], f"state directories left behind: {states}"
