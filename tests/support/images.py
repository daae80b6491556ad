"""Test images made by independent tools (umoci, skopeo, GNU tar), pushed to a test Registry.

Nothing here writes image bytes with our own code: umoci builds the images into an OCI
layout (from busybox-static's /bin/busybox and small file trees), skopeo converts and
pushes them, and GNU tar makes the one layer umoci 0.4.7 cannot make correctly (an
opaque directory, see `ImageBuilder.multilayer`). The only JSON this module writes itself
is the OCI image index of the multi-arch image, because umoci cannot make indexes.

Two steps, so a pytest session builds once and pushes wherever it likes:

    builder = ImageBuilder(tmp_dir)            # builds lazily, caches per instance
    with Registry(reg_dir) as registry:
        image = busybox(registry, builder)     # -> PushedImage
        everything = push_all(registry, builder)

Builds are also resumable on disk: a layout tag exists only once its image is complete
(images are built under a temporary tag and renamed with `umoci tag`), so a builder
pointed at a kept directory reuses what an earlier run made.

Tool facts found while writing this (umoci 0.4.7, skopeo 1.9.3, distribution 2.8.2):

- `umoci repack` turns deleted paths into `.wh.<name>` entries, but a directory deleted
  and recreated becomes one `.wh.` per old child, never an opaque marker.
- `umoci insert --opaque` does emit `.wh..wh..opq`, but 0.4.7 never closes its tar writer
  (umoci issue #436, fixed after 0.4.7): the layer has no end-of-archive blocks and GNU
  tar and Python's tarfile reject it. So the opaque layer is made by GNU tar from a
  staging tree and appended verbatim with `umoci raw add-layer`.
- umoci keeps FIFOs, character devices (as root), setuid bits, owners, hard links and
  `user.*` xattrs (as PAX `SCHILY.xattr.*` records).
- skopeo 1.9.3 does not recompress gzip layers to zstd (`--dest-compress-format zstd`
  alone is ignored for an already-compressed source), so zstd and uncompressed images are
  made from a `dir:` copy with `--dest-decompress`, then written into separate OCI layouts
  and pushed with `--preserve-digests` (which also stops skopeo from substituting blobs it
  remembers in its blob-info cache).
"""

import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.registry import Registry

BUSYBOX_BINARY = Path("/bin/busybox")
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "sleep", "id")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
)
GROUP = "root:x:0:\nnobody:x:65534:\napp:x:1000:\n"

NONROOT_LABELS = {"org.opencontainers.image.title": "nonroot", "test.kubelet-py/role": "nonroot"}

# (architecture, variant) of the multi-arch image's manifests.
MULTIARCH_PLATFORMS: tuple[tuple[str, str | None], ...] = (
    ("amd64", None),
    ("arm64", None),
    ("arm", "v7"),
)


def multiarch_tag(arch: str, variant: str | None = None) -> str:
    """The layout tag of one platform's image in the multi-arch layout (e.g. `armv7`)."""
    return f"{arch}{variant or ''}"


class ImageBuildError(RuntimeError):
    """A tool failed; the message has its command line and output."""


def run_tool(argv: Sequence[str], *, env: dict[str, str] | None = None) -> bytes:
    """Run a tool, return its stdout; raise ImageBuildError with stderr on failure."""
    proc = subprocess.run(list(argv), capture_output=True, env=env, check=False)
    if proc.returncode != 0:
        raise ImageBuildError(
            f"{' '.join(argv)} exited {proc.returncode}:\n"
            f"{proc.stderr.decode(errors='replace')[-3000:]}"
            f"{proc.stdout.decode(errors='replace')[-1000:]}"
        )
    return proc.stdout


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


# -- what the helpers return ------------------------------------------------------------


@dataclass(frozen=True)
class LayoutImage:
    """An image (or index) under `tag` in the OCI layout at `layout`."""

    layout: Path
    tag: str
    digest: str  # of the manifest or index the tag points at
    media_type: str

    @property
    def image_ref(self) -> str:
        """`<layout>:<tag>`, what `umoci --image` takes."""
        return f"{self.layout}:{self.tag}"

    @property
    def skopeo_ref(self) -> str:
        """`oci:<layout>:<tag>`."""
        return f"oci:{self.layout}:{self.tag}"

    def blob_path(self, digest: str) -> Path:
        algo, _, hexdigest = digest.partition(":")
        return self.layout / "blobs" / algo / hexdigest

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def manifest(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.read_blob(self.digest))
        return doc


@dataclass(frozen=True)
class PushedImage:
    """What a helper pushed: where to pull it from and where its bytes came from."""

    name: str  # repository, e.g. "busybox"
    tag: str
    reference: str  # "127.0.0.1:PORT/name:tag"
    digest: str  # sha256 of the manifest bytes the registry serves (`skopeo inspect --raw`)
    media_type: str  # of that manifest: OCI manifest, OCI index or Docker schema2
    manifest: bytes  # those bytes
    layout: Path  # OCI layout holding the same image, for `umoci unpack`
    layout_tag: str  # its tag there (for an index: see `multiarch_tag` to unpack)
    registry_host: str  # "127.0.0.1:PORT"

    @property
    def by_digest(self) -> str:
        """`127.0.0.1:PORT/name@sha256:...`."""
        return f"{self.registry_host}/{self.name}@{self.digest}"

    def manifest_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.manifest)
        return doc

    @property
    def layer_media_types(self) -> list[str]:
        return [layer["mediaType"] for layer in self.manifest_json().get("layers", [])]


@dataclass(frozen=True)
class ImageSet:
    """Every standard test image, pushed to one registry (see `push_all`)."""

    busybox: PushedImage
    multilayer: PushedImage
    nonroot: PushedImage
    multiarch: PushedImage
    busybox_v2s2: PushedImage
    busybox_zstd: PushedImage
    busybox_uncompressed: PushedImage
    timings: dict[str, float] = field(default_factory=dict)


# -- skopeo -----------------------------------------------------------------------------


def skopeo_env(work_dir: Path) -> dict[str, str]:
    """Environment for skopeo: no proxies, no user auth file, an empty registries.conf."""
    conf = work_dir / "registries.conf"
    if not conf.exists():
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text("")
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    }
    env["REGISTRY_AUTH_FILE"] = str(work_dir / "auth.json")
    env["CONTAINERS_REGISTRIES_CONF"] = str(conf)
    return env


def skopeo_global_args(work_dir: Path) -> list[str]:
    """Our own accept-anything policy and an empty registries.d: nothing from /etc."""
    policy = work_dir / "policy.json"
    registries_d = work_dir / "registries.d"
    tmp = work_dir / "skopeo-tmp"
    if not policy.exists():
        policy.parent.mkdir(parents=True, exist_ok=True)
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    registries_d.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    return ["--policy", str(policy), "--registries.d", str(registries_d), "--tmpdir", str(tmp)]


def dest_args(registry: Registry) -> list[str]:
    """`skopeo copy` flags to push to `registry` (plain HTTP, or TLS with CA + creds)."""
    if not registry.tls:
        return ["--dest-tls-verify=false"]
    return [
        "--dest-tls-verify=true",
        f"--dest-cert-dir={registry.cert_dir}",
        f"--dest-creds={registry.username}:{registry.password}",
    ]


def src_args(registry: Registry) -> list[str]:
    """`skopeo inspect` flags to read from `registry`."""
    if not registry.tls:
        return ["--tls-verify=false"]
    return [
        "--tls-verify=true",
        f"--cert-dir={registry.cert_dir}",
        f"--creds={registry.username}:{registry.password}",
    ]


def skopeo(work_dir: Path, *args: str) -> bytes:
    """Run `skopeo <global flags> args...` with the hermetic environment above."""
    return run_tool(["skopeo", *skopeo_global_args(work_dir), *args], env=skopeo_env(work_dir))


def inspect_raw(registry: Registry, reference: str, work_dir: Path) -> bytes:
    """The manifest bytes the registry serves for `reference` (`skopeo inspect --raw`)."""
    return skopeo(work_dir, "inspect", "--raw", *src_args(registry), f"docker://{reference}")


# -- building ---------------------------------------------------------------------------


def write_busybox_tree(rootfs: Path) -> None:
    """The busybox image's files: /bin/busybox + relative applet symlinks, passwd, group."""
    for d in ("bin", "etc", "dev", "proc", "sys", "root", "tmp", "home/app"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    (rootfs / "root").chmod(0o700)
    (rootfs / "tmp").chmod(0o1777)
    os.chown(rootfs / "home/app", 1000, 1000)
    shutil.copyfile(BUSYBOX_BINARY, rootfs / "bin/busybox")
    (rootfs / "bin/busybox").chmod(0o755)
    for applet in BUSYBOX_APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc/passwd").write_text(PASSWD)
    (rootfs / "etc/group").write_text(GROUP)
    for path in (rootfs / "etc/passwd", rootfs / "etc/group"):
        path.chmod(0o644)


class ImageBuilder:
    """Builds the test images into OCI layouts under `work_dir`, once per instance.

    Layouts: `oci/` (umoci: busybox, multilayer, nonroot, large-*), `oci-multiarch/`
    (umoci per platform + our index), `oci-uncompressed/` and `oci-zstd/` (skopeo), and
    `dir-v2s2/` (skopeo `dir:` copy in Docker schema2 form).
    """

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.layout = work_dir / "oci"
        self.multiarch_layout = work_dir / "oci-multiarch"
        self.bundles = work_dir / "bundles"
        self.timings: dict[str, float] = {}
        self._cache: dict[str, LayoutImage] = {}

    # -- layout plumbing -------------------------------------------------------------

    @staticmethod
    def tags(layout: Path) -> dict[str, tuple[str, str]]:
        """tag -> (digest, media type), read from the layout's index.json."""
        index_path = layout / "index.json"
        if not index_path.exists():
            return {}
        index = json.loads(index_path.read_text())
        out = {}
        for desc in index.get("manifests") or []:
            tag = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")
            if tag:
                out[tag] = (desc["digest"], desc["mediaType"])
        return out

    def _init_layout(self, layout: Path) -> None:
        if not (layout / "index.json").exists():
            if layout.exists():
                shutil.rmtree(layout)
            run_tool(["umoci", "init", "--layout", str(layout)])

    def _image(self, layout: Path, tag: str) -> LayoutImage | None:
        found = self.tags(layout).get(tag)
        if found is None:
            return None
        return LayoutImage(layout=layout, tag=tag, digest=found[0], media_type=found[1])

    def _start_building(self, layout: Path, tag: str, base: str | None) -> str:
        """A temporary tag to build `tag` under: new and empty (base None) or a copy of
        tag `base`. A stale one from a killed run is dropped first."""
        building = f"building-{tag}"
        if building in self.tags(layout):
            run_tool(["umoci", "rm", "--image", f"{layout}:{building}"])
        if base is None:
            run_tool(["umoci", "new", "--image", f"{layout}:{building}"])
        else:
            run_tool(["umoci", "tag", "--image", f"{layout}:{base}", building])
        return building

    def _finish(self, layout: Path, building: str, tag: str) -> LayoutImage:
        """Rename the temporary tag `building` to `tag`: only complete images get a tag."""
        run_tool(["umoci", "tag", "--image", f"{layout}:{building}", tag])
        run_tool(["umoci", "rm", "--image", f"{layout}:{building}"])
        image = self._image(layout, tag)
        assert image is not None
        return image

    def _fresh_bundle(self, name: str) -> Path:
        bundle = self.bundles / name
        if bundle.exists():
            shutil.rmtree(bundle)
        bundle.parent.mkdir(parents=True, exist_ok=True)
        return bundle

    def _cached(self, key: str, build: Callable[[], LayoutImage]) -> LayoutImage:
        if key in self._cache:
            return self._cache[key]
        start = time.monotonic()
        image = build()
        self.timings[key] = time.monotonic() - start
        self._cache[key] = image
        return image

    # -- images ----------------------------------------------------------------------

    def busybox(self) -> LayoutImage:
        """One layer: /bin/busybox with applet symlinks, /etc/passwd+group (root, nobody,
        app 1000:1000), /root 0700, /tmp 1777, /home/app owned by app. Config: no
        entrypoint, cmd ["sh"], env PATH."""
        return self._cached("busybox", self._build_busybox)

    def _build_busybox(self) -> LayoutImage:
        self._init_layout(self.layout)
        if (done := self._image(self.layout, "busybox")) is not None:
            return done
        building = self._start_building(self.layout, "busybox", None)
        bundle = self._fresh_bundle("busybox")
        run_tool(["umoci", "unpack", "--image", f"{self.layout}:{building}", str(bundle)])
        write_busybox_tree(bundle / "rootfs")
        run_tool(["umoci", "repack", "--image", f"{self.layout}:{building}", str(bundle)])
        run_tool(
            [
                "umoci", "config", "--image", f"{self.layout}:{building}",
                "--config.cmd", "sh", "--config.env", PATH_ENV,
            ]
        )  # fmt: skip
        shutil.rmtree(bundle)
        return self._finish(self.layout, building, "busybox")

    def multilayer(self) -> LayoutImage:
        """busybox + three layers exercising what layer application must get right.

        Layer 1: busybox (see `busybox`).
        Layer 2 (umoci repack): lower content to be changed later: /etc/removeme,
          /srv/gone-dir/x, /srv/replaced/{old1,sub/old2}, /srv/kept/file.
        Layer 3 (umoci repack): `etc/.wh.removeme` (file deleted), `srv/.wh.gone-dir`
          (directory deleted); /srv/hard-a + /srv/links/hard-b + /srv/links/hard-c (one
          inode, three names: tar hard-link entries); /srv/dir-link -> target-dir (symlink
          to a directory) and /srv/target-dir/t; /srv/setuid (4755); /srv/private (0600,
          1000:1000); /srv/fifo (FIFO); /srv/null (char device 1:3); /srv/xattr-file
          (`user.test=hello`); /srv/empty/ (empty dir); /srv/grüße-ñ.txt (non-ASCII name).
        Layer 4 (GNU tar, appended with `umoci raw add-layer`): `srv/replaced/` with
          `srv/replaced/.wh..wh..opq` (opaque: old1 and sub/ vanish) and new content
          /srv/replaced/new, /srv/replaced/sub2/n2; PAX headers.

        Resulting tree below /srv: empty/, dir-link, fifo, grüße-ñ.txt, hard-a, kept/file,
        links/{hard-b,hard-c}, null, private, replaced/{new,sub2/n2}, setuid, target-dir/t,
        xattr-file; /etc/removeme is gone.
        """
        return self._cached("multilayer", self._build_multilayer)

    def _build_multilayer(self) -> LayoutImage:
        base = self.busybox()
        if (done := self._image(self.layout, "multilayer")) is not None:
            return done
        building = self._start_building(self.layout, "multilayer", base.tag)
        ref = f"{self.layout}:{building}"
        bundle = self._fresh_bundle("multilayer")
        run_tool(["umoci", "unpack", "--image", ref, str(bundle)])
        rootfs = bundle / "rootfs"
        # Layer 2: content the next layers delete or replace.
        srv = rootfs / "srv"
        (srv / "replaced/sub").mkdir(parents=True)
        (srv / "replaced/old1").write_text("old1\n")
        (srv / "replaced/sub/old2").write_text("old2\n")
        (srv / "gone-dir").mkdir()
        (srv / "gone-dir/x").write_text("x\n")
        (srv / "kept").mkdir()
        (srv / "kept/file").write_text("kept\n")
        (rootfs / "etc/removeme").write_text("remove me\n")
        run_tool(["umoci", "repack", "--refresh-bundle", "--image", ref, str(bundle)])
        # Layer 3: deletions (whiteouts) and every special kind of entry.
        (rootfs / "etc/removeme").unlink()
        shutil.rmtree(srv / "gone-dir")
        (srv / "hard-a").write_text("three names, one inode\n")
        (srv / "links").mkdir()
        os.link(srv / "hard-a", srv / "links/hard-b")
        os.link(srv / "hard-a", srv / "links/hard-c")
        (srv / "target-dir").mkdir()
        (srv / "target-dir/t").write_text("through the link\n")
        (srv / "dir-link").symlink_to("target-dir")
        (srv / "setuid").write_text("#!/bin/sh\necho setuid\n")
        (srv / "setuid").chmod(0o4755)
        (srv / "private").write_text("secret\n")
        (srv / "private").chmod(0o600)
        os.chown(srv / "private", 1000, 1000)
        os.mkfifo(srv / "fifo", 0o644)
        os.mknod(srv / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        (srv / "null").chmod(0o666)
        (srv / "xattr-file").write_text("has an xattr\n")
        os.setxattr(srv / "xattr-file", "user.test", b"hello")
        (srv / "empty").mkdir()
        (srv / "grüße-ñ.txt").write_text("non-ASCII name\n")
        run_tool(["umoci", "repack", "--refresh-bundle", "--image", ref, str(bundle)])
        shutil.rmtree(bundle)
        # Layer 4: an opaque directory, made by GNU tar (see the module docstring).
        stage = self._fresh_bundle("multilayer-opaque")
        replaced = stage / "srv/replaced"
        (replaced / "sub2").mkdir(parents=True)
        (replaced / "new").write_text("new\n")
        (replaced / "sub2/n2").write_text("n2\n")
        marker = replaced / ".wh..wh..opq"
        marker.write_bytes(b"")
        marker.chmod(0)
        layer_tar = self.work_dir / "multilayer-opaque.tar"
        run_tool(
            [
                "tar", "--create", "--file", str(layer_tar), "--format=pax",
                "--pax-option=delete=atime,delete=ctime", "--sort=name", "--numeric-owner",
                "--owner=0", "--group=0", "-C", str(stage),
                "--no-recursion", "srv", "--recursion", "srv/replaced",
            ]
        )  # fmt: skip
        run_tool(["umoci", "raw", "add-layer", "--image", ref, str(layer_tar)])
        layer_tar.unlink()
        shutil.rmtree(stage)
        return self._finish(self.layout, building, "multilayer")

    def nonroot(self) -> LayoutImage:
        """busybox's layer; config: user `app` (1000), workdir /home/app, entrypoint
        ["/bin/sh", "-c"], cmd ["id -u"], port 8080/tcp, volume /data, labels
        (`NONROOT_LABELS`), stop signal SIGINT, env PATH."""
        return self._cached("nonroot", self._build_nonroot)

    def _build_nonroot(self) -> LayoutImage:
        base = self.busybox()
        if (done := self._image(self.layout, "nonroot")) is not None:
            return done
        building = self._start_building(self.layout, "nonroot", base.tag)
        argv = [
            "umoci", "config", "--image", f"{self.layout}:{building}",
            "--config.user", "app", "--config.workingdir", "/home/app",
            "--config.entrypoint", "/bin/sh", "--config.entrypoint=-c",
            "--config.cmd", "id -u", "--config.exposedports", "8080/tcp",
            "--config.volume", "/data", "--config.stopsignal", "SIGINT",
        ]  # fmt: skip
        for key, value in NONROOT_LABELS.items():
            argv += ["--config.label", f"{key}={value}"]
        run_tool(argv)
        return self._finish(self.layout, building, "nonroot")

    def grpc_health(self, binary: Path) -> LayoutImage:
        """busybox plus /bin/grpc-health (tests/support/grpchealth, built by
        tests/support/gobuild.py): a gRPC health server; entrypoint /bin/grpc-health."""
        return self._cached("grpc-health", lambda: self._build_grpc_health(binary))

    def _build_grpc_health(self, binary: Path) -> LayoutImage:
        base = self.busybox()
        if (done := self._image(self.layout, "grpc-health")) is not None:
            return done
        building = self._start_building(self.layout, "grpc-health", base.tag)
        stage = self._fresh_bundle("grpc-health-stage")
        (stage / "bin").mkdir(parents=True)
        shutil.copyfile(binary, stage / "bin" / "grpc-health")
        (stage / "bin" / "grpc-health").chmod(0o755)
        ref = f"{self.layout}:{building}"
        # GNU tar + `umoci raw add-layer`: umoci 0.4.7's insert leaves the tar unterminated
        layer_tar = self.work_dir / "grpc-health.tar"
        run_tool(
            [
                "tar", "--create", "--file", str(layer_tar), "--format=pax",
                "--numeric-owner", "--owner=0", "--group=0", "-C", str(stage), "bin",
            ]
        )  # fmt: skip
        run_tool(["umoci", "raw", "add-layer", "--image", ref, str(layer_tar)])
        layer_tar.unlink()
        run_tool(["umoci", "config", "--image", ref, "--config.entrypoint", "/bin/grpc-health"])
        shutil.rmtree(stage)
        return self._finish(self.layout, building, "grpc-health")

    def multiarch(self) -> LayoutImage:
        """An OCI index (tag `multiarch` in `oci-multiarch/`) over one manifest per
        `MULTIARCH_PLATFORMS` entry: the busybox layer (shared) plus a layer with
        /etc/arch naming the platform; config architecture/os set by umoci. The arm
        variant (v7) is only in the index: umoci 0.4.7 cannot set a config variant.
        umoci cannot unpack the index tag ("tag is ambiguous"): unpack a platform's own
        tag in the same layout, `multiarch_tag(arch, variant)` (amd64, arm64, armv7)."""
        return self._cached("multiarch", self._build_multiarch)

    def _build_multiarch(self) -> LayoutImage:
        layout = self.multiarch_layout
        self._init_layout(layout)
        if (done := self._image(layout, "multiarch")) is not None:
            return done
        if "base" not in self.tags(layout):
            building = self._start_building(layout, "base", None)
            bundle = self._fresh_bundle("multiarch-base")
            run_tool(["umoci", "unpack", "--image", f"{layout}:{building}", str(bundle)])
            write_busybox_tree(bundle / "rootfs")
            run_tool(["umoci", "repack", "--image", f"{layout}:{building}", str(bundle)])
            run_tool(["umoci", "config", "--image", f"{layout}:{building}",
                      "--config.cmd", "sh", "--config.env", PATH_ENV])  # fmt: skip
            shutil.rmtree(bundle)
            self._finish(layout, building, "base")
        entries = []
        for arch, variant in MULTIARCH_PLATFORMS:
            tag = multiarch_tag(arch, variant)
            if tag not in self.tags(layout):
                building = self._start_building(layout, tag, "base")
                bundle = self._fresh_bundle(f"multiarch-{tag}")
                run_tool(["umoci", "unpack", "--image", f"{layout}:{building}", str(bundle)])
                platform_name = f"linux/{arch}" + (f"/{variant}" if variant else "")
                (bundle / "rootfs/etc/arch").write_text(platform_name + "\n")
                run_tool(["umoci", "repack", "--image", f"{layout}:{building}", str(bundle)])
                run_tool(["umoci", "config", "--image", f"{layout}:{building}",
                          "--architecture", arch, "--os", "linux"])  # fmt: skip
                shutil.rmtree(bundle)
                self._finish(layout, building, tag)
            digest, media_type = self.tags(layout)[tag]
            platform = {"architecture": arch, "os": "linux"}
            if variant:
                platform["variant"] = variant
            size = len(self._blob(layout, digest))
            entries.append(
                {"mediaType": media_type, "digest": digest, "size": size, "platform": platform}
            )
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        data = json.dumps(index, separators=(",", ":")).encode()
        digest = sha256_digest(data)
        blob = layout / "blobs/sha256" / digest.removeprefix("sha256:")
        blob.write_bytes(data)
        top = json.loads((layout / "index.json").read_text())
        top["manifests"] = [
            *(top.get("manifests") or []),
            {
                "mediaType": OCI_INDEX,
                "digest": digest,
                "size": len(data),
                "annotations": {"org.opencontainers.image.ref.name": "multiarch"},
            },
        ]
        tmp = layout / "index.json.tmp"
        tmp.write_text(json.dumps(top))
        tmp.replace(layout / "index.json")
        return LayoutImage(layout=layout, tag="multiarch", digest=digest, media_type=OCI_INDEX)

    def _decompressed_dir(self) -> Path:
        """busybox copied by skopeo to a `dir:` with uncompressed layers (the source of the
        uncompressed and zstd variants)."""
        base = self.busybox()
        target = self.work_dir / "dir-uncompressed"
        if not (target / "manifest.json").exists():
            if target.exists():
                shutil.rmtree(target)
            skopeo(self.work_dir, "copy", "--dest-decompress", base.skopeo_ref, f"dir:{target}")
        return target

    def busybox_uncompressed(self) -> LayoutImage:
        """busybox with its layer stored uncompressed (`...layer.v1.tar`), written by skopeo
        into `oci-uncompressed/` (`--dest-oci-accept-uncompressed-layers`)."""
        return self._cached("busybox-uncompressed", self._build_uncompressed)

    def _build_uncompressed(self) -> LayoutImage:
        layout = self.work_dir / "oci-uncompressed"
        if (done := self._image(layout, "busybox")) is not None:
            return done
        source = self._decompressed_dir()
        skopeo(
            self.work_dir, "copy", "--dest-oci-accept-uncompressed-layers",
            f"dir:{source}", f"oci:{layout}:busybox",
        )  # fmt: skip
        image = self._image(layout, "busybox")
        assert image is not None
        self._expect_layer_types(image, {OCI_LAYER_TAR})
        return image

    def busybox_zstd(self) -> LayoutImage:
        """busybox with its layer zstd-compressed (`...tar+zstd`), written by skopeo
        (`--dest-compress-format zstd` from the uncompressed copy) into `oci-zstd/`.
        umoci 0.4.7 cannot unpack zstd layers; unpack `busybox()` for the same tree."""
        return self._cached("busybox-zstd", self._build_zstd)

    def _build_zstd(self) -> LayoutImage:
        layout = self.work_dir / "oci-zstd"
        if (done := self._image(layout, "busybox")) is not None:
            return done
        source = self._decompressed_dir()
        skopeo(
            self.work_dir, "copy", "--dest-compress-format", "zstd",
            f"dir:{source}", f"oci:{layout}:busybox",
        )  # fmt: skip
        image = self._image(layout, "busybox")
        assert image is not None
        self._expect_layer_types(image, {OCI_LAYER_ZSTD})
        for layer in image.manifest()["layers"]:
            magic = image.blob_path(layer["digest"]).open("rb").read(4)
            if magic != b"\x28\xb5\x2f\xfd":
                raise ImageBuildError(f"layer {layer['digest']} is not zstd (magic {magic!r})")
        return image

    def busybox_v2s2_dir(self) -> Path:
        """busybox converted by skopeo (`--format v2s2`) into a `dir:` copy: a Docker
        schema2 manifest and config over the same gzip layer."""
        if "busybox-v2s2" in self._cache:
            return self._cache["busybox-v2s2"].layout
        start = time.monotonic()
        base = self.busybox()
        target = self.work_dir / "dir-v2s2"
        if not (target / "manifest.json").exists():
            if target.exists():
                shutil.rmtree(target)
            skopeo(self.work_dir, "copy", "--format", "v2s2", base.skopeo_ref, f"dir:{target}")
        manifest = json.loads((target / "manifest.json").read_text())
        if manifest.get("mediaType") != DOCKER_MANIFEST:
            raise ImageBuildError(f"skopeo --format v2s2 wrote {manifest.get('mediaType')}")
        digest = sha256_digest((target / "manifest.json").read_bytes())
        self._cache["busybox-v2s2"] = LayoutImage(target, "", digest, DOCKER_MANIFEST)
        self.timings["busybox-v2s2"] = time.monotonic() - start
        return target

    def large(self, size_mb: int, *, layers: int = 4) -> LayoutImage:
        """busybox + `layers` layers of random-content files (at most 8 MiB each) adding up
        to about `size_mb` MiB, tag `large-<size_mb>x<layers>` in `oci/`. Random data does
        not compress, so the blobs are about that size too."""
        if size_mb < 1 or layers < 1:
            raise ValueError("size_mb and layers must be >= 1")
        tag = f"large-{size_mb}x{layers}"
        return self._cached(tag, lambda: self._build_large(tag, size_mb, layers))

    def _build_large(self, tag: str, size_mb: int, layers: int) -> LayoutImage:
        base = self.busybox()
        if (done := self._image(self.layout, tag)) is not None:
            return done
        building = self._start_building(self.layout, tag, base.tag)
        ref = f"{self.layout}:{building}"
        bundle = self._fresh_bundle(tag)
        run_tool(["umoci", "unpack", "--image", ref, str(bundle)])
        rng = random.Random(size_mb * 1000 + layers)  # reproducible test data
        total = size_mb * 1024 * 1024
        for n, layer_bytes in enumerate(_split(total, layers)):
            layer_dir = bundle / "rootfs/data" / f"layer{n}"
            layer_dir.mkdir(parents=True)
            for i, file_bytes in enumerate(_split(layer_bytes, -(-layer_bytes // (8 << 20)))):
                with (layer_dir / f"blob{i}.bin").open("wb") as out:
                    for chunk in _chunks(file_bytes, 1 << 20):
                        out.write(rng.randbytes(chunk))
            run_tool(["umoci", "repack", "--refresh-bundle", "--image", ref, str(bundle)])
        shutil.rmtree(bundle)
        return self._finish(self.layout, building, tag)

    # -- checks ----------------------------------------------------------------------

    @staticmethod
    def _blob(layout: Path, digest: str) -> bytes:
        return (layout / "blobs" / digest.replace(":", "/", 1)).read_bytes()

    @staticmethod
    def _expect_layer_types(image: LayoutImage, allowed: set[str]) -> None:
        found = {layer["mediaType"] for layer in image.manifest()["layers"]}
        if not found <= allowed:
            raise ImageBuildError(f"{image.image_ref}: layer types {found}, wanted {allowed}")


def _split(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal positive sizes."""
    parts = max(1, parts)
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _chunks(total: int, size: int) -> Iterator[int]:
    while total > 0:
        yield min(size, total)
        total -= size


# -- pushing ----------------------------------------------------------------------------


def push(
    registry: Registry,
    builder: ImageBuilder,
    source: str,
    *,
    name: str,
    tag: str,
    layout: Path,
    layout_tag: str,
    extra: Sequence[str] = (),
) -> PushedImage:
    """`skopeo copy [extra] <source> docker://<registry>/<name>:<tag>` and read it back."""
    reference = registry.reference(name, tag)
    skopeo(builder.work_dir, "copy", *dest_args(registry), *extra, source, f"docker://{reference}")
    raw = inspect_raw(registry, reference, builder.work_dir)
    media_type = json.loads(raw).get("mediaType") or OCI_MANIFEST
    return PushedImage(
        name=name,
        tag=tag,
        reference=reference,
        digest=sha256_digest(raw),
        media_type=media_type,
        manifest=raw,
        layout=layout,
        layout_tag=layout_tag,
        registry_host=registry.host,
    )


def _push_layout(
    registry: Registry, builder: ImageBuilder, image: LayoutImage, name: str, tag: str
) -> PushedImage:
    """Push a layout image verbatim (`--preserve-digests`; `--all` for an index)."""
    extra = ["--preserve-digests"]
    if image.media_type == OCI_INDEX:
        extra.append("--all")
    pushed = push(
        registry, builder, image.skopeo_ref, name=name, tag=tag,
        layout=image.layout, layout_tag=image.tag, extra=extra,
    )  # fmt: skip
    if pushed.digest != image.digest:
        raise ImageBuildError(
            f"{pushed.reference} serves {pushed.digest}, layout has {image.digest}"
        )
    return pushed


def busybox(
    registry: Registry, builder: ImageBuilder, *, name: str = "busybox", tag: str = "latest"
) -> PushedImage:
    """The single-layer busybox image (see `ImageBuilder.busybox`), OCI manifest, gzip."""
    return _push_layout(registry, builder, builder.busybox(), name, tag)


def multilayer(
    registry: Registry, builder: ImageBuilder, *, name: str = "multilayer", tag: str = "latest"
) -> PushedImage:
    """Four layers with whiteouts, an opaque dir, hard links, devices, xattrs, ... (see
    `ImageBuilder.multilayer`)."""
    return _push_layout(registry, builder, builder.multilayer(), name, tag)


def nonroot(
    registry: Registry, builder: ImageBuilder, *, name: str = "nonroot", tag: str = "latest"
) -> PushedImage:
    """busybox run as `app` with entrypoint/cmd/workdir/ports/volume/labels/stop signal."""
    return _push_layout(registry, builder, builder.nonroot(), name, tag)


def multiarch(
    registry: Registry, builder: ImageBuilder, *, name: str = "multiarch", tag: str = "latest"
) -> PushedImage:
    """An OCI index over linux/amd64, linux/arm64 and linux/arm/v7 (`skopeo copy --all`)."""
    pushed = _push_layout(registry, builder, builder.multiarch(), name, tag)
    if pushed.media_type != OCI_INDEX:
        raise ImageBuildError(f"{pushed.reference} is {pushed.media_type}, not an index")
    return pushed


def busybox_v2s2(
    registry: Registry, builder: ImageBuilder, *, name: str = "busybox-v2s2", tag: str = "latest"
) -> PushedImage:
    """busybox as a Docker schema2 manifest (`skopeo copy --format v2s2`); its `layout` is
    the OCI layout it was converted from (same layer, same tree)."""
    source = builder.busybox_v2s2_dir()
    base = builder.busybox()
    pushed = push(
        registry, builder, f"dir:{source}", name=name, tag=tag,
        layout=base.layout, layout_tag=base.tag, extra=["--preserve-digests"],
    )  # fmt: skip
    if pushed.media_type != DOCKER_MANIFEST or set(pushed.layer_media_types) != {DOCKER_LAYER_GZIP}:
        raise ImageBuildError(f"{pushed.reference} is not Docker schema2: {pushed.manifest!r}")
    return pushed


def busybox_zstd(
    registry: Registry, builder: ImageBuilder, *, name: str = "busybox-zstd", tag: str = "latest"
) -> PushedImage:
    """busybox with a zstd layer (`...tar+zstd`)."""
    pushed = _push_layout(registry, builder, builder.busybox_zstd(), name, tag)
    if set(pushed.layer_media_types) != {OCI_LAYER_ZSTD}:
        raise ImageBuildError(f"{pushed.reference} layers: {pushed.layer_media_types}")
    return pushed


def busybox_uncompressed(
    registry: Registry,
    builder: ImageBuilder,
    *,
    name: str = "busybox-uncompressed",
    tag: str = "latest",
) -> PushedImage:
    """busybox with an uncompressed layer (`...layer.v1.tar`)."""
    pushed = _push_layout(registry, builder, builder.busybox_uncompressed(), name, tag)
    if set(pushed.layer_media_types) != {OCI_LAYER_TAR}:
        raise ImageBuildError(f"{pushed.reference} layers: {pushed.layer_media_types}")
    return pushed


def large(
    registry: Registry,
    builder: ImageBuilder,
    size_mb: int,
    *,
    layers: int = 4,
    name: str = "large",
    tag: str | None = None,
) -> PushedImage:
    """busybox + `layers` layers of random files adding up to about `size_mb` MiB."""
    image = builder.large(size_mb, layers=layers)
    return _push_layout(registry, builder, image, name, tag or f"{size_mb}mb")


def push_all(registry: Registry, builder: ImageBuilder) -> ImageSet:
    """Build (once per builder) and push every standard image; `large` is not included."""
    timings: dict[str, float] = {}
    pushed: dict[str, PushedImage] = {}
    for key, fn in (
        ("busybox", busybox),
        ("multilayer", multilayer),
        ("nonroot", nonroot),
        ("multiarch", multiarch),
        ("busybox_v2s2", busybox_v2s2),
        ("busybox_zstd", busybox_zstd),
        ("busybox_uncompressed", busybox_uncompressed),
    ):
        start = time.monotonic()
        pushed[key] = fn(registry, builder)
        timings[key] = time.monotonic() - start
    return ImageSet(
        busybox=pushed["busybox"],
        multilayer=pushed["multilayer"],
        nonroot=pushed["nonroot"],
        multiarch=pushed["multiarch"],
        busybox_v2s2=pushed["busybox_v2s2"],
        busybox_zstd=pushed["busybox_zstd"],
        busybox_uncompressed=pushed["busybox_uncompressed"],
        timings=timings,
    )
