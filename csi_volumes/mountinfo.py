"""The mount table as typed values, and a mount's health.

`parse_mountinfo` is pure (the format of proc(5) /proc/<pid>/mountinfo); `mounts()` reads
this process's table. `probe_health` tells a live mount from a dead FUSE mount, whose
daemon is gone: statfs(2) then fails with ENOTCONN ("Transport endpoint is not connected").
statfs, not stat: the kernel may answer stat of a FUSE root from its attribute cache
after the daemon died, while statfs always asks the daemon (which answers it locally,
without a trip to S3).
"""

import errno
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    root: str
    mountpoint: str
    options: str
    fstype: str
    source: str

    @property
    def read_only(self) -> bool:
        return "ro" in self.options.split(",")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 6 or len(rf) < 2:
            continue
        entries.append(
            MountEntry(
                mount_id=int(lf[0]),
                root=_unescape(lf[3]),
                mountpoint=_unescape(lf[4]),
                options=lf[5],
                fstype=rf[0],
                source=_unescape(rf[1]),
            )
        )
    return entries


def mounts() -> list[MountEntry]:
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def mount_at(path: Path) -> MountEntry | None:
    """The topmost mount whose mount point is exactly `path` (None if it is not a mount point)."""
    target = os.path.normpath(str(path))
    found = None
    for entry in mounts():
        if entry.mountpoint == target:
            found = entry  # later lines are mounted on top
    return found


class Health(StrEnum):
    OK = "ok"
    DEAD = "dead"  # FUSE daemon gone: ENOTCONN
    MISSING = "missing"  # not a mount point
    ERROR = "error"  # some other failure (EIO from a stopped server, ...)


def probe_health(path: Path) -> tuple[Health, str]:
    """Blocking: a FUSE stat can wait on its daemon, so call this from a thread."""
    try:
        os.statvfs(path)
    except OSError as err:
        if err.errno == errno.ENOTCONN:
            return Health.DEAD, f"{path}: {os.strerror(err.errno)}"
        return Health.ERROR, f"{path}: {err.strerror or err}"
    if mount_at(path) is None:
        return Health.MISSING, f"{path} is not a mount point"
    return Health.OK, ""
