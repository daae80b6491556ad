"""Wake-ups when a directory changes: inotify on the event loop, no polling.

Users: the runtime's exit watcher (conmon's exit files, runtime/service.py) and the
node agent's static pod source. Each keeps a slow periodic pass as the backstop, so a
missed event (a full inotify queue, a kernel without inotify) only delays a change.
inotify is reached through libc with ctypes: the stdlib has no binding, and one watch on
one directory does not justify a dependency.
"""

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("kubelet_py.cri.dirwatch")

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)


class DirWatchError(OSError):
    """inotify could not watch the directory; the message says which and why."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class DirWatch:
    """An inotify watch on one directory; `on_change()` runs (on the loop) when it changes."""

    def __init__(self, directory: Path, on_change: Callable[[], None]) -> None:
        self.directory = directory
        self._on_change = on_change
        libc = _libc()
        fd = int(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            code = ctypes.get_errno()
            raise DirWatchError(code, f"inotify_init1 failed: {os.strerror(code)}")
        wd = int(libc.inotify_add_watch(fd, os.fsencode(directory), _MASK))
        if wd < 0:
            code = ctypes.get_errno()
            os.close(fd)
            raise DirWatchError(code, f"watching {directory} failed: {os.strerror(code)}")
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._drain)

    def _drain(self) -> None:
        while True:
            try:
                if not os.read(self._fd, 64 * 1024):
                    break
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno != errno.EINTR:
                    log.warning("reading inotify events for %s failed: %s", self.directory, err)
                    break
        self._on_change()

    def close(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
