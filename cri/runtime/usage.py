"""Disk and network usage the CRI stats calls report beside the cgroup numbers.

    writable layer   the container's overlay upper dir, walked (bytes in blocks, inodes)
    pod network      /proc/net/dev as seen from inside the pod's network namespace

Both are blocking: callers run them in a thread. The network read enters the pod's
namespace with setns(2) on the calling thread only and always returns it to the
namespace it came from, so a pooled thread is never left behind in a pod.
"""

import contextlib
import ctypes
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cri.runtime.errors import RuntimeServiceError

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns into {what}: {os.strerror(err)}")


class UsageError(RuntimeServiceError):
    """A usage figure could not be read."""


@dataclass(frozen=True)
class DirUsage:
    used_bytes: int
    inodes_used: int


@dataclass(frozen=True)
class InterfaceUsage:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def dir_usage(top: Path) -> DirUsage:
    """Space (allocated blocks, as du counts it) and inodes below `top`, each inode once."""
    seen: set[tuple[int, int]] = set()
    used = 0
    stack = [str(top)]
    while stack:
        d = stack.pop()
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            used += st.st_blocks * 512
        try:
            entries = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with entries:
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                    continue
                key = (st.st_dev, st.st_ino)
                if key not in seen:
                    seen.add(key)
                    used += st.st_blocks * 512
    return DirUsage(used_bytes=used, inodes_used=len(seen))


def parse_net_dev(text: str) -> list[InterfaceUsage]:
    """The interfaces of a /proc/net/dev table (two header lines, then `name: 16 counters`)."""
    out = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 16:
            continue
        n = [int(f) for f in fields]
        out.append(
            InterfaceUsage(
                name=name.strip(), rx_bytes=n[0], rx_errors=n[2], tx_bytes=n[8], tx_errors=n[10]
            )
        )
    return out


def netns_interfaces(netns: str | None) -> list[InterfaceUsage]:
    """/proc/net/dev of the network namespace at `netns` (an nsfs path), or of our own if None."""
    if netns is None:
        return parse_net_dev(Path("/proc/thread-self/net/dev").read_text())
    try:
        target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise UsageError(f"cannot open network namespace {netns}: {err}") from err
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, netns)
            try:
                return parse_net_dev(Path("/proc/thread-self/net/dev").read_text())
            finally:
                _setns(home, "our own network namespace")
        finally:
            os.close(home)
    except OSError as err:
        raise UsageError(f"cannot read interfaces in network namespace {netns}: {err}") from err
    finally:
        with contextlib.suppress(OSError):
            os.close(target)
