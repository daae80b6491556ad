"""Read images out of an OCI image layout or a `docker save` archive (already extracted).

Each image found becomes a `FoundImage`: its manifest (for `docker save`'s
legacy format, an OCI manifest synthesized from the config and layer tars), its
names, and where each of its blobs is on disk. The service then stores them
exactly as it stores pulled content, digests verified.
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cri.images import mediatypes as mt
from cri.images.digest import Digest, parse_digest, sha256_of
from cri.images.errors import ImageError, ImportError_, InvalidReferenceError
from cri.images.manifest import Index, Manifest, Platform, parse_document, select_platform
from cri.images.reference import parse_reference

NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")


@dataclass(frozen=True)
class FoundImage:
    names: tuple[str, ...]
    tag: str | None  # a layout's `org.opencontainers.image.ref.name` when it is only a tag
    manifest: Manifest
    manifest_bytes: bytes
    manifest_digest: Digest
    blob_files: Mapping[Digest, Path] = field(default_factory=dict)
    blob_dir: Path | None = None

    def blob_path(self, digest: Digest) -> Path:
        if digest in self.blob_files:
            return self.blob_files[digest]
        if self.blob_dir is not None:
            return self.blob_dir / digest.split(":", 1)[1]
        raise ImportError_(f"blob {digest} is not in the archive")


def _read_json(path: Path, *, what: str) -> object:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise ImportError_(f"{what}: cannot read {path.name}: {err}") from err


def _full_name(value: str | None) -> str | None:
    """An annotation value that is a whole reference (not just a tag)."""
    if not value or ("/" not in value and ":" not in value):
        return None
    try:
        return str(parse_reference(value))
    except InvalidReferenceError:
        return None


def oci_layout_images(root: Path, *, platform: Platform, what: str) -> list[FoundImage]:
    index_doc = _read_json(root / "index.json", what=what)
    if not isinstance(index_doc, dict) or not isinstance(index_doc.get("manifests"), list):
        raise ImportError_(f"{what}: index.json has no manifests list")
    blob_dir = root / "blobs" / "sha256"
    index = parse_document(json.dumps(index_doc).encode(), mt.OCI_INDEX, what=what)
    assert isinstance(index, Index)
    found: list[FoundImage] = []
    for desc in index.manifests:
        names = tuple(
            n for n in (_full_name(desc.annotations.get(a)) for a in NAME_ANNOTATIONS) if n
        )
        data = _blob(blob_dir, desc.digest, what=what)
        doc = parse_document(data, desc.media_type, what=what)
        digest = desc.digest
        if isinstance(doc, Index):
            entry = select_platform(doc, platform, what=what)
            data = _blob(blob_dir, entry.digest, what=what)
            doc = parse_document(data, entry.media_type, what=what)
            digest = entry.digest
            if not isinstance(doc, Manifest):
                raise ImportError_(f"{what}: nested index entry {digest} is not a manifest")
        ref_name = desc.annotations.get("org.opencontainers.image.ref.name")
        found.append(
            FoundImage(
                names=tuple(dict.fromkeys(names)),
                tag=ref_name if ref_name and _full_name(ref_name) is None else None,
                manifest=doc,
                manifest_bytes=data,
                manifest_digest=digest,
                blob_dir=blob_dir,
            )
        )
    if not found:
        raise ImportError_(f"{what}: the layout holds no images")
    return found


def _blob(blob_dir: Path, digest: Digest, *, what: str) -> bytes:
    try:
        data = (blob_dir / digest.split(":", 1)[1]).read_bytes()
    except OSError as err:
        raise ImportError_(f"{what}: blob {digest} missing from the layout") from err
    if sha256_of(data) != digest:
        raise ImportError_(f"{what}: blob {digest} in the layout does not match its digest")
    return data


def _file_digest(path: Path) -> tuple[Digest, int]:
    hasher = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
    return Digest("sha256:" + hasher.hexdigest()), size


def docker_save_images(root: Path, *, what: str) -> list[FoundImage]:
    entries = _read_json(root / "manifest.json", what=what)
    if not isinstance(entries, list) or not entries:
        raise ImportError_(f"{what}: manifest.json lists no images")
    found: list[FoundImage] = []
    for entry in entries:
        if not isinstance(entry, dict) or "Config" not in entry or "Layers" not in entry:
            raise ImportError_(f"{what}: manifest.json entry without Config and Layers")
        config_path = root / str(entry["Config"])
        config_digest, config_size = _file_digest(config_path)
        files: dict[Digest, Path] = {config_digest: config_path}
        layers = []
        for layer in entry["Layers"]:
            layer_path = root / str(layer)
            digest, size = _file_digest(layer_path)
            files[digest] = layer_path
            layers.append({"mediaType": mt.OCI_LAYER_TAR, "digest": digest, "size": size})
        manifest_bytes = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": {
                    "mediaType": mt.OCI_CONFIG,
                    "digest": config_digest,
                    "size": config_size,
                },
                "layers": layers,
            },
            separators=(",", ":"),
        ).encode()
        try:
            manifest = parse_document(manifest_bytes, mt.OCI_MANIFEST, what=what)
        except ImageError as err:
            raise ImportError_(f"{what}: {err}") from err
        assert isinstance(manifest, Manifest)
        names = []
        for tag in entry.get("RepoTags") or []:
            try:
                names.append(str(parse_reference(str(tag))))
            except InvalidReferenceError as err:
                raise ImportError_(f"{what}: bad RepoTag {tag!r}: {err}") from err
        found.append(
            FoundImage(
                names=tuple(names),
                tag=None,
                manifest=manifest,
                manifest_bytes=manifest_bytes,
                manifest_digest=sha256_of(manifest_bytes),
                blob_files=files,
            )
        )
    return found


__all__ = ["FoundImage", "docker_save_images", "oci_layout_images", "parse_digest"]
