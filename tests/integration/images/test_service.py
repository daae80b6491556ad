"""Remove, in-use protection, garbage collection, filesystem usage and import of images."""

import subprocess
from pathlib import Path

import pytest

from cri.images import ImageInUseError, ImageService
from cri.images.digest import Digest
from tests.integration.images.conftest import OverlayMount, Runner, registry_config
from tests.support import tree
from tests.support.images import ImageBuilder, ImageSet, skopeo
from tests.support.registry import Registry


def test_remove_keeps_layers_other_images_need(
    run: Runner, images: ImageSet, service: ImageService
) -> None:
    """Removing an image frees its own layers and blobs but not those another image shares."""
    base = run(service.pull(images.busybox.reference))
    derived = run(service.pull(images.nonroot.reference))
    shared = base.chain_ids[0]
    service.remove(images.nonroot.reference)
    assert service.find(images.nonroot.reference) is None
    assert service.layers.chain_ids() == set(base.chain_ids)
    assert shared in service.layers.chain_ids()
    assert derived.id not in service.content.digests()
    service.remove(base.id)
    assert service.list_images() == []
    assert service.layers.chain_ids() == set()
    assert service.content.digests() == set()


def test_removing_an_absent_image_succeeds(service: ImageService) -> None:
    """CRI RemoveImage of an image that is not there is not an error."""
    service.remove("127.0.0.1:1/nothing:here")


def test_image_in_use_is_not_removed(
    run: Runner, images: ImageSet, store_root: Path, plain_registry: Registry
) -> None:
    """An image backing a container is refused removal with a message saying why."""
    in_use: set[Digest] = set()
    svc = ImageService(store_root, registry=registry_config(plain_registry), in_use=lambda: in_use)
    try:
        record = run(svc.pull(images.busybox.reference))
        in_use.add(record.id)
        with pytest.raises(ImageInUseError, match="in use by a container"):
            svc.remove(images.busybox.reference)
        assert svc.find(record.id) is not None
        in_use.clear()
        svc.remove(images.busybox.reference)
        assert svc.find(record.id) is None
    finally:
        run(svc.close())


def test_removing_one_of_two_tags_keeps_the_image(
    run: Runner,
    images: ImageSet,
    service: ImageService,
    plain_registry: Registry,
    image_builder: ImageBuilder,
) -> None:
    """An image with two tags loses only the removed tag."""
    from tests.support.images import busybox

    other = busybox(plain_registry, image_builder, name="busybox-again", tag="v1")
    a = run(service.pull(images.busybox.reference))
    b = run(service.pull(other.reference))
    assert a.id == b.id
    assert set(service.get(a.id).repo_tags) == {images.busybox.reference, other.reference}
    service.remove(other.reference)
    assert service.get(a.id).repo_tags == (images.busybox.reference,)


def test_gc_frees_least_recently_used_unused_images(
    run: Runner, images: ImageSet, store_root: Path, plain_registry: Registry
) -> None:
    """Above the high threshold, GC removes LRU images not in use until under the low one."""
    clock = [1000.0]
    in_use: set[Digest] = set()
    svc = ImageService(
        store_root,
        registry=registry_config(plain_registry),
        in_use=lambda: in_use,
        clock=lambda: clock[0],
    )
    try:
        oldest = run(svc.pull(images.busybox.reference))
        clock[0] += 10
        used = run(svc.pull(images.multilayer.reference))
        clock[0] += 10
        newest = run(svc.pull(images.nonroot.reference))
        in_use.add(used.id)
        # A disk of 100 units: 90 used before GC, each removal frees 5.
        state = {"used": 90}

        def disk() -> tuple[int, int]:
            state["used"] = 90 - 5 * (3 - len(svc.list_images()))
            return state["used"], 100

        result = svc.garbage_collect(high_threshold_pct=88, low_threshold_pct=86, disk_usage=disk)
        assert result.removed == (oldest.id,)
        remaining = {r.id for r in svc.list_images()}
        assert remaining == {used.id, newest.id}
        # Below the high threshold nothing happens.
        assert (
            svc.garbage_collect(
                high_threshold_pct=95, low_threshold_pct=90, disk_usage=disk
            ).removed
            == ()
        )
    finally:
        run(svc.close())


def test_fs_info_counts_blobs_and_layers(
    run: Runner, images: ImageSet, service: ImageService
) -> None:
    """ImageFsInfo's usage grows by at least the image's compressed and unpacked size."""
    empty = service.fs_info()
    record = run(service.pull(images.multilayer.reference))
    full = service.fs_info()
    assert full.used_bytes - empty.used_bytes >= record.size_bytes + record.unpacked_bytes
    assert full.inodes_used > empty.inodes_used
    assert full.mountpoint == service.root


def test_import_oci_layout(
    run: Runner, image_builder: ImageBuilder, service: ImageService, tmp_path: Path
) -> None:
    """An OCI image layout directory imports, named by --name, with umoci's rootfs."""
    layout = image_builder.busybox()
    records = run(service.import_image(layout.layout, name=f"example.com/imported:{layout.tag}"))
    assert [r.repo_tags for r in records] == [(f"example.com/imported:{layout.tag}",)]
    expected = tree.snapshot(tree.umoci_rootfs(layout.layout, layout.tag, tmp_path / "umoci"))
    with OverlayMount(service.lowerdirs(records[0].id), tmp_path / "ovl") as merged:
        actual = tree.snapshot(merged)
    expected.pop(".", None)
    actual.pop(".", None)
    assert tree.diff(expected, actual) == []


def test_import_docker_save_archive(
    run: Runner, image_builder: ImageBuilder, service: ImageService, tmp_path: Path
) -> None:
    """A `docker save`-format archive (written by skopeo) imports with its RepoTags."""
    layout = image_builder.multilayer()
    archive = tmp_path / "saved.tar"
    skopeo(
        image_builder.work_dir,
        "copy",
        layout.skopeo_ref,
        f"docker-archive:{archive}:example.com/saved/multilayer:v1",
    )
    records = run(service.import_image(archive))
    assert records[0].repo_tags == ("example.com/saved/multilayer:v1",)
    expected = tree.snapshot(tree.umoci_rootfs(layout.layout, layout.tag, tmp_path / "umoci"))
    with OverlayMount(service.lowerdirs(records[0].id), tmp_path / "ovl") as merged:
        actual = tree.snapshot(merged)
    expected.pop(".", None)
    actual.pop(".", None)
    assert tree.diff(expected, actual) == []


def test_import_refuses_what_is_not_an_image(
    run: Runner, service: ImageService, tmp_path: Path
) -> None:
    """A directory that is neither a layout nor a docker save archive gives a clear error."""
    from cri.images.errors import ImportError_

    (tmp_path / "junk").mkdir()
    with pytest.raises(ImportError_, match="neither an OCI image layout"):
        run(service.import_image(tmp_path / "junk"))
    assert service.list_images() == []


def test_cli_pull_shows_progress_and_lists(
    images: ImageSet, plain_registry: Registry, tmp_path: Path
) -> None:
    """`kubelet-py images pull` reports progress and `ls`/`inspect`/`rm` see the image."""
    base = [
        "python3",
        "-m",
        "kubelet_py",
        "images",
        "--root",
        str(tmp_path),
        "--plain-http",
        plain_registry.host,
    ]
    pulled = subprocess.run(
        [*base, "pull", images.multilayer.reference], capture_output=True, text=True, timeout=120
    )
    assert pulled.returncode == 0, pulled.stderr
    assert "resolved to" in pulled.stderr and "unpacked" in pulled.stderr
    image_id = pulled.stdout.strip()
    listed = subprocess.run([*base, "ls"], capture_output=True, text=True, timeout=60).stdout
    assert images.multilayer.reference.rsplit(":", 1)[0] in listed and image_id[7:19] in listed
    inspected = subprocess.run(
        [*base, "inspect", image_id], capture_output=True, text=True, timeout=60
    )
    assert '"lowerdirs"' in inspected.stdout
    removed = subprocess.run(
        [*base, "rm", images.multilayer.reference], capture_output=True, text=True, timeout=60
    )
    assert removed.returncode == 0
    missing = subprocess.run(
        [*base, "inspect", image_id], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1 and "not present" in missing.stderr
