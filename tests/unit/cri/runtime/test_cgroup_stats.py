"""cgroup stats from fake v1 and v2 trees: what the CRI stats calls report per cgroup."""

from pathlib import Path

from cri.runtime.cgroups import CgroupV1, CgroupV2
from cri.runtime.usage import dir_usage


def _write(d: Path, files: dict[str, str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)


def test_v2_stats(tmp_path: Path) -> None:
    """v2: anon is RSS, pgfault/pgmajfault, memory.max as the limit ("max" = none), pids."""
    d = tmp_path / "own" / "kpy" / "pod1"
    _write(d, {
        "cpu.stat": "usage_usec 1500\nnr_periods 4\nnr_throttled 1\n",
        "memory.stat": "anon 3000\ninactive_file 200\npgfault 17\npgmajfault 2\n",
        "memory.current": "5000\n",
        "memory.events": "oom_kill 0\n",
        "memory.max": "8192\n",
        "pids.current": "3\n",
    })  # fmt: skip
    drv = CgroupV2(parent_name="kpy", proc_self_cgroup="0::/own\n", root=tmp_path)
    s = drv.stats("/own/kpy/pod1")
    assert (s.cpu_usage_ns, s.memory_usage_bytes, s.memory_working_set_bytes) == (
        1_500_000,
        5000,
        4800,
    )
    assert (s.memory_rss_bytes, s.memory_page_faults, s.memory_major_page_faults) == (3000, 17, 2)
    assert (s.memory_limit_bytes, s.pids) == (8192, 3)
    (d / "memory.max").write_text("max\n")
    assert drv.stats("/own/kpy/pod1").memory_limit_bytes is None


def test_v1_stats(tmp_path: Path) -> None:
    """v1: total_* counters of memory.stat, hierarchical_memory_limit (LLONG_MAX = none)."""
    path = "/own/kpy/pod1"
    _write(tmp_path / "memory" / path.lstrip("/"), {
        "memory.stat": "total_rss 3000\ntotal_inactive_file 100\ntotal_pgfault 9\n"
                       "total_pgmajfault 1\nhierarchical_memory_limit 9223372036854771712\n",
        "memory.usage_in_bytes": "4000\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        "memory.limit_in_bytes": "9223372036854771712\n",
    })  # fmt: skip
    _write(tmp_path / "cpuacct" / path.lstrip("/"), {"cpuacct.usage": "777\n"})
    _write(tmp_path / "pids" / path.lstrip("/"), {"pids.current": "2\n"})
    drv = CgroupV1(parent_name="kpy", proc_self_cgroup="4:memory:/own\n", root=tmp_path)
    s = drv.stats(path)
    assert (s.cpu_usage_ns, s.memory_working_set_bytes, s.memory_rss_bytes) == (777, 3900, 3000)
    assert (s.memory_page_faults, s.memory_major_page_faults, s.pids) == (9, 1, 2)
    assert s.memory_limit_bytes is None


def test_dir_usage_counts_blocks_and_each_inode_once(tmp_path: Path) -> None:
    """du-like: allocated blocks, hard links once, the directory itself included."""
    (tmp_path / "a").write_bytes(b"x" * 10000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "link").hardlink_to(tmp_path / "a")
    u = dir_usage(tmp_path)
    assert u.inodes_used == 3  # top dir, sub, one file
    assert u.used_bytes >= 10000
    assert dir_usage(tmp_path / "missing").inodes_used == 0
