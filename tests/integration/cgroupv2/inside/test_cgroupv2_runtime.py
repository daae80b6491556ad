"""The CgroupV2 driver and our RuntimeService on a cgroup2-only kernel (run in the guest).

Limits reach runc through the OCI spec (cpu quota/period/shares, memory limit, pids
limit); the driver makes the pod levels, enables controllers down the chain, reads
stats and OOM kills, and removes what it made.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cri.runtime.cgroups import CgroupV2, cpu_shares_to_weight
from cri.runtime.model import Resources
from tests.integration.cgroupv2.inside.conftest import (
    CGROUP_ROOT,
    Runtime,
    cgroup_dirs,
    read_kv,
)

SLEEPER = ["sh", "-c", "while true; do sleep 1; done"]


def test_driver_is_v2_beneath_own_cgroup(runtime: Runtime) -> None:
    """The runtime picks CgroupV2, rooted beneath its own (root) cgroup, controllers on."""
    assert isinstance(runtime.svc.cgroups, CgroupV2)
    assert runtime.svc.status_info() == {"cgroupVersion": 2, "cgroupBase": "/kubelet-py-test"}
    pod_id = runtime.pod("chain")
    pod = runtime.pod_cgroup(pod_id)
    assert pod == CGROUP_ROOT / "kubelet-py-test/kubepods/besteffort/poduid-chain"
    for level in (pod.parent, pod.parent.parent, runtime.base):
        enabled = set((level / "cgroup.subtree_control").read_text().split())
        assert {"cpu", "memory", "pids", "io"} <= enabled, (level, enabled)


def test_cpu_quota_throttles(runtime: Runtime) -> None:
    """A busy loop at a 10% quota gets cpu.max "10000 100000", is throttled, uses ~0.1 core."""
    pod_id = runtime.pod("cpu")
    ctr_id = runtime.container(
        pod_id, "spin", ["sh", "-c", "while :; do :; done"],
        Resources(cpu_quota=10000, cpu_period=100000),
    )  # fmt: skip
    cgroup = runtime.cgroup(ctr_id)
    assert (cgroup / "cpu.max").read_text().split() == ["10000", "100000"]
    time.sleep(0.5)
    first, t0 = runtime.svc.stats(ctr_id), time.monotonic()
    time.sleep(3.0)
    second, t1 = runtime.svc.stats(ctr_id), time.monotonic()
    assert first is not None and second is not None
    share = (second.cpu_usage_ns - first.cpu_usage_ns) / ((t1 - t0) * 1e9)
    assert 0.05 < share < 0.15, f"the loop used {share:.3f} of a core"
    assert second.cpu_throttled_periods > first.cpu_throttled_periods > 0
    assert read_kv(cgroup / "cpu.stat")["nr_throttled"] >= second.cpu_throttled_periods


def test_memory_limit_oom_kill_is_reported(runtime: Runtime) -> None:
    """Over memory.max the container is OOM-killed: exit 137, reason OOMKilled."""
    pod_id = runtime.pod("oom")
    limit = 32 * 1024 * 1024
    ctr_id = runtime.container(
        pod_id, "hog",
        ["sh", "-c", "x=$(busybox head -c 200000000 /dev/zero | busybox tr '\\0' a); sleep 5"],
        Resources(memory_limit_bytes=limit),
    )  # fmt: skip
    cgroup = runtime.cgroup(ctr_id)
    assert int((cgroup / "memory.max").read_text()) == limit
    record = runtime.wait_exited(ctr_id)
    assert (record.exit_code, record.reason) == (137, "OOMKilled"), record
    assert read_kv(cgroup / "memory.events")["oom_kill"] >= 1
    stats = runtime.svc.stats(ctr_id)
    assert stats is not None and stats.oom_kills >= 1


def test_pids_limit_refuses_forks(runtime: Runtime) -> None:
    """With pids.max N the shell forks N-1 children, then fork fails with EAGAIN."""
    limit = 8
    pod_id = runtime.pod("pids")
    ctr_id = runtime.container(
        pod_id, "forker",
        ["sh", "-c", "i=0; while [ $i -lt 40 ]; do sleep 300 & echo forked; i=$((i+1)); done"],
        Resources(pids_limit=limit),
    )  # fmt: skip
    cgroup = runtime.cgroup(ctr_id)
    assert (cgroup / "pids.max").read_text().strip() == str(limit)
    record = runtime.wait_exited(ctr_id)
    lines = runtime.log(ctr_id)
    assert lines.count("forked") == limit - 1, lines  # the shell itself is the Nth task
    assert any("can't fork: Resource temporarily unavailable" in line for line in lines), lines
    assert record.exit_code != 0
    assert read_kv(cgroup / "pids.events")["max"] >= 1


def runc_linear_weight(shares: int) -> int:
    """runc 1.1's shares -> cpu.weight conversion (replaced upstream in 2024)."""
    return 1 + ((shares - 2) * 9999) // 262142


@pytest.mark.parametrize("shares", [2, 512, 1024, 4096, 262144])
def test_cpu_weight_follows_shares_formula(runtime: Runtime, shares: int) -> None:
    """cpu.weight is cpu_shares_to_weight(shares): 1024 -> 100, 2 -> 1, 262144 -> 10000."""
    pod_id = runtime.pod(f"weight{shares}")
    ctr_id = runtime.container(pod_id, "main", SLEEPER, Resources(cpu_shares=shares))
    weight = int((runtime.cgroup(ctr_id) / "cpu.weight").read_text())
    wanted = cpu_shares_to_weight(shares)
    assert weight == wanted, f"shares {shares}: cpu.weight {weight}" + (
        " (runc's old linear formula)" if weight == runc_linear_weight(shares) else ""
    )


def test_stats_report_usage(runtime: Runtime) -> None:
    """Container and pod stats come from cpu.stat, memory.current and memory.stat."""
    pod_id = runtime.pod("stats")
    ctr_id = runtime.container(
        pod_id, "main",
        ["sh", "-c", "x=$(busybox head -c 4000000 /dev/zero | busybox tr '\\0' a); "
                     "while :; do sleep 1; done"],
        Resources(memory_limit_bytes=256 * 1024 * 1024),
    )  # fmt: skip
    time.sleep(2.0)
    stats = runtime.svc.stats(ctr_id)
    pod = runtime.svc.pod_stats(pod_id)
    assert stats is not None and pod is not None
    assert stats.cpu_usage_ns > 0 and stats.memory_usage_bytes > 0
    assert 0 < stats.memory_working_set_bytes <= stats.memory_usage_bytes
    assert pod.cpu_usage_ns >= stats.cpu_usage_ns
    # the two cgroups are read one after the other while the shell may still free memory
    assert pod.memory_usage_bytes >= stats.memory_usage_bytes - 1024 * 1024
    assert stats.oom_kills == 0
    # what the CRI stats calls add: anon as RSS, fault counters, memory.max, pids.current
    assert stats.memory_rss_bytes >= 4_000_000 and stats.memory_page_faults > 0
    assert stats.memory_limit_bytes == 256 * 1024 * 1024 and pod.memory_limit_bytes is None
    assert stats.pids >= 2 and pod.pids >= stats.pids  # sh and its sleep


@pytest.mark.parametrize(
    ("qos", "cgroup_parent"),
    [
        ("besteffort", ""),
        ("burstable", "kubepods/burstable/poduid-rm"),
        ("guaranteed", "kubepods/poduid-rm"),
    ],
)
def test_remove_sandbox_leaves_no_cgroups(runtime: Runtime, qos: str, cgroup_parent: str) -> None:
    """A pod with a running and an exited container: removing it leaves no cgroup dir."""
    pod_id = runtime.pod("rm", cgroup_parent=cgroup_parent)
    running = runtime.container(pod_id, "running", SLEEPER, Resources(memory_limit_bytes=64 << 20))
    done = runtime.container(pod_id, "done", ["sh", "-c", "exit 3"], Resources(pids_limit=16))
    assert runtime.wait_exited(done).exit_code == 3
    pod = runtime.pod_cgroup(pod_id)
    assert runtime.cgroup(running).parent == pod
    assert runtime.cgroup(running).is_dir() and runtime.cgroup(done).is_dir()
    assert cgroup_dirs(runtime.base), "nothing was created"
    runtime.run(runtime.svc.stop_pod_sandbox(pod_id))
    runtime.run(runtime.svc.remove_pod_sandbox(pod_id))
    assert cgroup_dirs(runtime.base) == [], f"{qos}: left {cgroup_dirs(runtime.base)}"
    runtime.run(runtime.svc.close())
    assert not runtime.base.exists()


def test_runtime_in_a_service_cgroup_applies_limits(tmp_path: Path, image_root: Path) -> None:
    """Run as a service would be (alone in /kubelet.slice/kubelet-py.service, controllers
    delegated to it), the runtime still gets memory and pids limits onto its containers."""
    slice_dir = CGROUP_ROOT / "kubelet.slice"
    service = slice_dir / "kubelet-py.service"
    (CGROUP_ROOT / "cgroup.subtree_control").write_text("+cpu +memory +pids +io")
    slice_dir.mkdir()
    try:
        (slice_dir / "cgroup.subtree_control").write_text("+cpu +memory +pids +io")
        service.mkdir()
        proc = subprocess.run(
            [sys.executable, "-m", "tests.integration.cgroupv2.inside.service_cgroup",
             str(service), str(tmp_path), str(image_root)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output
        assert "memory.max=67108864 pids.max=16" in proc.stdout, proc.stdout + proc.stderr
    finally:
        for d in sorted(
            (p for p in slice_dir.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            d.rmdir()
        slice_dir.rmdir()
