"""The node part of /stats/summary on a cgroup2-only kernel: the root cgroup's cpu.stat and
/proc/meminfo + /proc/vmstat (there is no root memory.current in v2)."""

import time
from pathlib import Path

from kubelet_py.stats.node import NodeReader


def test_node_reader_on_cgroup2() -> None:
    """cpu from the root cpu.stat grows with work; memory comes from meminfo and adds up."""
    reader = NodeReader()
    assert reader.v2
    before = reader.cpu_usage_ns()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass  # burn some CPU so the root counter must move
    after = reader.cpu_usage_ns()
    assert 0 < before < after
    mem = reader.memory()
    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    assert 0 < mem.working_set_bytes <= mem.usage_bytes <= total
    assert mem.available_bytes == total - mem.working_set_bytes
    assert mem.page_faults > 0 and mem.rss_bytes > 0
    assert reader.rlimit().max_pid and reader.boot_time_s() > 0
