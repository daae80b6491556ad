"""Class-syntax NamedTuples without importing `typing` at run time.

Every plugin process imports the result types, and `typing` (with `re`,
`warnings` and its own class machinery) was one of the largest imports of a
plugin's start-up. Type checkers see `typing.NamedTuple`; at run time the same
class body becomes a `collections.namedtuple` with the annotated fields (in
order, defaults from the class body) and the body's methods and properties.
Zero-argument `super()` is not supported here, as with `typing.NamedTuple`.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    from collections import namedtuple as _namedtuple

    _NOT_COPIED = frozenset(
        {"__module__", "__qualname__", "__annotations__", "__classcell__", "__orig_bases__"}
    )

    class _RecordMeta(type):
        def __new__(mcs, name, bases, namespace):
            annotations = dict(namespace.get("__annotations__", {}))
            fields = tuple(annotations)
            defaults = [namespace[f] for f in fields if f in namespace]
            cls = _namedtuple(name, fields, defaults=defaults, module=namespace.get("__module__"))
            for key, value in namespace.items():
                if key not in _NOT_COPIED and key not in annotations:
                    setattr(cls, key, value)
            cls.__annotations__ = annotations
            cls.__qualname__ = namespace.get("__qualname__", name)
            return cls

    NamedTuple = type.__new__(_RecordMeta, "NamedTuple", (), {})
