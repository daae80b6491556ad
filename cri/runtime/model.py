"""The runtime's typed objects: requests as frozen dataclasses, and the state machines.

Sandbox states:                     Container states:

    (RunPodSandbox)                     (CreateContainer)
          │                                   │
          ▼                                   ▼
        READY ──StopPodSandbox──▶ NOTREADY   CREATED ──StartContainer──▶ RUNNING
          │                          │          │                          │
          └──────RemovePodSandbox────┘          │ (start failed)           │ (process exits,
                    (gone)                      ▼                          ▼  StopContainer)
                                              EXITED ◀─────────────────── EXITED
                                                │
                                         RemoveContainer (gone)

`CONTAINER_TRANSITIONS` lists every allowed move; `ContainerState.check_move`
refuses any other, so an illegal transition cannot happen silently.
"""

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NewType

from cri.runtime.errors import FailedPreconditionError

SandboxID = NewType("SandboxID", str)
ContainerID = NewType("ContainerID", str)


class SandboxState(enum.Enum):
    READY = "SANDBOX_READY"
    NOTREADY = "SANDBOX_NOTREADY"


class ContainerState(enum.Enum):
    CREATED = "CONTAINER_CREATED"
    RUNNING = "CONTAINER_RUNNING"
    EXITED = "CONTAINER_EXITED"
    UNKNOWN = "CONTAINER_UNKNOWN"

    def check_move(self, to: "ContainerState", *, what: str) -> None:
        if to not in CONTAINER_TRANSITIONS[self]:
            raise FailedPreconditionError(
                f"{what}: cannot go from {self.name.lower()} to {to.name.lower()}"
            )


CONTAINER_TRANSITIONS: Mapping[ContainerState, frozenset[ContainerState]] = {
    ContainerState.CREATED: frozenset({ContainerState.RUNNING, ContainerState.EXITED}),
    ContainerState.RUNNING: frozenset({ContainerState.EXITED}),
    ContainerState.EXITED: frozenset(),
    ContainerState.UNKNOWN: frozenset({ContainerState.EXITED}),
}


class NamespaceMode(enum.Enum):
    """CRI NamespaceMode: POD (shared by the pod), CONTAINER (own), NODE (the host's)."""

    POD = 0
    CONTAINER = 1
    NODE = 2
    TARGET = 3


@dataclass(frozen=True)
class NamespaceOptions:
    network: NamespaceMode = NamespaceMode.POD
    pid: NamespaceMode = NamespaceMode.CONTAINER
    ipc: NamespaceMode = NamespaceMode.POD


@dataclass(frozen=True)
class DNSConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortMapping:
    protocol: str  # "TCP", "UDP", "SCTP"
    container_port: int
    host_port: int
    host_ip: str = ""


@dataclass(frozen=True)
class SandboxConfig:
    name: str
    uid: str
    namespace: str
    attempt: int = 0
    hostname: str = ""
    log_directory: str = ""
    dns: DNSConfig = field(default_factory=DNSConfig)
    port_mappings: tuple[PortMapping, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""
    namespace_options: NamespaceOptions = field(default_factory=NamespaceOptions)
    sysctls: Mapping[str, str] = field(default_factory=dict)
    host_aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()


class MountPropagation(enum.Enum):
    PRIVATE = 0
    HOST_TO_CONTAINER = 1  # rslave
    BIDIRECTIONAL = 2  # rshared


@dataclass(frozen=True)
class Mount:
    container_path: str
    host_path: str
    readonly: bool = False
    propagation: MountPropagation = MountPropagation.PRIVATE


@dataclass(frozen=True)
class Resources:
    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_bytes: int = 0
    oom_score_adj: int = 0
    pids_limit: int = 0


@dataclass(frozen=True)
class Capabilities:
    add: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()


@dataclass(frozen=True)
class SeccompProfile:
    kind: str = "Unconfined"  # "Unconfined", "RuntimeDefault", "Localhost"
    localhost_path: str = ""


@dataclass(frozen=True)
class SecurityContext:
    privileged: bool = False
    run_as_user: int | None = None
    run_as_username: str = ""
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    readonly_rootfs: bool = False
    no_new_privs: bool = False
    capabilities: Capabilities = field(default_factory=Capabilities)
    namespace_options: NamespaceOptions = field(default_factory=NamespaceOptions)
    seccomp: SeccompProfile = field(default_factory=SeccompProfile)
    masked_paths: tuple[str, ...] | None = None
    readonly_paths: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ContainerConfig:
    name: str
    image: str
    attempt: int = 0
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    resources: Resources = field(default_factory=Resources)
    security: SecurityContext = field(default_factory=SecurityContext)
    stop_signal: str = ""
