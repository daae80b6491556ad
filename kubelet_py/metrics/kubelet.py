"""The agent's own metrics on /metrics, named and bucketed as pkg/kubelet/metrics/metrics.go.

One process-wide registry (the agent is one per process), updated where things happen:
the CRI client times every call (runtime_operations_*), pod workers time their syncs
and the first Running of a pod, the PLEG relist sets the running counts.
"""

from collections.abc import Iterable
from typing import Any

from cri_api.v1 import api_pb2

from kubelet_py.metrics.registry import (
    DEF_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    Registry,
    exponential_buckets,
)

REGISTRY = Registry()

node_name = REGISTRY.register(
    Gauge("kubelet_node_name", "The node's name. The count is always 1.", ["node"])
)
pod_worker_duration = REGISTRY.register(
    Histogram(
        "kubelet_pod_worker_duration_seconds",
        "Duration in seconds to sync a single pod. Broken down by operation type: "
        "create, update, or sync",
        ["operation_type"],
        buckets=DEF_BUCKETS,
    )
)
pod_start_duration = REGISTRY.register(
    Histogram(
        "kubelet_pod_start_duration_seconds",
        "Duration in seconds from kubelet seeing a pod for the first time to the pod "
        "starting to run",
        buckets=(0.5, 1, 2, 3, 4, 5, 6, 8, 10, 20, 30, 45, 60, 120, 180, 240, 300, 360,
                 480, 600, 900, 1200, 1800, 2700, 3600),
    )
)  # fmt: skip
pleg_relist_duration = REGISTRY.register(
    Histogram(
        "kubelet_pleg_relist_duration_seconds",
        "Duration in seconds for relisting pods in PLEG.",
        buckets=DEF_BUCKETS,
    )
)
runtime_operations = REGISTRY.register(
    Counter(
        "kubelet_runtime_operations_total",
        "Cumulative number of runtime operations by operation type.",
        ["operation_type"],
    )
)
runtime_operations_duration = REGISTRY.register(
    Histogram(
        "kubelet_runtime_operations_duration_seconds",
        "Duration in seconds of runtime operations. Broken down by operation type.",
        ["operation_type"],
        buckets=exponential_buckets(0.005, 2.5, 14),
    )
)
runtime_operations_errors = REGISTRY.register(
    Counter(
        "kubelet_runtime_operations_errors_total",
        "Cumulative number of runtime operation errors by operation type.",
        ["operation_type"],
    )
)
running_pods = REGISTRY.register(
    Gauge("kubelet_running_pods", "Number of pods that have a running pod sandbox")
)
running_containers = REGISTRY.register(
    Gauge(
        "kubelet_running_containers", "Number of containers currently running", ["container_state"]
    )
)
started_pods = REGISTRY.register(
    Counter("kubelet_started_pods_total", "Cumulative number of pods started")
)
started_containers = REGISTRY.register(
    Counter(
        "kubelet_started_containers_total",
        "Cumulative number of containers started",
        ["container_type"],
    )
)


_OPERATION_NAMES = {"UpdateContainerResources": "update_container"}


def operation_name(rpc: str) -> str:
    """A CRI method name as upstream's operation_type label: RunPodSandbox -> run_podsandbox."""
    if rpc in _OPERATION_NAMES:
        return _OPERATION_NAMES[rpc]
    text = rpc.replace("PodSandbox", "Podsandbox")
    out = []
    for i, ch in enumerate(text):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


# kubecontainer.State names: the container_state label of kubelet_running_containers
_CONTAINER_STATES = {
    api_pb2.ContainerState.CONTAINER_CREATED: "created",
    api_pb2.ContainerState.CONTAINER_RUNNING: "running",
    api_pb2.ContainerState.CONTAINER_EXITED: "exited",
}


def set_running_counts(sandboxes: Iterable[Any], containers: Iterable[Any]) -> None:
    """kubelet_running_pods (pods with a ready sandbox) and kubelet_running_containers by
    state, from CRI ListPodSandbox and ListContainers answers."""
    ready = api_pb2.PodSandboxState.SANDBOX_READY
    running_pods.set(len({s.metadata.uid for s in sandboxes if s.state == ready}))
    counts: dict[tuple[str, ...], float] = {}
    for c in containers:
        key = (_CONTAINER_STATES.get(c.state, "unknown"),)
        counts[key] = counts.get(key, 0) + 1
    running_containers.replace(counts)
