"""The content store: blobs addressed by sha256, verified while they stream in.

    <root>/blobs/sha256/<hex>     committed, verified content (read-only once there)
    <root>/ingest/<hex>.partial   a download in progress; resumed from its length

A blob becomes visible only by `rename` after its digest and size were checked
and the file was fsynced, so a crash or a bad download never leaves a blob that
lies about its name. Concurrent ingests of the same digest share one download.
"""

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiofiles
import aiofiles.os

from cri.images.digest import Digest, hex_of, sha256_of
from cri.images.errors import DigestMismatchError, IncompleteDownloadError

Fetch = Callable[[int], Awaitable[AsyncIterator[bytes]]]
"""Given a byte offset to resume from, open a stream of the blob's bytes from that offset.

The stream may start at 0 instead (a server that ignores Range); the first chunk
is preceded by nothing that says so, so fetchers report it through `restarted`."""

Progress = Callable[[int], None]


class RangeIgnored(Exception):
    """Raised by a fetcher whose server answered a ranged request with the whole blob."""


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs" / "sha256"
        self.ingest_dir = root / "ingest"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        self._inflight: dict[Digest, asyncio.Task[Path]] = {}

    def path(self, digest: Digest) -> Path:
        return self.blobs_dir / hex_of(digest)

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def read(self, digest: Digest) -> bytes:
        return self.path(digest).read_bytes()

    def size(self, digest: Digest) -> int:
        return self.path(digest).stat().st_size

    def digests(self) -> set[Digest]:
        return {Digest(f"sha256:{p.name}") for p in self.blobs_dir.iterdir() if len(p.name) == 64}

    def delete(self, digest: Digest) -> None:
        self.path(digest).unlink(missing_ok=True)

    def partial_path(self, digest: Digest) -> Path:
        return self.ingest_dir / f"{hex_of(digest)}.partial"

    def put_bytes(self, data: bytes, *, expected: Digest | None = None) -> Digest:
        """Store small content (manifests, configs) already in memory; verify if `expected`."""
        digest = sha256_of(data)
        if expected is not None and digest != expected:
            raise DigestMismatchError(f"content has digest {digest}, expected {expected}")
        final = self.path(digest)
        if not final.exists():
            tmp = self.ingest_dir / f"{hex_of(digest)}.put.{os.getpid()}"
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(final)
        return digest

    async def ingest(
        self,
        digest: Digest,
        size: int,
        fetch: Fetch,
        *,
        what: str,
        progress: Progress | None = None,
    ) -> Path:
        """Download a blob into the store, unless it is there already; share concurrent work."""
        if self.has(digest):
            return self.path(digest)
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.create_task(
                self._ingest(digest, size, fetch, what=what, progress=progress),
                name=f"ingest:{digest[:19]}",
            )
            self._inflight[digest] = task
            task.add_done_callback(lambda _t: self._inflight.pop(digest, None))
        return await asyncio.shield(task)

    async def _ingest(
        self, digest: Digest, size: int, fetch: Fetch, *, what: str, progress: Progress | None
    ) -> Path:
        partial = self.partial_path(digest)
        hasher = hashlib.sha256()
        offset = 0
        if partial.exists():
            offset = partial.stat().st_size
            if offset > size:
                partial.unlink()
                offset = 0
            else:
                await asyncio.to_thread(_hash_file, partial, hasher)
        if offset == size:
            # Everything arrived before a crash, but was never committed: just verify.
            return await self._commit(partial, digest, hasher, what=what)
        try:
            try:
                stream = await fetch(offset)
            except RangeIgnored:
                hasher, offset = hashlib.sha256(), 0
                partial.unlink(missing_ok=True)
                stream = await fetch(0)
            async with aiofiles.open(partial, "ab") as out:
                written = offset
                if progress is not None:
                    progress(written)
                async for chunk in stream:
                    written += len(chunk)
                    if written > size:
                        raise DigestMismatchError(
                            f"{what}: blob {digest} is larger than the {size} bytes its "
                            "descriptor declares"
                        )
                    hasher.update(chunk)
                    await out.write(chunk)
                    if progress is not None:
                        progress(written)
                await out.flush()
                await asyncio.to_thread(os.fsync, out.fileno())
        except DigestMismatchError:
            partial.unlink(missing_ok=True)
            raise
        if written != size:
            # A short read is a dropped connection: keep the partial file to resume from.
            raise IncompleteDownloadError(
                f"{what}: download of blob {digest} ended after {written} of {size} bytes"
            )
        return await self._commit(partial, digest, hasher, what=what)

    async def _commit(
        self, partial: Path, digest: Digest, hasher: "hashlib._Hash", *, what: str
    ) -> Path:
        actual = Digest("sha256:" + hasher.hexdigest())
        if actual != digest:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise DigestMismatchError(
                f"{what}: downloaded blob has digest {actual}, expected {digest}"
            )
        final = self.path(digest)
        await aiofiles.os.replace(partial, final)
        return final

    def prune_partials(self) -> None:
        """Drop every partial download (used by GC and after permanent failures)."""
        for p in self.ingest_dir.iterdir():
            p.unlink(missing_ok=True)


def _hash_file(path: Path, hasher: "hashlib._Hash") -> None:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
