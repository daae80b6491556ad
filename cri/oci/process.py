"""The last steps before execve, shared by a container's init and by `exec`.

Order (runc's): rlimits → no_new_privs → seccomp if *not* no_new_privs (it then
needs CAP_SYS_ADMIN, which we still have) → drop the bounding set → keep-caps,
groups, gid, uid → umask, cwd → capset + ambient → find the executable. Then the
caller waits (init: for `start`), and `exec_process` installs seccomp if it
was deferred (as close to execve as possible), restores the signal dispositions
Python changed, and execs.
"""

# No pathlib here: it imports re, fnmatch and urllib, ~5 ms of every command's budget.
# ruff: noqa: PTH110, PTH113, PTH123

from __future__ import annotations

import os

from cri.oci import caps, linux, sig
from cri.oci.errors import SysError, os_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cri.oci.cgroups import Cgroup
    from cri.oci.seccomp import Filter
    from cri.oci.spec import Process

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def fork_in_cgroup(group: Cgroup) -> tuple[int, bool]:
    """fork(); the child is born in its cgroup2 directory when there is one (see linux).

    Returns (pid, whether the child still has to be moved into its cgroup2 directory).
    """
    v2 = [group.paths[h.mountpoint] for h in group.hierarchies if h.version == 2]
    if not v2:
        return os.fork(), False
    try:
        fd = os.open(v2[0], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise os_error(f"open cgroup {v2[0]}", err) from err
    try:
        return linux.fork_into_cgroup(fd), False
    except OSError:
        return os.fork(), True  # an old kernel: the parent moves the child by its PID
    finally:
        os.close(fd)


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(caps.CAPABILITIES.values())


def set_rlimits(proc: Process) -> None:
    for res, soft, hard in proc.rlimits:
        try:
            linux.setrlimit(res, soft, hard)
        except OSError as err:
            raise os_error(f"set rlimit {res} to {soft}/{hard}", err) from err


def _home(uid: int) -> str:
    try:
        with open("/etc/passwd") as f:
            for line in f:
                fields = line.split(":")
                if len(fields) > 5 and fields[2] == str(uid):
                    return fields[5] or "/"
    except OSError:
        pass
    return "/"


def environment(proc: Process) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in proc.env:
        key, _, value = item.partition("=")
        env[key] = value
    if "HOME" not in env:
        env["HOME"] = _home(proc.user.uid)
    return env


def find_executable(name: str, env: dict[str, str], cwd: str) -> str:
    if "/" in name:
        path = name if name.startswith("/") else f"{cwd.rstrip('/')}/{name}"
        if not os.path.exists(path):
            raise SysError(f'exec: "{name}": no such file or directory', step="find executable")
        return path
    for d in (env.get("PATH") or DEFAULT_PATH).split(":"):
        path = f"{d or '.'}/{name}"
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise SysError(f'exec: "{name}": executable file not found in $PATH', step="find executable")


def finalize(proc: Process, *, seccomp_filter: Filter | None) -> str:
    """Drop to the process's identity and privileges; return the executable's path."""
    nnp = proc.no_new_privileges
    if nnp:
        try:
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
        except OSError as err:
            raise os_error("set no_new_privs", err) from err
    if seccomp_filter is not None and not nnp:
        install_seccomp(seccomp_filter)
    c = proc.capabilities
    top = last_cap()
    if c is not None:
        bounding = set(caps.numbers(c.bounding, last_cap=top, where="process.capabilities"))
        for nr in range(top + 1):
            if nr not in bounding:
                try:
                    linux.prctl(linux.PR_CAPBSET_DROP, nr)
                except OSError as err:
                    raise os_error(f"drop capability {nr} from the bounding set", err) from err
    user = proc.user
    try:
        linux.prctl(linux.PR_SET_KEEPCAPS, 1)
        os.setgroups(list(user.additional_gids))
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
        linux.prctl(linux.PR_SET_KEEPCAPS, 0)
    except OSError as err:
        raise os_error(f"switch to user {user.uid}:{user.gid}", err) from err
    os.umask(0o022 if user.umask is None else user.umask)
    try:
        os.chdir(proc.cwd)
    except OSError as err:
        raise os_error(f"change to working directory {proc.cwd}", err) from err
    if c is not None:
        where = "process.capabilities"
        try:
            linux.capset(
                effective=caps.mask(caps.numbers(c.effective, last_cap=top, where=where)),
                permitted=caps.mask(caps.numbers(c.permitted, last_cap=top, where=where)),
                inheritable=caps.mask(caps.numbers(c.inheritable, last_cap=top, where=where)),
            )
        except OSError as err:
            raise os_error("set capabilities", err) from err
        for nr in caps.numbers(c.ambient, last_cap=top, where=where):
            try:
                linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_RAISE, nr)
            except OSError as err:
                raise os_error(f"raise ambient capability {nr}", err) from err
    return find_executable(proc.args[0], environment(proc), proc.cwd)


def install_seccomp(seccomp_filter: Filter) -> None:
    try:
        linux.seccomp_set_filter(seccomp_filter.program(), seccomp_filter.flags)
    except OSError as err:
        raise os_error("install seccomp filter", err) from err


def exec_process(proc: Process, path: str, *, seccomp_filter: Filter | None) -> None:
    """Replace this process with the container's; returns only by raising SysError."""
    if seccomp_filter is not None and proc.no_new_privileges:
        install_seccomp(seccomp_filter)
    # Python ignores SIGPIPE and SIGXFSZ; ignored signals stay ignored across execve.
    sig.set_handler(sig.SIGPIPE, sig.SIG_DFL)
    sig.set_handler(sig.SIGXFSZ, sig.SIG_DFL)
    try:
        os.execve(path, list(proc.args), environment(proc))  # noqa: S606 - the point
    except OSError as err:
        raise os_error(f'exec "{proc.args[0]}"', err) from err
