"""The guest builder's pure parts: apt source parsing, module order, the initramfs archive."""

import subprocess
from pathlib import Path

import pytest

from tests.support.guest import GuestError, _cpio_newc, debian_mirror, module_closure


def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    """The first non-security URI whose Suites has the codename, from a .sources file."""
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert debian_mirror("bookworm", tmp_path) == "http://mirror.example/debian"


def test_mirror_from_one_line_list(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
    )
    assert debian_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    with pytest.raises(GuestError, match="no Debian mirror for trixie"):
        debian_mirror("trixie", tmp_path)


def test_module_closure_puts_dependencies_first(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/a/virtio.ko:\n"
        "kernel/a/virtio_ring.ko:\n"
        "kernel/b/virtio_blk.ko.xz: kernel/a/virtio.ko kernel/a/virtio_ring.ko\n"
        "kernel/a/virtio_pci.ko: kernel/a/virtio_pci-legacy.ko kernel/a/virtio.ko\n"
        "kernel/a/virtio_pci-legacy.ko: kernel/a/virtio.ko\n"
    )
    order = module_closure(tmp_path, ["virtio_pci", "virtio_blk"])
    assert order == [
        "kernel/a/virtio.ko",
        "kernel/a/virtio_pci-legacy.ko",
        "kernel/a/virtio_pci.ko",
        "kernel/a/virtio_ring.ko",
        "kernel/b/virtio_blk.ko.xz",
    ]
    with pytest.raises(GuestError, match="not in"):
        module_closure(tmp_path, ["ext4"])


def test_cpio_archive_reads_back_with_busybox(tmp_path: Path) -> None:
    """The initramfs writer's newc archive lists and extracts with busybox cpio."""
    archive = _cpio_newc(
        [("bin", 0o040755, b""), ("bin/x", 0o100755, b"abc"), ("i", 0o100644, b"")]
    )
    (tmp_path / "a.cpio").write_bytes(archive)
    listed = subprocess.run(
        ["busybox", "cpio", "-t"], stdin=(tmp_path / "a.cpio").open("rb"),
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert listed == ["bin", "bin/x", "i"]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["busybox", "cpio", "-i", "-d"], stdin=(tmp_path / "a.cpio").open("rb"), cwd=out,
        capture_output=True, check=True,
    )  # fmt: skip
    assert (out / "bin" / "x").read_bytes() == b"abc"
    assert (out / "bin" / "x").stat().st_mode & 0o777 == 0o755
