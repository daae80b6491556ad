"""A container's cgroup: create it, apply linux.resources, join it, remove it.

v1 (and the hybrid layout): the one `cgroupsPath` is used in every mounted
hierarchy under /sys/fs/cgroup, name=systemd and the hybrid cgroup2 included,
as runc's cgroupfs driver and kubelet-py's CgroupV1 driver do. v2: the path in
the unified hierarchy, with controllers enabled in the parents of what we create.

Only the directories that make up `cgroupsPath` are created, top-down, and each
one that did not exist is recorded; `remove` takes exactly those away again,
bottom-up, so a machine is left as it was found. Limits are written only to the
container's own (leaf) directory. A relative or empty cgroupsPath is taken
beneath this process's own cgroup in each hierarchy (empty means `<own>/<id>`).
"""

# No pathlib here: it imports re, fnmatch and urllib, ~5 ms of every command's budget.
# ruff: noqa: PTH102, PTH106, PTH123

from __future__ import annotations

import os
import time

from cri.oci.errors import SysError, os_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cri.oci.spec import Resources

CGROUP_ROOT = "/sys/fs/cgroup"
_NOT_CONTROLLERS = frozenset({"rw", "ro", "clone_children", "noprefix", "xattr", "cpuset_v2_mode",
                              "nsdelegate", "memory_recursiveprot", "memory_localevents",
                              "favordynmods", "memory_hugetlb_accounting"})  # fmt: skip
V2_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")


class Hierarchy:
    """One mounted cgroup hierarchy: where it is and which controllers it carries."""

    __slots__ = ("controllers", "mountpoint", "version")

    def __init__(self, *, mountpoint: str, controllers: frozenset[str], version: int) -> None:
        self.mountpoint = mountpoint
        self.controllers = controllers
        self.version = version

    @property
    def name(self) -> str:
        return self.mountpoint.rsplit("/", 1)[-1] or "unified"

    def __repr__(self) -> str:
        return f"Hierarchy({self.mountpoint!r}, {sorted(self.controllers)}, v{self.version})"


def parse_mountinfo(text: str, root: str = CGROUP_ROOT) -> list[Hierarchy]:
    """The cgroup hierarchies mounted at or under `root`, from /proc/self/mountinfo."""
    out: dict[str, Hierarchy] = {}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mountpoint, fstype = fields[4], tail[0]
        if not (mountpoint == root or mountpoint.startswith(root + "/")):
            continue
        if fstype == "cgroup2":
            out[mountpoint] = Hierarchy(
                mountpoint=mountpoint, controllers=frozenset({""}), version=2
            )
        elif fstype == "cgroup":
            ctrls = frozenset(o for o in tail[2].split(",") if o not in _NOT_CONTROLLERS
                              and not o.startswith("release_agent="))  # fmt: skip
            out[mountpoint] = Hierarchy(mountpoint=mountpoint, controllers=ctrls, version=1)
        elif mountpoint in out:
            del out[mountpoint]  # something mounted over it
    return sorted(out.values(), key=lambda h: h.mountpoint)


def unified_mode(hierarchies: list[Hierarchy], root: str = CGROUP_ROOT) -> bool:
    """True when `root` itself is a cgroup2 mount (pure v2)."""
    return any(h.mountpoint == root and h.version == 2 for h in hierarchies)


def own_paths(proc_self_cgroup: str) -> dict[str, str]:
    """controller (or '' for cgroup2, 'name=systemd' for named ones) → this process's path."""
    out: dict[str, str] = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for ctrl in parts[1].split(",") if parts[1] else [""]:
                out[ctrl] = parts[2]
    return out


def container_paths(
    hierarchies: list[Hierarchy], cgroups_path: str, container_id: str, own: dict[str, str]
) -> dict[str, str]:
    """mountpoint → the container's cgroup directory in that hierarchy (pure)."""
    v2_only = unified_mode(hierarchies)
    out: dict[str, str] = {}
    for h in hierarchies:
        if v2_only and h.mountpoint != CGROUP_ROOT:
            continue
        if cgroups_path.startswith("/"):
            rel = cgroups_path
        else:
            base = "/"
            for ctrl in sorted(h.controllers):
                if ctrl in own:
                    base = own[ctrl]
                    break
            rel = f"{base.rstrip('/')}/{cgroups_path or container_id}"
        out[h.mountpoint] = h.mountpoint + "/" + rel.strip("/")
    return out


class Cgroup:
    """The container's directories, one per hierarchy, and which of them we made."""

    __slots__ = ("created", "hierarchies", "paths")

    def __init__(
        self, *, hierarchies: list[Hierarchy], paths: dict[str, str], created: list[str]
    ) -> None:
        self.hierarchies = hierarchies
        self.paths = paths
        self.created = created

    def to_json(self) -> dict[str, object]:
        return {
            "paths": self.paths,
            "created": self.created,
            "controllers": {h.mountpoint: sorted(h.controllers) for h in self.hierarchies},
            "versions": {h.mountpoint: h.version for h in self.hierarchies},
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Cgroup:
        paths = doc.get("paths") or {}
        created = doc.get("created") or []
        ctrls = doc.get("controllers") or {}
        versions = doc.get("versions") or {}
        assert isinstance(paths, dict) and isinstance(created, list)
        assert isinstance(ctrls, dict) and isinstance(versions, dict)
        hierarchies = [
            Hierarchy(mountpoint=m, controllers=frozenset(ctrls.get(m, ())),
                      version=int(versions.get(m, 1)))
            for m in paths
        ]  # fmt: skip
        return cls(hierarchies=hierarchies, paths=dict(paths), created=list(created))

    def path_for(self, controller: str) -> str | None:
        for h in self.hierarchies:
            if controller in h.controllers and h.mountpoint in self.paths:
                return self.paths[h.mountpoint]
        return None

    def procs_file(self) -> str | None:
        """A cgroup.procs that lists every process of the container."""
        for ctrl in ("memory", "pids", "", "cpu", "name=systemd"):
            path = self.path_for(ctrl)
            if path:
                return path + "/cgroup.procs"
        for path in self.paths.values():
            return path + "/cgroup.procs"
        return None

    def pids(self) -> list[int]:
        procs = self.procs_file()
        if procs is None:
            return []
        try:
            with open(procs) as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def create(
    *,
    hierarchies: list[Hierarchy],
    cgroups_path: str,
    container_id: str,
    resources: Resources,
    proc_self_cgroup: str | None = None,
) -> Cgroup:
    """Make the container's directories and write its limits; undone on failure."""
    own = own_paths(
        proc_self_cgroup if proc_self_cgroup is not None else _read("/proc/self/cgroup")
    )
    paths = container_paths(hierarchies, cgroups_path, container_id, own)
    group = Cgroup(hierarchies=[h for h in hierarchies if h.mountpoint in paths], paths=paths,
                   created=[])  # fmt: skip
    try:
        for h in group.hierarchies:
            _make_dirs(h, paths[h.mountpoint], group.created)
        apply(group, resources)
    except BaseException:
        remove(group, wait_s=0)
        raise
    return group


def _make_dirs(h: Hierarchy, leaf: str, created: list[str]) -> None:
    rel = leaf[len(h.mountpoint) :].strip("/")
    d = h.mountpoint
    for part in rel.split("/") if rel else []:
        parent, d = d, f"{d}/{part}"
        try:
            os.mkdir(d, 0o755)
        except FileExistsError:
            continue
        except OSError as err:
            raise os_error(f"create cgroup {d}", err) from err
        created.append(d)
        try:
            if h.version == 1 and "cpuset" in h.controllers:
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not _read(f"{d}/{f}").strip():
                        _write(f"{d}/{f}", _read(f"{parent}/{f}").strip())
            if h.version == 2 and h.mountpoint == CGROUP_ROOT:
                _enable_v2_controllers(parent)
        except OSError as err:
            raise os_error(f"prepare cgroup {d}", err) from err


def _enable_v2_controllers(parent: str) -> None:
    """Let the new child use the parent's controllers (writes the parent's subtree_control)."""
    available = _read(f"{parent}/cgroup.controllers").split()
    enabled = set(_read(f"{parent}/cgroup.subtree_control").split())
    wanted = [c for c in V2_CONTROLLERS if c in available and c not in enabled]
    if wanted:
        try:
            _write(f"{parent}/cgroup.subtree_control", " ".join("+" + c for c in wanted))
        except OSError:
            pass  # a parent with processes of its own cannot delegate; limits then fail loudly


def apply(group: Cgroup, resources: Resources) -> None:
    """Write linux.resources to the container's own directories."""
    from cri.oci.spec import v1_writes, v2_writes  # not at the top: `delete` needs no spec

    if any(h.version == 2 and h.mountpoint == CGROUP_ROOT for h in group.hierarchies):
        unified = group.paths[CGROUP_ROOT]
        for name, value in v2_writes(resources):
            try:
                _write(f"{unified}/{name}", value)
            except OSError as err:
                raise os_error(f"set {name}={value} on cgroup {unified}", err) from err
        return
    for controller, name, value in v1_writes(resources):
        leaf = group.path_for(controller)
        if leaf is None:
            if controller in ("devices", "cpuset"):
                continue
            raise SysError(f"no {controller} cgroup hierarchy is mounted", step=f"set {name}")
        try:
            _write(f"{leaf}/{name}", value)
        except OSError as err:
            raise os_error(f"set {name}={value} on cgroup {leaf}", err) from err


def join(group: Cgroup, pid: int = 0, *, v1: bool = True, v2: bool = True) -> None:
    """Move `pid` (0: the calling process) into the container's cgroup, hierarchy by hierarchy.

    For the calling process (pid 0) v1 uses `tasks`: moving one's own single thread
    skips the kernel's threadgroup lock, whose first taking after a quiet spell
    waits out an RCU grace period (10-20 ms on these VMs). cgroup2 has no such
    path, so `create` joins the init to cgroup2 from the parent, while the
    init builds its rootfs.
    """
    for h in group.hierarchies:
        path = group.paths[h.mountpoint]
        if (h.version == 1 and not v1) or (h.version == 2 and not v2):
            continue
        name = "tasks" if h.version == 1 and pid == 0 else "cgroup.procs"
        try:
            _write(f"{path}/{name}", str(pid))
        except OSError as err:
            raise os_error(f"join cgroup {path}", err) from err


def remove(group: Cgroup, *, wait_s: float = 2.0) -> list[str]:
    """rmdir what `create` made, deepest first; returns the directories that would not go.

    A cgroup whose last process has just been killed stays busy for a moment,
    so busy directories are retried for up to `wait_s`.
    """
    pending = sorted(group.created, key=lambda d: -d.count("/"))
    deadline = time.monotonic() + wait_s
    left: list[str] = []
    for d in pending:
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as err:
                # EBUSY: processes are still leaving. ENOTEMPTY: a sibling container's
                # cgroup sits inside a parent we made; it is theirs to remove now.
                if err.errno == 16 and time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                left.append(d)
                break
    return left
