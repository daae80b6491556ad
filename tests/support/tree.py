"""Snapshots of directory trees, to compare an image rootfs we assembled with a reference.

`snapshot(root)` walks a tree without following symlinks and records, for every path
relative to `root` ("." is the root itself): the file type, permission bits (with
setuid/setgid/sticky), owner, size and sha256 of regular files, symlink targets, device
numbers, xattrs (less `trusted.overlay.*` and `security.*`, which belong to the storage
and the LSM, not the image) and which other paths share the inode (hard links).
`diff(a, b)` lists the differences in words. `umoci_rootfs()` makes the reference: the
image unpacked by `umoci unpack` (as root, so owners, devices and xattrs are real).

Typical use in an image-service test:

    expected = snapshot(umoci_rootfs(image.layout, image.layout_tag, tmp_path / "ref"))
    actual = snapshot(our_mounted_rootfs)
    assert diff(expected, actual, a_label="umoci", b_label="ours") == []
"""

import hashlib
import os
import stat
import subprocess
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, fields
from pathlib import Path

IGNORED_XATTR_PREFIXES = ("trusted.overlay.", "security.")

_KINDS = (
    (stat.S_ISREG, "reg"),
    (stat.S_ISDIR, "dir"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISCHR, "chr"),
    (stat.S_ISBLK, "blk"),
    (stat.S_ISSOCK, "sock"),
)


@dataclass(frozen=True)
class Entry:
    """What `snapshot` records for one path; fields that do not apply are None."""

    kind: str  # reg, dir, symlink, fifo, chr, blk, sock
    mode: int  # permission bits incl. setuid/setgid/sticky (stat.S_IMODE)
    uid: int
    gid: int
    size: int | None = None  # regular files
    sha256: str | None = None  # regular files: hex digest of the content
    target: str | None = None  # symlinks
    rdev: tuple[int, int] | None = None  # devices: (major, minor)
    xattrs: tuple[tuple[str, bytes], ...] = ()  # sorted by name
    hardlinks: tuple[str, ...] = ()  # other paths under root sharing this inode, sorted
    mtime_ns: int | None = None  # only with snapshot(..., mtimes=True); not for dirs

    def describe(self) -> str:
        """A one-line summary, e.g. `reg 0o644 0:0 size=4`."""
        parts = [self.kind, oct(self.mode), f"{self.uid}:{self.gid}"]
        if self.size is not None:
            parts.append(f"size={self.size}")
        if self.target is not None:
            parts.append(f"-> {self.target}")
        if self.rdev is not None:
            parts.append(f"rdev={self.rdev[0]}:{self.rdev[1]}")
        return " ".join(parts)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return f"unknown({stat.S_IFMT(mode):o})"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _xattrs(path: Path) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # e.g. a filesystem without xattr support
        return ()
    out = []
    for name in sorted(names):
        if name.startswith(IGNORED_XATTR_PREFIXES):
            continue
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue
    return tuple(out)


def _walk(root: Path) -> list[str]:
    """Every path below `root` (relative, "/"-separated), never entering symlinks."""
    out: list[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        directory = root / rel if rel else root
        with os.scandir(directory) as it:
            for dirent in it:
                child = f"{rel}/{dirent.name}" if rel else dirent.name
                out.append(child)
                if dirent.is_dir(follow_symlinks=False):
                    stack.append(child)
    return out


def snapshot(root: Path, *, mtimes: bool = False) -> dict[str, Entry]:
    """Every path under `root` (and "." for root) -> Entry. Symlinks are not followed."""
    raw: dict[str, os.stat_result] = {".": os.lstat(root)}
    for rel in _walk(root):
        raw[rel] = os.lstat(root / rel)
    inodes: dict[tuple[int, int], list[str]] = defaultdict(list)
    for rel, st in raw.items():
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            inodes[(st.st_dev, st.st_ino)].append(rel)
    entries: dict[str, Entry] = {}
    for rel, st in raw.items():
        path = root if rel == "." else root / rel
        kind = _kind(st.st_mode)
        group = inodes.get((st.st_dev, st.st_ino), [])
        entries[rel] = Entry(
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if kind == "reg" else None,
            sha256=_sha256(path) if kind == "reg" else None,
            target=os.readlink(path) if kind == "symlink" else None,
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("chr", "blk") else None,
            xattrs=_xattrs(path),
            hardlinks=tuple(sorted(p for p in group if p != rel)),
            mtime_ns=st.st_mtime_ns if mtimes and kind != "dir" else None,
        )
    return dict(sorted(entries.items()))


def diff(
    a: dict[str, Entry],
    b: dict[str, Entry],
    *,
    a_label: str = "a",
    b_label: str = "b",
    ignore: Collection[str] = (),
) -> list[str]:
    """Human-readable differences between two snapshots; [] when they match.

    `ignore` names Entry fields to leave out (e.g. {"xattrs", "mtime_ns"}).
    """
    unknown = set(ignore) - {f.name for f in fields(Entry)}
    if unknown:
        raise ValueError(f"unknown Entry fields in ignore: {sorted(unknown)}")
    out: list[str] = []
    for path in sorted(a.keys() | b.keys()):
        ea, eb = a.get(path), b.get(path)
        if eb is None:
            assert ea is not None
            out.append(f"{path}: only in {a_label} ({ea.describe()})")
            continue
        if ea is None:
            out.append(f"{path}: only in {b_label} ({eb.describe()})")
            continue
        for f in fields(Entry):
            if f.name in ignore:
                continue
            va, vb = getattr(ea, f.name), getattr(eb, f.name)
            if va != vb:
                if f.name == "mode":
                    va, vb = oct(va), oct(vb)
                out.append(f"{path}: {f.name} {a_label}={va!r} {b_label}={vb!r}")
    return out


def umoci_rootfs(layout_dir: Path, tag: str, dest: Path) -> Path:
    """`umoci unpack --image <layout_dir>:<tag> <dest>` (as root); returns `dest/rootfs`.

    `dest` must not exist yet (umoci makes it). Note umoci 0.4.7 cannot unpack zstd
    layers: use the gzip layout of the same image.
    """
    if os.geteuid() != 0:
        raise PermissionError("umoci_rootfs runs umoci as root (owners, devices, xattrs)")
    proc = subprocess.run(
        ["umoci", "unpack", "--image", f"{layout_dir}:{tag}", str(dest)],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"umoci unpack {layout_dir}:{tag} -> {dest} exited {proc.returncode}:\n"
            f"{proc.stderr.decode(errors='replace')[-3000:]}"
        )
    return dest / "rootfs"
