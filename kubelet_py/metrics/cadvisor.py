"""/metrics/cadvisor, a subset: per-container and per-pod usage under cAdvisor's metric names.

Made from the full summary. Containers carry `container`, `namespace`, `pod` labels
(cAdvisor also adds `id`, `image` and `name`, which the summary does not carry); the
pod-level cgroup is the series with `container=""`, as cAdvisor reports it, and pod
network counters hang off it with an `interface` label. Timestamps in ms, as cAdvisor's.
"""

from typing import Any

from kubelet_py.metrics.registry import Sample, family_text
from kubelet_py.metrics.resource import _ms

Labels = tuple[tuple[str, str], ...]

_FAMILIES = {
    "container_cpu_usage_seconds_total": ("counter", "Cumulative cpu time consumed in seconds."),
    "container_memory_usage_bytes": (
        "gauge",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
    ),
    "container_memory_working_set_bytes": ("gauge", "Current working set in bytes."),
    "container_memory_rss": ("gauge", "Size of RSS in bytes."),
    "container_fs_usage_bytes": (
        "gauge", "Number of bytes that are consumed by the container on this filesystem."
    ),
    "container_network_receive_bytes_total": ("counter", "Cumulative count of bytes received"),
    "container_network_transmit_bytes_total": ("counter", "Cumulative count of bytes transmitted"),
    "container_start_time_seconds": (
        "gauge", "Start time of the container since unix epoch in seconds."
    ),
}  # fmt: skip


def cadvisor_metrics_text(summary: dict[str, Any], *, at_ns: dict[str, int] | None = None) -> str:
    precise = at_ns or {}
    series: dict[str, list[Sample]] = {name: [] for name in _FAMILIES}

    def when(key: str, stamp: str) -> int:
        return precise[key] // 1_000_000 if key in precise else _ms(stamp)

    def usage(labels: Labels, key: str, item: dict[str, Any]) -> None:
        cpu, mem = item.get("cpu") or {}, item.get("memory") or {}
        if "usageCoreNanoSeconds" in cpu:
            series["container_cpu_usage_seconds_total"].append(
                Sample(labels, cpu["usageCoreNanoSeconds"] / 1e9, when(key, cpu["time"]))
            )
        for field, name in (
            ("usageBytes", "container_memory_usage_bytes"),
            ("workingSetBytes", "container_memory_working_set_bytes"),
            ("rssBytes", "container_memory_rss"),
        ):
            if field in mem:
                series[name].append(Sample(labels, float(mem[field]), when(key, mem["time"])))

    for pod in summary["pods"]:
        ref = pod["podRef"]
        for c in pod.get("containers", ()):
            labels = (
                ("container", c["name"]),
                ("namespace", ref["namespace"]),
                ("pod", ref["name"]),
            )
            usage(labels, f"container/{ref['uid']}/{c['name']}", c)
            series["container_start_time_seconds"].append(
                Sample(labels, _ms(c["startTime"]) / 1000.0)
            )
            rootfs = c.get("rootfs") or {}
            if "usedBytes" in rootfs:
                series["container_fs_usage_bytes"].append(
                    Sample(labels, float(rootfs["usedBytes"]), _ms(rootfs["time"]))
                )
        pod_labels: Labels = (
            ("container", ""),
            ("namespace", ref["namespace"]),
            ("pod", ref["name"]),
        )
        usage(pod_labels, f"pod/{ref['uid']}", pod)
        net = pod.get("network") or {}
        for iface in net.get("interfaces", ()):
            net_labels: Labels = (*pod_labels[:1], ("interface", iface["name"]), *pod_labels[1:])
            for field, name in (
                ("rxBytes", "container_network_receive_bytes_total"),
                ("txBytes", "container_network_transmit_bytes_total"),
            ):
                if field in iface:
                    series[name].append(Sample(net_labels, float(iface[field]), _ms(net["time"])))
    lines: list[str] = []
    for name, (kind, help_text) in sorted(_FAMILIES.items()):
        if series[name]:
            samples = sorted(series[name], key=lambda s: s.labels)
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += family_text(name, kind, help_text, "", samples)[2:]
    return "\n".join(lines) + "\n"
