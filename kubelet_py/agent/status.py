"""The pod status the API sees, derived from spec + observations. Pure.

Patched only when it changes (the status manager compares with what it sent last).
"""

import datetime
from collections.abc import Mapping
from typing import Any

from kubelet_py.agent.model import Container, Pod
from kubelet_py.agent.plan import ContainerObs, CState, PodObs, is_sidecar, pod_phase


def rfc3339(ns: int) -> str | None:
    if not ns:
        return None
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def qos_class(pod: Pod) -> str:
    """Guaranteed / Burstable / BestEffort, by the rules of the pod QoS docs."""
    cs = [*pod.containers, *pod.init_containers]
    if not any(c.requests or c.limits for c in cs):
        return "BestEffort"
    for c in cs:
        for res in ("cpu", "memory"):
            lim = c.limits.get(res)
            req = c.requests.get(res, lim)
            if lim is None or req != lim:
                return "Burstable"
    return "Guaranteed"


def _container_status(
    c: Container,
    group: tuple[ContainerObs, ...],
    *,
    waiting: Mapping[str, tuple[str, str]],
    ready: bool,
    started: bool,
) -> dict[str, Any]:
    latest = group[0] if group else None
    st: dict[str, Any] = {
        "name": c.name,
        "image": c.image,
        "imageID": latest.image_ref if latest else "",
        "ready": ready,
        "restartCount": max(0, len(group) - 1) if not latest else latest.attempt,
        "started": bool(latest and latest.state == CState.RUNNING and started),
    }
    if latest is not None:
        st["containerID"] = f"kubelet-py://{latest.id}"
    if c.name in waiting and (latest is None or latest.state != CState.RUNNING):
        reason, message = waiting[c.name]
        st["state"] = {"waiting": {"reason": reason, "message": message}}
    elif latest is None:
        st["state"] = {"waiting": {"reason": "ContainerCreating"}}
    else:
        st["state"] = _state(latest)
    if len(group) > 1:
        st["lastState"] = _state(group[1])
    elif latest is not None and latest.state == CState.EXITED and c.name in waiting:
        st["lastState"] = _state(latest)
    else:
        st["lastState"] = {}
    return st


def _state(o: ContainerObs) -> dict[str, Any]:
    if o.state == CState.RUNNING:
        return {"running": {"startedAt": rfc3339(o.started_at_ns)}}
    if o.state == CState.CREATED:
        return {"waiting": {"reason": "ContainerCreating"}}
    return {
        "terminated": {
            "exitCode": o.exit_code,
            "reason": o.reason or ("Completed" if o.exit_code == 0 else "Error"),
            "message": o.message or None,
            "startedAt": rfc3339(o.started_at_ns),
            "finishedAt": rfc3339(o.finished_at_ns),
            "containerID": f"kubelet-py://{o.id}",
        }
    }


def pod_status(
    pod: Pod,
    obs: PodObs,
    *,
    host_ip: str,
    pod_ip: str,
    start_time: str | None,
    waiting: Mapping[str, tuple[str, str]],
    readiness: Mapping[str, bool],
    init_failed: bool,
    startup: Mapping[str, bool] | None = None,
    now: str,
    previous_conditions: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The full `status` object. `waiting[name]` = (reason, message) for ErrImagePull & co.;
    `readiness[name]` / `startup[name]`: whether that container's probe has passed."""
    phase = pod_phase(pod, obs, init_failed=init_failed)

    def has_started(c: Container) -> bool:
        """Running, and its startup probe (if any) has succeeded."""
        return c.startup is None or (startup or {}).get(c.name, False)

    def is_ready(c: Container) -> bool:
        o = obs.latest(c.name)
        if o is None or o.state != CState.RUNNING or not has_started(c):
            return False
        return readiness.get(c.name, c.readiness is None)

    inits_done = all(
        (o := obs.latest(c.name)) is not None
        and (
            (o.state == CState.EXITED and o.exit_code == 0)
            or (is_sidecar(c) and o.state == CState.RUNNING)
        )
        for c in pod.init_containers
    )
    containers_ready = bool(pod.containers) and all(is_ready(c) for c in pod.containers)
    if phase == "Succeeded":
        containers_ready = False

    def cond(kind: str, ok: bool, reason: str = "") -> dict[str, Any]:
        status = "True" if ok else "False"
        prev = (previous_conditions or {}).get(kind)
        changed_at = (
            prev.get("lastTransitionTime") if prev and prev.get("status") == status else now
        )
        out: dict[str, Any] = {
            "type": kind,
            "status": status,
            "lastTransitionTime": changed_at,
            "lastProbeTime": None,
        }
        if not ok and reason:
            out["reason"] = reason
        return out

    conditions = [
        cond("PodReadyToStartContainers", obs.sandbox_ready),
        cond("Initialized", inits_done, "ContainersNotInitialized"),
        cond("ContainersReady", containers_ready, "ContainersNotReady"),
        cond("Ready", containers_ready, "ContainersNotReady"),
        cond("PodScheduled", True),
    ]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}] if host_ip else [],
        "qosClass": qos_class(pod),
        "startTime": start_time,
        "containerStatuses": [
            _container_status(
                c,
                obs.containers.get(c.name, ()),
                waiting=waiting,
                ready=is_ready(c),
                started=has_started(c),
            )
            for c in pod.containers
        ],
        "initContainerStatuses": [
            _container_status(
                c,
                obs.containers.get(c.name, ()),
                waiting=waiting,
                ready=is_ready(c),
                started=has_started(c),
            )
            for c in pod.init_containers
        ],
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if phase in ("Failed",) and init_failed:
        status["reason"] = "InitContainerFailed"
    return status
