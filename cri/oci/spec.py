"""config.json → typed, validated values. Pure: no I/O beyond what the caller passes in.

The executor reads the OCI runtime spec once, here, and every later step works on
these values; a bad field fails here with its JSON path ("process.args: must be a
non-empty list of strings") instead of halfway through building a container.
Mount options become mount(2) flags, and `linux.resources` becomes the list of
cgroup file writes for v1 and v2, both as plain data that unit tests check.

The classes are plain `__slots__` records rather than dataclasses: `dataclasses`
imports `inspect`, ~7 ms of a ~40 ms budget per container.
"""

from __future__ import annotations

from cri.oci.errors import SpecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000

# option → (clears the flag?, flag)
_MOUNT_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND),
    "defaults": (False, 0),
    "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC),
    "lazytime": (False, MS_LAZYTIME),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC),
    "nolazytime": (True, MS_LAZYTIME),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, MS_NOSUID),
    "nosymfollow": (False, MS_NOSYMFOLLOW),
    "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}
PROPAGATION_FLAGS: dict[str, int] = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}
# Options of ours or of other runtimes that are not mount(2) data; accepted and ignored.
_IGNORED_OPTIONS = frozenset({"tmpcopyup", "rro", "rrw", "idmap", "ridmap"})

NAMESPACE_KINDS = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")

RLIMITS: dict[str, int] = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}  # fmt: skip

# Device nodes every container gets (bind-mounted from the host), and the rules that
# let it use them through the devices cgroup: runc's default allow-list.
DEFAULT_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEFAULT_DEVICE_RULES = (
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",  # null
    "c 1:5 rwm",  # zero
    "c 1:7 rwm",  # full
    "c 1:8 rwm",  # random
    "c 1:9 rwm",  # urandom
    "c 5:0 rwm",  # tty
    "c 5:1 rwm",  # console
    "c 5:2 rwm",  # ptmx
    "c 136:* rwm",  # pts/*
    "c 10:200 rwm",  # net/tun
)
DEFAULT_SYMLINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
)


class MountOptions:
    """What a mount's `options` list means to mount(2)."""

    __slots__ = ("data", "flags", "propagation")

    def __init__(self, *, flags: int, propagation: tuple[int, ...], data: str) -> None:
        self.flags = flags
        self.propagation = propagation
        self.data = data

    def __repr__(self) -> str:
        return (
            f"MountOptions(flags={self.flags:#x}, propagation={self.propagation}, "
            f"data={self.data!r})"
        )


def parse_mount_options(options: Sequence[str]) -> MountOptions:
    """Split options into flags (last one wins, as in mount(8)), propagation and data."""
    flags = 0
    propagation: list[int] = []
    data: list[str] = []
    for opt in options:
        if opt in _MOUNT_FLAGS:
            clear, flag = _MOUNT_FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in PROPAGATION_FLAGS:
            propagation.append(PROPAGATION_FLAGS[opt])
        elif opt in _IGNORED_OPTIONS:
            continue
        else:
            data.append(opt)
    return MountOptions(flags=flags, propagation=tuple(propagation), data=",".join(data))


class Mount:
    __slots__ = ("destination", "kind", "options", "raw_options", "source")

    def __init__(
        self, *, destination: str, kind: str, source: str, raw_options: tuple[str, ...]
    ) -> None:
        self.destination = destination
        self.kind = kind
        self.source = source
        self.raw_options = raw_options
        self.options = parse_mount_options(raw_options)

    @property
    def is_bind(self) -> bool:
        return self.kind == "bind" or bool(self.options.flags & MS_BIND)


class Namespace:
    __slots__ = ("kind", "path")

    def __init__(self, *, kind: str, path: str) -> None:
        self.kind = kind
        self.path = path  # "" for a new namespace


class User:
    __slots__ = ("additional_gids", "gid", "uid", "umask")

    def __init__(
        self, *, uid: int, gid: int, additional_gids: tuple[int, ...], umask: int | None
    ) -> None:
        self.uid = uid
        self.gid = gid
        self.additional_gids = additional_gids
        self.umask = umask


class Capabilities:
    __slots__ = ("ambient", "bounding", "effective", "inheritable", "permitted")

    def __init__(
        self,
        *,
        bounding: tuple[str, ...],
        effective: tuple[str, ...],
        permitted: tuple[str, ...],
        inheritable: tuple[str, ...],
        ambient: tuple[str, ...],
    ) -> None:
        self.bounding = bounding
        self.effective = effective
        self.permitted = permitted
        self.inheritable = inheritable
        self.ambient = ambient


class Process:
    __slots__ = (
        "args", "capabilities", "console_height", "console_width", "cwd", "env",
        "no_new_privileges", "oom_score_adj", "rlimits", "terminal", "user",
    )  # fmt: skip

    def __init__(
        self,
        *,
        terminal: bool,
        user: User,
        args: tuple[str, ...],
        env: tuple[str, ...],
        cwd: str,
        capabilities: Capabilities | None,
        rlimits: tuple[tuple[int, int, int], ...],
        no_new_privileges: bool,
        oom_score_adj: int | None,
        console_width: int = 0,
        console_height: int = 0,
    ) -> None:
        self.terminal = terminal
        self.user = user
        self.args = args
        self.env = env
        self.cwd = cwd
        self.capabilities = capabilities
        self.rlimits = rlimits  # (resource, soft, hard)
        self.no_new_privileges = no_new_privileges
        self.oom_score_adj = oom_score_adj
        self.console_width = console_width
        self.console_height = console_height

    def env_value(self, key: str) -> str | None:
        prefix = key + "="
        for item in reversed(self.env):
            if item.startswith(prefix):
                return item[len(prefix) :]
        return None


class Device:
    """A linux.devices entry: a node to create in the container's /dev."""

    __slots__ = ("file_mode", "gid", "kind", "major", "minor", "path", "uid")

    def __init__(
        self, *, path: str, kind: str, major: int, minor: int, file_mode: int, uid: int, gid: int
    ) -> None:
        self.path = path
        self.kind = kind
        self.major = major
        self.minor = minor
        self.file_mode = file_mode
        self.uid = uid
        self.gid = gid


class Resources:
    __slots__ = (
        "cpu_period", "cpu_quota", "cpu_shares", "cpuset_cpus", "cpuset_mems", "device_rules",
        "memory_limit", "memory_reservation", "memory_swap", "oom_kill_disable", "pids_limit",
        "unified",
    )  # fmt: skip

    def __init__(
        self,
        *,
        cpu_shares: int | None = None,
        cpu_quota: int | None = None,
        cpu_period: int | None = None,
        cpuset_cpus: str = "",
        cpuset_mems: str = "",
        memory_limit: int | None = None,
        memory_reservation: int | None = None,
        memory_swap: int | None = None,
        oom_kill_disable: bool = False,
        pids_limit: int | None = None,
        device_rules: tuple[tuple[bool, str], ...] = (),
        unified: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.cpu_shares = cpu_shares
        self.cpu_quota = cpu_quota
        self.cpu_period = cpu_period
        self.cpuset_cpus = cpuset_cpus
        self.cpuset_mems = cpuset_mems
        self.memory_limit = memory_limit
        self.memory_reservation = memory_reservation
        self.memory_swap = memory_swap
        self.oom_kill_disable = oom_kill_disable
        self.pids_limit = pids_limit
        self.device_rules = device_rules  # (allow, "c 1:3 rwm")
        self.unified = unified


class Spec:
    __slots__ = (
        "annotations", "cgroups_path", "devices", "domainname", "hostname", "masked_paths",
        "mounts", "namespaces", "oci_version", "process", "readonly_paths", "resources",
        "root_path", "root_readonly", "rootfs_propagation", "seccomp", "sysctl",
    )  # fmt: skip

    def __init__(
        self,
        *,
        oci_version: str,
        root_path: str,
        root_readonly: bool,
        process: Process,
        hostname: str,
        domainname: str,
        mounts: tuple[Mount, ...],
        namespaces: tuple[Namespace, ...],
        cgroups_path: str,
        resources: Resources,
        devices: tuple[Device, ...],
        masked_paths: tuple[str, ...],
        readonly_paths: tuple[str, ...],
        sysctl: tuple[tuple[str, str], ...],
        seccomp: dict[str, object] | None,
        rootfs_propagation: str,
        annotations: dict[str, str],
    ) -> None:
        self.oci_version = oci_version
        self.root_path = root_path
        self.root_readonly = root_readonly
        self.process = process
        self.hostname = hostname
        self.domainname = domainname
        self.mounts = mounts
        self.namespaces = namespaces
        self.cgroups_path = cgroups_path
        self.resources = resources
        self.devices = devices
        self.masked_paths = masked_paths
        self.readonly_paths = readonly_paths
        self.sysctl = sysctl
        self.seccomp = seccomp
        self.rootfs_propagation = rootfs_propagation
        self.annotations = annotations

    def namespace(self, kind: str) -> Namespace | None:
        for ns in self.namespaces:
            if ns.kind == kind:
                return ns
        return None


# ---- field readers: each names the JSON path it failed on --------------------------------


def _obj(doc: object, where: str) -> Mapping[str, object]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SpecError(f"{where}: must be an object")
    return doc


def _str(doc: Mapping[str, object], key: str, where: str, default: str = "") -> str:
    value = doc.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise SpecError(f"{where}.{key}: must be a string")
    return value


def _bool(doc: Mapping[str, object], key: str, where: str) -> bool:
    value = doc.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise SpecError(f"{where}.{key}: must be true or false")
    return value


def _int(doc: Mapping[str, object], key: str, where: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}.{key}: must be an integer")
    return value


def _strs(doc: Mapping[str, object], key: str, where: str) -> tuple[str, ...]:
    value = doc.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"{where}.{key}: must be a list of strings")
    return tuple(value)


def _list(doc: Mapping[str, object], key: str, where: str) -> list[object]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(f"{where}.{key}: must be a list")
    return value


def parse_user(doc: object, where: str = "process.user") -> User:
    user = _obj(doc, where)
    uid = _int(user, "uid", where) or 0
    gid = _int(user, "gid", where) or 0
    gids = _list(user, "additionalGids", where)
    if not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gids):
        raise SpecError(f"{where}.additionalGids: must be a list of non-negative integers")
    if uid < 0 or gid < 0:
        raise SpecError(f"{where}: uid and gid must not be negative")
    return User(
        uid=uid,
        gid=gid,
        additional_gids=tuple(g for g in gids if isinstance(g, int)),
        umask=_int(user, "umask", where),
    )


def parse_capabilities(doc: object, where: str = "process.capabilities") -> Capabilities | None:
    if doc is None:
        return None
    caps = _obj(doc, where)
    return Capabilities(
        bounding=_strs(caps, "bounding", where),
        effective=_strs(caps, "effective", where),
        permitted=_strs(caps, "permitted", where),
        inheritable=_strs(caps, "inheritable", where),
        ambient=_strs(caps, "ambient", where),
    )


def parse_process(doc: object, where: str = "process") -> Process:
    proc = _obj(doc, where)
    if not proc:
        raise SpecError(f"{where}: missing")
    args = _strs(proc, "args", where)
    if not args or not args[0]:
        raise SpecError(f"{where}.args: must be a non-empty list of strings")
    cwd = _str(proc, "cwd", where, "/")
    if not cwd.startswith("/"):
        raise SpecError(f"{where}.cwd: must be an absolute path, not {cwd!r}")
    for item in _strs(proc, "env", where):
        if "=" not in item:
            raise SpecError(f"{where}.env: {item!r} is not KEY=VALUE")
    rlimits: list[tuple[int, int, int]] = []
    for i, raw in enumerate(_list(proc, "rlimits", where)):
        at = f"{where}.rlimits[{i}]"
        entry = _obj(raw, at)
        name = _str(entry, "type", at)
        if name not in RLIMITS:
            raise SpecError(f"{at}.type: unknown rlimit {name!r}")
        soft, hard = _int(entry, "soft", at), _int(entry, "hard", at)
        if soft is None or hard is None:
            raise SpecError(f"{at}: needs soft and hard")
        rlimits.append((RLIMITS[name], soft, hard))
    box = _obj(proc.get("consoleSize"), f"{where}.consoleSize")
    return Process(
        terminal=_bool(proc, "terminal", where),
        user=parse_user(proc.get("user"), f"{where}.user"),
        args=args,
        env=_strs(proc, "env", where),
        cwd=cwd,
        capabilities=parse_capabilities(proc.get("capabilities"), f"{where}.capabilities"),
        rlimits=tuple(rlimits),
        no_new_privileges=_bool(proc, "noNewPrivileges", where),
        oom_score_adj=_int(proc, "oomScoreAdj", where),
        console_width=_int(box, "width", f"{where}.consoleSize") or 0,
        console_height=_int(box, "height", f"{where}.consoleSize") or 0,
    )


def _device_rule(raw: object, where: str) -> tuple[bool, str]:
    rule = _obj(raw, where)
    kind = _str(rule, "type", where, "a") or "a"
    if kind not in ("a", "b", "c"):
        raise SpecError(f"{where}.type: must be a, b or c")
    major, minor = _int(rule, "major", where), _int(rule, "minor", where)
    access = _str(rule, "access", where, "rwm") or "rwm"
    if set(access) - set("rwm"):
        raise SpecError(f"{where}.access: {access!r} is not a subset of rwm")
    text = f"{kind} {'*' if major is None else major}:{'*' if minor is None else minor} {access}"
    return _bool(rule, "allow", where), text


def parse_resources(doc: object, where: str = "linux.resources") -> Resources:
    res = _obj(doc, where)
    cpu = _obj(res.get("cpu"), f"{where}.cpu")
    memory = _obj(res.get("memory"), f"{where}.memory")
    pids = _obj(res.get("pids"), f"{where}.pids")
    rules = tuple(
        _device_rule(r, f"{where}.devices[{i}]") for i, r in enumerate(_list(res, "devices", where))
    )
    unified = _obj(res.get("unified"), f"{where}.unified")
    for key, value in unified.items():
        if "/" in key or not isinstance(value, str):
            raise SpecError(f"{where}.unified: {key!r} must be a file name with a string value")
    shares = _int(cpu, "shares", f"{where}.cpu")
    period = _int(cpu, "period", f"{where}.cpu")
    return Resources(
        cpu_shares=shares or None,
        cpu_quota=_int(cpu, "quota", f"{where}.cpu"),
        cpu_period=period or None,
        cpuset_cpus=_str(cpu, "cpus", f"{where}.cpu"),
        cpuset_mems=_str(cpu, "mems", f"{where}.cpu"),
        memory_limit=_int(memory, "limit", f"{where}.memory"),
        memory_reservation=_int(memory, "reservation", f"{where}.memory"),
        memory_swap=_int(memory, "swap", f"{where}.memory"),
        oom_kill_disable=_bool(memory, "disableOOMKiller", f"{where}.memory"),
        pids_limit=_int(pids, "limit", f"{where}.pids"),
        device_rules=rules,
        unified=tuple((k, str(v)) for k, v in unified.items()),
    )


def _parse_mount(raw: object, where: str) -> Mount:
    m = _obj(raw, where)
    dest = _str(m, "destination", where)
    if not dest.startswith("/"):
        raise SpecError(f"{where}.destination: must be an absolute path, not {dest!r}")
    return Mount(
        destination=dest,
        kind=_str(m, "type", where),
        source=_str(m, "source", where),
        raw_options=_strs(m, "options", where),
    )


def _parse_device(raw: object, where: str) -> Device:
    d = _obj(raw, where)
    path = _str(d, "path", where)
    kind = _str(d, "type", where)
    if not path.startswith("/dev/") or kind not in ("c", "u", "b", "p"):
        raise SpecError(f"{where}: needs a path under /dev and type c, u, b or p")
    mode = _int(d, "fileMode", where)
    return Device(
        path=path,
        kind=kind,
        major=_int(d, "major", where) or 0,
        minor=_int(d, "minor", where) or 0,
        file_mode=0o666 if mode is None else mode,
        uid=_int(d, "uid", where) or 0,
        gid=_int(d, "gid", where) or 0,
    )


def parse_spec(doc: object) -> Spec:
    """The whole config.json; SpecError names the first field that is wrong."""
    spec = _obj(doc, "config.json")
    root = _obj(spec.get("root"), "root")
    root_path = _str(root, "path", "root")
    if not root_path:
        raise SpecError("root.path: missing")
    linux = _obj(spec.get("linux"), "linux")
    namespaces: list[Namespace] = []
    seen: set[str] = set()
    for i, raw in enumerate(_list(linux, "namespaces", "linux")):
        at = f"linux.namespaces[{i}]"
        ns = _obj(raw, at)
        kind = _str(ns, "type", at)
        if kind not in NAMESPACE_KINDS:
            raise SpecError(f"{at}.type: unknown namespace {kind!r}")
        if kind in seen:
            raise SpecError(f"{at}: namespace {kind!r} is listed twice")
        seen.add(kind)
        namespaces.append(Namespace(kind=kind, path=_str(ns, "path", at)))
    sysctl = _obj(linux.get("sysctl"), "linux.sysctl")
    for key, value in sysctl.items():
        if not isinstance(value, str) or not key or "/" in key or ".." in key:
            raise SpecError(f"linux.sysctl: {key!r} must be a dotted name with a string value")
    seccomp = linux.get("seccomp")
    if seccomp is not None and not isinstance(seccomp, dict):
        raise SpecError("linux.seccomp: must be an object")
    cgroups_path = _str(linux, "cgroupsPath", "linux")
    if ".." in cgroups_path.split("/"):
        raise SpecError(f"linux.cgroupsPath: {cgroups_path!r} must not contain '..'")
    annotations = _obj(spec.get("annotations"), "annotations")
    propagation = _str(linux, "rootfsPropagation", "linux")
    if propagation and propagation not in PROPAGATION_FLAGS:
        raise SpecError(f"linux.rootfsPropagation: unknown propagation {propagation!r}")
    return Spec(
        oci_version=_str(spec, "ociVersion", "config.json"),
        root_path=root_path,
        root_readonly=_bool(root, "readonly", "root"),
        process=parse_process(spec.get("process")),
        hostname=_str(spec, "hostname", "config.json"),
        domainname=_str(spec, "domainname", "config.json"),
        mounts=tuple(
            _parse_mount(m, f"mounts[{i}]") for i, m in enumerate(_list(spec, "mounts", "config"))
        ),
        namespaces=tuple(namespaces),
        cgroups_path=cgroups_path,
        resources=parse_resources(linux.get("resources")),
        devices=tuple(
            _parse_device(d, f"linux.devices[{i}]")
            for i, d in enumerate(_list(linux, "devices", "linux"))
        ),
        masked_paths=_strs(linux, "maskedPaths", "linux"),
        readonly_paths=_strs(linux, "readonlyPaths", "linux"),
        sysctl=tuple((k, str(v)) for k, v in sysctl.items()),
        seccomp=seccomp,
        rootfs_propagation=propagation,
        annotations={k: str(v) for k, v in annotations.items()},
    )


# ---- resources → cgroup file writes ------------------------------------------------------


def v1_writes(res: Resources) -> list[tuple[str, str, str]]:
    """(controller, file, value) in the order to write them, for cgroup v1."""
    out: list[tuple[str, str, str]] = []
    if res.cpu_shares:
        out.append(("cpu", "cpu.shares", str(res.cpu_shares)))
    if res.cpu_period:
        out.append(("cpu", "cpu.cfs_period_us", str(res.cpu_period)))
    if res.cpu_quota is not None and res.cpu_quota != 0:
        out.append(("cpu", "cpu.cfs_quota_us", str(res.cpu_quota if res.cpu_quota > 0 else -1)))
    if res.cpuset_cpus:
        out.append(("cpuset", "cpuset.cpus", res.cpuset_cpus))
    if res.cpuset_mems:
        out.append(("cpuset", "cpuset.mems", res.cpuset_mems))
    if res.memory_limit:
        out.append(("memory", "memory.limit_in_bytes", str(res.memory_limit)))
    if res.memory_swap:
        # v1's memsw limit is memory+swap and must not be below the memory limit.
        out.append(("memory", "memory.memsw.limit_in_bytes", str(res.memory_swap)))
    if res.memory_reservation:
        out.append(("memory", "memory.soft_limit_in_bytes", str(res.memory_reservation)))
    if res.oom_kill_disable:
        out.append(("memory", "memory.oom_control", "1"))
    if res.pids_limit is not None and res.pids_limit != 0:
        out.append(("pids", "pids.max", str(res.pids_limit) if res.pids_limit > 0 else "max"))
    if res.device_rules:
        for allow, rule in res.device_rules:
            out.append(("devices", "devices.allow" if allow else "devices.deny", rule))
        if not all(allow for allow, _ in res.device_rules):
            out.extend(("devices", "devices.allow", rule) for rule in DEFAULT_DEVICE_RULES)
    return out


def cpu_shares_to_weight(shares: int) -> int:
    """v1 cpu.shares → v2 cpu.weight, the mapping runc and crun use (1024 → 100)."""
    import math

    if shares <= 2:
        return 1
    if shares >= 262144:
        return 10000
    exponent = (math.log2(shares) ** 2 + 125 * math.log2(shares)) / 612.0 - 7.0 / 34.0
    return max(1, min(10000, math.ceil(10**exponent)))


def v2_writes(res: Resources) -> list[tuple[str, str]]:
    """(file, value) in the order to write them, for the unified hierarchy.

    Device rules have no file in v2 (they are an eBPF program); they are not applied.
    """
    out: list[tuple[str, str]] = []
    if res.cpu_shares:
        out.append(("cpu.weight", str(cpu_shares_to_weight(res.cpu_shares))))
    if (res.cpu_quota is not None and res.cpu_quota != 0) or res.cpu_period:
        quota = "max" if res.cpu_quota is None or res.cpu_quota <= 0 else str(res.cpu_quota)
        out.append(("cpu.max", f"{quota} {res.cpu_period or 100000}"))
    if res.cpuset_cpus:
        out.append(("cpuset.cpus", res.cpuset_cpus))
    if res.cpuset_mems:
        out.append(("cpuset.mems", res.cpuset_mems))
    if res.memory_limit:
        out.append(("memory.max", str(res.memory_limit) if res.memory_limit > 0 else "max"))
        if res.memory_swap and res.memory_swap > 0:
            swap = max(0, res.memory_swap - res.memory_limit)
            out.append(("memory.swap.max", str(swap)))
    if res.memory_reservation:
        out.append(("memory.low", str(res.memory_reservation)))
    if res.pids_limit is not None and res.pids_limit != 0:
        out.append(("pids.max", str(res.pids_limit) if res.pids_limit > 0 else "max"))
    out.extend(res.unified)
    return out
