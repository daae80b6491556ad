"""CRI container request → OCI runtime spec (config.json). Pure: no I/O, no root.

Everything a container is made of is decided here, as plain data, so it can be
unit-tested case by case; executors (runc, ours) only carry the spec out.
Defaults follow containerd's CRI plugin: its default capability set, masked and
read-only /proc paths, an RLIMIT_NOFILE of 1048576, and cgroup limits from the
CRI resources.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cri.runtime.cgroups import cpu_shares_to_weight
from cri.runtime.errors import InvalidArgumentError
from cri.runtime.model import ContainerConfig, MountPropagation, NamespaceMode

OCI_VERSION = "1.0.2"

DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

ALL_CAPABILITIES = (
    "CAP_AUDIT_CONTROL", "CAP_AUDIT_READ", "CAP_AUDIT_WRITE", "CAP_BLOCK_SUSPEND", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER", "CAP_FSETID", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_KILL", "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE", "CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE", "CAP_MKNOD", "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_RAW", "CAP_PERFMON", "CAP_SETFCAP",
    "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE", "CAP_SYS_NICE", "CAP_SYS_PACCT", "CAP_SYS_PTRACE", "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_SYSLOG", "CAP_WAKE_ALARM",
)  # fmt: skip

DEFAULT_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class SandboxPaths:
    """What a container takes from its sandbox."""

    hostname: str
    netns: str | None  # None: the host's network namespace
    ipcns: str | None
    utsns: str | None
    pidns: str | None  # set when the pod shares one PID namespace
    hosts_file: str
    resolv_conf: str
    hostname_file: str
    shm_dir: str | None


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ImageDefaults:
    """The parts of the image config a container inherits."""

    env: tuple[str, ...] = ()
    working_dir: str = ""
    argv: tuple[str, ...] = ()


def _parse_passwd(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(
    *,
    image_user: str,
    run_as_user: int | None,
    run_as_username: str,
    run_as_group: int | None,
    supplemental_groups: Sequence[int],
    passwd: str,
    group: str,
    what: str,
) -> ResolvedUser:
    """uid/gid/groups from CRI's runAs* fields or the image's USER, via the image's files.

    USER forms: `name`, `uid`, `name:group`, `uid:gid`. A name that is not in the
    image's /etc/passwd is an error (as in Docker); a numeric uid needs no entry.
    """
    users = _parse_passwd(passwd)
    groups = _parse_passwd(group)
    user_part, _, group_part = image_user.partition(":")
    if run_as_user is not None:
        user_part, group_part = str(run_as_user), ""
    elif run_as_username:
        user_part, group_part = run_as_username, ""
    uid, gid, username = 0, 0, "root"
    if user_part:
        if user_part.isdigit():
            uid = int(user_part)
            entry = next((u for u in users if len(u) > 3 and u[2] == user_part), None)
            gid = int(entry[3]) if entry else 0
            username = entry[0] if entry else ""
        else:
            entry = next((u for u in users if u[0] == user_part and len(u) > 3), None)
            if entry is None:
                raise InvalidArgumentError(
                    f"{what}: user {user_part!r} is not in the image's /etc/passwd"
                )
            uid, gid, username = int(entry[2]), int(entry[3]), user_part
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            g = next((g for g in groups if g[0] == group_part and len(g) > 2), None)
            if g is None:
                raise InvalidArgumentError(
                    f"{what}: group {group_part!r} is not in the image's /etc/group"
                )
            gid = int(g[2])
    if run_as_group is not None:
        gid = run_as_group
    extra: list[int] = []
    if username:
        for g in groups:
            if len(g) > 3 and username in g[3].split(",") and int(g[2]) != gid:
                extra.append(int(g[2]))
    extra += [g for g in supplemental_groups if g not in extra and g != gid]
    return ResolvedUser(uid=uid, gid=gid, additional_gids=tuple(extra))


def _env(image_env: Sequence[str], envs: Sequence[tuple[str, str]], hostname: str) -> list[str]:
    merged: dict[str, str] = {}
    for item in image_env:
        key, _, value = item.partition("=")
        merged[key] = value
    merged.setdefault("PATH", DEFAULT_PATH.split("=", 1)[1])
    merged.setdefault("HOSTNAME", hostname)
    for key, value in envs:
        merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def _capabilities(config: ContainerConfig) -> list[str]:
    sec = config.security
    if sec.privileged:
        return list(ALL_CAPABILITIES)
    caps = list(DEFAULT_CAPABILITIES)
    add = [
        c if c.startswith("CAP_") else f"CAP_{c}" for c in (x.upper() for x in sec.capabilities.add)
    ]
    drop = [
        c if c.startswith("CAP_") else f"CAP_{c}"
        for c in (x.upper() for x in sec.capabilities.drop)
    ]
    if "CAP_ALL" in add:
        caps = list(ALL_CAPABILITIES)
    for cap in add:
        if cap != "CAP_ALL" and cap not in ALL_CAPABILITIES:
            raise InvalidArgumentError(f"unknown capability {cap!r} in capabilities.add")
        if cap not in caps and cap != "CAP_ALL":
            caps.append(cap)
    if "CAP_ALL" in drop:
        return [c for c in caps if c in add]
    return [c for c in caps if c not in drop]


def propagation_option(p: MountPropagation) -> str:
    """The OCI mount option for a CRI propagation mode."""
    return {
        MountPropagation.PRIVATE: "rprivate",
        MountPropagation.HOST_TO_CONTAINER: "rslave",
        MountPropagation.BIDIRECTIONAL: "rshared",
    }[p]


def _mounts(config: ContainerConfig, sandbox: SandboxPaths) -> list[dict[str, Any]]:
    privileged = config.security.privileged
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "rw" if privileged else "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "rw" if privileged else "ro"]},
    ]  # fmt: skip
    if sandbox.shm_dir is not None:
        mounts.append(
            {"destination": "/dev/shm", "type": "bind", "source": sandbox.shm_dir,
             "options": ["rbind", "rprivate", "rw"]}
        )  # fmt: skip
    else:
        mounts.append(
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}
        )  # fmt: skip
    user_paths = {m.container_path for m in config.mounts}
    for dest, src in (
        ("/etc/hosts", sandbox.hosts_file),
        ("/etc/resolv.conf", sandbox.resolv_conf),
        ("/etc/hostname", sandbox.hostname_file),
    ):
        if dest not in user_paths:
            ro = "ro" if config.security.readonly_rootfs else "rw"
            mounts.append(
                {"destination": dest, "type": "bind", "source": src,
                 "options": ["rbind", "rprivate", ro]}
            )  # fmt: skip
    for m in sorted(config.mounts, key=lambda m: m.container_path.count("/")):
        if not m.container_path.startswith("/"):
            raise InvalidArgumentError(f"mount destination {m.container_path!r} is not absolute")
        mounts.append(
            {
                "destination": m.container_path,
                "type": "bind",
                "source": m.host_path,
                "options": [
                    "rbind",
                    propagation_option(m.propagation),
                    "ro" if m.readonly else "rw",
                ],
            }
        )
    return mounts


def _namespaces(config: ContainerConfig, sandbox: SandboxPaths) -> list[dict[str, str]]:
    ns: list[dict[str, str]] = [{"type": "mount"}]
    pid_mode = config.security.namespace_options.pid
    if pid_mode == NamespaceMode.POD and sandbox.pidns:
        ns.append({"type": "pid", "path": sandbox.pidns})
    elif pid_mode != NamespaceMode.NODE:
        ns.append({"type": "pid"})
    for kind, path in (("network", sandbox.netns), ("ipc", sandbox.ipcns), ("uts", sandbox.utsns)):
        if path is not None:
            ns.append({"type": kind, "path": path})
    return ns


def _resources(config: ContainerConfig, cgroup_version: int) -> dict[str, Any]:
    r = config.resources
    out: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if config.security.privileged:
        out["devices"] = [{"allow": True, "access": "rwm"}]
    cpu: dict[str, int] = {}
    if r.cpu_shares:
        cpu["shares"] = r.cpu_shares
        if cgroup_version == 2:
            # runc < 1.3.2 converts shares to cpu.weight with its old linear formula;
            # unified values are written last and win.
            out["unified"] = {"cpu.weight": str(cpu_shares_to_weight(r.cpu_shares))}
    if r.cpu_quota:
        cpu["quota"] = r.cpu_quota
    if r.cpu_period:
        cpu["period"] = r.cpu_period
    if cpu:
        out["cpu"] = cpu
    if r.memory_limit_bytes:
        out["memory"] = {"limit": r.memory_limit_bytes}
    if r.pids_limit:
        out["pids"] = {"limit": r.pids_limit}
    return out


def container_spec(
    config: ContainerConfig,
    *,
    sandbox: SandboxPaths,
    image: ImageDefaults,
    user: ResolvedUser,
    rootfs: str,
    cgroups_path: str,
    sysctls: Mapping[str, str] = {},
    seccomp: Mapping[str, Any] | None = None,
    nofile_limit: int = 1048576,
    cgroup_version: int = 1,
) -> dict[str, Any]:
    """The OCI runtime spec for one container.

    `nofile_limit` is containerd's 1048576 unless the runtime itself runs under a
    lower hard limit (a container cannot be given more than its creator has).
    """
    if not image.argv:
        raise InvalidArgumentError("no command to run")
    sec = config.security
    caps = _capabilities(config)
    process: dict[str, Any] = {
        "terminal": config.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)},
        "args": list(image.argv),
        "env": _env(image.env, config.envs, sandbox.hostname),
        "cwd": config.working_dir or image.working_dir or "/",
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile_limit, "soft": nofile_limit}],
        "noNewPrivileges": sec.no_new_privs,
    }
    if config.resources.oom_score_adj:
        process["oomScoreAdj"] = config.resources.oom_score_adj
    linux: dict[str, Any] = {
        "namespaces": _namespaces(config, sandbox),
        "cgroupsPath": cgroups_path,
        "resources": _resources(config, cgroup_version),
    }
    if not sec.privileged:
        linux["maskedPaths"] = list(
            sec.masked_paths if sec.masked_paths is not None else DEFAULT_MASKED_PATHS
        )
        linux["readonlyPaths"] = list(
            sec.readonly_paths if sec.readonly_paths is not None else DEFAULT_READONLY_PATHS
        )
    if sysctls:
        linux["sysctl"] = dict(sysctls)
    if seccomp is not None and not sec.privileged:
        linux["seccomp"] = dict(seccomp)
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": sec.readonly_rootfs},
        "mounts": _mounts(config, sandbox),
        "linux": linux,
        "annotations": {
            "io.kubernetes.cri.container-name": config.name,
            **{k: v for k, v in config.annotations.items()},
        },
    }
    if sandbox.utsns is not None:
        spec["hostname"] = sandbox.hostname  # a host-UTS container keeps the host's name
    return spec
