"""JSON through the C accelerator `_json` only, without importing `json`.

`import json` costs ~6 ms because json.decoder and json.encoder import `re`
(and `re` imports `enum`); that is most of a command's budget. The C scanner and
string encoder that `json` itself uses are enough for config.json and state.json.
Falls back to `json` where `_json` is missing.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_WHITESPACE = " \t\n\r"

try:
    import _json

    class _Context:
        """The attributes `_json.make_scanner` reads from a JSONDecoder."""

        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int

        @staticmethod
        def parse_constant(name: str) -> float:
            return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]

    _scan: Callable[[str, int], tuple[object, int]] = _json.make_scanner(_Context())  # type: ignore[arg-type]
    _encode_str: Callable[[str], str] = _json.encode_basestring_ascii
except ImportError:  # pragma: no cover - CPython always has _json
    import json as _fallback

    def _scan(text: str, idx: int) -> tuple[object, int]:
        return _fallback.JSONDecoder().raw_decode(text, idx)

    def _encode_str(s: str) -> str:
        return _fallback.dumps(s)


def loads(text: str | bytes) -> object:
    """Parse one JSON document; ValueError when it is not (exactly one) JSON value."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    idx = 0
    n = len(text)
    while idx < n and text[idx] in _WHITESPACE:
        idx += 1
    try:
        value, end = _scan(text, idx)
    except StopIteration as err:
        raise ValueError(f"not JSON: expecting a value at char {err.value}") from None
    except ValueError as err:  # the C scanner raises json.JSONDecodeError (importing json then)
        raise ValueError(f"not JSON: {err}") from None
    while end < n and text[end] in _WHITESPACE:
        end += 1
    if end != n:
        raise ValueError(f"not JSON: extra data at char {end}")
    return value


def dumps(value: object, *, indent: int | None = None) -> str:
    """Serialize dicts (str keys), lists/tuples, str, int, float, bool and None."""
    parts: list[str] = []
    _emit(value, parts, indent, 0)
    return "".join(parts)


def _emit(value: object, out: list[str], indent: int | None, level: int) -> None:
    if isinstance(value, str):
        out.append(_encode_str(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"cannot serialize {value!r} as JSON")
        out.append(float.__repr__(value))
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        out.append("{")
        first = True
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"JSON object keys must be strings, not {type(k).__name__}")
            if not first:
                out.append(",")
            first = False
            _newline(out, indent, level + 1)
            out.append(_encode_str(k))
            out.append(": " if indent is not None else ":")
            _emit(v, out, indent, level + 1)
        _newline(out, indent, level)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        if not value:
            out.append("[]")
            return
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            _newline(out, indent, level + 1)
            _emit(v, out, indent, level + 1)
        _newline(out, indent, level)
        out.append("]")
    else:
        raise TypeError(f"cannot serialize {type(value).__name__} as JSON")


def _newline(out: list[str], indent: int | None, level: int) -> None:
    if indent is not None:
        out.append("\n" + " " * (indent * level))
