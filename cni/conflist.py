"""Network configuration lists: loading, validation and per-plugin request derivation.

Pure apart from `load_dir`/`load_file`. Follows SPEC.md Section 1 (format)
and Section 3 ("Deriving request configuration"): the runtime inserts
`cniVersion` and `name`, a `runtimeConfig` made of the capabilities the plugin
declares and the runtime supplies, `prevResult` where the operation has one,
drops `capabilities`, and passes every other key through unchanged.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni.errors import Code, ConfigError
from cni.types import SUPPORTED_VERSIONS, version_tuple

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
CONF_EXTENSIONS = (".conflist", ".conf", ".json")


@dataclass(frozen=True)
class PluginConf:
    """One entry of `plugins`: its type and the whole object as written."""

    type: str
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def capabilities(self) -> frozenset[str]:
        caps = self.raw.get("capabilities") or {}
        return frozenset(k for k, v in caps.items() if v)


@dataclass(frozen=True)
class NetworkConfigList:
    """A validated network configuration (list)."""

    name: str
    cni_version: str
    plugins: tuple[PluginConf, ...]
    disable_check: bool = False
    disable_gc: bool = False
    cni_versions: tuple[str, ...] = ()
    source: str = ""

    @property
    def version(self) -> str:
        """The protocol version to use: the highest of cniVersion(s) the caller speaks."""
        candidates = {self.cni_version, *self.cni_versions}
        usable = [v for v in candidates if v in SUPPORTED_VERSIONS]
        if not usable:
            raise ConfigError(
                f"network {self.name}: no supported CNI version in {sorted(candidates)}",
                f"the caller speaks {', '.join(SUPPORTED_VERSIONS)}",
                code=Code.INCOMPATIBLE_VERSION,
            )
        return max(usable, key=version_tuple)

    def supports(self, minimum: str) -> bool:
        return version_tuple(self.version) >= version_tuple(minimum)


def _where(source: str) -> str:
    return f" in {source}" if source else ""


def parse(raw: Any, *, source: str = "") -> NetworkConfigList:
    """Validate a decoded conflist (or a single-plugin .conf, made a one-entry list)."""
    where = _where(source)
    if not isinstance(raw, dict):
        raise ConfigError(f"network configuration{where} must be a JSON object")
    if "plugins" not in raw and "type" in raw:  # a single plugin .conf
        single = {k: v for k, v in raw.items() if k not in ("cniVersion", "name")}
        raw = {"cniVersion": raw.get("cniVersion"), "name": raw.get("name"), "plugins": [single]}
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"network name {name!r}{where} is missing or invalid")
    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise ConfigError(f"network {name}{where}: cniVersion is missing")
    version_tuple(version)
    versions = raw.get("cniVersions") or []
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise ConfigError(f"network {name}{where}: cniVersions must be a list of strings")
    plugins_raw = raw.get("plugins")
    if not isinstance(plugins_raw, list) or not plugins_raw:
        raise ConfigError(f"network {name}{where}: plugins must be a non-empty list")
    plugins = []
    for i, p in enumerate(plugins_raw):
        if not isinstance(p, dict):
            raise ConfigError(f"network {name}{where}: plugins[{i}] is not an object")
        ptype = p.get("type")
        if not isinstance(ptype, str) or not ptype or "/" in ptype or "\\" in ptype:
            raise ConfigError(f"network {name}{where}: plugins[{i}] has an invalid type {ptype!r}")
        caps = p.get("capabilities", {})
        if not isinstance(caps, dict):
            raise ConfigError(f"network {name}{where}: plugins[{i}].capabilities must be an object")
        reserved = [k for k in p if k in ("runtimeConfig", "args") or k.startswith("cni.dev/")]
        if reserved:
            raise ConfigError(
                f"network {name}{where}: plugins[{i}] sets reserved keys {reserved}",
                "runtimeConfig, args and cni.dev/* are filled in by the runtime",
                code=Code.UNSUPPORTED_FIELD,
            )
        plugins.append(PluginConf(type=ptype, raw=p))
    for key in ("disableCheck", "disableGC"):
        if key in raw and not isinstance(raw[key], bool):
            raise ConfigError(f"network {name}{where}: {key} must be true or false")
    out = NetworkConfigList(
        name=name,
        cni_version=version,
        plugins=tuple(plugins),
        disable_check=bool(raw.get("disableCheck", False)),
        disable_gc=bool(raw.get("disableGC", False)),
        cni_versions=tuple(versions),
        source=source,
    )
    out.version  # noqa: B018 - validates that a version we speak is on offer
    return out


def parse_bytes(data: bytes, *, source: str = "") -> NetworkConfigList:
    try:
        raw = json.loads(data)
    except ValueError as err:
        raise ConfigError(
            f"network configuration{_where(source)} is not valid JSON",
            str(err),
            code=Code.DECODE_FAILURE,
        ) from err
    return parse(raw, source=source)


def load_file(path: Path) -> NetworkConfigList:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read {path}", str(err), code=Code.IO_FAILURE) from err
    return parse_bytes(data, source=str(path))


def conf_files(directory: Path) -> list[Path]:
    """Configuration files of a directory in the order runtimes pick them (by name)."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as err:
        raise ConfigError(
            f"cannot read CNI config dir {directory}", str(err), code=Code.IO_FAILURE
        ) from err
    return [p for p in entries if p.suffix in CONF_EXTENSIONS and p.is_file()]


def load_dir(directory: Path, name: str | None = None) -> NetworkConfigList:
    """The first valid network of a directory (by file name), or the one called `name`."""
    files = conf_files(directory)
    if not files:
        raise ConfigError(
            f"no network configuration in {directory}",
            "expected a .conflist, .conf or .json file",
            code=Code.NOT_AVAILABLE,
        )
    errors = []
    for path in files:
        try:
            net = load_file(path)
        except ConfigError as err:
            errors.append(str(err))
            continue
        if name is None or net.name == name:
            return net
    raise ConfigError(
        f"no usable network{'' if name is None else ' ' + repr(name)} in {directory}",
        "; ".join(errors),
    )


def request_config(
    net: NetworkConfigList,
    plugin: PluginConf,
    *,
    prev_result: Mapping[str, Any] | None,
    capability_args: Mapping[str, Any],
    version: str | None = None,
) -> dict[str, Any]:
    """The configuration one ADD/DEL/CHECK invocation gets on stdin (pure)."""
    out = copy.deepcopy(dict(plugin.raw))
    out.pop("capabilities", None)
    out["cniVersion"] = version or net.version
    out["name"] = net.name
    runtime = {k: v for k, v in capability_args.items() if k in plugin.capabilities}
    if runtime:
        out["runtimeConfig"] = runtime
    if prev_result is not None:
        out["prevResult"] = dict(prev_result)
    return out


def plain_config(
    net: NetworkConfigList, plugin: PluginConf, version: str | None = None
) -> dict[str, Any]:
    """The configuration of STATUS (no attachment, no runtimeConfig)."""
    return request_config(net, plugin, prev_result=None, capability_args={}, version=version)


def gc_config(
    net: NetworkConfigList, plugin: PluginConf, valid: Iterable[tuple[str, str]]
) -> dict[str, Any]:
    """GC's configuration with `cni.dev/valid-attachments` (pure)."""
    out = plain_config(net, plugin)
    out["cni.dev/valid-attachments"] = [
        {"containerID": cid, "ifname": ifname} for cid, ifname in sorted(set(valid))
    ]
    return out
