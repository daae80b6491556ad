"""`loads`/`dumps` for the plugin processes on the interpreter's C JSON codec.

`json` itself runs on the same accelerator (`_json`), but importing it imports
`re` (for its pure-Python fallback scanner) and with it `enum`: about 6 ms of
CPU per plugin start on the test machine, paid four times per pod. This module
wires `_json`'s scanner and encoder up the way `json.loads` and `json.dumps`
do with their default arguments (strict strings, ASCII output, ", " and ": "
separators, NaN/Infinity allowed) and falls back to `json` when the
accelerator is missing. Errors are ValueError, as with `json`.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WS = " \t\n\r"
_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _not_serializable(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


class _Options:
    """The attributes `_json.make_scanner` reads from a decoder (json.JSONDecoder's defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_CONSTANTS.__getitem__)
    memo: dict[str, str] = {}  # noqa: RUF012 - read by the C scanner only


_scan: Any = None
_encode: Any = None
_fallback: Any = None
try:
    import _json

    _scan = _json.make_scanner(_Options())  # type: ignore[arg-type]
    _encode = _json.make_encoder(
        None, _not_serializable, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )
except (ImportError, AttributeError, TypeError):  # another interpreter: the json module
    import json as _fallback


def loads(text: str | bytes) -> Any:
    """A JSON document (UTF-8 when bytes) -> Python objects."""
    if _fallback is not None:
        return _fallback.loads(text)
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8-sig")
    start = len(text) - len(text.lstrip(_WS))
    try:
        value, end = _scan(text, start)
    except StopIteration as err:
        raise ValueError(f"Expecting value: char {err.value}") from None
    end += len(text) - end - len(text[end:].lstrip(_WS))
    if end != len(text):
        raise ValueError(f"Extra data: char {end}")
    return value


def dumps(obj: Any) -> str:
    """Python objects -> a JSON document, as `json.dumps(obj)` writes it."""
    if _fallback is not None:
        return str(_fallback.dumps(obj))
    return "".join(_encode(obj, 0))
