"""Containers on disk: `<root>/<id>/state.json` and the status derived from the kernel.

    (none) ──create──▶ creating ──init ready──▶ created ──start──▶ running ──exit──▶ stopped
                          │ failure: everything removed          │ kill (SIGKILL)      │
                          ▼                                      └────────────────────▶ │
                        (none) ◀──────────────────────── delete ◀───────────────────────┘

The status is never stored: it is read from the kernel each time. The init
process (recorded by PID *and* start time, so a reused PID is not mistaken for
it) alive with `start.sock` present is "created"; alive without it is "running";
gone or a zombie is "stopped". While `create` runs there is a directory but no
state.json: "creating". state.json is written once, atomically (temp, fsync,
rename), when the container is created.
"""

# No pathlib here: it imports re, fnmatch and urllib, ~5 ms of every command's budget.
# ruff: noqa: PTH104, PTH112, PTH123

from __future__ import annotations

import os

from cri.oci.errors import NotFoundError, UsageError

DEFAULT_ROOT = "/run/kubelet-py-oci"
STATE_FILE = "state.json"
START_SOCKET = "start.sock"

CREATING = "creating"
CREATED = "created"
RUNNING = "running"
STOPPED = "stopped"
PAUSED = "paused"


def check_id(container_id: str) -> str:
    ok = (
        container_id
        and len(container_id) <= 1024
        and container_id not in (".", "..")
        and all(c.isalnum() or c in "_.-+" for c in container_id)
        and container_id.isascii()
    )
    if not ok:
        raise UsageError(f"invalid container ID {container_id!r}")
    return container_id


def container_dir(root: str, container_id: str) -> str:
    return f"{root}/{check_id(container_id)}"


def write_temp(path: str, data: bytes, *, mode: int = 0o600, sync: bool = True) -> str:
    """The first half of an atomic write: `<path>.tmp<pid>`, written (and fsynced)."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def write_atomic(path: str, data: bytes, *, mode: int = 0o600, sync: bool = True) -> None:
    """Temp file, (fsync), rename: readers see the old file or the whole new one."""
    os.rename(write_temp(path, data, mode=mode, sync=sync), path)


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[19])


class State:
    """What `create` recorded about a container."""

    __slots__ = ("annotations", "bundle", "cgroup", "config", "created", "id", "pid", "rootfs",
                 "starttime")  # fmt: skip

    def __init__(
        self,
        *,
        id: str,
        pid: int,
        starttime: int,
        bundle: str,
        rootfs: str,
        created: str,
        annotations: dict[str, str],
        cgroup: dict[str, object],
        config: dict[str, object],
    ) -> None:
        self.id = id
        self.pid = pid
        self.starttime = starttime
        self.bundle = bundle
        self.rootfs = rootfs
        self.created = created
        self.annotations = annotations
        self.cgroup = cgroup
        self.config = config

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "pid": self.pid,
            "starttime": self.starttime,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "annotations": self.annotations,
            "cgroup": self.cgroup,
            "config": self.config,
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> State:
        def get(key: str, kind: type) -> object:
            value = doc.get(key)
            if not isinstance(value, kind):
                raise ValueError(f"state.json: {key} is missing or not a {kind.__name__}")  # noqa: TRY004
            return value

        return cls(
            id=str(get("id", str)),
            pid=int(get("pid", int)),  # type: ignore[call-overload]
            starttime=int(get("starttime", int)),  # type: ignore[call-overload]
            bundle=str(get("bundle", str)),
            rootfs=str(get("rootfs", str)),
            created=str(get("created", str)),
            annotations=dict(get("annotations", dict)),  # type: ignore[call-overload]
            cgroup=dict(get("cgroup", dict)),  # type: ignore[call-overload]
            config=dict(get("config", dict)),  # type: ignore[call-overload]
        )

    def init_alive(self) -> bool:
        """The init process is still the one we started, and not a zombie."""
        st = proc_stat(self.pid)
        return st is not None and st[1] == self.starttime and st[0] not in ("Z", "X")


def load(root: str, container_id: str) -> State | None:
    """The recorded state; None while the container is being created; NotFoundError if absent."""
    directory = container_dir(root, container_id)
    try:
        with open(f"{directory}/{STATE_FILE}", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if os.path.isdir(directory):
            return None
        raise NotFoundError(f"container {container_id} does not exist") from None
    from cri.oci import fastjson  # not at the top: `start` never needs JSON

    doc = fastjson.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("state.json: not an object")  # noqa: TRY004 - cli reports ValueError
    return State.from_json(doc)


def status(root: str, state: State | None) -> str:
    if state is None:
        return CREATING
    if not state.init_alive():
        return STOPPED
    if os.path.lexists(f"{container_dir(root, state.id)}/{START_SOCKET}"):
        return CREATED
    freezer = _freezer_state(state)
    if freezer in ("FROZEN", "FREEZING"):
        return PAUSED
    return RUNNING


def _freezer_state(state: State) -> str:
    paths = state.cgroup.get("paths")
    controllers = state.cgroup.get("controllers")
    if not isinstance(paths, dict) or not isinstance(controllers, dict):
        return ""
    for mountpoint, ctrls in controllers.items():
        if "freezer" in ctrls:
            try:
                with open(f"{paths[mountpoint]}/freezer.state") as f:
                    return f.read().strip()
            except OSError:
                return ""
    return ""


def list_ids(root: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except FileNotFoundError:
        return []
