"""Pulling from a real registry gives exactly the rootfs `umoci unpack` gives, in every format."""

import json
import re
from pathlib import Path

import pytest

from cri.images import (
    AuthenticationError,
    Credentials,
    ImageService,
    RegistryConfig,
    RegistryHost,
    parse_dockerconfigjson,
    resolve_command,
)
from cri.images import mediatypes as mt
from tests.integration.images.conftest import AUTH_PASSWORD, AUTH_USER, OverlayMount, Runner
from tests.support import tree
from tests.support.images import ImageBuilder, ImageSet, PushedImage, busybox, multiarch_tag
from tests.support.registry import Registry

# What a container cannot observe differently and umoci records differently: the
# overlay's root directory itself.
_IGNORE_PATHS = {""}


def _compare_with_umoci(
    service: ImageService, image_id: str, layout: Path, tag: str, tmp_path: Path
) -> None:
    expected_root = tree.umoci_rootfs(layout, tag, tmp_path / "umoci")
    expected = tree.snapshot(expected_root)
    with OverlayMount(service.lowerdirs(image_id), tmp_path / "ovl") as merged:
        actual = tree.snapshot(merged)
    for p in _IGNORE_PATHS:
        expected.pop(p, None)
        actual.pop(p, None)
    differences = tree.diff(expected, actual, a_label="umoci", b_label="ours")
    assert differences == [], "\n".join(differences[:50])


@pytest.mark.parametrize(
    "which",
    ["busybox", "multilayer", "nonroot", "busybox_v2s2", "busybox_zstd", "busybox_uncompressed"],
)
def test_rootfs_matches_umoci_unpack(
    run: Runner, which: str, images: ImageSet, service: ImageService, tmp_path: Path
) -> None:
    """Files, owners, modes, links, devices and xattrs match umoci's unpack file by file."""
    pushed: PushedImage = getattr(images, which)
    record = run(service.pull(pushed.reference))
    assert record.manifest_digest == pushed.digest
    assert record.repo_digests == (f"{pushed.registry_host}/{pushed.name}@{pushed.digest}",)
    # umoci 0.4.7 cannot unpack zstd layers: compare with the gzip original of that image.
    source = images.busybox if which == "busybox_zstd" else pushed
    _compare_with_umoci(service, record.id, source.layout, source.layout_tag, tmp_path)


def test_multiarch_index_pulls_this_platforms_manifest(
    run: Runner, images: ImageSet, service: ImageService, tmp_path: Path
) -> None:
    """An index resolves to linux/amd64, whose rootfs matches that platform's own image."""
    record = run(service.pull(images.multiarch.reference))
    index = images.multiarch.manifest_json()
    amd64 = next(m for m in index["manifests"] if m["platform"]["architecture"] == "amd64")
    assert record.manifest_digest == amd64["digest"]
    assert record.repo_digests == (
        f"{images.multiarch.registry_host}/multiarch@{images.multiarch.digest}",
    )
    assert service.config(record.id).architecture == "amd64"
    _compare_with_umoci(
        service, record.id, images.multiarch.layout, multiarch_tag("amd64", None), tmp_path
    )


def test_pull_by_digest_and_tag_give_one_image(
    run: Runner, images: ImageSet, service: ImageService
) -> None:
    """By tag and by digest are the same image; both names find it."""
    a = run(service.pull(images.busybox.reference))
    b = run(service.pull(images.busybox.by_digest))
    assert a.id == b.id
    assert len(service.list_images()) == 1
    assert service.get(images.busybox.reference).id == a.id
    assert service.get(images.busybox.by_digest).id == a.id
    assert service.get(a.id[7:19]).id == a.id  # short ID prefix, as people type it


def test_image_config_reaches_the_runtime(
    run: Runner, images: ImageSet, service: ImageService
) -> None:
    """USER, WORKDIR, ENTRYPOINT/CMD, ports, volumes, labels and StopSignal come through."""
    record = run(service.pull(images.nonroot.reference))
    cfg = service.config(record.id)
    assert cfg.user == "app" and record.user == "app"
    assert cfg.working_dir == "/home/app"
    assert resolve_command(cfg) == ("/bin/sh", "-c", "id -u")
    assert resolve_command(cfg, args=["echo hi"]) == ("/bin/sh", "-c", "echo hi")
    assert "8080/tcp" in cfg.exposed_ports and "/data" in cfg.volumes
    assert cfg.stop_signal == "SIGINT"
    assert cfg.labels["test.kubelet-py/role"] == "nonroot"


def test_layers_are_shared_between_images(
    run: Runner, images: ImageSet, service: ImageService
) -> None:
    """An image built on busybox reuses busybox's unpacked layer; only new layers are fetched."""
    base = run(service.pull(images.busybox.reference))
    events: list[str] = []
    derived = run(service.pull(images.nonroot.reference, progress=lambda e: events.append(e.kind)))
    assert derived.chain_ids[0] == base.chain_ids[0]
    assert events.count("exists") == 1
    assert events.count("unpacked") == len(derived.chain_ids) - 1
    assert len(service.layers.chain_ids()) == len(set(base.chain_ids) | set(derived.chain_ids))


def test_concurrent_pulls_share_work(run: Runner, images: ImageSet, service: ImageService) -> None:
    """Two simultaneous pulls of one image download and unpack each layer once."""
    import asyncio

    downloads: list[str] = []

    async def both() -> None:
        def watch(e: object) -> None:
            if getattr(e, "kind", "") == "downloaded":
                downloads.append(getattr(e, "digest", ""))

        await asyncio.gather(
            service.pull(images.multilayer.reference, progress=watch),
            service.pull(images.multilayer.reference, progress=watch),
        )

    run(both())
    layers = images.multilayer.manifest_json()["layers"]
    assert sorted(downloads) == sorted(layer["digest"] for layer in layers)
    assert len(service.list_images()) == 1


def test_short_names_resolve_to_docker_hub_through_a_mirror(
    run: Runner, plain_registry: Registry, image_builder: ImageBuilder, tmp_path: Path
) -> None:
    """`busybox` means docker.io/library/busybox:latest, served here by a configured mirror."""
    busybox(plain_registry, image_builder, name="library/busybox", tag="latest")
    config = RegistryConfig(
        hosts={
            "docker.io": RegistryHost(
                mirrors=("http://127.0.0.1:9", plain_registry.url), mirrors_only=True
            )
        }
    )
    svc = ImageService(tmp_path / "store", registry=config)
    try:
        record = run(svc.pull("busybox"))
    finally:
        run(svc.close())
    assert record.repo_tags == ("docker.io/library/busybox:latest",)
    assert svc.get("busybox:latest").id == record.id


def test_basic_auth_over_tls_with_a_custom_ca(
    run: Runner, auth_busybox: str, service: ImageService
) -> None:
    """The TLS registry with htpasswd lets us pull with credentials, trusting its CA."""
    record = run(service.pull(auth_busybox, credentials=Credentials(AUTH_USER, AUTH_PASSWORD)))
    assert record.repo_tags == (auth_busybox,)


def test_dockerconfigjson_credentials(
    run: Runner, auth_busybox: str, auth_registry: Registry, service: ImageService
) -> None:
    """Credentials from an imagePullSecret-style dockerconfigjson work for their host."""
    secret = json.dumps(
        {
            "auths": {
                f"https://{auth_registry.host}": {"username": AUTH_USER, "password": AUTH_PASSWORD}
            }
        }
    )
    creds = parse_dockerconfigjson(secret)[auth_registry.host]
    assert run(service.pull(auth_busybox, credentials=creds)).repo_tags == (auth_busybox,)


@pytest.mark.parametrize("creds", [None, Credentials(AUTH_USER, "wrong")], ids=["none", "wrong"])
def test_auth_failures_name_the_image(
    run: Runner, auth_busybox: str, service: ImageService, creds: Credentials | None
) -> None:
    """No or wrong credentials: AuthenticationError naming the image; nothing is stored."""
    with pytest.raises(AuthenticationError, match=re.escape(auth_busybox.split("/")[0])):
        run(service.pull(auth_busybox, credentials=creds))
    assert service.list_images() == []
    assert service.content.digests() == set()


def test_untrusted_tls_is_refused(run: Runner, auth_busybox: str, store_root: Path) -> None:
    """Without the registry's CA configured, TLS verification fails with a clear error."""
    from cri.images import RegistryUnreachableError

    svc = ImageService(store_root)
    try:
        with pytest.raises(RegistryUnreachableError, match=r"TLS|certificate"):
            run(svc.pull(auth_busybox, credentials=Credentials(AUTH_USER, AUTH_PASSWORD)))
    finally:
        run(svc.close())


def test_pull_records_the_manifest_media_type(
    run: Runner, images: ImageSet, service: ImageService
) -> None:
    """The stored manifest is the registry's bytes (Docker schema2 stays Docker schema2)."""
    record = run(service.pull(images.busybox_v2s2.reference))
    stored = json.loads(service.content.read(record.manifest_digest))
    assert stored["mediaType"] == mt.DOCKER_MANIFEST
