"""Pure parts of the stats and metrics: kernel file parsers, the CPU rate sampler, the
Prometheus text writer, /metrics/resource rendering, container and sandbox selection."""

import types
from typing import Any

from cri_api.v1 import api_pb2

from cri.runtime.usage import parse_net_dev
from kubelet_py.metrics.kubelet import operation_name
from kubelet_py.metrics.registry import Counter, Gauge, Histogram, Registry, fmt_value
from kubelet_py.metrics.resource import resource_metrics_text
from kubelet_py.stats.node import (
    memory_from_meminfo,
    memory_from_v1_root,
    parse_boot_time,
    parse_proc_stat_cpu_ns,
)
from kubelet_py.stats.rates import CpuRates
from kubelet_py.stats.summary import network_json, pick_containers, pick_sandboxes, rfc3339

NET_DEV = (
    "Inter-|   Receive                            |  Transmit\n"
    " face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs ...\n"
    "    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n"
    "  eth0: 5000 40 2 0 0 0 0 0 7000 50 3 0 0 0 0 0\n"
)


def test_parse_net_dev_takes_bytes_and_errors() -> None:
    """/proc/net/dev rows become rx/tx bytes and errors per interface."""
    rows = parse_net_dev(NET_DEV)
    assert [(r.name, r.rx_bytes, r.rx_errors, r.tx_bytes, r.tx_errors) for r in rows] == [
        ("lo", 100, 0, 100, 0),
        ("eth0", 5000, 2, 7000, 3),
    ]


def test_network_json_leaves_out_loopback_and_inlines_eth0() -> None:
    """NetworkStats lists every interface but lo and repeats eth0 inline."""
    out = network_json(0, parse_net_dev(NET_DEV))
    assert out["name"] == "eth0" and out["rxBytes"] == 5000 and out["txErrors"] == 3
    assert [i["name"] for i in out["interfaces"]] == ["eth0"]
    assert network_json(0, []) == {"time": "1970-01-01T00:00:00Z", "name": ""}


def test_cpu_rate_needs_two_samples_and_a_window() -> None:
    """usageNanoCores: None at first, then Δusage/Δt; a sample too soon repeats the last rate."""
    r = CpuRates(min_window_ns=1_000_000_000)
    assert r.observe("c", at_ns=0, usage_ns=0) is None
    assert r.observe("c", at_ns=2_000_000_000, usage_ns=1_000_000_000) == 500_000_000
    assert r.observe("c", at_ns=2_100_000_000, usage_ns=1_100_000_000) == 500_000_000
    assert r.observe("c", at_ns=4_000_000_000, usage_ns=3_000_000_000) == 1_000_000_000
    assert r.observe("c", at_ns=5_000_000_000, usage_ns=10) is None  # counter reset
    r.forget_stale(5_000_000_000 + r.forget_after_ns + 1)
    assert len(r) == 0


def test_proc_stat_cpu_and_boot_time() -> None:
    """Busy time excludes idle and iowait; btime is the boot time."""
    text = "cpu  100 10 50 1000 20 5 5 0 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\nbtime 1700000000\n"
    import os

    hz = os.sysconf("SC_CLK_TCK")
    assert parse_proc_stat_cpu_ns(text) == 170 * 1_000_000_000 // hz
    assert parse_boot_time(text) == 1700000000


def test_memory_readings() -> None:
    """Working set = usage - inactive file; available = total - working set."""
    meminfo = "MemTotal: 1000 kB\nMemFree: 400 kB\nInactive(file): 100 kB\nAnonPages: 250 kB\n"
    m = memory_from_meminfo(meminfo, "pgfault 7\npgmajfault 1\n")
    assert (m.usage_bytes, m.working_set_bytes, m.available_bytes) == (614400, 512000, 512000)
    assert (m.rss_bytes, m.page_faults, m.major_page_faults) == (256000, 7, 1)
    stat = "total_inactive_file 1000\ntotal_rss 3000\ntotal_pgfault 9\ntotal_pgmajfault 2\n"
    v1 = memory_from_v1_root("5000\n", stat, "MemTotal: 10 kB\n")
    assert (v1.usage_bytes, v1.working_set_bytes, v1.rss_bytes) == (5000, 4000, 3000)
    assert v1.available_bytes == 10240 - 4000


def _c(sid: str, name: str, created: int, state: int) -> Any:
    return types.SimpleNamespace(
        pod_sandbox_id=sid,
        metadata=types.SimpleNamespace(name=name),
        created_at=created,
        state=state,
    )


def test_pick_containers_keeps_running_or_latest() -> None:
    """Per container name: every running attempt, else only the newest one."""
    running, exited = api_pb2.CONTAINER_RUNNING, api_pb2.CONTAINER_EXITED
    picked = pick_containers(
        [
            _c("s", "a", 1, exited),
            _c("s", "a", 2, running),
            _c("s", "b", 1, exited),
            _c("s", "b", 3, exited),
        ]
    )
    assert sorted((c.metadata.name, c.created_at) for c in picked) == [("a", 2), ("b", 3)]


def test_pick_sandboxes_prefers_the_ready_one() -> None:
    """One sandbox per pod UID: a ready one beats a newer one that is not ready."""

    def sb(uid: str, created: int, state: int) -> Any:
        return types.SimpleNamespace(
            metadata=types.SimpleNamespace(uid=uid), created_at=created, state=state
        )

    ready, notready = api_pb2.SANDBOX_READY, api_pb2.SANDBOX_NOTREADY
    chosen = pick_sandboxes([sb("u", 1, ready), sb("u", 2, notready), sb("v", 5, notready)])
    assert chosen["u"].created_at == 1 and chosen["v"].created_at == 5


def test_registry_text_format() -> None:
    """HELP carries the stability level, families are sorted, histograms are cumulative."""
    reg = Registry()
    c = reg.register(Counter("b_total", "B things.", ["op"]))
    reg.register(Gauge("a", 'A "gauge"\nline'))
    h = reg.register(Histogram("c_seconds", "C.", buckets=(0.1, 1)))
    c.inc("x")
    c.inc("x", by=2)
    h.observe(0.05)
    h.observe(0.5)
    h.observe(5)
    assert reg.text().splitlines() == [
        '# HELP a [ALPHA] A "gauge"\\nline',
        "# TYPE a gauge",
        "a 0",
        "# HELP b_total [ALPHA] B things.",
        "# TYPE b_total counter",
        'b_total{op="x"} 3',
        "# HELP c_seconds [ALPHA] C.",
        "# TYPE c_seconds histogram",
        'c_seconds_bucket{le="0.1"} 1',
        'c_seconds_bucket{le="1"} 2',
        'c_seconds_bucket{le="+Inf"} 3',
        "c_seconds_sum 5.55",
        "c_seconds_count 3",
    ]
    assert fmt_value(1e-05) == "1e-05" and fmt_value(2.0) == "2" and fmt_value(0.25) == "0.25"


def test_operation_names_match_upstream() -> None:
    """CRI method names become upstream's operation_type labels."""
    assert operation_name("RunPodSandbox") == "run_podsandbox"
    assert operation_name("ListPodSandboxStats") == "list_podsandbox_stats"
    assert operation_name("PodSandboxStatus") == "podsandbox_status"
    assert operation_name("ExecSync") == "exec_sync"
    assert operation_name("ImageFsInfo") == "image_fs_info"
    assert operation_name("UpdateContainerResources") == "update_container"


def test_resource_metrics_text() -> None:
    """/metrics/resource: upstream's families, sorted labels, ms timestamps from the read times."""
    t = rfc3339(1_700_000_000_000_000_000)
    summary = {
        "node": {"cpu": {"time": t, "usageCoreNanoSeconds": 2_500_000_000},
                 "memory": {"time": t, "workingSetBytes": 1000}},
        "pods": [{
            "podRef": {"name": "p", "namespace": "n", "uid": "u"},
            "startTime": t,
            "containers": [{"name": "c", "startTime": t,
                            "cpu": {"time": t, "usageCoreNanoSeconds": 1_000_000},
                            "memory": {"time": t, "workingSetBytes": 42}}],
            "cpu": {"time": t, "usageCoreNanoSeconds": 1_000_000},
            "memory": {"time": t, "workingSetBytes": 50},
        }],
    }  # fmt: skip
    text = resource_metrics_text(summary, at_ns={"node": 1_700_000_000_123_000_000})
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    c = '{container="c",namespace="n",pod="p"}'
    assert lines == [
        f"container_cpu_usage_seconds_total{c} 0.001 1700000000000",
        f"container_memory_working_set_bytes{c} 42 1700000000000",
        f"container_start_time_seconds{c} 1700000000",
        "node_cpu_usage_seconds_total 2.5 1700000000123",
        "node_memory_working_set_bytes 1000 1700000000123",
        'pod_cpu_usage_seconds_total{namespace="n",pod="p"} 0.001 1700000000000',
        'pod_memory_working_set_bytes{namespace="n",pod="p"} 50 1700000000000',
        "resource_scrape_error 0",
    ]
    assert (
        "# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes"
        in text
    )
    assert resource_metrics_text(None).splitlines()[-1] == "resource_scrape_error 1"


class _FakeRuntime:
    """A runtime with no pods that counts how often its stats are listed."""

    def __init__(self) -> None:
        self.stats_calls = 0

    async def list_pod_sandbox(self, labels: dict[str, str] | None = None) -> list[Any]:
        return []

    async def list_containers(self, labels: dict[str, str] | None = None) -> list[Any]:
        return []

    async def list_pod_sandbox_stats(self, labels: dict[str, str] | None = None) -> list[Any]:
        self.stats_calls += 1
        return []

    async def list_container_stats(self, labels: dict[str, str] | None = None) -> list[Any]:
        return []

    async def image_fs_info(self) -> Any:
        return api_pb2.ImageFsInfoResponse()


def test_sampler_only_samples_while_stats_are_asked_for(tmp_path: Any) -> None:
    """Nobody asking: no CRI stats calls; once asked, the sampler keeps a previous sample,
    so the node's usageNanoCores is there on the next request."""
    import asyncio

    from kubelet_py.stats.summary import Sampler, SummaryProvider

    rt = _FakeRuntime()
    provider = SummaryProvider(
        node_name="n", root=tmp_path, log_root=tmp_path / "logs", runtime=rt, pods=list
    )
    sampler = Sampler(provider, period_s=0.01, active_s=60)

    async def scenario() -> dict[str, Any]:
        task = asyncio.create_task(sampler.run())
        await asyncio.sleep(0.1)
        idle_calls = rt.stats_calls
        first = await provider.summary()
        await asyncio.sleep(1.2)
        task.cancel()
        assert idle_calls == 0 and rt.stats_calls > 2
        assert "usageNanoCores" not in first["node"]["cpu"]
        return await provider.summary()

    summary = asyncio.run(scenario())
    assert summary["pods"] == [] and summary["node"]["nodeName"] == "n"
    assert summary["node"]["cpu"]["usageNanoCores"] >= 0
    assert summary["node"]["fs"]["capacityBytes"] > 0 and summary["node"]["runtime"] == {}


class _OldRuntime(_FakeRuntime):
    """containerd 1.6's shape: containers and their stats, no ListPodSandboxStats."""

    async def list_pod_sandbox(self, labels: dict[str, str] | None = None) -> list[Any]:
        meta = api_pb2.PodSandboxMetadata(name="p", namespace="n", uid="u")
        return [api_pb2.PodSandbox(id="sb", metadata=meta, state=api_pb2.SANDBOX_READY,
                                   created_at=1_700_000_000_000_000_000)]  # fmt: skip

    async def list_containers(self, labels: dict[str, str] | None = None) -> list[Any]:
        return [
            api_pb2.Container(id=f"c{i}", pod_sandbox_id="sb", state=api_pb2.CONTAINER_RUNNING,
                              metadata=api_pb2.ContainerMetadata(name=f"c{i}"),
                              created_at=1_700_000_000_000_000_000)
            for i in (1, 2)
        ]  # fmt: skip

    async def list_pod_sandbox_stats(self, labels: dict[str, str] | None = None) -> list[Any]:
        import grpc

        from kubelet_py.agent.cri_client import CRIError

        self.stats_calls += 1
        raise CRIError(grpc.StatusCode.UNIMPLEMENTED, "unknown method ListPodSandboxStats")

    async def list_container_stats(self, labels: dict[str, str] | None = None) -> list[Any]:
        out = []
        for i, (cpu, ws) in enumerate(((100, 1000), (50, 24)), start=1):
            cs = api_pb2.ContainerStats(attributes=api_pb2.ContainerAttributes(id=f"c{i}"))
            cs.cpu.timestamp = cs.memory.timestamp = 1_700_000_001_000_000_000 + i
            cs.cpu.usage_core_nano_seconds.value = cpu
            cs.memory.working_set_bytes.value = ws
            out.append(cs)
        return out


def test_pod_figures_from_container_stats_without_list_pod_sandbox_stats(tmp_path: Any) -> None:
    """A runtime without ListPodSandboxStats: each pod's cpu and memory are its containers'
    summed, and ListPodSandboxStats is not asked again."""
    import asyncio

    from kubelet_py.stats.summary import SummaryProvider

    rt = _OldRuntime()
    provider = SummaryProvider(
        node_name="n", root=tmp_path, log_root=tmp_path / "logs", runtime=rt, pods=list
    )
    asyncio.run(provider.summary(cpu_and_memory_only=True))
    (pod,) = asyncio.run(provider.summary(cpu_and_memory_only=True))["pods"]
    assert rt.stats_calls == 1
    assert pod["podRef"] == {"name": "p", "namespace": "n", "uid": "u"}
    assert pod["cpu"]["usageCoreNanoSeconds"] == 150 and pod["memory"]["workingSetBytes"] == 1024
    assert [c["name"] for c in pod["containers"]] == ["c1", "c2"]
    assert pod["containers"][1]["memory"]["workingSetBytes"] == 24
