"""The caller's result cache, in libcni's on-disk format.

`<cache_dir>/results/<network>-<containerID>-<ifname>` holds a "cniCacheV1"
record: the network config used, the attachment's netns, CNI_ARGS, capability
args and the final ADD result. DEL, CHECK and GC read it back (prevResult, and
the same parameters as the ADD, as the spec asks). Writes are atomic (temp
file, fsync, rename), so a crash never leaves half a record.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KIND = "cniCacheV1"


@dataclass(frozen=True)
class CachedAttachment:
    network: str
    container_id: str
    ifname: str
    netns: str
    cni_args: tuple[tuple[str, str], ...]
    capability_args: Mapping[str, Any] = field(default_factory=dict)
    result: Mapping[str, Any] = field(default_factory=dict)
    config: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "containerId": self.container_id,
            "config": base64.b64encode(self.config).decode(),
            "ifName": self.ifname,
            "networkName": self.network,
            "netns": self.netns,
            "cniArgs": [list(p) for p in self.cni_args],
            "capabilityArgs": dict(self.capability_args),
            "result": dict(self.result),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CachedAttachment:
        return cls(
            network=str(raw["networkName"]),
            container_id=str(raw["containerId"]),
            ifname=str(raw["ifName"]),
            netns=str(raw.get("netns") or ""),
            cni_args=tuple((str(k), str(v)) for k, v in raw.get("cniArgs") or ()),
            capability_args=dict(raw.get("capabilityArgs") or {}),
            result=dict(raw.get("result") or {}),
            config=base64.b64decode(raw.get("config") or ""),
        )


class ResultCache:
    """Cached attachments under `<cache_dir>/results`."""

    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir / "results"

    def path(self, network: str, container_id: str, ifname: str) -> Path:
        return self.dir / f"{network}-{container_id}-{ifname}"

    def put(self, item: CachedAttachment) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path(item.network, item.container_id, item.ifname)
        tmp = final.with_name(f".{final.name}.tmp")
        data = json.dumps(item.to_json()).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.rename(final)

    def get(self, network: str, container_id: str, ifname: str) -> CachedAttachment | None:
        try:
            raw = json.loads(self.path(network, container_id, ifname).read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict) or raw.get("kind") != KIND:
            return None
        try:
            return CachedAttachment.from_json(raw)
        except (KeyError, TypeError, ValueError):
            return None

    def remove(self, network: str, container_id: str, ifname: str) -> None:
        try:
            self.path(network, container_id, ifname).unlink()
        except FileNotFoundError:
            pass

    def attachments(self, network: str | None = None) -> Sequence[CachedAttachment]:
        """Every readable record (of one network when given)."""
        out: list[CachedAttachment] = []
        try:
            names = sorted(os.listdir(self.dir))  # noqa: PTH208 - names only, hot path
        except FileNotFoundError:
            return out
        for name in names:
            if name.startswith("."):
                continue
            try:
                raw = json.loads((self.dir / name).read_bytes())
                item = CachedAttachment.from_json(raw) if raw.get("kind") == KIND else None
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
            if item is not None and (network is None or item.network == network):
                out.append(item)
        return out
