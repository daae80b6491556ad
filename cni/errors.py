"""The one exception tree of `cni`: every failure carries a CNI error code.

Plugins print these as the spec's error result (`{"cniVersion", "code", "msg",
"details"}`); the caller raises them when a plugin failed or a conflist is bad,
so the runtime can show the plugin's own words in the pod's events.
"""

from __future__ import annotations


class Code:
    """The well-known error codes of CNI 1.1 (SPEC.md, Section 5, "Error").

    Plain ints, not an IntEnum: `enum` is one of the larger imports of a plugin's start-up.
    """

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN = 11
    NOT_AVAILABLE = 50
    NOT_AVAILABLE_LIMITED = 51
    # Plugin-specific codes (100+ is free for plugins).
    INTERNAL = 100
    RANGE_EXHAUSTED = 101
    NETLINK_FAILURE = 102
    FIREWALL_FAILURE = 103


class CNIError(Exception):
    """A CNI failure: `code` per the spec, a short `msg` and longer `details`."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    @property
    def temporary(self) -> bool:
        """Whether trying again later may succeed (the spec's code 11)."""
        return self.code == Code.TRY_AGAIN

    def to_json(self, cni_version: str) -> dict[str, object]:
        return {
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        }


class ConfigError(CNIError):
    """A network configuration (list) is malformed or inconsistent (code 7 or 6)."""

    def __init__(self, msg: str, details: str = "", *, code: int = Code.INVALID_CONFIG) -> None:
        super().__init__(code, msg, details)


class PluginNotFoundError(CNIError):
    """A plugin's `type` names no executable in the plugin directories (code 50)."""

    def __init__(self, plugin: str, dirs: list[str]) -> None:
        super().__init__(
            Code.NOT_AVAILABLE,
            f"plugin {plugin!r} not found",
            f"no executable named {plugin!r} in {':'.join(dirs) or '(no plugin directories)'}",
        )
        self.plugin = plugin


class PluginFailedError(CNIError):
    """A plugin exited non-zero; `plugin` and `command` say which and when."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str) -> None:
        super().__init__(code, f"plugin {plugin} {command} failed: {msg}", details)
        self.plugin = plugin
        self.command = command
        self.plugin_msg = msg
