"""Node pressure: MemoryPressure, DiskPressure and PIDPressure from real measurements.

`measure()` reads the eviction signals the way the kubelet names them (memory.available,
nodefs.*, imagefs.*, pid.available) from /proc and statvfs; `PressureTracker` compares them
with the evictionHard thresholds and keeps a condition True until no threshold of it has
been crossed for evictionPressureTransitionPeriod (upstream's damping, so a node does not
flap). node.py turns the result into Node conditions; the node lifecycle controller then
taints the node (node.kubernetes.io/disk-pressure and friends).

    measure() ──signals──▶ PressureTracker.update() ──{condition: (True/False, why)}──▶ node.py
"""

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kubelet_py.agent.kubeletconfig import Threshold

CONDITION_OF = {
    "memory.available": "MemoryPressure",
    "allocatableMemory.available": "MemoryPressure",
    "nodefs.available": "DiskPressure",
    "nodefs.inodesFree": "DiskPressure",
    "imagefs.available": "DiskPressure",
    "imagefs.inodesFree": "DiskPressure",
    "containerfs.available": "DiskPressure",
    "containerfs.inodesFree": "DiskPressure",
    "pid.available": "PIDPressure",
}
CONDITIONS = ("MemoryPressure", "DiskPressure", "PIDPressure")


@dataclass(frozen=True)
class Signal:
    available: float
    capacity: float


def _statvfs(path: Path) -> tuple[Signal, Signal]:
    st = os.statvfs(path)
    space = Signal(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)
    inodes = Signal(st.f_favail, st.f_files)
    return space, inodes


def _meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
    return out


def measure(*, nodefs: Path, imagefs: Path, memory_capacity: int) -> dict[str, Signal]:
    """The eviction signals now. Blocking but cheap (a few /proc reads and statvfs calls)."""
    info = _meminfo()
    capacity = min(memory_capacity or info["MemTotal"], info["MemTotal"])
    available = min(info.get("MemAvailable", info["MemFree"]), capacity)
    node_space, node_inodes = _statvfs(nodefs)
    image_space, image_inodes = _statvfs(imagefs)
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    # /proc/loadavg's fourth field is running/total scheduling entities (threads)
    total = int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    return {
        "memory.available": Signal(available, capacity),
        "nodefs.available": node_space,
        "nodefs.inodesFree": node_inodes,
        "imagefs.available": image_space,
        "imagefs.inodesFree": image_inodes,
        "containerfs.available": image_space,
        "containerfs.inodesFree": image_inodes,
        "pid.available": Signal(pid_max - total, pid_max),
    }


def crossed(thresholds: Iterable[Threshold], signals: Mapping[str, Signal]) -> list[str]:
    """Descriptions of the thresholds the signals are below now."""
    out = []
    for t in thresholds:
        sig = signals.get(t.signal)
        if sig is None or sig.capacity <= 0:
            continue
        limit = t.limit(sig.capacity)
        if sig.available < limit:
            # no measured numbers here: they would change the Node's status at every update
            out.append(f"{t.signal} below {t.text}")
    return out


@dataclass
class PressureTracker:
    """Conditions from thresholds, held True for `transition_s` after the last crossing."""

    thresholds: tuple[Threshold, ...]
    transition_s: float
    clock: Callable[[], float] = time.monotonic
    _last_crossed: dict[str, float] = field(default_factory=dict)
    _why: dict[str, str] = field(default_factory=dict)

    def update(self, signals: Mapping[str, Signal]) -> dict[str, tuple[bool, str]]:
        now = self.clock()
        by_condition: dict[str, list[str]] = {c: [] for c in CONDITIONS}
        for t in self.thresholds:
            hit = crossed((t,), signals)
            if hit:
                by_condition[CONDITION_OF[t.signal]] += hit
        out = {}
        for cond in CONDITIONS:
            if by_condition[cond]:
                self._last_crossed[cond] = now
                self._why[cond] = "; ".join(by_condition[cond])
            last = self._last_crossed.get(cond)
            active = last is not None and (last == now or now - last < self.transition_s)
            out[cond] = (active, self._why.get(cond, "") if active else "")
        return out
