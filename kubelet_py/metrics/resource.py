"""/metrics/resource: what metrics-server scrapes, made from a CPU-and-memory summary.

The families, labels, HELP texts and stability levels of upstream's
pkg/kubelet/metrics/collectors/resource_metrics.go; each sample carries the time
its figure was read (milliseconds), except container_start_time_seconds.
`resource_scrape_error` is 1 when the summary could not be made (then nothing else
is reported). The deprecated `scrape_error` twin is hidden upstream since 1.30 and
left out here too.
"""

import datetime
from collections.abc import Iterable
from typing import Any

from kubelet_py.metrics.registry import Sample, family_text

_FAMILIES = (
    (
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        "STABLE",
    ),
    (
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        "STABLE",
    ),
    (
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
        "STABLE",
    ),
    (
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        "STABLE",
    ),
    (
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        "STABLE",
    ),
    (
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        "STABLE",
    ),
    ("pod_memory_working_set_bytes", "gauge", "Current working set of the pod in bytes", "STABLE"),
    (
        "resource_scrape_error",
        "gauge",
        "1 if there was an error while getting container metrics, 0 otherwise",
        "STABLE",
    ),
)


def _ms(rfc3339: str) -> int:
    dt = datetime.datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    return int(dt.timestamp() * 1000)


def _s(rfc3339: str) -> float:
    return _ms(rfc3339) / 1000.0


def resource_metrics_text(
    summary: dict[str, Any] | None, *, at_ns: dict[str, int] | None = None
) -> str:
    """The exposition for `summary` (None: the summary failed, report only the error).

    `at_ns` may give precise read times (ns) by the same keys as the sample timestamps
    ("node", "pod/<uid>", "container/<uid>/<name>"); without it the summary's
    whole-second times are used.
    """
    precise = at_ns or {}
    series: dict[str, list[Sample]] = {name: [] for name, *_ in _FAMILIES}

    def when(key: str, stamp: str) -> int:
        return precise[key] // 1_000_000 if key in precise else _ms(stamp)

    series["resource_scrape_error"].append(Sample((), 0.0 if summary is not None else 1.0))
    if summary is not None:
        node = summary["node"]
        cpu, mem = node.get("cpu") or {}, node.get("memory") or {}
        if "usageCoreNanoSeconds" in cpu:
            series["node_cpu_usage_seconds_total"].append(
                Sample((), cpu["usageCoreNanoSeconds"] / 1e9, when("node", cpu["time"]))
            )
        if "workingSetBytes" in mem:
            series["node_memory_working_set_bytes"].append(
                Sample((), float(mem["workingSetBytes"]), when("node", mem["time"]))
            )
        for pod in summary["pods"]:
            ref = pod["podRef"]
            pod_labels = (("namespace", ref["namespace"]), ("pod", ref["name"]))
            for c in pod.get("containers", ()):
                labels = (("container", c["name"]), *pod_labels)
                key = f"container/{ref['uid']}/{c['name']}"
                if _s(c["startTime"]) > 0:
                    series["container_start_time_seconds"].append(
                        Sample(labels, _s(c["startTime"]))
                    )
                ccpu, cmem = c.get("cpu") or {}, c.get("memory") or {}
                if "usageCoreNanoSeconds" in ccpu:
                    series["container_cpu_usage_seconds_total"].append(
                        Sample(labels, ccpu["usageCoreNanoSeconds"] / 1e9, when(key, ccpu["time"]))
                    )
                if "workingSetBytes" in cmem:
                    series["container_memory_working_set_bytes"].append(
                        Sample(labels, float(cmem["workingSetBytes"]), when(key, cmem["time"]))
                    )
            pcpu, pmem = pod.get("cpu") or {}, pod.get("memory") or {}
            key = f"pod/{ref['uid']}"
            if "usageCoreNanoSeconds" in pcpu:
                series["pod_cpu_usage_seconds_total"].append(
                    Sample(pod_labels, pcpu["usageCoreNanoSeconds"] / 1e9, when(key, pcpu["time"]))
                )
            if "workingSetBytes" in pmem:
                series["pod_memory_working_set_bytes"].append(
                    Sample(pod_labels, float(pmem["workingSetBytes"]), when(key, pmem["time"]))
                )
    lines: list[str] = []
    for name, kind, help_text, stability in _FAMILIES:
        samples: Iterable[Sample] = sorted(series[name], key=lambda s: s.labels)
        if series[name]:
            lines += family_text(name, kind, help_text, stability, samples)
    return "\n".join(lines) + "\n"
