"""Signals through the builtin `_signal`: `import signal` builds enum classes (~2 ms)."""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

SIGALRM: int = _signal.SIGALRM
SIGPIPE: int = _signal.SIGPIPE
SIGXFSZ: int = _signal.SIGXFSZ
SIG_DFL: int = _signal.SIG_DFL


def set_handler(signum: int, handler: Callable[[int, object], None] | int) -> object:
    """signal.signal(); returns the previous handler."""
    previous: object = _signal.signal(signum, handler)
    return previous


def alarm(seconds: int) -> None:
    _signal.alarm(seconds)


def number(name: str) -> int | None:
    """The number of `SIGTERM`-style names; None for an unknown one."""
    if not name.startswith("SIG") or name.startswith("SIG_"):
        return None
    value = getattr(_signal, name, None)
    return value if isinstance(value, int) else None
