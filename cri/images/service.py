"""The image service: pull, list, inspect, remove and garbage-collect images.

This is the CRI ImageService's behaviour behind a Python API (the gRPC servicer
is a thin adapter over it). A pull:

    resolve reference ─▶ manifest (or index ─▶ this platform's manifest)
        ─▶ config blob ─▶ for each layer not yet unpacked (by chain ID):
               download blob (verified, resumable) ─▶ unpack in a thread (diff ID verified)
        ─▶ write the image record (last, atomically)

Layers download concurrently and unpack as soon as each arrives. If a pull
fails, whatever it added that no image references is removed again, so the
visible store (images, blobs, layers) is as it was; partial downloads stay in
`ingest/` only when the failure was temporary, so the next pull resumes them.
"""

import asyncio
import shutil
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import aiofiles

from cri.images import archive
from cri.images import mediatypes as mt
from cri.images.auth import Credentials
from cri.images.config import ImageConfig, parse_image_config
from cri.images.digest import Digest, chain_ids, hex_of
from cri.images.errors import (
    ImageError,
    ImageInUseError,
    ImageNotFoundError,
    ImportError_,
    InvalidReferenceError,
    PullError,
)
from cri.images.layers import LayerStore
from cri.images.manifest import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    host_platform,
    parse_document,
    select_platform,
)
from cri.images.records import ImageRecord, RecordStore
from cri.images.reference import ImageReference, parse_reference
from cri.images.registry import RegistryClient, RegistryConfig
from cri.images.store import ContentStore, Fetch


@dataclass(frozen=True)
class PullEvent:
    """Progress of a pull, for displays: one event per state change of a blob."""

    image: str
    kind: str  # "resolved", "download", "downloaded", "unpacked", "exists", "done"
    digest: str = ""
    done_bytes: int = 0
    total_bytes: int = 0


PullProgress = Callable[[PullEvent], None]


@dataclass(frozen=True)
class FsUsage:
    mountpoint: Path
    used_bytes: int
    inodes_used: int
    capacity_bytes: int
    available_bytes: int


@dataclass(frozen=True)
class GCResult:
    removed: tuple[Digest, ...]
    freed_bytes: int


class ImageService:
    """Images under one root directory; safe for concurrent pulls from one event loop."""

    def __init__(
        self,
        root: Path,
        *,
        registry: RegistryConfig | None = None,
        platform: Platform | None = None,
        in_use: Callable[[], Collection[Digest]] = frozenset,
        clock: Callable[[], float] = time.time,
        max_concurrent_downloads: int = 3,
        max_concurrent_unpacks: int = 2,
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.content = ContentStore(root)
        self.layers = LayerStore(root)
        self.records = RecordStore(root)
        self.registry = RegistryClient(registry or RegistryConfig())
        self.platform = platform or host_platform()
        self._in_use = in_use
        self._clock = clock
        self._downloads = asyncio.Semaphore(max_concurrent_downloads)
        self._unpacks = asyncio.Semaphore(max_concurrent_unpacks)
        self._holds: Counter[Digest] = Counter()
        self._layer_tasks: dict[Digest, asyncio.Task[None]] = {}

    async def close(self) -> None:
        await self.registry.close()

    def set_in_use(self, in_use: Callable[[], Collection[Digest]]) -> None:
        """Say which images back containers (the runtime is made after the image service)."""
        self._in_use = in_use

    # ---- lookups ---------------------------------------------------------------

    def list_images(self) -> list[ImageRecord]:
        return self.records.all()

    def find(self, image: str) -> ImageRecord | None:
        """Look an image up by ID, ID prefix, name:tag, name@digest or short name."""
        records = self.records.all()
        text = image.strip()
        bare = text.removeprefix("sha256:")
        if len(bare) >= 12 and all(c in "0123456789abcdef" for c in bare):
            by_id = [r for r in records if hex_of(r.id).startswith(bare)]
            if len(by_id) == 1:
                return by_id[0]
        try:
            ref = parse_reference(text)
        except InvalidReferenceError:
            return None
        for r in records:
            if (ref.digest and str(ref) in r.repo_digests) or (
                not ref.digest and str(ref) in r.repo_tags
            ):
                return r
        if ref.digest:
            for r in records:
                if r.manifest_digest == ref.digest and any(
                    d.startswith(ref.name + "@") for d in r.repo_digests
                ):
                    return r
        return None

    def get(self, image: str) -> ImageRecord:
        record = self.find(image)
        if record is None:
            raise ImageNotFoundError(f"image {image!r} is not present on this node")
        return record

    def config(self, image_id: Digest) -> ImageConfig:
        return parse_image_config(self.content.read(image_id), what=f"image {image_id}")

    def lowerdirs(self, image_id: Digest) -> list[Path]:
        """The image's layer dirs for overlayfs `lowerdir=`, topmost first."""
        record = self.get(image_id)
        return [self.layers.path(c) / "diff" for c in reversed(record.chain_ids)]

    def mark_used(self, image_id: Digest) -> None:
        record = self.get(image_id)
        self.records.put(replace(record, last_used=self._clock()))

    # ---- pull ------------------------------------------------------------------

    async def pull(
        self,
        image: str,
        *,
        credentials: Credentials | None = None,
        progress: PullProgress | None = None,
    ) -> ImageRecord:
        """Pull `image` (any reference form) and return its record."""
        ref = parse_reference(image)
        what = f"pulling image {ref}"
        emit = progress or (lambda _e: None)
        held: list[Digest] = []
        before_blobs = self.content.digests()
        before_layers = self.layers.chain_ids()
        try:
            return await self._pull(ref, credentials=credentials, emit=emit, what=what, held=held)
        except BaseException as err:
            self._rollback(before_blobs, before_layers, held)
            if isinstance(err, ImageError) and not err.temporary:
                for digest in held:
                    self.content.partial_path(digest).unlink(missing_ok=True)
            raise
        finally:
            self._holds.subtract(held)
            self._holds += Counter()  # drop zero counts

    def _hold(self, held: list[Digest], digest: Digest) -> None:
        held.append(digest)
        self._holds[digest] += 1

    async def _pull(
        self,
        ref: ImageReference,
        *,
        credentials: Credentials | None,
        emit: PullProgress,
        what: str,
        held: list[Digest],
    ) -> ImageRecord:
        fetched = await self.registry.get_manifest(ref, ref.reference, creds=credentials, what=what)
        repo_digest = f"{ref.name}@{fetched.digest}"
        doc = parse_document(fetched.data, fetched.media_type, what=what)
        extra_blobs: list[Digest] = []
        if isinstance(doc, Index):
            self._hold(held, fetched.digest)
            self.content.put_bytes(fetched.data, expected=fetched.digest)
            extra_blobs.append(fetched.digest)
            entry = select_platform(doc, self.platform, what=what)
            fetched = await self.registry.get_manifest(
                ref, entry.digest, creds=credentials, what=what
            )
            doc = parse_document(fetched.data, fetched.media_type or entry.media_type, what=what)
            if not isinstance(doc, Manifest):
                raise PullError(f"{what}: index entry {entry.digest} is not an image manifest")
        endpoint = fetched.endpoint

        def source(digest: Digest) -> Fetch:
            return lambda off: self.registry.open_blob(
                ref, digest, off, creds=credentials, what=what, prefer=endpoint
            )

        return await self._materialize(
            name=str(ref),
            repo_tags=(str(ref),) if ref.tag else (),
            repo_digests=(repo_digest,),
            manifest=doc,
            manifest_bytes=fetched.data,
            manifest_digest=fetched.digest,
            extra_blobs=extra_blobs,
            source=source,
            emit=emit,
            what=what,
            held=held,
        )

    async def _materialize(
        self,
        *,
        name: str,
        repo_tags: tuple[str, ...],
        repo_digests: tuple[str, ...],
        manifest: Manifest,
        manifest_bytes: bytes,
        manifest_digest: Digest,
        extra_blobs: list[Digest],
        source: Callable[[Digest], Fetch],
        emit: PullProgress,
        what: str,
        held: list[Digest],
    ) -> ImageRecord:
        """Store the manifest, config and layers from `source`, then write the record."""
        self._hold(held, manifest_digest)
        self.content.put_bytes(manifest_bytes, expected=manifest_digest)
        blobs = [*extra_blobs, manifest_digest]
        emit(PullEvent(name, "resolved", manifest_digest))

        cfg_desc = manifest.config
        if cfg_desc.media_type and cfg_desc.media_type not in mt.CONFIGS:
            raise PullError(f"{what}: unsupported config media type {cfg_desc.media_type!r}")
        self._hold(held, cfg_desc.digest)
        await self.content.ingest(
            cfg_desc.digest, cfg_desc.size, source(cfg_desc.digest), what=what
        )
        blobs.append(cfg_desc.digest)
        config = self.config(cfg_desc.digest)
        if len(config.diff_ids) != len(manifest.layers):
            raise PullError(
                f"{what}: manifest has {len(manifest.layers)} layers but the config lists "
                f"{len(config.diff_ids)} diff IDs"
            )
        chains = chain_ids(config.diff_ids)

        async def one_layer(i: int) -> None:
            desc, chain = manifest.layers[i], chains[i]
            self._hold(held, desc.digest)
            self._hold(held, chain)
            blobs.append(desc.digest)
            if self.layers.get(chain) is not None:
                emit(PullEvent(name, "exists", desc.digest, desc.size, desc.size))
                return
            task = self._layer_tasks.get(chain)
            if task is None:
                task = asyncio.create_task(
                    self._fetch_and_unpack(
                        name=name,
                        desc=desc,
                        chain=chain,
                        parent=chains[i - 1] if i else None,
                        diff_id=config.diff_ids[i],
                        fetch=source(desc.digest),
                        emit=emit,
                        what=what,
                    ),
                    name=f"layer:{chain[:19]}",
                )
                self._layer_tasks[chain] = task
                task.add_done_callback(lambda _t: self._layer_tasks.pop(chain, None))
            await asyncio.shield(task)

        # Wait for every layer, failed or not, before deciding: a layer still in flight
        # must not commit content after the pull has rolled back. Then raise the first
        # error as itself (a TaskGroup would wrap it in an ExceptionGroup).
        results = await asyncio.gather(
            *(one_layer(i) for i in range(len(manifest.layers))), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

        now = self._clock()
        unpacked = 0
        for chain in chains:
            layer = self.layers.get(chain)
            assert layer is not None
            unpacked += layer.size_bytes
        record = ImageRecord(
            id=cfg_desc.digest,
            manifest_digest=manifest_digest,
            repo_tags=repo_tags,
            repo_digests=repo_digests,
            chain_ids=tuple(chains),
            blob_digests=tuple(dict.fromkeys(blobs)),
            size_bytes=cfg_desc.size + sum(d.size for d in manifest.layers),
            unpacked_bytes=unpacked,
            user=config.user,
            pulled_at=now,
            last_used=now,
        )
        record = self._commit(record)
        emit(PullEvent(name, "done", record.id))
        return record

    async def _fetch_and_unpack(
        self,
        *,
        name: str,
        desc: Descriptor,
        chain: Digest,
        parent: Digest | None,
        diff_id: Digest,
        fetch: Fetch,
        emit: PullProgress,
        what: str,
    ) -> None:
        async with self._downloads:
            path = await self.content.ingest(
                desc.digest,
                desc.size,
                fetch,
                what=what,
                progress=lambda n: emit(PullEvent(name, "download", desc.digest, n, desc.size)),
            )
        emit(PullEvent(name, "downloaded", desc.digest, desc.size, desc.size))
        async with self._unpacks:
            await asyncio.to_thread(
                self.layers.create,
                chain_id=chain,
                parent=parent,
                expected_diff_id=diff_id,
                blob=path,
                compression=mt.COMPRESSION_BY_LAYER_TYPE[desc.media_type],
                what=f"{what}: layer {desc.digest}",
            )
        emit(PullEvent(name, "unpacked", desc.digest, desc.size, desc.size))

    # ---- import ----------------------------------------------------------------

    async def import_image(
        self, path: Path, *, name: str | None = None, progress: PullProgress | None = None
    ) -> list[ImageRecord]:
        """Import an OCI image layout (dir or tar) or a `docker save` archive.

        Names come from the archive (`RepoTags`, or the layout's
        `io.containerd.image.name` / `org.opencontainers.image.ref.name`
        annotations); `name` names an image that has none.
        """
        emit = progress or (lambda _e: None)
        what = f"importing {path}"
        if await asyncio.to_thread(path.is_dir):
            return await self._import_dir(path, name=name, emit=emit, what=what)
        if not await asyncio.to_thread(path.is_file):
            raise ImportError_(f"{what}: no such file or directory")
        scratch = Path(tempfile.mkdtemp(prefix="import-", dir=self.content.ingest_dir))
        try:
            await asyncio.to_thread(_extract_archive, path, scratch, what)
            return await self._import_dir(scratch, name=name, emit=emit, what=what)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def _import_dir(
        self, root: Path, *, name: str | None, emit: PullProgress, what: str
    ) -> list[ImageRecord]:
        if await asyncio.to_thread((root / "index.json").is_file):
            images = await asyncio.to_thread(
                archive.oci_layout_images, root, platform=self.platform, what=what
            )
        elif await asyncio.to_thread((root / "manifest.json").is_file):
            images = await asyncio.to_thread(archive.docker_save_images, root, what=what)
        else:
            raise ImportError_(
                f"{what}: neither an OCI image layout (index.json) nor a docker save archive "
                "(manifest.json)"
            )
        images = _choose_imports(images, name=name, what=what)
        out = []
        for found in images:
            names = (name,) if name else found.names
            refs = [parse_reference(n) for n in names]
            held: list[Digest] = []
            before_blobs, before_layers = self.content.digests(), self.layers.chain_ids()

            def source(digest: Digest, found: archive.FoundImage = found) -> Fetch:
                return _file_fetch(found.blob_path(digest))

            try:
                record = await self._materialize(
                    name=str(refs[0]),
                    repo_tags=tuple(str(r) for r in refs if r.tag),
                    repo_digests=tuple(f"{r.name}@{found.manifest_digest}" for r in refs),
                    manifest=found.manifest,
                    manifest_bytes=found.manifest_bytes,
                    manifest_digest=found.manifest_digest,
                    extra_blobs=[],
                    source=source,
                    emit=emit,
                    what=what,
                    held=held,
                )
            except BaseException:
                self._rollback(before_blobs, before_layers, held)
                raise
            finally:
                self._holds.subtract(held)
                self._holds += Counter()
            out.append(record)
        return out

    def _commit(self, record: ImageRecord) -> ImageRecord:
        """Write the record; a tag moves to this image from any image that had it."""
        existing = {r.id: r for r in self.records.all()}
        old = existing.get(record.id)
        if old is not None:
            record = replace(
                record,
                repo_tags=tuple(dict.fromkeys((*old.repo_tags, *record.repo_tags))),
                repo_digests=tuple(dict.fromkeys((*old.repo_digests, *record.repo_digests))),
                blob_digests=tuple(dict.fromkeys((*old.blob_digests, *record.blob_digests))),
                pulled_at=old.pulled_at,
            )
        for other in existing.values():
            if other.id != record.id and set(other.repo_tags) & set(record.repo_tags):
                tags = tuple(t for t in other.repo_tags if t not in record.repo_tags)
                self.records.put(other.with_names(tags, other.repo_digests))
        self.records.put(record)
        return record

    def _referenced(self) -> tuple[set[Digest], set[Digest]]:
        blobs: set[Digest] = set()
        layers: set[Digest] = set()
        for r in self.records.all():
            blobs.update(r.blob_digests)
            blobs.add(r.id)
            layers.update(r.chain_ids)
        return blobs, layers

    def _rollback(
        self, before_blobs: set[Digest], before_layers: set[Digest], held: Iterable[Digest]
    ) -> None:
        """Remove what a failed pull added that nothing references or another pull holds."""
        mine = Counter(held)
        others = {d for d, n in self._holds.items() if n > mine.get(d, 0)}
        ref_blobs, ref_layers = self._referenced()
        for digest in self.content.digests() - before_blobs - ref_blobs - others:
            self.content.delete(digest)
        for chain in self.layers.chain_ids() - before_layers - ref_layers - others:
            self.layers.remove(chain)

    # ---- remove and GC ---------------------------------------------------------

    def remove(self, image: str) -> None:
        """Remove an image and every blob and layer no other image needs."""
        record = self.find(image)
        if record is None:
            return  # CRI: removing an absent image succeeds
        if record.id in set(self._in_use()):
            raise ImageInUseError(
                f"image {image!r} ({record.id[:19]}) is in use by a container; remove the "
                "container first"
            )
        # A name that is only a tag of a multi-tagged image removes just that tag.
        try:
            ref = parse_reference(image)
        except InvalidReferenceError:
            ref = None
        if (
            ref is not None
            and ref.tag
            and len(record.repo_tags) > 1
            and str(ref) in record.repo_tags
        ):
            tags = tuple(t for t in record.repo_tags if t != str(ref))  # only_a_tag: ref set
            self.records.put(record.with_names(tags, record.repo_digests))
            return
        self.records.delete(record.id)
        ref_blobs, ref_layers = self._referenced()
        for digest in set(record.blob_digests) | {record.id}:
            if digest not in ref_blobs and self._holds[digest] == 0:
                self.content.delete(digest)
        for chain in record.chain_ids:
            if chain not in ref_layers and self._holds[chain] == 0:
                self.layers.remove(chain)

    def fs_info(self) -> FsUsage:
        used = sum(self.content.size(d) for d in self.content.digests())
        inodes = len(self.content.digests())
        for layer in self.layers.iter_layers():
            used += layer.size_bytes
            inodes += layer.inodes
        usage = shutil.disk_usage(self.root)
        return FsUsage(
            mountpoint=self.root,
            used_bytes=used,
            inodes_used=inodes,
            capacity_bytes=usage.total,
            available_bytes=usage.free,
        )

    def garbage_collect(
        self,
        *,
        high_threshold_pct: float = 85.0,
        low_threshold_pct: float = 80.0,
        disk_usage: Callable[[], tuple[int, int]] | None = None,
    ) -> GCResult:
        """Above `high` % disk use, remove least recently used unused images until below `low`.

        `disk_usage` returns (used, total) bytes of the image filesystem; it is
        injectable so tests can model a full disk.
        """

        def usage() -> tuple[int, int]:
            if disk_usage is not None:
                return disk_usage()
            du = shutil.disk_usage(self.root)
            return du.used, du.total

        used, total = usage()
        if total <= 0 or 100.0 * used / total < high_threshold_pct:
            return GCResult(removed=(), freed_bytes=0)
        in_use = set(self._in_use())
        removed: list[Digest] = []
        freed = 0
        for record in sorted(self.records.all(), key=lambda r: r.last_used):
            if record.id in in_use:
                continue
            before = self.fs_info().used_bytes
            self.remove(record.id)
            freed += max(0, before - self.fs_info().used_bytes)
            removed.append(record.id)
            used, total = usage()
            if 100.0 * used / total < low_threshold_pct:
                break
        self.content.prune_partials()
        return GCResult(removed=tuple(removed), freed_bytes=freed)


def _file_fetch(path: Path) -> Fetch:
    """A Fetch over a local file (for imports): yields its bytes from an offset."""

    async def open_at(offset: int) -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            async with aiofiles.open(path, "rb") as f:
                await f.seek(offset)
                while chunk := await f.read(1 << 20):
                    yield chunk

        return gen()

    return open_at


def _extract_archive(path: Path, dest: Path, what: str) -> None:
    """Unpack an image archive with tarfile's `data` filter (no links out, no devices)."""
    try:
        with tarfile.open(path) as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise ImportError_(f"{what}: cannot read the archive: {err}") from err


def _choose_imports(
    images: list[archive.FoundImage], *, name: str | None, what: str
) -> list[archive.FoundImage]:
    """Which images of an archive to import, and refuse what cannot be named.

    With `name`: the archive's only image, or the one whose layout tag equals the
    tag in `name` (`oci:<layout>:<tag>` convention). Without: every image that
    names itself; an image known only by a bare tag needs `name`.
    """
    if name is not None:
        if len(images) == 1:
            return images
        wanted = parse_reference(name).tag
        match = [i for i in images if i.tag is not None and i.tag == wanted]
        if len(match) == 1:
            return match
        tags = ", ".join(sorted(i.tag for i in images if i.tag)) or "none"
        raise ImportError_(
            f"{what}: the archive holds {len(images)} images; name one whose layout tag matches "
            f"the tag of {name!r} (layout tags: {tags})"
        )
    named = [i for i in images if i.names]
    if not named:
        tags = ", ".join(sorted(i.tag for i in images if i.tag)) or "none"
        raise ImportError_(
            f"{what}: the archive's images carry no names (layout tags: {tags}); pass a name"
        )
    return named
