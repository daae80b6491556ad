"""The two C calls families the plugins make, on `_ctypes` without the `ctypes` package.

`setns(2)` (Python 3.11 has no os.setns) and libnftables. `ctypes/__init__`
builds some forty classes at import, about 3 ms of CPU per plugin start on the
test machine, for the four C types and the function pointers used here; this
module declares just those on the same C extension, the way ctypes' CDLL does
(`dlopen`, `CFuncPtr` subclasses keyed by `(name, library)`). Any interpreter
without these `_ctypes` entry points gets the `ctypes` package instead.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    c_int: Any
    c_uint: Any
    c_void_p: Any
    c_char_p: Any
    _dlopen: Any
    _CFuncPtr: Any
    _CDECL: int
    _USE_ERRNO: int

    def get_errno() -> int: ...

else:
    try:
        import _ctypes

        class c_int(_ctypes._SimpleCData):
            _type_ = "i"

        class c_uint(_ctypes._SimpleCData):
            _type_ = "I"

        class c_void_p(_ctypes._SimpleCData):
            _type_ = "P"

        class c_char_p(_ctypes._SimpleCData):
            _type_ = "z"

        _dlopen = _ctypes.dlopen
        _CFuncPtr = _ctypes.CFuncPtr
        _CDECL, _USE_ERRNO = _ctypes.FUNCFLAG_CDECL, _ctypes.FUNCFLAG_USE_ERRNO
        get_errno = _ctypes.get_errno
    except (ImportError, AttributeError):
        from ctypes import _FUNCFLAG_CDECL as _CDECL
        from ctypes import _FUNCFLAG_USE_ERRNO as _USE_ERRNO
        from ctypes import _CFuncPtr, _dlopen


class Library:
    """A loaded shared object (None: the process itself, libc included)."""

    def __init__(self, name: str | None) -> None:
        self._handle = _dlopen(name, 0)  # RTLD_LOCAL, as ctypes.CDLL; OSError if missing

    def function(
        self, name: str, restype: Any, argtypes: Sequence[Any], *, use_errno: bool = False
    ) -> Callable[..., Any]:
        """A C function of this library (AttributeError if the symbol is missing)."""

        flags = _CDECL | (_USE_ERRNO if use_errno else 0)
        cls = type("CFunction", (_CFuncPtr,), {"_flags_": flags, "_restype_": restype})
        fn = cls((name, self))
        fn.argtypes = list(argtypes)
        return fn  # type: ignore[no-any-return]
