"""mount(2)/umount2(2) through libc, for overlay rootfs, /dev/shm tmpfs and nsfs pins."""

import ctypes
import os
from pathlib import Path

from cri.runtime.errors import RuntimeServiceError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MNT_DETACH = 0x2
EINVAL = 22
ENOENT = 2


class MountError(RuntimeServiceError):
    """A mount or unmount failed; the message says which and why."""


def mount(source: str, target: Path, fstype: str, flags: int = 0, data: str = "") -> None:
    rc = _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags, data.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(f"mount {fstype} on {target} failed: {os.strerror(err)}")


def umount(target: Path, *, lazy: bool = True) -> None:
    """Unmount `target`; not mounted or missing is fine."""
    rc = _libc.umount2(str(target).encode(), MNT_DETACH if lazy else 0)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (EINVAL, ENOENT):
            return
        raise MountError(f"unmount of {target} failed: {os.strerror(err)}")


def mount_overlay(*, lowerdirs: list[Path], upper: Path, work: Path, target: Path) -> None:
    lower = ":".join(str(p) for p in lowerdirs)
    data = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if len(data) >= 4096:
        raise MountError(
            f"overlay options for {target} are {len(data)} bytes, over the kernel's page limit "
            f"({len(lowerdirs)} layers)"
        )
    mount("overlay", target, "overlay", 0, data)


def is_mountpoint(path: Path) -> bool:
    return os.path.ismount(path)
