"""Unpack layer tars into overlay2-style layer directories, one per chain ID.

    <root>/layers/<chain hex>/diff/       the layer's files, as overlayfs lowerdir
    <root>/layers/<chain hex>/layer.json  diff ID, parent chain ID, size, inode count
    <root>/layers/.tmp-*                  an unpack in progress (removed at start-up)

The tar streams through decompression (gzip, zstd or none) and a sha256 of the
uncompressed bytes (the diff ID, checked against the image config) without ever
being held in memory. OCI whiteouts become overlayfs whiteouts:

    .wh.<name>        -> a 0/0 character device <name>
    .wh..wh..opq      -> xattr trusted.overlay.opaque=y on the directory

Hard links, symlinks, devices, FIFOs, owners, modes (setuid included), xattrs
and mtimes are kept. Unsafe archives are refused: a `..` component, a hard link
outside the layer, or any entry whose parent path goes through a symlink (which
could point anywhere on the host). Symlink *targets* may be absolute: they are
resolved inside the container's root at run time, never on the host here.
"""

import gzip
import hashlib
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import zstandard

from cri.images.digest import Digest, hex_of
from cri.images.errors import DigestMismatchError, LayerUnpackError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class UnpackedLayer:
    chain_id: Digest
    diff_id: Digest
    parent: Digest | None
    size_bytes: int
    inodes: int
    path: Path

    @property
    def diff_dir(self) -> Path:
        return self.path / "diff"


class _HashingReader:
    """A read-only stream that hashes what passes through it (the layer's diff ID)."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self.hasher = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        while self.read(_COPY_CHUNK):
            pass


def _decompressed(raw: BinaryIO, compression: str) -> IO[bytes]:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    if compression == "none":
        return raw
    raise LayerUnpackError(f"unknown layer compression {compression!r}")


def _clean_name(name: str, *, what: str) -> str:
    """A member name relative to the layer root, or '' for the root itself; refuses `..`."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise LayerUnpackError(f"{what}: entry {name!r} escapes the layer (contains '..')")
    return "/".join(parts)


class _Extractor:
    def __init__(self, dest: Path, *, what: str) -> None:
        self.dest = dest
        self.what = what
        self.safe_dirs: set[str] = {""}
        self.dir_times: list[tuple[Path, int]] = []
        self.size_bytes = 0
        self.inodes = 0

    def _ensure_parent(self, rel: str) -> Path:
        """Make sure every parent of `rel` is a real directory inside dest (never a symlink)."""
        parent = rel.rpartition("/")[0]
        if parent in self.safe_dirs:
            return self.dest / rel
        current = ""
        for part in parent.split("/"):
            current = f"{current}/{part}" if current else part
            if current in self.safe_dirs:
                continue
            path = self.dest / current
            try:
                st = path.lstat()
            except FileNotFoundError:
                path.mkdir(mode=0o755)
                self.inodes += 1
            else:
                if stat.S_ISLNK(st.st_mode):
                    raise LayerUnpackError(
                        f"{self.what}: entry {rel!r} would be written through the symlink "
                        f"{current!r} (path traversal refused)"
                    )
                if not stat.S_ISDIR(st.st_mode):
                    raise LayerUnpackError(
                        f"{self.what}: entry {rel!r} has a parent {current!r} that is not a dir"
                    )
            self.safe_dirs.add(current)
        return self.dest / rel

    def _clear(self, path: Path, *, keep_dir: bool) -> None:
        """Remove what is at `path` (a later tar entry replaces an earlier one)."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(path)
            rel = str(path.relative_to(self.dest))
            self.safe_dirs = {d for d in self.safe_dirs if d != rel and not d.startswith(rel + "/")}
        else:
            path.unlink()

    def extract(self, tar: tarfile.TarFile) -> None:
        for member in tar:
            self._extract_member(tar, member)
        # Directory mtimes last: creating their children changed them.
        for path, mtime_ns in reversed(self.dir_times):
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def _extract_member(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        rel = _clean_name(m.name, what=self.what)
        base = rel.rpartition("/")[2]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(rel, base)
            return
        if rel == "":
            if m.isdir():
                self._apply_metadata(self.dest, m, is_dir=True)
            return
        path = self._ensure_parent(rel)
        if m.isdir():
            self._clear(path, keep_dir=True)
            if not path.exists():
                path.mkdir(mode=0o700)
                self.inodes += 1
            self.safe_dirs.add(rel)
            self._apply_metadata(path, m, is_dir=True)
            return
        self._clear(path, keep_dir=False)
        if m.isreg():
            src = tar.extractfile(m)
            assert src is not None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out, _COPY_CHUNK)
            self.size_bytes += m.size
        elif m.issym():
            os.symlink(m.linkname, path)
        elif m.islnk():
            target_rel = _clean_name(m.linkname, what=self.what)
            # Check the target's parents first: lstat() follows symlinks in the parents,
            # and a link through one could pull a host file into the layer.
            target = self._ensure_parent(target_rel)
            try:
                tst = target.lstat()
            except FileNotFoundError as err:
                raise LayerUnpackError(
                    f"{self.what}: hard link {rel!r} -> {m.linkname!r}: target is not in this layer"
                ) from err
            if stat.S_ISDIR(tst.st_mode):
                raise LayerUnpackError(f"{self.what}: hard link {rel!r} points at a directory")
            os.link(target, path, follow_symlinks=False)
            return  # a hard link shares the target's inode and metadata
        elif m.ischr() or m.isblk():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        elif m.isfifo():
            os.mkfifo(path, 0o600)
        else:
            raise LayerUnpackError(f"{self.what}: entry {rel!r} has unsupported type {m.type!r}")
        self.inodes += 1
        self._apply_metadata(path, m, is_dir=False)

    def _whiteout(self, rel: str, base: str) -> None:
        parent_rel = rel.rpartition("/")[0]
        if base == OPAQUE_MARKER:
            # Ensuring the parents of "<dir>/<marker>" makes <dir> a real directory.
            parent = self._ensure_parent(rel).parent
            os.setxattr(parent, OPAQUE_XATTR, b"y", follow_symlinks=False)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # AUFS-internal metadata (.wh..wh.plnk and friends): meaningless here
        name = base[len(WHITEOUT_PREFIX) :]
        if not name or name in (".", ".."):
            raise LayerUnpackError(f"{self.what}: malformed whiteout {rel!r}")
        target_rel = f"{parent_rel}/{name}" if parent_rel else name
        path = self._ensure_parent(target_rel)
        self._clear(path, keep_dir=False)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        self.inodes += 1

    def _apply_metadata(self, path: Path, m: tarfile.TarInfo, *, is_dir: bool) -> None:
        os.lchown(path, m.uid, m.gid)
        if not m.issym():
            os.chmod(path, m.mode & 0o7777)  # after chown, which clears setuid/setgid
        for key, value in m.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                name = key[len("SCHILY.xattr.") :]
                try:
                    os.setxattr(
                        path,
                        name,
                        value.encode("utf-8", "surrogateescape"),
                        follow_symlinks=False,
                    )
                except OSError as err:
                    raise LayerUnpackError(
                        f"{self.what}: cannot set xattr {name} on {m.name!r}: {err}"
                    ) from err
        mtime_ns = int(m.mtime * 1_000_000_000)
        if is_dir:
            self.dir_times.append((path, mtime_ns))
        else:
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def unpack_layer(blob: Path, *, compression: str, dest: Path, what: str) -> tuple[Digest, int, int]:
    """Unpack the layer blob at `blob` into the empty directory `dest`.

    Returns (diff ID, bytes of regular-file content, inode count). Blocking: run it
    in a thread.
    """
    with blob.open("rb") as raw:
        try:
            stream = _decompressed(raw, compression)
            reader = _HashingReader(stream)
            with tarfile.open(fileobj=reader, mode="r|", errorlevel=2) as tar:  # type: ignore[call-overload]
                extractor = _Extractor(dest, what=what)
                extractor.extract(tar)
            reader.drain()
        except (tarfile.TarError, EOFError, zstandard.ZstdError, gzip.BadGzipFile) as err:
            raise LayerUnpackError(f"{what}: corrupt layer archive: {err}") from err
        except OSError as err:
            if isinstance(err, LayerUnpackError):
                raise
            raise LayerUnpackError(f"{what}: unpacking failed: {err}") from err
    diff_id = Digest("sha256:" + reader.hasher.hexdigest())
    return diff_id, extractor.size_bytes, extractor.inodes


class LayerStore:
    """Unpacked layers keyed by chain ID, shared by every image that uses them."""

    def __init__(self, root: Path) -> None:
        self.root = root / "layers"
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def path(self, chain_id: Digest) -> Path:
        return self.root / hex_of(chain_id)

    def get(self, chain_id: Digest) -> UnpackedLayer | None:
        meta = self.path(chain_id) / "layer.json"
        try:
            doc = json.loads(meta.read_text())
        except FileNotFoundError:
            return None
        return UnpackedLayer(
            chain_id=Digest(doc["chain_id"]),
            diff_id=Digest(doc["diff_id"]),
            parent=Digest(doc["parent"]) if doc.get("parent") else None,
            size_bytes=int(doc["size_bytes"]),
            inodes=int(doc["inodes"]),
            path=self.path(chain_id),
        )

    def chain_ids(self) -> set[Digest]:
        return {
            Digest(f"sha256:{p.name}")
            for p in self.root.iterdir()
            if len(p.name) == 64 and (p / "layer.json").is_file()
        }

    def create(
        self,
        *,
        chain_id: Digest,
        parent: Digest | None,
        expected_diff_id: Digest,
        blob: Path,
        compression: str,
        what: str,
    ) -> UnpackedLayer:
        """Unpack `blob` as layer `chain_id`; visible only once complete. Blocking."""
        existing = self.get(chain_id)
        if existing is not None:
            return existing
        tmp = self.root / f".tmp-{hex_of(chain_id)}-{os.getpid()}-{os.urandom(3).hex()}"
        (tmp / "diff").mkdir(parents=True)
        try:
            diff_id, size, inodes = unpack_layer(
                blob, compression=compression, dest=tmp / "diff", what=what
            )
            if diff_id != expected_diff_id:
                raise DigestMismatchError(
                    f"{what}: uncompressed layer has diff ID {diff_id}, the image config says "
                    f"{expected_diff_id}"
                )
            meta = {
                "chain_id": chain_id,
                "diff_id": diff_id,
                "parent": parent,
                "size_bytes": size,
                "inodes": inodes,
            }
            with (tmp / "layer.json").open("w") as f:
                json.dump(meta, f)
                f.flush()
                os.fsync(f.fileno())
            final = self.path(chain_id)
            try:
                tmp.rename(final)
            except OSError:
                if self.get(chain_id) is None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another unpack won the race
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        layer = self.get(chain_id)
        assert layer is not None
        return layer

    def remove(self, chain_id: Digest) -> None:
        """Remove a layer: rename away first so a half-removed layer is never visible."""
        path = self.path(chain_id)
        if not path.exists():
            return
        doomed = self.root / f".tmp-rm-{hex_of(chain_id)}-{os.urandom(3).hex()}"
        path.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def iter_layers(self) -> Iterator[UnpackedLayer]:
        for chain_id in sorted(self.chain_ids()):
            layer = self.get(chain_id)
            if layer is not None:
                yield layer
