"""Layer unpacking on the real kernel: whiteouts, metadata, and refusing unsafe archives."""

import gzip
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from cri.images import DigestMismatchError, LayerUnpackError
from cri.images.digest import Digest, sha256_of
from cri.images.layers import OPAQUE_XATTR, LayerStore, unpack_layer


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = int(kw.pop("mode", 0o644))  # type: ignore[call-overload]
    info.mtime = 1_600_000_000
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def _write(tmp: Path, data: bytes, name: str = "layer.tar") -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "diff"
    d.mkdir()
    return d


def test_files_links_devices_and_metadata_are_kept(
    tmp_path: Path, dest: Path, require_root: None
) -> None:
    """Owners, modes (setuid too), mtimes, xattrs, hard and soft links, FIFOs, devices survive."""
    data = _tar(
        [
            (_entry("bin", tarfile.DIRTYPE, mode=0o755), None),
            (_entry("bin/tool", mode=0o4755, uid=0, gid=0), b"#!/bin/sh\n"),
            (_entry("bin/alias", tarfile.LNKTYPE, linkname="bin/tool"), None),
            (_entry("bin/sh", tarfile.SYMTYPE, linkname="/bin/busybox"), None),
            (_entry("home/app/secret", mode=0o600, uid=1000, gid=1000), b"s3cr3t"),
            (_entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), None),
            (_entry("run/fifo", tarfile.FIFOTYPE, mode=0o644), None),
            (_entry("etc/cfg", pax_headers={"SCHILY.xattr.user.test": "hello"}), b"x"),
        ]
    )
    diff_id, size, inodes = unpack_layer(
        _write(tmp_path, data), compression="none", dest=dest, what="t"
    )
    assert diff_id == sha256_of(data)
    tool = (dest / "bin/tool").lstat()
    assert stat.S_IMODE(tool.st_mode) == 0o4755
    assert tool.st_nlink == 2 and (dest / "bin/alias").lstat().st_ino == tool.st_ino
    assert tool.st_mtime == 1_600_000_000
    assert os.readlink(dest / "bin/sh") == "/bin/busybox"
    secret = (dest / "home/app/secret").lstat()
    assert (secret.st_uid, secret.st_gid, stat.S_IMODE(secret.st_mode)) == (1000, 1000, 0o600)
    dev = (dest / "dev/null").lstat()
    assert stat.S_ISCHR(dev.st_mode) and (os.major(dev.st_rdev), os.minor(dev.st_rdev)) == (1, 3)
    assert stat.S_ISFIFO((dest / "run/fifo").lstat().st_mode)
    assert os.getxattr(dest / "etc/cfg", "user.test") == b"hello"
    assert (dest / "bin").lstat().st_mtime == 1_600_000_000
    assert size == len(b"#!/bin/sh\n") + len(b"s3cr3t") + 1
    assert inodes >= 8


def test_whiteouts_become_overlayfs_whiteouts(
    tmp_path: Path, dest: Path, require_root: None
) -> None:
    """`.wh.name` becomes a 0/0 char device and `.wh..wh..opq` an opaque xattr."""
    data = _tar(
        [
            (_entry("etc/.wh.gone"), b""),
            (_entry("var/cache", tarfile.DIRTYPE, mode=0o755), None),
            (_entry("var/cache/.wh..wh..opq"), b""),
            (_entry("var/cache/new"), b"n"),
        ]
    )
    unpack_layer(_write(tmp_path, data), compression="none", dest=dest, what="t")
    wh = (dest / "etc/gone").lstat()
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == os.makedev(0, 0)
    assert os.getxattr(dest / "var/cache", OPAQUE_XATTR) == b"y"
    assert not (dest / "var/cache/.wh..wh..opq").exists()


def test_whiteouts_hide_lower_files_under_a_real_overlay_mount(
    tmp_path: Path, require_root: None
) -> None:
    """Mounted with overlayfs, a whited-out file and an opaque dir's old content are gone."""
    store = LayerStore(tmp_path / "store")
    lower = _tar(
        [
            (_entry("etc/gone"), b"old"),
            (_entry("etc/kept"), b"kept"),
            (_entry("var/cache/old1"), b"1"),
            (_entry("var/cache/old2"), b"2"),
        ]
    )
    upper = _tar(
        [
            (_entry("etc/.wh.gone"), b""),
            (_entry("var/cache", tarfile.DIRTYPE, mode=0o755), None),
            (_entry("var/cache/.wh..wh..opq"), b""),
            (_entry("var/cache/new"), b"n"),
        ]
    )
    l1 = store.create(
        chain_id=sha256_of(lower),
        parent=None,
        expected_diff_id=sha256_of(lower),
        blob=_write(tmp_path, lower, "l1"),
        compression="none",
        what="l1",
    )
    l2 = store.create(
        chain_id=sha256_of(upper),
        parent=l1.chain_id,
        expected_diff_id=sha256_of(upper),
        blob=_write(tmp_path, upper, "l2"),
        compression="none",
        what="l2",
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={l2.diff_dir}:{l1.diff_dir}",
            str(mnt),
        ],
        check=True,
    )
    try:
        assert sorted(os.listdir(mnt / "etc")) == ["kept"]
        assert sorted(os.listdir(mnt / "var/cache")) == ["new"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_layers_and_diff_id(
    tmp_path: Path, dest: Path, compression: str, require_root: None
) -> None:
    """gzip and zstd layers unpack, and the diff ID is the digest of the uncompressed tar."""
    raw = _tar([(_entry("hello.txt"), b"hello" * 1000)])
    packed = (
        gzip.compress(raw) if compression == "gzip" else zstandard.ZstdCompressor().compress(raw)
    )
    diff_id, _, _ = unpack_layer(
        _write(tmp_path, packed), compression=compression, dest=dest, what="t"
    )
    assert diff_id == sha256_of(raw)
    assert (dest / "hello.txt").read_bytes() == b"hello" * 1000


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([(_entry("../escape"), b"x")], "escapes the layer"),
        ([(_entry("a/../../escape"), b"x")], "escapes the layer"),
        (
            [
                (_entry("link", tarfile.SYMTYPE, linkname="/tmp"), None),
                (_entry("link/pwned"), b"x"),
            ],
            "through the symlink",
        ),
        (
            [
                (_entry("d", tarfile.SYMTYPE, linkname="/etc"), None),
                (_entry("h", tarfile.LNKTYPE, linkname="d/passwd"), None),
            ],
            "through the symlink",
        ),
        ([(_entry("h", tarfile.LNKTYPE, linkname="../../etc/passwd"), None)], "escapes the layer"),
        ([(_entry("h", tarfile.LNKTYPE, linkname="missing"), None)], "not in this layer"),
    ],
)
def test_unsafe_archives_are_refused(
    tmp_path: Path,
    dest: Path,
    entries: list[tuple[tarfile.TarInfo, bytes | None]],
    message: str,
    require_root: None,
) -> None:
    """Traversal by `..`, through a symlink, or by a hard link outside the layer is refused."""
    with pytest.raises(LayerUnpackError, match=message):
        unpack_layer(_write(tmp_path, _tar(entries)), compression="none", dest=dest, what="t")
    assert not (tmp_path / "escape").exists()


def test_corrupt_archive_is_a_typed_error(tmp_path: Path, dest: Path) -> None:
    """Garbage in a gzip layer gives LayerUnpackError naming the cause."""
    with pytest.raises(LayerUnpackError, match="corrupt"):
        unpack_layer(
            _write(tmp_path, b"\x1f\x8bnot really gzip"), compression="gzip", dest=dest, what="t"
        )


def test_wrong_diff_id_leaves_no_layer(tmp_path: Path, require_root: None) -> None:
    """A layer whose content does not match the config's diff ID never becomes visible."""
    store = LayerStore(tmp_path / "store")
    raw = _tar([(_entry("f"), b"content")])
    wrong = Digest("sha256:" + "0" * 64)
    with pytest.raises(DigestMismatchError, match="diff ID"):
        store.create(
            chain_id=wrong,
            parent=None,
            expected_diff_id=wrong,
            blob=_write(tmp_path, raw),
            compression="none",
            what="t",
        )
    assert store.chain_ids() == set()
    assert list(store.root.iterdir()) == []
