"""Raw Linux calls the standard library of Python 3.11 lacks, through ctypes.

mount, umount2, pivot_root, unshare, setns, sethostname, prctl, capset,
seccomp, and the new mount API's open_tree, move_mount and mount_setattr. Each
raises OSError with the errno, like the `os` functions do; the caller adds the
step ("mount proc on /proc") to the message.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]  # fmt: skip
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]  # fmt: skip
_libc.syscall.restype = ctypes.c_long

SYS_CAPSET = 126
SYS_PIVOT_ROOT = 155
SYS_PRLIMIT64 = 302
SYS_SECCOMP = 317
SYS_CLONE3 = 435
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442

CLONE_NEWTIME = 0x80
CLONE_NEWNS = 0x20000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_INTO_CGROUP = 0x200000000
SIGCHLD = 17
NAMESPACE_FLAGS = {
    "mount": CLONE_NEWNS,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID,
    "network": CLONE_NEWNET,
    "cgroup": CLONE_NEWCGROUP,
    "time": CLONE_NEWTIME,
}
# The names of /proc/<pid>/ns/* for each spec namespace type.
NAMESPACE_FILES = {
    "mount": "mnt",
    "uts": "uts",
    "ipc": "ipc",
    "user": "user",
    "pid": "pid",
    "network": "net",
    "cgroup": "cgroup",
    "time": "time",
}

MNT_DETACH = 2
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1

PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2

SECCOMP_SET_MODE_FILTER = 1
LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _check(rc: int) -> None:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source is not None else None,
            target.encode(),
            fstype.encode() if fstype is not None else None,
            flags,
            data.encode() if data else None,
        )
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags))


def open_tree(path: str, flags: int) -> int:
    """A file descriptor for the mount at `path` (with OPEN_TREE_CLONE: a detached copy)."""
    rc = int(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), flags))
    _check(rc)
    return rc


def move_mount_fd(tree: int, target: str) -> None:
    """Attach the mount tree `tree` (from open_tree) at `target`."""
    _check(
        _libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH)
    )


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(
    target: str, flags: int, *, attr_set: int = 0, attr_clr: int = 0, propagation: int = 0
) -> None:
    """Change mount attributes and/or propagation (one of MS_PRIVATE/SLAVE/SHARED, no MS_REC:
    AT_RECURSIVE in `flags` makes it recursive). Linux 5.12+."""
    attr = _MountAttr(attr_set=attr_set, attr_clr=attr_clr, propagation=propagation)
    _check(
        _libc.syscall(
            SYS_MOUNT_SETATTR,
            AT_FDCWD,
            target.encode(),
            flags,
            ctypes.byref(attr),
            ctypes.sizeof(attr),
        )
    )


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(SYS_PIVOT_ROOT, new_root.encode(), put_old.encode()))


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags))


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype))


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)))


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    rc = int(_libc.prctl(option, arg2, arg3, arg4, arg5))
    _check(rc)
    return rc


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capset(*, effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets from 64-bit masks."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_filter(program: bytes, flags: int = 0) -> None:
    """Install a classic BPF program (8-byte sock_filter records) as a seccomp filter."""
    if len(program) % 8:
        raise ValueError("a BPF program is a whole number of 8-byte instructions")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    _check(_libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, flags, ctypes.byref(prog)))


class _Rlimit(ctypes.Structure):
    _fields_ = [("cur", ctypes.c_uint64), ("max", ctypes.c_uint64)]


def setrlimit(resource: int, soft: int, hard: int) -> None:
    """prlimit64 on ourselves (the `resource` module is one more shared library to load)."""
    new = _Rlimit(soft & 0xFFFFFFFFFFFFFFFF, hard & 0xFFFFFFFFFFFFFFFF)
    _check(_libc.syscall(SYS_PRLIMIT64, 0, resource, ctypes.byref(new), None))


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls",
        "set_tid", "set_tid_size", "cgroup")]  # fmt: skip


# The GIL stays held across this call, as it does across fork() in os.fork.
_syscall_gil = ctypes.PyDLL(None, use_errno=True).syscall
_syscall_gil.restype = ctypes.c_long


def fork_into_cgroup(cgroup_fd: int) -> int:
    """fork(), with the child born in the cgroup2 directory `cgroup_fd` (CLONE_INTO_CGROUP).

    Moving a live process into a cgroup2 cgroup takes the kernel's threadgroup lock
    for writing, whose first taking after a quiet spell waits out an RCU grace
    period (10-20 ms on these VMs); being born there costs nothing. Done as
    os.fork does it: Python's before/after-fork hooks around the raw clone3.
    Raises OSError (ENOSYS, EINVAL, ...) when the kernel will not; callers then
    fall back to os.fork and a write to cgroup.procs.
    """
    args = _CloneArgs()
    args.flags = CLONE_INTO_CGROUP
    args.exit_signal = SIGCHLD
    args.cgroup = cgroup_fd
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = int(_syscall_gil(SYS_CLONE3, ctypes.byref(args), ctypes.sizeof(args)))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, os.strerror(err))
    return pid
