"""Manifests and indexes of the OCI image spec and Docker schema 2, as typed objects. Pure.

A registry answers a reference with either a manifest (config + layers) or an
index / manifest list (one manifest per platform). `parse_document` turns the
bytes into one of the two; `select_platform` picks the entry for this machine,
preferring an exact variant match, as containerd's platform matcher does.
"""

import json
import platform as _platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cri.images import mediatypes as mt
from cri.images.digest import Digest, parse_digest
from cri.images.errors import NoMatchingPlatformError, UnsupportedMediaTypeError


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        tail = f"/{self.variant}" if self.variant else ""
        return f"{self.os}/{self.architecture}{tail}"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386"}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


def host_platform() -> Platform:
    machine = _platform.machine()
    arch = _GO_ARCH.get(machine, machine)
    variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine, _DEFAULT_VARIANT.get(arch))
    return Platform(os="linux", architecture=arch, variant=variant if arch != "amd64" else None)


def _descriptor(raw: Any, *, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise UnsupportedMediaTypeError(f"{where}: descriptor is not an object")
    try:
        plat = raw.get("platform")
        return Descriptor(
            media_type=str(raw.get("mediaType", "")),
            digest=parse_digest(str(raw["digest"])),
            size=int(raw["size"]),
            platform=Platform(
                os=str(plat["os"]),
                architecture=str(plat["architecture"]),
                variant=plat.get("variant"),
            )
            if isinstance(plat, dict)
            else None,
            annotations=dict(raw.get("annotations") or {}),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise UnsupportedMediaTypeError(f"{where}: malformed descriptor: {err}") from err


def parse_document(data: bytes, content_type: str | None, *, what: str) -> Manifest | Index:
    """Parse a manifest or index; the media type comes from the body, else the Content-Type."""
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise UnsupportedMediaTypeError(f"{what}: manifest is not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise UnsupportedMediaTypeError(f"{what}: manifest is not a JSON object")
    media_type = doc.get("mediaType") or (content_type or "").split(";")[0].strip()
    if not media_type:
        # OCI allows omitting mediaType; tell the two apart by their fields.
        media_type = mt.OCI_INDEX if "manifests" in doc else mt.OCI_MANIFEST
    if media_type in mt.INDEXES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise UnsupportedMediaTypeError(f"{what}: index has no manifests list")
        return Index(
            media_type=media_type,
            manifests=tuple(_descriptor(e, where=what) for e in entries),
        )
    if media_type in mt.MANIFESTS:
        if doc.get("schemaVersion") != 2:
            raise UnsupportedMediaTypeError(f"{what}: schemaVersion {doc.get('schemaVersion')}")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise UnsupportedMediaTypeError(f"{what}: manifest has no layers list")
        config = _descriptor(doc.get("config"), where=what)
        parsed = tuple(_descriptor(layer, where=what) for layer in layers)
        for layer in parsed:
            if layer.media_type not in mt.COMPRESSION_BY_LAYER_TYPE:
                raise UnsupportedMediaTypeError(
                    f"{what}: layer {layer.digest} has unsupported media type {layer.media_type!r}"
                )
        return Manifest(media_type=media_type, config=config, layers=parsed)
    raise UnsupportedMediaTypeError(f"{what}: unsupported manifest media type {media_type!r}")


def select_platform(index: Index, want: Platform, *, what: str) -> Descriptor:
    """The index entry for `want`: same os and architecture, the variant matching if any does."""
    candidates = [
        d
        for d in index.manifests
        if d.platform is not None
        and d.platform.os == want.os
        and d.platform.architecture == want.architecture
        and d.media_type in (mt.MANIFESTS | {""})
    ]
    exact = [d for d in candidates if d.platform and d.platform.variant == want.variant]
    if exact:
        return exact[0]
    loose = [d for d in candidates if d.platform and not d.platform.variant]
    if loose:
        return loose[0]
    if candidates and want.variant is None:
        return candidates[0]
    offered = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
    raise NoMatchingPlatformError(f"{what}: no manifest for {want} in the index (has: {offered})")
