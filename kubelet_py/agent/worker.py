"""One worker per pod UID: observe, plan (plan.py), act through CRI, report status.

Pod lifecycle as a state machine (`PodLifecycle`), moved only through
`PodWorker._move`, which checks the table:

    SYNCING ──(deleted / removed from source)──▶ TERMINATING ──▶ TERMINATED
       ▲  │
       └──┘ (every sync: plan → actions → status)

Work for one pod is serial; pods run in parallel. A worker wakes on a pod
update, on the PLEG seeing its containers change, when a backoff or probe timer
is due, or every resync period.
"""

import asyncio
import base64
import enum
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2

import kubelet_py.metrics.kubelet as metrics
from kubelet_py.agent.apiclient import ApiClient, ApiError
from kubelet_py.agent.cri_client import CRIError, CRIRuntime
from kubelet_py.agent.criconfig import POD_UID, container_config, expand, sandbox_config
from kubelet_py.agent.events import EventRecorder
from kubelet_py.agent.model import Container, Pod, Probe
from kubelet_py.agent.plan import (
    Backoff,
    ContainerObs,
    CState,
    PodActions,
    PodObs,
    compute_pod_actions,
)
from kubelet_py.agent.probes import grpc_health_check
from kubelet_py.agent.status import pod_status, rfc3339
from kubelet_py.agent.volumes import ConfigError, VolumeError, VolumeManager

log = logging.getLogger("kubelet_py.pods")

OBS_MAX_AGE_S = 300.0
"""A pod's runtime state is re-read at least this often even if the PLEG saw no change."""

_STATE = {
    api_pb2.ContainerState.CONTAINER_CREATED: CState.CREATED,
    api_pb2.ContainerState.CONTAINER_RUNNING: CState.RUNNING,
    api_pb2.ContainerState.CONTAINER_EXITED: CState.EXITED,
    api_pb2.ContainerState.CONTAINER_UNKNOWN: CState.UNKNOWN,
}


class PodLifecycle(enum.Enum):
    SYNCING = "syncing"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


LIFECYCLE_MOVES = {
    PodLifecycle.SYNCING: {PodLifecycle.SYNCING, PodLifecycle.TERMINATING},
    PodLifecycle.TERMINATING: {PodLifecycle.TERMINATED},
    PodLifecycle.TERMINATED: set(),
}


@dataclass
class NodeContext:
    """What workers need to know about the node (narrow on purpose)."""

    node_name: str
    host_ip: str
    root: Path
    log_root: Path
    cluster_dns: tuple[str, ...]
    cluster_domain: str
    host_resolv: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]
    service_env: Mapping[str, str] = field(default_factory=dict)
    sync_frequency_s: float = 60.0
    """syncFrequency: a pod with running containers is looked at least this often."""
    pod_pids_limit: int = -1
    """podPidsLimit: pids.max for each container (-1: unlimited)."""
    image_pulls: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    """serializeImagePulls / maxParallelImagePulls: how many pulls run at once on the node."""


@dataclass
class ProbeState:
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0
    result: bool | None = None


async def observe(cri: CRIRuntime, uid: str) -> PodObs:
    """Ask the runtime what exists for pod `uid` (sandbox and every container attempt)."""
    sandboxes = await cri.list_pod_sandbox({POD_UID: uid})
    sandboxes.sort(key=lambda s: (s.metadata.attempt, s.created_at), reverse=True)
    current = sandboxes[0] if sandboxes else None
    ready = bool(current and current.state == api_pb2.PodSandboxState.SANDBOX_READY)
    groups: dict[str, list[ContainerObs]] = {}
    for c in await cri.list_containers({POD_UID: uid}):
        if current is not None and c.pod_sandbox_id != current.id:
            # containers of an older sandbox count as history of their name
            pass
        try:
            st = await cri.container_status(c.id)
        except CRIError as err:
            if err.code == grpc.StatusCode.NOT_FOUND:
                continue
            raise
        groups.setdefault(st.metadata.name, []).append(
            ContainerObs(
                id=st.id,
                name=st.metadata.name,
                attempt=st.metadata.attempt,
                state=_STATE.get(st.state, CState.UNKNOWN),
                exit_code=st.exit_code,
                reason=st.reason,
                message=st.message,
                created_at_ns=st.created_at,
                started_at_ns=st.started_at,
                finished_at_ns=st.finished_at,
                image=st.image.image,
                image_ref=st.image_ref,
            )
        )
    return PodObs(
        sandbox_id=current.id if current else None,
        sandbox_ready=ready,
        sandbox_attempt=current.metadata.attempt if current else -1,
        stale_sandboxes=tuple(s.id for s in sandboxes[1:]),
        containers={
            k: tuple(sorted(v, key=lambda o: (o.attempt, o.created_at_ns), reverse=True))
            for k, v in groups.items()
        },
    )


class PodWorker:
    def __init__(
        self,
        pod: Pod,
        *,
        cri: CRIRuntime,
        api: ApiClient | None,
        volumes: VolumeManager,
        events: EventRecorder,
        node: NodeContext,
        backoff: Backoff,
        clock: Callable[[], float] = time.time,
        on_terminated: Callable[[str], None] = lambda _uid: None,
    ) -> None:
        self.pod = pod
        self.cri, self.api, self.volumes, self.events, self.node = cri, api, volumes, events, node
        self.backoff = backoff
        self.clock = clock
        self.on_terminated = on_terminated
        self.state = PodLifecycle.SYNCING
        self.wake = asyncio.Event()
        self.removed = False
        self.first_seen = time.monotonic()
        self.start_recorded = False
        self.sync_kind = "create"  # pod_worker_duration_seconds' operation_type
        self.waiting: dict[str, tuple[str, str]] = {}
        self.image_backoff = Backoff(initial_s=10, max_s=300)
        self.probes: dict[tuple[str, str], ProbeState] = {}
        self.kill_grace: dict[str, int | None] = {}
        self.eviction: str | None = None
        self.pull_errors: dict[str, str] = {}
        self.pull_backoff_noted: dict[str, float] = {}
        self.terminal_reason = ""
        """Set when the pod ended Failed with a reason (Evicted, DeadlineExceeded)."""
        self.last_status: dict[str, Any] | None = None
        self.start_time: str | None = None
        self.init_failed = False
        self.volume_paths: dict[str, Path] | None = None
        self.released = False  # CSI volumes given back after the pod finished
        self.seen_exits: set[str] = set()
        self.pod_ip = ""
        self.ip_checked = False
        self.runtime_changed = True
        """Set by the PLEG when this pod's containers changed: the next sync asks the runtime.
        Otherwise a periodic resync reuses what it saw last (as upstream's PLEG cache)."""
        self._obs: PodObs | None = None
        self._obs_at = 0.0

    def _move(self, to: PodLifecycle) -> None:
        if to not in LIFECYCLE_MOVES[self.state]:
            raise RuntimeError(f"pod {self.pod.full_name}: illegal move {self.state} -> {to}")
        self.state = to

    @property
    def finished(self) -> bool:
        return self.state == PodLifecycle.TERMINATED

    def update(self, pod: Pod) -> None:
        self.pod = pod
        if self.sync_kind == "sync":
            self.sync_kind = "update"
        self.wake.set()

    def remove(self) -> None:
        self.removed = True
        self.wake.set()

    def evict(self, message: str) -> None:
        """End the pod as Failed/Evicted with `message` (the eviction manager's decision)."""
        if self.eviction is None and self.state == PodLifecycle.SYNCING:
            log.warning("evicting pod %s: %s", self.pod.full_name, message)
            self.eviction = message
            self.wake.set()

    def running_logs(self) -> list[tuple[str, Path]]:
        """(container ID, current CRI log file) of this pod's running containers."""
        if self._obs is None:
            return []
        pod = self.pod
        base = self.node.log_root / f"{pod.namespace}_{pod.name}_{pod.uid}"
        return [
            (o.id, base / o.name / f"{o.attempt}.log")
            for group in self._obs.containers.values()
            for o in group[:1]
            if o.state == CState.RUNNING
        ]

    def runtime_event(self) -> None:
        """The PLEG saw one of this pod's containers change state (or appear, or go)."""
        self.runtime_changed = True
        self.wake.set()

    async def _observe(self, now: float) -> PodObs:
        """What the runtime has for this pod: asked again only when the PLEG said something
        changed, after this worker acted, or every OBS_MAX_AGE_S as a backstop."""
        if self._obs is None or self.runtime_changed or now - self._obs_at >= OBS_MAX_AGE_S:
            self.runtime_changed = False  # before the call: an event meanwhile is kept
            self._remember(await observe(self.cri, self.pod.uid), now)
        assert self._obs is not None
        return self._obs

    def _remember(self, obs: PodObs, now: float) -> None:
        self._obs, self._obs_at = obs, now

    async def run(self) -> None:
        while self.state != PodLifecycle.TERMINATED:
            self.wake.clear()
            delay = 10.0
            kind, self.sync_kind = self.sync_kind, "sync"
            started = time.monotonic()
            try:
                delay = await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.exception("sync of pod %s failed", self.pod.full_name)
                self.events.emit(self.pod, "Warning", "FailedSync", f"error syncing pod: {err}")
                delay = 5.0
            metrics.pod_worker_duration.observe(time.monotonic() - started, kind)
            if self.finished:
                break
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=max(0.05, delay))
            except TimeoutError:
                pass
        self.on_terminated(self.pod.uid)

    # ---- one sync -----------------------------------------------------------------

    async def sync_once(self) -> float:
        pod = self.pod
        now = self.clock()
        if (pod.terminating or self.removed) and self.state == PodLifecycle.SYNCING:
            self._move(PodLifecycle.TERMINATING)
        if self.state == PodLifecycle.TERMINATING:
            await self._terminate()
            return 0
        if self.eviction is not None:
            self.events.emit(pod, "Warning", "Evicted", self.eviction)
            self._move(PodLifecycle.TERMINATING)
            await self._terminate(reason="Evicted", message=self.eviction, grace_s=1)
            return 0
        if self.start_time is None:
            self.start_time = rfc3339(time.time_ns())
        if (
            pod.active_deadline_s is not None
            and self.start_time
            and self._age_s() > pod.active_deadline_s
        ):
            self.events.emit(
                pod,
                "Normal",
                "DeadlineExceeded",
                "Pod was active on the node longer than the specified deadline",
            )
            self._move(PodLifecycle.TERMINATING)
            await self._terminate(
                reason="DeadlineExceeded",
                message="Pod was active on the node longer than the specified deadline",
            )
            return 0
        obs = await self._observe(now)
        if not self.pod_ip and obs.sandbox_ready and obs.sandbox_id and not self.ip_checked:
            # an adopted pod (agent restarted): its IP is the sandbox's, not unknown
            self.ip_checked = True
            try:
                self.pod_ip = (await self.cri.pod_sandbox_status(obs.sandbox_id)).network.ip
            except CRIError as err:
                log.warning("sandbox status of pod %s failed: %s", pod.full_name, err)
        if self.volume_paths is None and obs.sandbox_ready and pod.volumes:
            # (Re)mount for a pod that already runs: adopted after an agent restart, or a
            # projected token due for renewal. Ownership (fsGroup) is applied again here,
            # which fsGroupChangePolicy OnRootMismatch exists to make cheap.
            try:
                self.volume_paths = await self.volumes.setup(
                    pod, host_ip=self.node.host_ip, pod_ip=self.pod_ip
                )
            except (VolumeError, ApiError, OSError) as err:
                self.events.emit(pod, "Warning", "FailedMount", str(err))
        self._note_exits(obs, now)
        unhealthy = await self._run_probes(obs, now)
        backoff_until = {
            c.name: self.backoff.until(f"{pod.uid}/{c.name}")
            for c in (*pod.init_containers, *pod.containers)
        }
        actions = compute_pod_actions(
            pod, obs, now=now, backoff_until=backoff_until, unhealthy=unhealthy
        )
        if actions.init_failed:
            self.init_failed = True
        if not actions.empty:
            obs = await self._act(actions, obs)
            self._remember(obs, now)
        pod_ref = f"{pod.name}_{pod.namespace}({pod.uid})"
        for name, _left in actions.backoff:
            latest = obs.latest(name)
            delay = int(self.backoff_delay(name))
            self.waiting[name] = (
                "CrashLoopBackOff",
                f"back-off {delay}s restarting failed container={name} pod={pod_ref}",
            )
            if latest is not None and f"backoff/{latest.id}" not in self.seen_exits:
                self.seen_exits.add(f"backoff/{latest.id}")
                msg = f"Back-off restarting failed container {name} in pod {pod_ref}"
                self.events.emit(pod, "Warning", "BackOff", msg)
        await self._report(obs)
        if (self.last_status or {}).get("phase") in ("Succeeded", "Failed") and not self.released:
            # a finished pod keeps no driver mounts (the kubelet unmounts terminal pods' volumes)
            await self.volumes.release(pod.uid)
            self.released = True
        waits = [left for _, left in actions.backoff]
        for name, (reason, _) in self.waiting.items():
            if reason in ("ErrImagePull", "ImagePullBackOff"):  # retry when the back-off ends
                waits.append(max(0.1, self.image_backoff.until(f"{pod.uid}/{name}/image") - now))
        waits += [max(0.0, st.next_at - now) for st in self.probes.values()]
        if any(o.state == CState.RUNNING for g in obs.containers.values() for o in g):
            waits.append(self.node.sync_frequency_s)  # the PLEG wakes us on changes
        init_running = any(
            (o := obs.latest(c.name)) is not None and o.state == CState.RUNNING
            for c in pod.init_containers
            if c.restart_policy != "Always"
        )
        if init_running:
            # the next step waits on this init container: look again soon, at the runtime
            self.runtime_changed = True
            waits.append(0.1)
        if self.volumes.needs_refresh(pod.uid, now=now):
            self.volume_paths = None
            waits.append(0.1)
        return min(waits) if waits else 10.0

    def backoff_delay(self, name: str) -> float:
        return max(0.0, self.backoff.until(f"{self.pod.uid}/{name}") - self.clock())

    def _age_s(self) -> float:
        assert self.start_time is not None
        started = time.mktime(time.strptime(self.start_time, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        return time.time() - started

    def _note_exits(self, obs: PodObs, now: float) -> None:
        """Start the crash-loop backoff clock for containers that just ended."""
        for name, group in obs.containers.items():
            latest = group[0]
            if latest.state == CState.EXITED and latest.id not in self.seen_exits:
                self.seen_exits.add(latest.id)
                ran = (
                    (latest.finished_at_ns - latest.started_at_ns) / 1e9
                    if latest.started_at_ns
                    else 0
                )
                if not (self.pod.restart_policy != "Always" and latest.exit_code == 0):
                    self.backoff.record_exit(f"{self.pod.uid}/{name}", now=now, ran_for_s=ran)

    # ---- carrying out a plan ------------------------------------------------------

    async def _act(self, actions: PodActions, obs: PodObs) -> PodObs:
        pod = self.pod
        for cid, why in actions.kill:
            self.events.emit(pod, "Normal", "Killing", f"Stopping container: {why}")
            victim = next((o for g in obs.containers.values() for o in g if o.id == cid), None)
            grace = pod.termination_grace_s
            if victim is not None:
                # a failed liveness/startup probe may set its own terminationGracePeriodSeconds
                probe_grace = self.kill_grace.pop(victim.name, None)
                await self._stop_with_hook(
                    victim, probe_grace if probe_grace is not None else grace
                )
            else:
                await self.cri.stop_container(cid, grace)
        if actions.create_sandbox:
            for sid in (obs.sandbox_id, *obs.stale_sandboxes):
                if sid:
                    await self.cri.stop_pod_sandbox(sid)
            log_dir = self.node.log_root / f"{pod.namespace}_{pod.name}_{pod.uid}"
            cfg = sandbox_config(
                pod,
                attempt=actions.sandbox_attempt,
                log_dir=str(log_dir),
                cluster_dns=self.node.cluster_dns,
                cluster_domain=self.node.cluster_domain,
                host_resolv=self.node.host_resolv,
            )
            try:
                sid = await self.cri.run_pod_sandbox(cfg)
            except CRIError as err:
                self.events.emit(
                    pod, "Warning", "FailedCreatePodSandBox", f"Failed to create pod sandbox: {err}"
                )
                raise
            metrics.started_pods.inc()
            status = await self.cri.pod_sandbox_status(sid)
            self.pod_ip = status.network.ip
            obs = await observe(self.cri, pod.uid)
            actions = compute_pod_actions(pod, obs, now=self.clock(), backoff_until={})
        for cid in actions.remove:
            await self.cri.remove_container(cid)
        if actions.start and obs.sandbox_id:
            if self.volume_paths is None:
                try:
                    self.volume_paths = await self.volumes.setup(
                        pod, host_ip=self.node.host_ip, pod_ip=self.pod_ip
                    )
                except (VolumeError, ApiError, OSError) as err:
                    self.events.emit(pod, "Warning", "FailedMount", str(err))
                    for name in actions.start:
                        self.waiting[name] = ("ContainerCreating", str(err))
                    return obs
            for name in actions.start:
                ok = await self._start_container(name, obs)
                if not ok:
                    break
                if any(c.name == name for c in pod.init_containers):
                    break  # init containers one at a time; the next sync continues
            obs = await observe(self.cri, pod.uid)
        return obs

    def _container(self, name: str) -> Container:
        for c in (*self.pod.init_containers, *self.pod.containers):
            if c.name == name:
                return c
        raise KeyError(name)

    async def _ensure_image(self, c: Container, sandbox_cfg: Any) -> str | None:
        pod = self.pod
        key = f"{pod.uid}/{c.name}/image"
        field_path = f"spec.containers{{{c.name}}}"
        present = await self.cri.image_status(c.image)
        if present is not None and c.image_pull_policy != "Always":
            if self.waiting.get(c.name, ("",))[0] in ("ErrImagePull", "ImagePullBackOff"):
                self.waiting.pop(c.name, None)
            self.events.emit(
                pod,
                "Normal",
                "Pulled",
                f'Container image "{c.image}" already present on machine',
                field_path=field_path,
            )
            return str(present.id)
        if present is None and c.image_pull_policy == "Never":
            msg = f'Container image "{c.image}" is not present with pull policy of Never'
            self.waiting[c.name] = ("ErrImageNeverPull", msg)
            self.events.emit(pod, "Warning", "ErrImageNeverPull", msg, field_path=field_path)
            return None
        until = self.image_backoff.until(key)
        if until > self.clock():
            last = self.pull_errors.get(c.name, "")
            self.waiting[c.name] = (
                "ImagePullBackOff",
                f'Back-off pulling image "{c.image}"' + (f": ErrImagePull: {last}" if last else ""),
            )
            if self.pull_backoff_noted.get(c.name) != until:  # once per back-off period
                self.pull_backoff_noted[c.name] = until
                msg = f'Back-off pulling image "{c.image}"'
                self.events.emit(pod, "Normal", "BackOff", msg, field_path=field_path)
                self.events.emit(
                    pod, "Warning", "Failed", "Error: ImagePullBackOff", field_path=field_path
                )
            return None
        self.events.emit(
            pod, "Normal", "Pulling", f'Pulling image "{c.image}"', field_path=field_path
        )
        started = time.monotonic()
        try:
            auth = await self._pull_auth(c.image)
            async with self.node.image_pulls:
                ref = await self.cri.pull_image(c.image, auth, sandbox_cfg)
        except CRIError as err:
            self.image_backoff.record_exit(key, now=self.clock(), ran_for_s=0)
            msg = f'Failed to pull image "{c.image}": {err}'
            self.pull_errors[c.name] = str(err)
            self.waiting[c.name] = ("ErrImagePull", msg)
            self.events.emit(pod, "Warning", "Failed", msg, field_path=field_path)
            self.events.emit(pod, "Warning", "Failed", "Error: ErrImagePull", field_path=field_path)
            return None
        self.events.emit(
            pod,
            "Normal",
            "Pulled",
            f'Successfully pulled image "{c.image}" in {time.monotonic() - started:.3f}s',
            field_path=field_path,
        )
        self.waiting.pop(c.name, None)
        return ref

    async def _pull_auth(self, image: str) -> Any | None:
        if self.api is None or not self.pod.image_pull_secrets:
            return None
        from cri.images import parse_dockerconfigjson, parse_reference

        registry = parse_reference(image).registry
        for name in self.pod.image_pull_secrets:
            try:
                secret = await self.api.get(
                    f"/api/v1/namespaces/{self.pod.namespace}/secrets/{name}"
                )
            except ApiError:
                continue
            raw = (secret.get("data") or {}).get(".dockerconfigjson")
            if not raw:
                continue
            creds = parse_dockerconfigjson(base64.b64decode(raw)).get(registry)
            if creds is not None:
                return api_pb2.AuthConfig(
                    username=creds.username, password=creds.password, server_address=registry
                )
        return None

    async def _start_container(self, name: str, obs: PodObs) -> bool:
        pod = self.pod
        c = self._container(name)
        field_path = f"spec.containers{{{c.name}}}"
        assert obs.sandbox_id is not None
        sandbox_cfg = sandbox_config(
            pod,
            attempt=obs.sandbox_attempt,
            log_dir=str(self.node.log_root / f"{pod.namespace}_{pod.name}_{pod.uid}"),
            cluster_dns=self.node.cluster_dns,
            cluster_domain=self.node.cluster_domain,
            host_resolv=self.node.host_resolv,
        )
        image_ref = await self._ensure_image(c, sandbox_cfg)
        if image_ref is None:
            return False
        try:
            envs = await self.volumes.resolve_env(
                pod,
                c,
                host_ip=self.node.host_ip,
                pod_ip=self.pod_ip,
                service_env=self.node.service_env,
            )
            assert self.volume_paths is not None
            mounts = self.volumes.mounts_for(pod, c, self.volume_paths)
        except (ConfigError, VolumeError, ApiError) as err:
            self.waiting[c.name] = ("CreateContainerConfigError", str(err))
            self.events.emit(pod, "Warning", "Failed", f"Error: {err}", field_path=field_path)
            return False
        env_map = dict(envs)
        previous = obs.latest(c.name)
        attempt = previous.attempt + 1 if previous is not None else 0
        cfg = container_config(
            pod,
            c,
            attempt=attempt,
            image_ref=image_ref,
            envs=envs,
            mounts=mounts,
            log_path=f"{c.name}/{attempt}.log",
        )
        if self.node.pod_pids_limit > 0:
            cfg.linux.resources.unified["pids.max"] = str(self.node.pod_pids_limit)
        cfg.command[:] = [expand(x, env_map) for x in c.command]
        cfg.args[:] = [expand(x, env_map) for x in c.args]
        try:
            cid = await self.cri.create_container(obs.sandbox_id, cfg, sandbox_cfg)
        except CRIError as err:
            self.waiting[c.name] = ("CreateContainerError", str(err))
            self.events.emit(pod, "Warning", "Failed", f"Error: {err}", field_path=field_path)
            return False
        self.events.emit(
            pod, "Normal", "Created", f"Created container {c.name}", field_path=field_path
        )
        try:
            await self.cri.start_container(cid)
        except CRIError as err:
            self.waiting[c.name] = ("RunContainerError", str(err))
            self.events.emit(pod, "Warning", "Failed", f"Error: {err}", field_path=field_path)
            return False
        self.waiting.pop(c.name, None)
        metrics.started_containers.inc(
            "init_container" if any(i.name == c.name for i in pod.init_containers) else "container"
        )
        self.events.emit(
            pod, "Normal", "Started", f"Started container {c.name}", field_path=field_path
        )
        if c.post_start is not None:
            ok, detail = await self._probe_once(
                c.post_start, _ObsRef(cid), timeout_s=pod.termination_grace_s
            )
            if not ok:
                self.events.emit(
                    pod,
                    "Warning",
                    "FailedPostStartHook",
                    f"PostStartHook failed: {detail}",
                    field_path=field_path,
                )
                await self.cri.stop_container(cid, pod.termination_grace_s)
                return False
        for kind in ("liveness", "readiness", "startup"):
            self.probes.pop((c.name, kind), None)
        return True

    # ---- probes ---------------------------------------------------------------------

    async def _run_probes(self, obs: PodObs, now: float) -> frozenset[str]:
        unhealthy: set[str] = set()
        for c in (*self.pod.init_containers, *self.pod.containers):
            o = obs.latest(c.name)
            if o is None or o.state != CState.RUNNING:
                continue
            started = o.started_at_ns / 1e9
            startup_done = True
            if c.startup is not None:
                st = self.probes.setdefault((c.name, "startup"), ProbeState())
                if st.result is not True:
                    startup_done = False
                    await self._probe(c, "startup", c.startup, o, st, now, started)
                    startup_done = _passed(st)
                    if st.failures >= c.startup.failure_threshold:
                        unhealthy.add(c.name)
                        self.kill_grace[c.name] = c.startup.termination_grace_s
            if not startup_done:
                continue
            if c.liveness is not None:
                st = self.probes.setdefault((c.name, "liveness"), ProbeState())
                await self._probe(c, "liveness", c.liveness, o, st, now, started)
                if st.failures >= c.liveness.failure_threshold:
                    unhealthy.add(c.name)
                    self.kill_grace[c.name] = c.liveness.termination_grace_s
                    st.failures = 0
            if c.readiness is not None:
                st = self.probes.setdefault((c.name, "readiness"), ProbeState())
                await self._probe(c, "readiness", c.readiness, o, st, now, started)
        return frozenset(unhealthy)

    async def _probe(
        self,
        c: Container,
        kind: str,
        probe: Probe,
        o: ContainerObs,
        st: ProbeState,
        now: float,
        started: float,
    ) -> bool:
        """Run the probe if due; update counters. Returns True when it ran."""
        if now < started + probe.initial_delay_s or now < st.next_at:
            st.next_at = max(st.next_at, started + probe.initial_delay_s)
            return False
        st.next_at = now + probe.period_s
        ok, detail = await self._probe_once(probe, o)
        if ok:
            st.successes += 1
            st.failures = 0
            if st.successes >= probe.success_threshold:
                st.result = True
        else:
            st.failures += 1
            st.successes = 0
            if st.failures >= probe.failure_threshold:
                st.result = False
            self.events.emit(
                self.pod,
                "Warning",
                "Unhealthy",
                f"{kind.capitalize()} probe failed: {detail}",
                field_path=f"spec.containers{{{c.name}}}",
            )
        return True

    async def _probe_once(
        self, probe: Probe, o: "ContainerObs | _ObsRef", *, timeout_s: int | None = None
    ) -> tuple[bool, str]:
        if probe.kind == "sleep":
            await asyncio.sleep(probe.period_s)
            return True, ""
        if probe.kind == "exec":
            budget = timeout_s if timeout_s is not None else max(1, probe.timeout_s)
            try:
                resp = await self.cri.exec_sync(o.id, list(probe.command), budget)
            except CRIError as err:
                return False, str(err)
            out = (resp.stdout + resp.stderr).decode(errors="replace").strip()
            return resp.exit_code == 0, out or f"command exited with {resp.exit_code}"
        host = probe.host or self.pod_ip or ("127.0.0.1" if self.pod.host_network else "")
        if not host:
            return False, f"{probe.kind} probe needs a pod IP; this pod has none (no pod network)"
        port = self._port(probe.port)
        if probe.kind == "grpc":
            return await grpc_health_check(
                host, port, probe.service, timeout_s=max(1, probe.timeout_s)
            )
        try:
            if probe.kind == "tcpSocket":
                _, w = await asyncio.wait_for(asyncio.open_connection(host, port), probe.timeout_s)
                w.close()
                return True, ""
            if probe.kind == "httpGet":
                import aiohttp

                url = f"{probe.scheme.lower()}://{host}:{port}{probe.path}"
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(
                        url, timeout=aiohttp.ClientTimeout(total=probe.timeout_s), ssl=False
                    ) as r,
                ):
                    return 200 <= r.status < 400, f"HTTP probe failed with statuscode: {r.status}"
        except (OSError, TimeoutError) as err:
            return False, f"dial {host}:{port}: {err or 'timeout'}"
        return False, f"{probe.kind} probes are not supported"

    async def _stop_with_hook(self, o: ContainerObs, grace_s: int) -> None:
        """Run the container's preStop hook within the grace period, then stop it."""
        started = time.monotonic()
        try:
            c = self._container(o.name)
        except KeyError:
            c = None
        if c is not None and c.pre_stop is not None and o.state == CState.RUNNING and grace_s > 0:
            try:
                ok, detail = await asyncio.wait_for(
                    self._probe_once(c.pre_stop, o, timeout_s=grace_s), timeout=grace_s
                )
            except TimeoutError:
                ok, detail = False, f"did not finish within the {grace_s}s grace period"
            if not ok:
                self.events.emit(
                    self.pod, "Warning", "FailedPreStopHook", f"PreStopHook failed: {detail}"
                )
        left = max(0, int(grace_s - (time.monotonic() - started)))
        await self.cri.stop_container(o.id, left)

    def _port(self, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        return 0  # a named port needs the containers' port names, not modelled yet

    # ---- status and termination ---------------------------------------------------------

    async def _report(self, obs: PodObs) -> None:
        readiness = {
            name: st.result is True
            for (name, kind), st in self.probes.items()
            if kind == "readiness"
        }
        prev_conditions = {c["type"]: c for c in (self.last_status or {}).get("conditions", [])}
        status = pod_status(
            self.pod,
            obs,
            host_ip=self.node.host_ip,
            pod_ip=self.pod_ip,
            start_time=self.start_time,
            waiting=self.waiting,
            readiness=readiness,
            startup={
                name: st.result is True
                for (name, kind), st in self.probes.items()
                if kind == "startup"
            },
            init_failed=self.init_failed,
            now=rfc3339(time.time_ns()) or "",
            previous_conditions=prev_conditions,
        )
        if not self.start_recorded and status.get("phase") == "Running":
            self.start_recorded = True
            metrics.pod_start_duration.observe(time.monotonic() - self.first_seen)
        if status == self.last_status:
            return
        await self._patch_status(status)
        self.last_status = status

    async def _patch_status(self, status: dict[str, Any]) -> None:
        pod = self.pod
        if self.api is None:
            path = self.node.root / "pods" / pod.uid / "status.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(status, indent=1))
            return
        try:
            await self.api.patch(
                f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status", {"status": status}
            )
        except ApiError as err:
            if err.status != 404:
                log.warning("patching status of pod %s failed: %s", pod.full_name, err)

    async def _terminate(
        self, *, reason: str = "", message: str = "", grace_s: int | None = None
    ) -> None:
        """Stop everything of the pod. With `reason` (Evicted, DeadlineExceeded) the pod ends
        Failed with that reason and message and stays in the API; otherwise a deleted pod is
        finally removed from the API."""
        pod = self.pod
        grace = (
            pod.deletion_grace_s if pod.deletion_grace_s is not None else pod.termination_grace_s
        )
        if grace_s is not None:
            grace = min(grace, grace_s)
        obs = await observe(self.cri, pod.uid)
        running = [
            o
            for g in obs.containers.values()
            for o in g
            if o.state in (CState.RUNNING, CState.CREATED)
        ]
        for o in running:
            self.events.emit(
                pod,
                "Normal",
                "Killing",
                f"Stopping container {o.name}",
                field_path=f"spec.containers{{{o.name}}}",
            )
        await asyncio.gather(*(self._stop_with_hook(o, int(grace)) for o in running))
        for sid in (obs.sandbox_id, *obs.stale_sandboxes):
            if sid:
                await self.cri.stop_pod_sandbox(sid)
        final = await observe(self.cri, pod.uid)
        if reason or (pod.terminating and self.api is not None):
            status = pod_status(
                pod,
                final,
                host_ip=self.node.host_ip,
                pod_ip=self.pod_ip,
                start_time=self.start_time,
                waiting={},
                readiness={},
                init_failed=False,
                now=rfc3339(time.time_ns()) or "",
            )
            if reason:
                status["phase"], status["reason"] = "Failed", reason
                status["message"] = message
                self.terminal_reason = reason
            await self._patch_status(status)
        for group in final.containers.values():
            for o in group:
                await self.cri.remove_container(o.id)
        for sid in (final.sandbox_id, *final.stale_sandboxes):
            if sid:
                await self.cri.remove_pod_sandbox(sid)
        await self.volumes.release(pod.uid)
        self.volumes.cleanup(pod.uid)
        self.backoff.forget(f"{pod.uid}/")
        if pod.terminating and self.api is not None and not pod.static:
            try:
                await self.api.delete(
                    f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}",
                    {"gracePeriodSeconds": 0, "preconditions": {"uid": pod.uid}},
                )
            except ApiError as err:
                if err.status not in (404, 409):
                    raise
        self._move(PodLifecycle.TERMINATED)
        log.info("pod %s terminated", pod.full_name)


def _passed(st: ProbeState) -> bool:
    return st.result is True


@dataclass(frozen=True)
class _ObsRef:
    """Just a container ID, for hooks that run before the container has been observed."""

    id: str
