"""sha256 digests and chain IDs. Pure."""

import hashlib
import re
from collections.abc import Sequence
from typing import NewType

from cri.images.errors import DigestMismatchError, InvalidReferenceError

Digest = NewType("Digest", str)
"""`sha256:<64 hex>`; the only algorithm the OCI spec requires and the one registries use."""

_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


def parse_digest(text: str) -> Digest:
    if not _DIGEST_RE.match(text):
        raise InvalidReferenceError(f"unsupported or malformed digest {text!r} (want sha256:<hex>)")
    return Digest(text)


def sha256_of(data: bytes) -> Digest:
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


def hex_of(digest: Digest) -> str:
    return digest.split(":", 1)[1]


def verify_bytes(data: bytes, *, expected: Digest, size: int | None, what: str) -> None:
    """Raise DigestMismatchError unless `data` has the expected digest (and size, if given)."""
    if size is not None and len(data) != size:
        raise DigestMismatchError(f"{what}: expected {size} bytes, got {len(data)}")
    actual = sha256_of(data)
    if actual != expected:
        raise DigestMismatchError(f"{what}: content has digest {actual}, expected {expected}")


def chain_ids(diff_ids: Sequence[Digest]) -> list[Digest]:
    """OCI chain IDs.

    ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
    """
    out: list[Digest] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append(sha256_of(f"{out[-1]} {diff_id}".encode()))
    return out
