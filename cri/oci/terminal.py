"""The foreground terminal of `exec --tty` without a console socket (as runc does it).

    caller's terminal (our stdin/stdout) ◀──copy──▶ master ═ slave (the process's terminal)
        raw mode while we run                        size copied on start and on SIGWINCH

Signals the caller sends us (HUP INT QUIT USR1 USR2 TERM) go to the process; SIGCHLD and
SIGWINCH arrive through a wakeup pipe so the copy loop never misses one. After the process
exits, what is still buffered in the terminal is copied out, for a short while only: a
background child may keep the terminal open forever.
"""

from __future__ import annotations

import os

FORWARDED = (1, 2, 3, 10, 12, 15)  # HUP INT QUIT USR1 USR2 TERM
SIGCHLD = 17
SIGWINCH = 28
DRAIN_S = 0.5


def _copy_size(master: int) -> None:
    import fcntl
    import termios

    try:
        size = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(master, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def relay(pid: int, master: int) -> int:
    """Copy between our stdio and the process's terminal until it exits; its exit code."""
    import select
    import signal
    import termios
    import time
    import tty

    saved = None
    if os.isatty(0):
        try:
            saved = termios.tcgetattr(0)
            tty.setraw(0)
        except termios.error:
            saved = None
    _copy_size(master)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    for signum in (SIGCHLD, SIGWINCH, *FORWARDED):
        signal.signal(signum, lambda *_: None)
    status: int | None = None
    stdin_open = True
    master_open = True
    deadline = 0.0
    try:
        while master_open:
            if status is None:
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = raw
                    deadline = time.monotonic() + DRAIN_S
            timeout = None if status is None else max(0.0, deadline - time.monotonic())
            if status is not None and timeout == 0.0:
                break
            watched = [wake_r, master] + ([0] if stdin_open and status is None else [])
            try:
                ready, _, _ = select.select(watched, [], [], timeout)
            except InterruptedError:
                continue
            if wake_r in ready:
                for signum in os.read(wake_r, 256):
                    if signum == SIGWINCH:
                        _copy_size(master)
                    elif signum in FORWARDED:
                        try:
                            os.kill(pid, signum)
                        except ProcessLookupError:
                            pass
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    _write_all(master, data)
                else:
                    stdin_open = False
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave is closed
                    data = b""
                if data:
                    _write_all(1, data)
                else:
                    master_open = False
        if status is None:
            _, status = os.waitpid(pid, 0)
    finally:
        signal.set_wakeup_fd(-1)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        for fd in (wake_r, wake_w, master):
            os.close(fd)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
