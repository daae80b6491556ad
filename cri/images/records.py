"""Image records: what the store knows about each pulled image, one JSON file per image.

    <root>/images/<config hex>.json

The image ID is the config digest (as containerd reports it). A record is
written last in a pull, atomically, so an image is either fully there (blobs,
layers, record) or not listed at all.
"""

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cri.fsutil import write_atomic
from cri.images.digest import Digest, hex_of


@dataclass(frozen=True)
class ImageRecord:
    id: Digest
    manifest_digest: Digest
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    chain_ids: tuple[Digest, ...]
    blob_digests: tuple[Digest, ...]
    """Every blob the image needs: manifest, config, compressed layers (and its index, if any)."""
    size_bytes: int
    """Compressed size (config + layers), what `crictl images` shows."""
    unpacked_bytes: int
    user: str
    pulled_at: float
    last_used: float

    def with_names(self, tags: tuple[str, ...], digests: tuple[str, ...]) -> "ImageRecord":
        return replace(self, repo_tags=tags, repo_digests=digests)


class RecordStore:
    def __init__(self, root: Path) -> None:
        self.dir = root / "images"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, image_id: Digest) -> Path:
        return self.dir / f"{hex_of(image_id)}.json"

    def put(self, record: ImageRecord) -> None:
        write_atomic(self._path(record.id), json.dumps(asdict(record), indent=1).encode())

    def delete(self, image_id: Digest) -> None:
        self._path(image_id).unlink(missing_ok=True)

    def all(self) -> list[ImageRecord]:
        out = []
        for path in sorted(self.dir.glob("*.json")):
            doc = json.loads(path.read_text())
            out.append(
                ImageRecord(
                    id=Digest(doc["id"]),
                    manifest_digest=Digest(doc["manifest_digest"]),
                    repo_tags=tuple(doc["repo_tags"]),
                    repo_digests=tuple(doc["repo_digests"]),
                    chain_ids=tuple(Digest(c) for c in doc["chain_ids"]),
                    blob_digests=tuple(Digest(b) for b in doc["blob_digests"]),
                    size_bytes=int(doc["size_bytes"]),
                    unpacked_bytes=int(doc["unpacked_bytes"]),
                    user=str(doc.get("user", "")),
                    pulled_at=float(doc["pulled_at"]),
                    last_used=float(doc["last_used"]),
                )
            )
        return out
