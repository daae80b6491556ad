"""cgroup drivers: one Protocol, a v1 implementation (through cgroupspy) and a v2 one.

Everything kubelet-py creates lives under `<own cgroup>/<parent name>`, where
"own cgroup" is the cgroup this process already sits in (read from
/proc/self/cgroup), so nothing outside it is created or touched:

    <own>/<parent>/kubepods/pod<uid>/<container id>          Guaranteed
    <own>/<parent>/kubepods/burstable/pod<uid>/<container>   Burstable
    <own>/<parent>/kubepods/besteffort/pod<uid>/<container>  BestEffort

The container level is created by the OCI executor from the spec's cgroupsPath;
the driver makes the pod level, reads stats, detects OOM kills, and removes only
the paths it was asked to. With v1 the one path is used in every controller's
hierarchy (cgroupsPath semantics of runc's cgroupfs driver), taking as prefix the
process's own path in the memory hierarchy, the one controller that is nested
on these machines.
"""

import contextlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cgroupspy import nodes

from cri.fsutil import write_atomic
from cri.runtime.errors import RuntimeServiceError

CGROUP_ROOT = Path("/sys/fs/cgroup")
V2_REQUIRED = ("cpu", "memory", "pids")
V2_RUNTIME_LEAF = "kubelet-py-runtime"
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio", "devices", "freezer", "cpuset")


class CgroupError(RuntimeServiceError):
    """A cgroup could not be created, read or removed."""


@dataclass(frozen=True)
class CgroupStats:
    cpu_usage_ns: int
    memory_usage_bytes: int
    memory_working_set_bytes: int
    oom_kills: int
    cpu_throttled_periods: int = 0
    cpu_periods: int = 0
    memory_rss_bytes: int = 0
    memory_page_faults: int = 0
    memory_major_page_faults: int = 0
    memory_limit_bytes: int | None = None
    """The cgroup's memory limit; None when it has none (or one above the machine's memory)."""
    pids: int = 0


class CgroupDriver(Protocol):
    version: int

    def pod_path(self, *, qos: str, pod_uid: str) -> str: ...

    def ensure(self, path: str) -> None: ...

    def remove(self, path: str) -> None: ...

    def stats(self, path: str) -> CgroupStats: ...


def own_cgroup_paths(proc_self_cgroup: str) -> dict[str, str]:
    """controller name (or '' for the unified hierarchy) -> this process's path in it."""
    out: dict[str, str] = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctrl in parts[1].split(",") if parts[1] else [""]:
            out[ctrl] = parts[2]
    return out


def detect_version(root: Path = CGROUP_ROOT) -> int:
    """2 when /sys/fs/cgroup is itself a cgroup2 mount, else 1 (v1 or hybrid)."""
    return 2 if (root / "cgroup.controllers").exists() else 1


def _qos_segment(qos: str) -> str:
    return {"guaranteed": "", "burstable": "burstable", "besteffort": "besteffort"}[qos.lower()]


def _read_kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
    return out


def _limit(text: str) -> int | None:
    """A memory limit file's value; None for "max" or v1's page-rounded LLONG_MAX."""
    text = text.strip()
    if not text or text == "max":
        return None
    value = int(text)
    return None if value >= _NO_LIMIT_V1 else value


_NO_LIMIT_V1 = 1 << 62  # v1 writes 0x7FFFFFFFFFFFF000 for "no limit"


def _read_limit(path: Path) -> int | None:
    try:
        return _limit(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return 0


def _rmdir_tree(top: Path) -> None:
    """Remove a cgroup dir and its child cgroups, deepest first (cgroup dirs hold no files)."""
    if not top.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -t[0].count("/")):
        try:
            Path(dirpath).rmdir()
        except OSError as err:
            raise CgroupError(f"cannot remove cgroup {dirpath}: {err}") from err


def _prune_empty_parents(top: Path, path: str, base: str) -> None:
    """rmdir the parents of `path` strictly below `base` that have no child cgroups left."""
    parent = path.rstrip("/").rpartition("/")[0]
    while parent.startswith(base + "/"):
        d = top / parent.lstrip("/")
        if not d.is_dir() or any(c.is_dir() for c in d.iterdir()):
            return
        try:
            d.rmdir()
        except OSError:
            return
        parent = parent.rpartition("/")[0]


class CgroupV1:
    """cgroup v1 (and the hybrid layout) through cgroupspy's nodes and controllers.

    runc's cgroupfs driver puts a container into the same path in *every* mounted
    hierarchy (name=systemd and the hybrid unified one included), so this driver
    creates the pod path in all of them itself and records which ancestors above
    its base did not exist before (`state_file`), to remove exactly those again
    in `release()`. The machine is left as it was found.
    """

    version = 1

    def __init__(
        self,
        *,
        parent_name: str,
        proc_self_cgroup: str | None = None,
        root: Path = CGROUP_ROOT,
        state_file: Path | None = None,
    ) -> None:
        text = (
            proc_self_cgroup
            if proc_self_cgroup is not None
            else Path("/proc/self/cgroup").read_text()
        )
        own = own_cgroup_paths(text)
        self.root = root
        self.base = f"{own.get('memory', '/').rstrip('/')}/{parent_name}"
        self.controllers = [c for c in V1_CONTROLLERS if (root / c).is_dir()]
        self.hierarchies = (
            sorted(
                d.name
                for d in root.iterdir()
                if d.is_dir() and not d.is_symlink() and os.path.ismount(d)
            )
            if root.is_dir()
            else []
        )
        self.state_file = state_file
        self._created: list[str] = []
        if state_file is not None and state_file.exists():
            self._created = list(json.loads(state_file.read_text()))

    def _record_created(self, d: Path) -> None:
        self._created.append(str(d))
        if self.state_file is not None:
            write_atomic(self.state_file, json.dumps(self._created).encode())

    def release(self) -> None:
        """Remove the base and every ancestor this driver created, where they are empty."""
        for h in self.hierarchies:
            with contextlib.suppress(CgroupError):
                _rmdir_tree(self.root / h / self.base.lstrip("/"))
        for d in sorted(self._created, key=lambda p: -p.count("/")):
            with contextlib.suppress(OSError):
                Path(d).rmdir()
        self._created = []
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)

    def pod_path(self, *, qos: str, pod_uid: str) -> str:
        seg = _qos_segment(qos)
        mid = f"/{seg}" if seg else ""
        return f"{self.base}/kubepods{mid}/pod{pod_uid}"

    def _node(self, controller: str, path: str) -> nodes.Node:
        node = nodes.Node(str(self.root).encode() + b"/")
        node = nodes.Node(controller.encode(), parent=node)
        for part in path.strip("/").split("/"):
            if part:
                node = nodes.Node(part.encode(), parent=node)
        return node

    def _check_ours(self, path: str) -> None:
        if not (path == self.base or path.startswith(self.base + "/")):
            raise CgroupError(f"refusing to touch cgroup {path}: not beneath {self.base}")

    def ensure(self, path: str) -> None:
        self._check_ours(path)
        base_depth = self.base.strip("/").count("/") + 1
        parts = path.strip("/").split("/")
        for h in self.hierarchies:
            d = self.root / h
            for i, part in enumerate(parts):
                d = d / part
                if d.is_dir():
                    continue
                d.mkdir()
                if h == "cpuset":
                    for f in ("cpuset.cpus", "cpuset.mems"):
                        (d / f).write_text((d.parent / f).read_text())
                if i + 1 < base_depth:
                    self._record_created(d)

    def remove(self, path: str) -> None:
        """Remove `path` and its children, then any parents left empty (up to the base)."""
        self._check_ours(path)
        for h in self.hierarchies:
            top = self.root / h
            _rmdir_tree(top / path.lstrip("/"))
            _prune_empty_parents(top, path, self.base)

    def stats(self, path: str) -> CgroupStats:
        node = self._node("memory", path)
        if not Path(node.full_path.decode()).is_dir():
            raise CgroupError(f"cgroup {path} does not exist")
        mem = node.controller
        stat = dict(mem.stat)
        usage = int(mem.usage_in_bytes)
        oom = int(dict(mem.oom_control).get("oom_kill", 0))
        cpuacct = self.root / "cpuacct" / path.lstrip("/")
        cpu_stat = _read_kv(self.root / "cpu" / path.lstrip("/") / "cpu.stat")
        mem_dir = Path(node.full_path.decode())
        # hierarchical_memory_limit is the tightest limit on the way up (cAdvisor's choice)
        limit = stat.get("hierarchical_memory_limit")
        return CgroupStats(
            cpu_usage_ns=_read_int(cpuacct / "cpuacct.usage"),
            memory_usage_bytes=usage,
            memory_working_set_bytes=max(0, usage - int(stat.get("total_inactive_file", 0))),
            oom_kills=oom,
            cpu_throttled_periods=cpu_stat.get("nr_throttled", 0),
            cpu_periods=cpu_stat.get("nr_periods", 0),
            memory_rss_bytes=int(stat.get("total_rss", 0)),
            memory_page_faults=int(stat.get("total_pgfault", 0)),
            memory_major_page_faults=int(stat.get("total_pgmajfault", 0)),
            memory_limit_bytes=(
                _limit(str(limit))
                if limit is not None
                else _read_limit(mem_dir / "memory.limit_in_bytes")
            ),
            pids=_read_int(self.root / "pids" / path.lstrip("/") / "pids.current"),
        )


class CgroupV2:
    """The unified hierarchy: controllers enabled down the chain through subtree_control."""

    version = 2

    def __init__(self, *, parent_name: str, proc_self_cgroup: str | None = None,
                 root: Path = CGROUP_ROOT) -> None:  # fmt: skip
        text = (
            proc_self_cgroup
            if proc_self_cgroup is not None
            else Path("/proc/self/cgroup").read_text()
        )
        own = own_cgroup_paths(text)
        self.root = root
        self.own = own.get("", "/")
        self.base = f"{self.own.rstrip('/')}/{parent_name}"

    def _vacate_own(self) -> None:
        """Obey v2's no-internal-process rule before delegating anything.

        A non-root cgroup that holds processes cannot give domain controllers (memory,
        pids, io) to children, and enabling a threaded one (cpu) there first turns it
        into a "domain threaded" root for good. If our own cgroup holds only this
        process (a service's cgroup, Delegate=yes), move it into the leaf
        <own>/kubelet-py-runtime; if it holds others, refuse with a clear error.
        """
        own_dir = self.root / self.own.lstrip("/")
        if own_dir == self.root:
            return
        procs = [int(p) for p in (own_dir / "cgroup.procs").read_text().split()]
        if not procs:
            return
        if procs != [os.getpid()]:
            raise CgroupError(
                f"cgroup v2: {self.own} holds other processes ({procs[:8]}) besides this "
                "one, so no controller can be delegated beneath it; run the runtime in a "
                "cgroup of its own"
            )
        leaf = own_dir / V2_RUNTIME_LEAF
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(os.getpid()))

    def _delegate(self, d: Path) -> None:
        """Enable cpu, memory, pids (and io when there) for the children of `d`."""
        available = (d / "cgroup.controllers").read_text().split()
        missing = [c for c in V2_REQUIRED if c not in available]
        if missing:
            raise CgroupError(f"cgroup v2: controllers {missing} are not delegated to {d}")
        enabled = (d / "cgroup.subtree_control").read_text().split()
        want = [c for c in (*V2_REQUIRED, "io") if c in available and c not in enabled]
        if want:
            try:
                (d / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in want))
            except OSError as err:
                raise CgroupError(f"cannot enable {want} for the children of {d}: {err}") from err

    def pod_path(self, *, qos: str, pod_uid: str) -> str:
        seg = _qos_segment(qos)
        mid = f"/{seg}" if seg else ""
        return f"{self.base}/kubepods{mid}/pod{pod_uid}"

    def ensure(self, path: str) -> None:
        if not (path == self.base or path.startswith(self.base + "/")):
            raise CgroupError(f"refusing to touch cgroup {path}: not beneath {self.base}")
        self._vacate_own()
        d = self.root / self.own.lstrip("/")
        for part in path[len(self.own.rstrip("/")) :].strip("/").split("/"):
            self._delegate(d)
            d = d / part
            d.mkdir(exist_ok=True)

    def release(self) -> None:
        """Remove the (empty) base; v2 bases sit in our own cgroup, which existed before."""
        with contextlib.suppress(CgroupError):
            _rmdir_tree(self.root / self.base.lstrip("/"))

    def remove(self, path: str) -> None:
        if not path.startswith(self.base + "/") and path != self.base:
            raise CgroupError(f"refusing to touch cgroup {path}: not beneath {self.base}")
        _rmdir_tree(self.root / path.lstrip("/"))
        _prune_empty_parents(self.root, path, self.base)

    def stats(self, path: str) -> CgroupStats:
        d = self.root / path.lstrip("/")
        if not d.is_dir():
            raise CgroupError(f"cgroup {path} does not exist")
        cpu = _read_kv(d / "cpu.stat")
        mem = _read_kv(d / "memory.stat")
        usage = _read_int(d / "memory.current")
        events = _read_kv(d / "memory.events")
        return CgroupStats(
            cpu_usage_ns=cpu.get("usage_usec", 0) * 1000,
            memory_usage_bytes=usage,
            memory_working_set_bytes=max(0, usage - mem.get("inactive_file", 0)),
            oom_kills=events.get("oom_kill", 0),
            cpu_throttled_periods=cpu.get("nr_throttled", 0),
            cpu_periods=cpu.get("nr_periods", 0),
            memory_rss_bytes=mem.get("anon", 0),
            memory_page_faults=mem.get("pgfault", 0),
            memory_major_page_faults=mem.get("pgmajfault", 0),
            memory_limit_bytes=_read_limit(d / "memory.max"),
            pids=_read_int(d / "pids.current"),
        )


def cpu_shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares -> v2 cpu.weight, the formula runc/crun use since 2024.

    Maps shares [2, 262144] onto weight [1, 10000] so that the default 1024
    lands on 100 (a quadratic fit through both ends and that point).
    """
    if shares == 0:
        return 0
    if shares <= 2:
        return 1
    if shares >= 262144:
        return 10000
    exponent = (math.log2(shares) ** 2 + 125 * math.log2(shares)) / 612.0 - 7.0 / 34.0
    return max(1, min(10000, math.ceil(10**exponent)))


def new_driver(*, parent_name: str, state_file: Path | None = None) -> CgroupV1 | CgroupV2:
    """The driver for this machine, chosen once at start."""
    if detect_version() == 2:
        return CgroupV2(parent_name=parent_name)
    return CgroupV1(parent_name=parent_name, state_file=state_file)


def walk_paths(driver: CgroupV1 | CgroupV2) -> Iterator[Path]:
    """Every directory the driver's base covers, for leak checks in tests."""
    roots = (
        [driver.root / c / driver.base.lstrip("/") for c in driver.controllers]
        if isinstance(driver, CgroupV1)
        else [driver.root / driver.base.lstrip("/")]
    )
    for top in roots:
        if top.is_dir():
            yield top
