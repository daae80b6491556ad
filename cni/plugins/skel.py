"""The CNI execution protocol on the plugin side (SPEC.md, Section 2).

Reads CNI_* variables and the configuration on stdin, validates them per
command, calls the plugin's handler and prints the result or the error
structure on stdout with exit code 0 or 1. Also runs delegated plugins
(Section 4) found through CNI_PATH, e.g. IPAM.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from cni import _json as json
from cni._record import NamedTuple
from cni.errors import CNIError, Code
from cni.types import (
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    Result,
    result_for_version,
    version_tuple,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ALNUM | frozenset("_.-")


def valid_container_id(cid: str) -> bool:
    """The spec's ^[A-Za-z0-9][A-Za-z0-9_.\\-]*$ (no `re`: it costs a plugin start ~2 ms)."""
    return bool(cid) and cid[0] in _ALNUM and all(c in _ID_CHARS for c in cid)


COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "VERSION", "GC")

# Which variables each command requires (SPEC.md, Section 2, per operation).
_REQUIRED: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "STATUS": (),
    "VERSION": (),
    "GC": ("CNI_PATH",),
}


def valid_ifname(name: str) -> bool:
    """Linux interface name rules the spec repeats: 1..15 bytes, no '/', ':' or spaces."""
    return (
        0 < len(name.encode()) < 16
        and name not in (".", "..")
        and not any(c in name for c in "/:")
        and not any(c.isspace() for c in name)
    )


def parse_cni_args(raw: str) -> dict[str, str]:
    """'A=1;B=2' -> {'A': '1', 'B': '2'}; a pair without '=' is an error (code 4)."""
    out: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CNIError(Code.INVALID_ENVIRONMENT, "invalid CNI_ARGS", f"bad pair {pair!r}")
        out[key] = value
    return out


class Request(NamedTuple):
    """One plugin invocation: the environment parameters and the configuration."""

    command: str
    container_id: str
    netns: str
    ifname: str
    args: Mapping[str, str]
    path: tuple[str, ...]
    config: Mapping[str, Any]
    stdin: bytes
    environ: Mapping[str, str]

    @property
    def cni_version(self) -> str:
        return str(self.config.get("cniVersion") or LATEST_VERSION)

    @property
    def network(self) -> str:
        return str(self.config.get("name") or "")

    @property
    def prev_result(self) -> Result | None:
        raw = self.config.get("prevResult")
        return Result.from_json(raw) if raw else None

    @property
    def runtime_config(self) -> Mapping[str, Any]:
        raw = self.config.get("runtimeConfig") or {}
        if not isinstance(raw, dict):
            raise CNIError(Code.DECODE_FAILURE, "runtimeConfig must be an object", repr(raw))
        return raw

    def valid_attachments(self) -> set[tuple[str, str]]:
        """GC's `cni.dev/valid-attachments` as (containerID, ifname) pairs."""
        raw = self.config.get("cni.dev/valid-attachments")
        if raw is None:
            raw = self.config.get("cni.dev/attachments") or []
        out = set()
        for item in raw:
            if not isinstance(item, dict):
                raise CNIError(
                    Code.DECODE_FAILURE, "bad cni.dev/valid-attachments entry", repr(item)
                )
            out.add((str(item.get("containerID", "")), str(item.get("ifname", ""))))
        return out

    def attachment_key(self) -> str:
        """The key plugins store state under: (network, container ID, ifname)."""
        return f"{self.network}/{self.container_id}/{self.ifname}"


if TYPE_CHECKING:
    Handler = Callable[[Request], dict[str, Any] | None]


class Plugin(NamedTuple):
    """A plugin's handlers; STATUS and GC default to success, CHECK must be given."""

    name: str
    add: Handler
    delete: Handler
    check: Handler
    status: Handler | None = None
    gc: Handler | None = None
    versions: tuple[str, ...] = SUPPORTED_VERSIONS


def parse_request(environ: Mapping[str, str], stdin: bytes, plugin: Plugin) -> Request:
    """Validate the environment and the configuration for the command (pure)."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CNIError(Code.INVALID_ENVIRONMENT, "invalid CNI_COMMAND", f"got {command!r}")
    missing = [k for k in _REQUIRED[command] if not environ.get(k)]
    if missing:
        raise CNIError(
            Code.INVALID_ENVIRONMENT,
            f"required environment variables missing: {', '.join(missing)}",
            f"{command} needs {', '.join(_REQUIRED[command])}",
        )
    container_id = environ.get("CNI_CONTAINERID", "")
    if container_id and not valid_container_id(container_id):
        raise CNIError(Code.INVALID_ENVIRONMENT, "invalid CNI_CONTAINERID", repr(container_id))
    ifname = environ.get("CNI_IFNAME", "")
    if ifname and not valid_ifname(ifname):
        raise CNIError(Code.INVALID_ENVIRONMENT, "invalid CNI_IFNAME", repr(ifname))
    try:
        config = json.loads(stdin) if stdin.strip() else {}
    except ValueError as err:
        raise CNIError(Code.DECODE_FAILURE, "failed to decode the configuration", str(err)) from err
    if not isinstance(config, dict):
        raise CNIError(Code.DECODE_FAILURE, "the configuration must be a JSON object")
    version = str(config.get("cniVersion") or "")
    if command != "VERSION":
        if not version:
            raise CNIError(Code.INVALID_CONFIG, "cniVersion is missing from the configuration")
        if version not in plugin.versions:
            raise CNIError(
                Code.INCOMPATIBLE_VERSION,
                f"incompatible CNI version {version}",
                f"plugin {plugin.name} supports {', '.join(plugin.versions)}",
            )
        if command == "CHECK" and version_tuple(version) < (0, 4, 0):
            raise CNIError(
                Code.INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0 or later, got {version}"
            )
        if command in ("STATUS", "GC") and version_tuple(version) < (1, 1, 0):
            raise CNIError(Code.INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0 or later")
    return Request(
        command=command,
        container_id=container_id,
        netns=environ.get("CNI_NETNS", ""),
        ifname=ifname,
        args=parse_cni_args(environ.get("CNI_ARGS", "")),
        path=tuple(p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p),
        config=config,
        stdin=stdin,
        environ=dict(environ),
    )


def dispatch(plugin: Plugin, request: Request) -> dict[str, Any] | None:
    """Run the handler for the request's command and return what to print."""
    if request.command == "VERSION":
        asked = str(request.config.get("cniVersion") or LATEST_VERSION)
        return {"cniVersion": asked, "supportedVersions": list(plugin.versions)}
    handler = {
        "ADD": plugin.add,
        "DEL": plugin.delete,
        "CHECK": plugin.check,
        "STATUS": plugin.status,
        "GC": plugin.gc,
    }[request.command]
    if handler is None:
        return None
    out = handler(request)
    if request.command != "ADD" or out is None:
        return None  # only ADD prints a result (CHECK, DEL, STATUS and GC print nothing)
    return result_for_version(out, request.cni_version)


def run(plugin: Plugin) -> int:
    """The whole process: read, dispatch, print; returns the exit code."""
    stdin = sys.stdin.buffer.read() if sys.stdin is not None else b""
    version = LATEST_VERSION
    try:
        request = parse_request(os.environ, stdin, plugin)
        version = request.cni_version
        out = dispatch(plugin, request)
    except CNIError as err:
        _emit(err.to_json(version))
        return 1
    except Exception as err:  # noqa: BLE001 - a plugin must always answer with JSON
        _emit(
            CNIError(Code.INTERNAL, f"{plugin.name}: unexpected error", repr(err)).to_json(version)
        )
        return 1
    if out is not None:
        _emit(out)
    return 0


def _emit(obj: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj))
    sys.stdout.flush()


def find_plugin(name: str, path: tuple[str, ...]) -> str:
    """The first executable called `name` in the CNI_PATH directories (code 50 if none)."""
    if not name or "/" in name or name in (".", ".."):
        raise CNIError(Code.INVALID_CONFIG, f"bad plugin type {name!r}")
    for directory in path:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(
        Code.NOT_AVAILABLE,
        f"plugin {name!r} not found",
        f"no executable {name!r} in CNI_PATH {':'.join(path) or '(empty)'}",
    )


SHIM_MARKER = "# CNI plugin shim written by `python3 -m cni install`; runs "
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def own_shim_module(binary: str) -> str | None:
    """The module a shim of *this* checkout runs, or None for any other executable."""
    try:
        with open(binary, "rb") as fh:
            head = fh.read(512).decode(errors="replace")
    except OSError:
        return None
    start = head.find(SHIM_MARKER)
    if start < 0 or repr(_ROOT) not in head:
        return None
    module = head[start + len(SHIM_MARKER) :].split(".main()", 1)[0]
    from cni.plugins import PLUGINS

    return module if module in PLUGINS.values() else None


def delegate(
    request: Request, plugin_type: str, command: str | None = None
) -> dict[str, Any] | None:
    """Run a delegated plugin (Section 4) with our environment and configuration.

    When CNI_PATH resolves the type to one of our own shims, the plugin runs in
    this process (same request, same handler): one interpreter start less.
    """
    binary = find_plugin(plugin_type, request.path)
    env = dict(request.environ)
    env["CNI_COMMAND"] = command or request.command
    module = own_shim_module(binary)
    if module is not None:
        __import__(module)  # not importlib, which imports `warnings` into every bridge process
        plugin: Plugin = sys.modules[module].PLUGIN
        return dispatch(plugin, parse_request(env, request.stdin, plugin))
    import subprocess  # only for foreign plugins: ~14 ms of CPU to import

    proc = subprocess.run(
        [str(binary)], input=request.stdin, env=env, capture_output=True, check=False
    )
    if proc.stderr:
        sys.stderr.buffer.write(proc.stderr)
    out = proc.stdout.strip()
    if proc.returncode != 0:
        try:
            err = json.loads(out)
            raise CNIError(
                int(err.get("code", Code.INTERNAL)),
                f"{plugin_type}: {err.get('msg', 'failed')}",
                str(err.get("details", "")),
            )
        except (ValueError, AttributeError, TypeError):
            raise CNIError(
                Code.INTERNAL,
                f"{plugin_type} {env['CNI_COMMAND']} failed with exit code {proc.returncode}",
                out.decode(errors="replace")[:500],
            ) from None
    if not out:
        return None
    try:
        parsed = json.loads(out)
    except ValueError as err:
        raise CNIError(Code.DECODE_FAILURE, f"{plugin_type} printed no JSON", str(err)) from err
    if not isinstance(parsed, dict):
        raise CNIError(Code.DECODE_FAILURE, f"{plugin_type} printed a non-object")
    return parsed
