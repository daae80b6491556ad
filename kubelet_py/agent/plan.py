"""What to do next for one pod, computed from its spec and what the runtime reports. Pure.

`compute_pod_actions` is the whole policy of a pod's life: sandbox (re)creation,
init containers in order, native sidecars, restart policies with crash-loop
backoff, and termination. The worker (worker.py) only carries the plan out.
Phase and conditions (status.py) are derived from the same observations.
"""

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubelet_py.agent.model import Container, Pod


class CState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ContainerObs:
    id: str
    name: str
    attempt: int
    state: CState
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    created_at_ns: int = 0
    started_at_ns: int = 0
    finished_at_ns: int = 0
    image: str = ""
    image_ref: str = ""


@dataclass(frozen=True)
class PodObs:
    """Everything the runtime knows about one pod UID."""

    sandbox_id: str | None = None
    sandbox_ready: bool = False
    sandbox_attempt: int = -1
    stale_sandboxes: tuple[str, ...] = ()
    containers: Mapping[str, tuple[ContainerObs, ...]] = field(default_factory=dict)
    """Per container name, newest attempt first."""

    def latest(self, name: str) -> ContainerObs | None:
        found = self.containers.get(name)
        return found[0] if found else None


@dataclass(frozen=True)
class PodActions:
    kill_pod: bool = False
    create_sandbox: bool = False
    sandbox_attempt: int = 0
    start: tuple[str, ...] = ()
    """Container names to (re)start, in order."""
    kill: tuple[tuple[str, str], ...] = ()
    """(container id, why) to stop."""
    remove: tuple[str, ...] = ()
    """Exited container IDs no longer needed (beyond the one previous attempt kept for logs)."""
    backoff: tuple[tuple[str, float], ...] = ()
    """(container name, seconds left) waiting out a crash-loop backoff."""
    init_failed: bool = False

    @property
    def empty(self) -> bool:
        return not (self.kill_pod or self.create_sandbox or self.start or self.kill or self.remove)


def is_sidecar(c: Container) -> bool:
    return c.restart_policy == "Always"


def should_restart(pod: Pod, c: Container, obs: ContainerObs) -> bool:
    if is_sidecar(c):
        return True
    if pod.restart_policy == "Always":
        return True
    if pod.restart_policy == "OnFailure":
        return obs.exit_code != 0
    return False


def compute_pod_actions(
    pod: Pod,
    obs: PodObs,
    *,
    now: float,
    backoff_until: Mapping[str, float],
    unhealthy: frozenset[str] = frozenset(),
) -> PodActions:
    """The next step for `pod`. `backoff_until[name]` is when a crashed container may restart;
    `unhealthy` names running containers a liveness probe has failed."""
    all_ids = [o.id for group in obs.containers.values() for o in group]
    if pod.terminating:
        return PodActions(kill_pod=bool(obs.sandbox_id or all_ids or obs.stale_sandboxes))

    removable = tuple(
        o.id for group in obs.containers.values() for o in group[2:] if o.state == CState.EXITED
    )
    if not obs.sandbox_ready:
        finished = _pod_finished(pod, obs)
        if finished and obs.sandbox_id is not None:
            return PodActions(remove=removable)
        if finished:
            return PodActions()
        running = tuple(
            (o.id, "the pod sandbox changed")
            for group in obs.containers.values()
            for o in group
            if o.state in (CState.RUNNING, CState.CREATED)
        )
        return PodActions(
            create_sandbox=True, sandbox_attempt=obs.sandbox_attempt + 1, kill=running
        )

    start: list[str] = []
    kill: list[tuple[str, str]] = []
    waits: list[tuple[str, float]] = []

    def restart_or_wait(c: Container) -> None:
        until = backoff_until.get(c.name, 0.0)
        if until > now:
            waits.append((c.name, until - now))
        else:
            start.append(c.name)

    # Init containers in order; sidecars start in order and keep running.
    for c in pod.init_containers:
        o = obs.latest(c.name)
        if is_sidecar(c):
            if o is None:
                start.append(c.name)
                return PodActions(start=tuple(start), remove=removable)
            if o.state == CState.EXITED:
                restart_or_wait(c)
                return PodActions(start=tuple(start), backoff=tuple(waits), remove=removable)
            continue
        if o is None:
            start.append(c.name)
            return PodActions(start=tuple(start), remove=removable)
        if o.state in (CState.RUNNING, CState.CREATED, CState.UNKNOWN):
            return PodActions(remove=removable)
        if o.exit_code == 0:
            continue
        if pod.restart_policy == "Never":
            return PodActions(init_failed=True, remove=removable)
        restart_or_wait(c)
        return PodActions(start=tuple(start), backoff=tuple(waits), remove=removable)

    for c in pod.containers:
        o = obs.latest(c.name)
        if o is None:
            start.append(c.name)
        elif o.state == CState.RUNNING:
            if c.name in unhealthy:
                kill.append((o.id, f"container {c.name} failed its liveness probe"))
        elif o.state == CState.CREATED:
            kill.append((o.id, "created but never started"))
            start.append(c.name)
        elif o.state in (CState.EXITED, CState.UNKNOWN) and should_restart(pod, c, o):
            restart_or_wait(c)
    return PodActions(start=tuple(start), kill=tuple(kill), backoff=tuple(waits), remove=removable)


def _pod_finished(pod: Pod, obs: PodObs) -> bool:
    """All main containers ran and none will run again (restartPolicy Never/OnFailure)."""
    if pod.restart_policy == "Always" or not pod.containers:
        return False
    for c in pod.containers:
        o = obs.latest(c.name)
        if o is None or o.state != CState.EXITED or should_restart(pod, c, o):
            return False
    return True


def pod_phase(pod: Pod, obs: PodObs, *, init_failed: bool) -> str:
    """Pending, Running, Succeeded or Failed, as the kubelet defines them."""
    if init_failed:
        return "Failed"
    latest = [obs.latest(c.name) for c in pod.containers]
    if any(o is None for o in latest):
        return "Pending"
    observed = [o for o in latest if o is not None]
    if any(o.state in (CState.RUNNING, CState.CREATED) for o in observed):
        return "Running"
    if pod.restart_policy == "Always":
        return "Running"  # exited but restarting (crash loop or backoff)
    if all(o.exit_code == 0 for o in observed):
        return "Succeeded"
    if pod.restart_policy == "OnFailure":
        return "Running"
    return "Failed"


class Backoff:
    """Crash-loop backoff per key: 10 s doubling to 5 min, reset after 10 min of running."""

    def __init__(
        self, *, initial_s: float = 10.0, max_s: float = 300.0, reset_s: float = 600.0
    ) -> None:
        self.initial_s, self.max_s, self.reset_s = initial_s, max_s, reset_s
        self._delay: dict[str, float] = {}
        self._until: dict[str, float] = {}

    def record_exit(self, key: str, *, now: float, ran_for_s: float) -> float:
        """A container ended; return when it may start again."""
        if ran_for_s >= self.reset_s:
            self._delay.pop(key, None)
        delay = self._delay.get(key)
        delay = self.initial_s if delay is None else min(self.max_s, delay * 2)
        self._delay[key] = delay
        self._until[key] = now + delay
        return self._until[key]

    def until(self, key: str) -> float:
        return self._until.get(key, 0.0)

    def forget(self, prefix: str) -> None:
        for d in (self._delay, self._until):
            for k in [k for k in d if k.startswith(prefix)]:
                del d[k]
