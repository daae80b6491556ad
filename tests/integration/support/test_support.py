"""The image-service test support is trustworthy: real registry, real layers, honest diffs."""

import gzip
import http.client
import io
import json
import os
import socket
import ssl
import stat
import tarfile
from pathlib import Path

import pytest

from tests.support import registry as registry_module
from tests.support.images import (
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    NONROOT_LABELS,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    ImageBuilder,
    ImageSet,
    PushedImage,
    inspect_raw,
    large,
    sha256_digest,
)
from tests.support.registry import Registry, RegistryError
from tests.support.tree import diff, snapshot, umoci_rootfs

MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST])


def get_manifest(registry: Registry, name: str, ref: str) -> tuple[int, dict[str, str], bytes]:
    """GET /v2/<name>/manifests/<ref> with the Accept header a puller sends."""
    return registry.request(
        "GET", f"/v2/{name}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}
    )


def get_blob(registry: Registry, name: str, digest: str) -> bytes:
    """A blob's bytes from the registry, checked against its digest."""
    status, _, body = registry.request("GET", f"/v2/{name}/blobs/{digest}")
    assert status == 200, f"GET blob {digest}: {status}"
    assert sha256_digest(body) == digest
    return body


def layer_members(registry: Registry, image: PushedImage) -> list[list[tarfile.TarInfo]]:
    """The tar members of every layer of `image`, read from the registry."""
    out = []
    for layer in image.manifest_json()["layers"]:
        blob = get_blob(registry, image.name, layer["digest"])
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
            out.append(tar.getmembers())
    return out


def test_plain_registry_serves_pushed_busybox(
    plain_registry: Registry, pushed_images: ImageSet
) -> None:
    """The plain registry serves busybox's manifest by tag and digest, digests agree."""
    image = pushed_images.busybox
    status, headers, body = get_manifest(plain_registry, "busybox", "latest")
    assert status == 200
    assert headers["content-type"] == OCI_MANIFEST
    assert headers["docker-content-digest"] == image.digest == sha256_digest(body)
    assert body == image.manifest
    status, _, by_digest = get_manifest(plain_registry, "busybox", image.digest)
    assert status == 200 and by_digest == body
    manifest = json.loads(body)
    assert [layer["mediaType"] for layer in manifest["layers"]] == [OCI_LAYER_GZIP]
    config = json.loads(get_blob(plain_registry, "busybox", manifest["config"]["digest"]))
    assert config["config"]["Cmd"] == ["sh"]
    assert "Entrypoint" not in config["config"]
    assert any(e.startswith("PATH=") for e in config["config"]["Env"])


def test_busybox_layer_has_binary_applets_and_users(
    plain_registry: Registry, pushed_images: ImageSet
) -> None:
    """busybox's one layer holds /bin/busybox, relative applet links, passwd and group."""
    (members,) = layer_members(plain_registry, pushed_images.busybox)
    by_name = {m.name.removeprefix("./"): m for m in members}
    assert by_name["bin/busybox"].isfile() and by_name["bin/busybox"].mode == 0o755
    for applet in ("sh", "ls", "cat", "echo", "sleep", "id"):
        assert by_name[f"bin/{applet}"].issym() and by_name[f"bin/{applet}"].linkname == "busybox"
    assert by_name["etc/passwd"].isfile() and by_name["etc/group"].isfile()
    assert (by_name["home/app"].uid, by_name["home/app"].gid) == (1000, 1000)


def test_tls_registry_requires_basic_auth(tls_registry: Registry, tls_busybox: PushedImage) -> None:
    """The TLS registry answers 401 + `WWW-Authenticate: Basic` without creds, 200 with."""
    assert tls_registry.url.startswith("https://127.0.0.1:")
    assert tls_registry.ca_path is not None and tls_registry.ca_pem is not None
    for path in ("/v2/", f"/v2/busybox/manifests/{tls_busybox.tag}"):
        status, headers, _ = tls_registry.request("GET", path, auth=False)
        assert status == 401
        assert headers["www-authenticate"].startswith("Basic ")
    status, _, _ = tls_registry.request(
        "GET", "/v2/", auth=False, headers={"Authorization": "Basic dGVzdGVyOndyb25n"}
    )
    assert status == 401  # tester:wrong
    status, headers, body = get_manifest(tls_registry, "busybox", tls_busybox.tag)
    assert status == 200
    assert headers["docker-content-digest"] == tls_busybox.digest == sha256_digest(body)


def test_tls_registry_certificate_is_verified(tls_registry: Registry) -> None:
    """The serving cert verifies for 127.0.0.1 against the test CA, and not without it."""
    context = tls_registry.ssl_context()  # check_hostname on: the IP SAN must match
    conn = http.client.HTTPSConnection("127.0.0.1", tls_registry.port, context=context)
    try:
        conn.request("GET", "/v2/")
        assert conn.getresponse().status == 401
    finally:
        conn.close()
    untrusting = http.client.HTTPSConnection(
        "127.0.0.1", tls_registry.port, context=ssl.create_default_context(), timeout=10
    )
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusting.request("GET", "/v2/")
    finally:
        untrusting.close()


def test_multilayer_layers_hold_whiteouts_opaque_dir_and_hard_links(
    plain_registry: Registry, pushed_images: ImageSet
) -> None:
    """The multilayer blobs really contain a `.wh.` entry, a `.wh..wh..opq` and hard links."""
    layers = layer_members(plain_registry, pushed_images.multilayer)
    assert len(layers) == 4
    names = [[m.name for m in members] for members in layers]
    assert "etc/.wh.removeme" in names[2]
    assert "srv/.wh.gone-dir" in names[2]
    assert "srv/replaced/.wh..wh..opq" in names[3]
    hard = {m.name: m.linkname for m in layers[2] if m.islnk()}
    assert hard == {"srv/links/hard-b": "srv/hard-a", "srv/links/hard-c": "srv/hard-a"}
    # no layer is a truncated tar (umoci 0.4.7's insert bug): each ends in zero blocks
    for layer in pushed_images.multilayer.manifest_json()["layers"]:
        data = gzip.decompress(get_blob(plain_registry, "multilayer", layer["digest"]))
        assert data.endswith(b"\0" * 1024)


def test_multilayer_layer_holds_special_files(
    plain_registry: Registry, pushed_images: ImageSet
) -> None:
    """Layer 3 carries setuid, owner 1000, FIFO, char device 1:3, xattr, non-ASCII name."""
    members = {m.name: m for m in layer_members(plain_registry, pushed_images.multilayer)[2]}
    assert members["srv/setuid"].mode == 0o4755
    private = members["srv/private"]
    assert (private.mode, private.uid, private.gid) == (0o600, 1000, 1000)
    assert members["srv/fifo"].isfifo()
    null = members["srv/null"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)
    assert members["srv/xattr-file"].pax_headers["SCHILY.xattr.user.test"] == "hello"
    assert members["srv/dir-link"].issym() and members["srv/dir-link"].linkname == "target-dir"
    assert members["srv/empty"].isdir()
    assert "srv/grüße-ñ.txt" in members


def test_multiarch_resolves_to_an_index(
    plain_registry: Registry, pushed_images: ImageSet, image_builder: ImageBuilder
) -> None:
    """The multiarch reference is an OCI index of >= 2 platforms, each manifest served."""
    image = pushed_images.multiarch
    raw = inspect_raw(plain_registry, image.reference, image_builder.work_dir)
    index = json.loads(raw)
    assert index["mediaType"] == OCI_INDEX
    platforms = {
        (p["platform"]["os"], p["platform"]["architecture"], p["platform"].get("variant"))
        for p in index["manifests"]
    }
    assert len(platforms) >= 2
    assert {("linux", "amd64", None), ("linux", "arm64", None)} <= platforms
    status, headers, body = get_manifest(plain_registry, "multiarch", "latest")
    assert status == 200 and headers["content-type"] == OCI_INDEX and body == raw
    for child in index["manifests"]:
        status, headers, _ = get_manifest(plain_registry, "multiarch", child["digest"])
        assert status == 200 and headers["content-type"] == OCI_MANIFEST


def test_nonroot_config(plain_registry: Registry, pushed_images: ImageSet) -> None:
    """nonroot's config has the user, workdir, entrypoint, cmd, port, volume, labels, signal."""
    manifest = pushed_images.nonroot.manifest_json()
    config = json.loads(get_blob(plain_registry, "nonroot", manifest["config"]["digest"]))
    c = config["config"]
    assert c["User"] == "app"
    assert c["WorkingDir"] == "/home/app"
    assert c["Entrypoint"] == ["/bin/sh", "-c"]
    assert c["Cmd"] == ["id -u"]
    assert c["ExposedPorts"] == {"8080/tcp": {}}
    assert c["Volumes"] == {"/data": {}}
    assert c["Labels"] == NONROOT_LABELS
    assert c["StopSignal"] == "SIGINT"


def test_format_variants(plain_registry: Registry, pushed_images: ImageSet) -> None:
    """v2s2, zstd and uncompressed variants are served with the right types and bytes."""
    v2s2 = pushed_images.busybox_v2s2
    assert v2s2.media_type == DOCKER_MANIFEST
    assert v2s2.layer_media_types == [DOCKER_LAYER_GZIP]
    status, headers, _ = get_manifest(plain_registry, v2s2.name, v2s2.tag)
    assert status == 200 and headers["content-type"] == DOCKER_MANIFEST

    zstd = pushed_images.busybox_zstd
    assert zstd.layer_media_types == [OCI_LAYER_ZSTD]
    blob = get_blob(plain_registry, zstd.name, zstd.manifest_json()["layers"][0]["digest"])
    assert blob[:4] == b"\x28\xb5\x2f\xfd"

    plain = pushed_images.busybox_uncompressed
    assert plain.layer_media_types == [OCI_LAYER_TAR]
    blob = get_blob(plain_registry, plain.name, plain.manifest_json()["layers"][0]["digest"])
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        assert "bin/busybox" in tar.getnames()
    # all three carry busybox's content: the uncompressed layer is busybox's diff_id
    base_config = pushed_images.busybox.manifest_json()["config"]["digest"]
    base = json.loads(get_blob(plain_registry, "busybox", base_config))
    assert sha256_digest(blob) == base["rootfs"]["diff_ids"][0]


def test_large_image(plain_registry: Registry, image_builder: ImageBuilder) -> None:
    """large() pushes busybox plus N layers of random files of about the asked size."""
    image = large(plain_registry, image_builder, 3, layers=2)
    sizes = [layer["size"] for layer in image.manifest_json()["layers"]]
    assert len(sizes) == 3
    assert 3 * 1024 * 1024 <= sum(sizes[1:]) < 4 * 1024 * 1024


def test_umoci_rootfs_of_multilayer(tmp_path: Path, image_builder: ImageBuilder) -> None:
    """umoci applies the layers: whiteouts and opaque dir honoured, specials kept."""
    image = image_builder.multilayer()
    tree = snapshot(umoci_rootfs(image.layout, image.tag, tmp_path / "bundle"))
    assert "etc/removeme" not in tree and "srv/gone-dir" not in tree
    assert "srv/replaced/old1" not in tree and "srv/replaced/sub" not in tree
    assert tree["srv/replaced/new"].kind == "reg" and "srv/replaced/sub2/n2" in tree
    assert tree["srv/kept/file"].kind == "reg"
    assert tree["srv/hard-a"].hardlinks == ("srv/links/hard-b", "srv/links/hard-c")
    assert tree["srv/null"].kind == "chr" and tree["srv/null"].rdev == (1, 3)
    assert tree["srv/fifo"].kind == "fifo"
    assert tree["srv/setuid"].mode == 0o4755
    assert (tree["srv/private"].uid, tree["srv/private"].gid, tree["srv/private"].mode) == (
        1000,
        1000,
        0o600,
    )
    assert dict(tree["srv/xattr-file"].xattrs) == {"user.test": b"hello"}
    assert tree["srv/dir-link"].target == "target-dir"
    assert tree["bin/sh"].kind == "symlink" and tree["bin/sh"].target == "busybox"


def test_uncompressed_variant_unpacks_to_the_same_tree(
    tmp_path: Path, image_builder: ImageBuilder
) -> None:
    """The skopeo-made uncompressed layout unpacks to exactly busybox's tree."""
    base, plain = image_builder.busybox(), image_builder.busybox_uncompressed()
    a = snapshot(umoci_rootfs(base.layout, base.tag, tmp_path / "a"))
    b = snapshot(umoci_rootfs(plain.layout, plain.tag, tmp_path / "b"))
    assert diff(a, b) == []


def test_snapshot_and_diff_detect_mode_change_and_missing_file(tmp_path: Path) -> None:
    """diff() reports a changed mode and a missing file, and nothing for identical trees."""
    root = tmp_path / "tree"
    (root / "dir").mkdir(parents=True)
    (root / "dir/file").write_text("x")
    (root / "gone").write_text("y")
    (root / "link").symlink_to("dir")
    os.link(root / "dir/file", root / "hard")
    before = snapshot(root)
    assert diff(before, snapshot(root)) == []
    assert before["link"].kind == "symlink" and "link/file" not in before  # not followed
    assert before["hard"].hardlinks == ("dir/file",)
    assert before["dir/file"].sha256 is not None and before["dir/file"].size == 1

    (root / "dir/file").chmod(0o4755)
    (root / "gone").unlink()
    changes = diff(before, snapshot(root), a_label="before", b_label="after")
    assert any(c.startswith("dir/file: mode before='0o644' after='0o4755'") for c in changes)
    assert any(c.startswith("hard: mode") for c in changes)
    assert any(c.startswith("gone: only in before") for c in changes)
    assert len(changes) == 3, changes


def test_snapshot_records_devices_fifos_and_xattrs(tmp_path: Path) -> None:
    """snapshot() records rdev, FIFOs and user xattrs, and diff() sees content changes."""
    root = tmp_path / "tree"
    root.mkdir()
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(root / "fifo")
    (root / "f").write_text("a")
    os.setxattr(root / "f", "user.k", b"v")
    tree = snapshot(root)
    assert tree["null"].rdev == (1, 3) and tree["fifo"].kind == "fifo"
    assert tree["f"].xattrs == (("user.k", b"v"),)
    (root / "f").write_text("b")
    os.setxattr(root / "f", "user.k", b"w")
    changes = diff(tree, snapshot(root))
    assert any(c.startswith("f: sha256") for c in changes)
    assert any(c.startswith("f: xattrs") for c in changes)
    assert diff(tree, snapshot(root), ignore={"sha256", "xattrs"}) == []


def test_registry_stops_its_process(require_root: None, tmp_path: Path) -> None:
    """stop() ends the registry we started (by PID) and reaps it; the port closes."""
    registry = Registry(tmp_path / "reg").start()
    pid = registry.pid
    assert pid is not None
    assert registry.request("GET", "/v2/")[0] == 200
    registry.stop()
    assert registry.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(OSError):
        registry.request("GET", "/v2/")
    registry.stop()  # idempotent


def test_registry_retries_when_its_port_was_taken(
    require_root: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the picked port is taken before the registry binds it, start() tries another."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = iter([taken])
        real = registry_module.free_loopback_port
        monkeypatch.setattr(registry_module, "free_loopback_port", lambda: next(ports, real()))
        with Registry(tmp_path / "reg") as registry:
            assert registry.port != taken
            assert registry.request("GET", "/v2/")[0] == 200
        assert "address already in use" in registry.log_path.read_text()


def test_registry_failure_shows_the_log(
    require_root: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry that cannot start fails loudly with the tail of its log."""
    registry = Registry(tmp_path / "bad", start_timeout_s=10)

    def broken_config(*_: object) -> None:
        registry.config_path.write_text("version: 0.1\nstorage: {nonexistentdriver: {}}\n")

    monkeypatch.setattr(registry, "_write_config", broken_config)
    with pytest.raises(RegistryError, match="exited") as err:
        registry.start()
    assert "nonexistentdriver" in str(err.value)
    assert registry.pid is None
