"""The node's own figures, read from the kernel: what cAdvisor's root container gives upstream.

    cpu      the root cgroup's cumulative usage (v1 cpuacct.usage, v2 cpu.stat usage_usec),
             else /proc/stat (every state but idle and iowait)
    memory   v1: the root memory cgroup (usage_in_bytes, memory.stat totals);
             v2: /proc/meminfo and /proc/vmstat; working set = usage - inactive file
    fs       statvfs of a directory (the root dir, the image store)
    rlimit   min(pid_max, threads-max) and the task count from /proc/loadavg
    network  /proc/net/dev of the agent's own network namespace (the node's)

Parsers are pure; readers are blocking and run in a thread.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_USER_HZ = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class MemoryReading:
    usage_bytes: int
    working_set_bytes: int
    rss_bytes: int
    page_faults: int
    major_page_faults: int
    available_bytes: int


@dataclass(frozen=True)
class FsReading:
    capacity_bytes: int
    available_bytes: int
    used_bytes: int
    inodes: int
    inodes_free: int
    inodes_used: int


@dataclass(frozen=True)
class RlimitReading:
    max_pid: int | None
    running_tasks: int | None


def parse_kv(text: str, sep: str | None = None) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat, /proc/vmstat) or `Key: value kB` (meminfo)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.replace(":", " ").split() if sep is None else line.split(sep)
        if len(parts) >= 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_proc_stat_cpu_ns(text: str) -> int:
    """Busy CPU time in ns from /proc/stat's `cpu` line (all but idle and iowait)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            ticks = [int(v) for v in line.split()[1:]]
            # user nice system idle iowait irq softirq steal (guest time is inside user/nice)
            busy = sum(ticks[:3]) + sum(ticks[5:8])
            return busy * 1_000_000_000 // _USER_HZ
    raise ValueError("/proc/stat has no cpu line")


def parse_boot_time(text: str) -> int:
    """Seconds since the epoch when the machine booted (/proc/stat `btime`)."""
    for line in text.splitlines():
        if line.startswith("btime "):
            return int(line.split()[1])
    raise ValueError("/proc/stat has no btime line")


def memory_from_meminfo(meminfo: str, vmstat: str) -> MemoryReading:
    """Machine memory without a root memory cgroup (cgroup v2): meminfo is in kB."""
    m = {k: v * 1024 for k, v in parse_kv(meminfo).items()}
    vm = parse_kv(vmstat)
    total = m.get("MemTotal", 0)
    usage = total - m.get("MemFree", 0)
    working_set = max(0, usage - m.get("Inactive(file)", 0))
    return MemoryReading(
        usage_bytes=usage,
        working_set_bytes=working_set,
        rss_bytes=m.get("AnonPages", 0),
        page_faults=vm.get("pgfault", 0),
        major_page_faults=vm.get("pgmajfault", 0),
        available_bytes=max(0, total - working_set),
    )


def memory_from_v1_root(usage_in_bytes: str, memory_stat: str, meminfo: str) -> MemoryReading:
    """Machine memory from the v1 root memory cgroup, as cAdvisor reads its root container."""
    usage = int(usage_in_bytes.strip())
    st = parse_kv(memory_stat)
    total = parse_kv(meminfo).get("MemTotal", 0) * 1024
    working_set = max(0, usage - st.get("total_inactive_file", 0))
    return MemoryReading(
        usage_bytes=usage,
        working_set_bytes=working_set,
        rss_bytes=st.get("total_rss", 0),
        page_faults=st.get("total_pgfault", 0),
        major_page_faults=st.get("total_pgmajfault", 0),
        available_bytes=max(0, total - working_set),
    )


class NodeReader:
    """Reads the machine's figures; `cgroup_root` is injectable for tests."""

    def __init__(self, *, cgroup_root: Path = CGROUP_ROOT, proc: Path = Path("/proc")) -> None:
        self.cgroup_root = cgroup_root
        self.proc = proc
        self.v2 = (cgroup_root / "cgroup.controllers").exists()

    def cpu_usage_ns(self) -> int:
        if self.v2:
            stat = parse_kv(_read(self.cgroup_root / "cpu.stat"))
            if "usage_usec" in stat:
                return stat["usage_usec"] * 1000
        else:
            for d in ("cpuacct", "cpu,cpuacct"):
                f = self.cgroup_root / d / "cpuacct.usage"
                if f.exists():
                    return int(_read(f).strip())
        return parse_proc_stat_cpu_ns(_read(self.proc / "stat"))

    def memory(self) -> MemoryReading:
        meminfo = _read(self.proc / "meminfo")
        root = self.cgroup_root / "memory"
        if not self.v2 and (root / "memory.usage_in_bytes").exists():
            return memory_from_v1_root(
                _read(root / "memory.usage_in_bytes"), _read(root / "memory.stat"), meminfo
            )
        return memory_from_meminfo(meminfo, _read(self.proc / "vmstat"))

    def boot_time_s(self) -> int:
        return parse_boot_time(_read(self.proc / "stat"))

    def rlimit(self) -> RlimitReading:
        limits = []
        for name in ("pid_max", "threads-max"):
            try:
                limits.append(int(_read(self.proc / "sys" / "kernel" / name).strip()))
            except (OSError, ValueError):
                continue
        tasks: int | None
        try:
            tasks = int(_read(self.proc / "loadavg").split()[3].split("/")[1])
        except (OSError, ValueError, IndexError):
            tasks = None
        return RlimitReading(max_pid=min(limits) if limits else None, running_tasks=tasks)


def fs_reading(path: Path) -> FsReading:
    """statvfs of the filesystem holding `path`, in cAdvisor's terms (used = total - free)."""
    st = os.statvfs(path)
    return FsReading(
        capacity_bytes=st.f_blocks * st.f_frsize,
        available_bytes=st.f_bavail * st.f_frsize,
        used_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize,
        inodes=st.f_files,
        inodes_free=st.f_ffree,
        inodes_used=st.f_files - st.f_ffree,
    )


def _read(path: Path) -> str:
    return path.read_text()


def now_ns() -> int:
    return time.time_ns()
