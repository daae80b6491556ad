"""On-disk records of sandboxes and containers: versioned JSON, written atomically.

    <root>/sandboxes/<id>/sandbox.json
    <root>/containers/<id>/container.json

A record changes only through `RecordStore.put`, which replaces the whole file
(temp + fsync + rename), so a crash leaves the previous version, never half of
one. On start the runtime reloads every record and reconciles it with what the
kernel and conmon say (running PIDs, exit files).
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cri.fsutil import write_atomic

STATE_VERSION = 1


@dataclass
class SandboxRecord:
    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    state: str
    created_at_ns: int
    hostname: str
    log_directory: str
    labels: dict[str, str]
    annotations: dict[str, str]
    cgroup_path: str
    netns: str | None
    ipcns: str | None
    utsns: str | None
    shm_dir: str | None
    host_network: bool
    host_pid: bool
    host_ipc: bool
    pod_ip: str = ""
    pod_ips: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    pidns: str | None = None
    """The pod-shared PID namespace (nsfs bind mount), when containers share one."""
    pid_init: int = 0
    """Host PID of the pod init that keeps `pidns` alive (podinit.py)."""
    version: int = STATE_VERSION

    @property
    def unique_name(self) -> str:
        return f"{self.name}_{self.namespace}_{self.uid}_{self.attempt}"


@dataclass
class ContainerRecord:
    id: str
    sandbox_id: str
    name: str
    attempt: int
    image: str
    image_id: str
    image_ref: str
    state: str
    created_at_ns: int
    labels: dict[str, str]
    annotations: dict[str, str]
    log_path: str
    cgroup_path: str
    user: str
    env: list[str]
    cwd: str
    stop_signal: str
    tty: bool
    mounts: list[dict[str, Any]]
    resources: dict[str, int]
    pid: int = 0
    started_at_ns: int = 0
    finished_at_ns: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    version: int = STATE_VERSION
    #: container path -> "<major:minor> <root>" of the mount at its source when created, for
    #: sources that are mount points (CSI targets): one mounted again is re-bound (remount.py)
    mount_sources: dict[str, str] = field(default_factory=dict)


class RecordStore:
    def __init__(self, root: Path) -> None:
        self.sandboxes_dir = root / "sandboxes"
        self.containers_dir = root / "containers"
        self.sandboxes_dir.mkdir(parents=True, exist_ok=True)
        self.containers_dir.mkdir(parents=True, exist_ok=True)

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.sandboxes_dir / sandbox_id

    def container_dir(self, container_id: str) -> Path:
        return self.containers_dir / container_id

    def put_sandbox(self, record: SandboxRecord) -> None:
        write_atomic(
            self.sandbox_dir(record.id) / "sandbox.json", json.dumps(asdict(record)).encode()
        )

    def put_container(self, record: ContainerRecord) -> None:
        write_atomic(
            self.container_dir(record.id) / "container.json", json.dumps(asdict(record)).encode()
        )

    def load_sandboxes(self) -> list[SandboxRecord]:
        out = []
        for path in sorted(self.sandboxes_dir.glob("*/sandbox.json")):
            out.append(SandboxRecord(**json.loads(path.read_text())))
        return out

    def load_containers(self) -> list[ContainerRecord]:
        out = []
        for path in sorted(self.containers_dir.glob("*/container.json")):
            out.append(ContainerRecord(**json.loads(path.read_text())))
        return out
