"""`start`, `kill`, `delete`, `state`, `list`, `pause`, `resume`: the small commands.

None of these imports ctypes or the spec parser: each is a read of state.json,
a look at /proc, and a few syscalls, so it costs little more than the
interpreter's own start.
"""

# No pathlib here: it imports re, fnmatch and urllib, ~5 ms of every command's budget.
# ruff: noqa: PTH106, PTH108, PTH208

from __future__ import annotations

import os
import time

from cri.oci import state
from cri.oci.errors import NotFoundError, StateError, SysError, UsageError, os_error

OCI_VERSION = "1.0.2"
SIGKILL = 9


def _load(root: str, container_id: str) -> state.State:
    record = state.load(root, container_id)
    if record is None:
        raise StateError(f"container {container_id} is still being created")
    return record


def start(root: str, container_id: str) -> None:
    """Connect to the waiting init; EOF means it exec'd. state.json is read only on errors.

    The happy path needs no JSON (and so no `_json` import): only a created
    container has a listener on start.sock.
    """
    import _socket

    directory = state.container_dir(root, container_id)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            os.chdir(directory)
            sock.connect(state.START_SOCKET)
        except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError):
            _start_refused(root, container_id)
        # The init closes the connection by exec'ing (O_CLOEXEC); anything it writes first
        # is the reason its exec failed.
        chunks = []
        while True:
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                raise StateError("cannot start: the container's init died") from None
            if not data:
                break
            chunks.append(data)
    finally:
        sock.close()
    message = b"".join(chunks).decode(errors="replace").strip()
    try:
        os.unlink(state.START_SOCKET)
    except FileNotFoundError:
        pass
    if message:
        step, _, text = message.partition(": ")
        raise SysError(text, step=step)


def _start_refused(root: str, container_id: str) -> None:
    """Why nothing listens on start.sock, as an exception."""
    record = _load(root, container_id)  # NotFoundError when there is no such container
    status = state.status(root, record)
    if status == state.CREATED:
        raise StateError("cannot start: the container's init has exited")
    verb = "has stopped" if status == state.STOPPED else f"is {status}"
    raise StateError(f"cannot start a container that {verb}")


def parse_signal(text: str) -> int:
    from cri.oci import sig

    raw = text.strip().upper()
    if raw.isdigit():
        return int(raw)
    name = raw if raw.startswith("SIG") else "SIG" + raw
    value = sig.number(name)
    if value is None:
        raise UsageError(f"unknown signal {text!r}")
    return value


def kill(root: str, container_id: str, sig: int, *, all_processes: bool) -> None:
    record = _load(root, container_id)
    status = state.status(root, record)
    if status == state.STOPPED:
        raise StateError("container not running")
    targets = [record.pid]
    if all_processes:
        from cri.oci.cgroups import Cgroup

        targets += [p for p in Cgroup.from_json(record.cgroup).pids() if p != record.pid]
    for pid in targets:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except OSError as err:
            raise os_error(f"send signal {sig} to {pid}", err) from err


def _wait_gone(record: state.State, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while record.init_alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def delete(root: str, container_id: str, *, force: bool) -> None:
    directory = state.container_dir(root, container_id)
    record = state.load(root, container_id)
    if record is None:
        if not force:
            raise StateError(f"container {container_id} is still being created")
        _remove_dir(directory)
        return
    status = state.status(root, record)
    if status in (state.RUNNING, state.PAUSED) and not force:
        raise StateError(f"cannot delete container {container_id} that is not stopped: {status}")
    from cri.oci import cgroups

    group = cgroups.Cgroup.from_json(record.cgroup)
    if status == state.PAUSED:
        _freeze(group, freeze=False)
    victims = group.pids()
    if record.init_alive():
        victims.append(record.pid)
    for pid in victims:
        try:
            os.kill(pid, SIGKILL)
        except ProcessLookupError:
            pass
    if not _wait_gone(record, 5.0):
        raise SysError(f"process {record.pid} did not die", step="kill container init")
    left = cgroups.remove(group, wait_s=2.0)
    leaves = set(group.paths.values())
    busy = [d for d in left if d in leaves]
    if busy:
        raise SysError(f"still busy: {', '.join(busy)}", step="remove cgroup")
    _remove_dir(directory)


def _remove_dir(directory: str) -> None:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        try:
            os.unlink(f"{directory}/{name}")
        except FileNotFoundError:
            pass
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        pass


def state_json(root: str, container_id: str) -> dict[str, object]:
    """The OCI runtime spec's state object (runc's extra fields included)."""
    directory = state.container_dir(root, container_id)
    record = state.load(root, container_id)
    if record is None:
        return {"ociVersion": OCI_VERSION, "id": container_id, "status": state.CREATING,
                "pid": 0, "bundle": "", "rootfs": "", "created": "", "owner": "",
                "annotations": {}}  # fmt: skip
    status = state.status(root, record)
    del directory
    return {
        "ociVersion": OCI_VERSION,
        "id": record.id,
        "pid": 0 if status == state.STOPPED else record.pid,
        "status": status,
        "bundle": record.bundle,
        "rootfs": record.rootfs,
        "created": record.created,
        "owner": "",
        "annotations": record.annotations,
    }


def print_state(root: str, container_id: str) -> None:
    from cri.oci import fastjson

    os.write(1, (fastjson.dumps(state_json(root, container_id), indent=2) + "\n").encode())


def list_containers(root: str, *, fmt: str, quiet: bool) -> None:
    rows = []
    for cid in state.list_ids(root):
        try:
            rows.append(state_json(root, cid))
        except (NotFoundError, ValueError):
            continue
    from cri.oci import fastjson

    if quiet:
        out = "".join(f"{r['id']}\n" for r in rows)
    elif fmt == "json":
        out = fastjson.dumps(rows) + "\n"
    else:
        lines = ["ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER"]
        lines += [f"{r['id']}\t{r['pid']}\t{r['status']}\t{r['bundle']}\t{r['created']}\troot"
                  for r in rows]  # fmt: skip
        out = "\n".join(lines) + "\n"
    os.write(1, out.encode())


def _freeze(group: object, *, freeze: bool) -> None:
    from cri.oci.cgroups import Cgroup

    assert isinstance(group, Cgroup)
    v1 = group.path_for("freezer")
    if v1 is not None:
        target, value = f"{v1}/freezer.state", "FROZEN" if freeze else "THAWED"
    elif "/sys/fs/cgroup" in group.paths:
        target, value = f"{group.paths['/sys/fs/cgroup']}/cgroup.freeze", "1" if freeze else "0"
    else:
        raise SysError("no freezer cgroup is mounted", step="pause" if freeze else "resume")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as err:
        raise os_error(f"write {value} to {target}", err) from err


def update(root: str, container_id: str, resources: dict[str, object]) -> None:
    """Apply new cgroup limits to a live container and record them in state.json.

    Device rules are not changed by an update (runc leaves them too): they are set
    once, at create.
    """
    from cri.oci import cgroups, fastjson
    from cri.oci.spec import parse_resources

    record = _load(root, container_id)
    status = state.status(root, record)
    if status == state.STOPPED:
        raise StateError("container not running")
    wanted = {k: v for k, v in resources.items() if k != "devices"}
    cgroups.apply(cgroups.Cgroup.from_json(record.cgroup), parse_resources(wanted))
    linux = record.config.get("linux")
    if isinstance(linux, dict):
        current = linux.get("resources")
        merged = dict(current) if isinstance(current, dict) else {}
        for key, value in wanted.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        linux["resources"] = merged
    directory = state.container_dir(root, container_id)
    state.write_atomic(f"{directory}/{state.STATE_FILE}", fastjson.dumps(record.to_json()).encode())


def pause(root: str, container_id: str, *, freeze: bool) -> None:
    from cri.oci.cgroups import Cgroup

    record = _load(root, container_id)
    status = state.status(root, record)
    if freeze and status != state.RUNNING:
        raise StateError(f"container not running: {status}")
    if not freeze and status != state.PAUSED:
        raise StateError(f"container not paused: {status}")
    _freeze(Cgroup.from_json(record.cgroup), freeze=freeze)
