"""Pull failures against a real registry, faults injected by a proxy: typed errors, store intact.

Every broken pull must raise the one typed error of `cri.images` that says what happened,
with a message naming the image and the cause, `temporary` telling whether a retry may
succeed, and leave the visible store (images, blobs, layers) exactly as it was, also once
any work the pull started has settled, and also when another image shares its content.
Interrupted downloads resume (Range) or restart cleanly, and a pull killed with SIGKILL
leaves no partial image behind. Faults come from `tests.support.faultproxy.FaultProxy` in
front of the real registry, or from the registry's own storage.
"""

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cri.images import (
    AuthenticationError,
    BlobUnknownError,
    Credentials,
    DigestMismatchError,
    ImageRecord,
    ImageService,
    IncompleteDownloadError,
    ManifestUnknownError,
    PullError,
    RegistryConfig,
    RegistryHost,
    RegistryServerError,
    RegistryUnreachableError,
    UnsupportedMediaTypeError,
)
from cri.images.digest import Digest
from tests.integration.images.conftest import Runner
from tests.support import tree
from tests.support.faultproxy import Fault, FaultProxy, wait_until
from tests.support.images import ImageBuilder, ImageSet, PushedImage, large, run_tool
from tests.support.registry import Registry, free_loopback_port

REPO_ROOT = Path(__file__).resolve().parents[3]
LARGE_MB, LARGE_LAYERS = 8, 2


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_image(plain_registry: Registry, image_builder: ImageBuilder) -> PushedImage:
    """busybox + two ~4 MiB layers of random data: big enough to cut and throttle."""
    return large(
        plain_registry, image_builder, LARGE_MB, layers=LARGE_LAYERS, tag=f"errors-{LARGE_MB}mb"
    )


@pytest.fixture
def proxy(plain_registry: Registry) -> Iterator[FaultProxy]:
    """A fault proxy in front of the plain registry, fresh for each test."""
    with FaultProxy(plain_registry.url) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def via_proxy(
    proxy: FaultProxy, plain_registry: Registry, store_root: Path, run: Runner
) -> Iterator[ImageService]:
    """An ImageService that reaches the registry through `proxy` (and directly, by its host)."""
    config = RegistryConfig(
        hosts={
            proxy.host: RegistryHost(plain_http=True),
            plain_registry.host: RegistryHost(plain_http=True),
        }
    )
    svc = ImageService(store_root, registry=config)
    yield svc
    settle(run)  # whatever a failed pull left running must not outlive the test
    run(svc.close())


# -- helpers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreState:
    """What a client of the store can see: image records, blobs and unpacked layers."""

    images: tuple[ImageRecord, ...]
    blobs: frozenset[Digest]
    layers: frozenset[Digest]


def store_state(svc: ImageService) -> StoreState:
    return StoreState(
        images=tuple(sorted(svc.list_images(), key=lambda r: r.id)),
        blobs=frozenset(svc.content.digests()),
        layers=frozenset(svc.layers.chain_ids()),
    )


def settle(run: Runner, timeout_s: float = 20.0) -> list[str]:
    """Let every task still on the test's loop finish (cancel after `timeout_s`); their names."""

    async def wait_others() -> list[str]:
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if others:
            _done, pending = await asyncio.wait(others, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
        return sorted(t.get_name() for t in others)

    return run(wait_others())


def describe_change(before: StoreState, after: StoreState) -> str:
    parts = []
    for label, old, new in (
        ("images", {r.id for r in before.images}, {r.id for r in after.images}),
        ("blobs", set(before.blobs), set(after.blobs)),
        ("layers", set(before.layers), set(after.layers)),
    ):
        if old != new:
            parts.append(f"{label} added {sorted(new - old)} removed {sorted(old - new)}")
    if before.images != after.images and not parts:
        parts.append("image records were rewritten")
    return "; ".join(parts)


def pull_failure(
    run: Runner,
    svc: ImageService,
    ref: str,
    *,
    error: type[PullError],
    temporary: bool,
    causes: tuple[str, ...],
    before: StoreState,
    credentials: Credentials | None = None,
) -> tuple[BaseException | None, list[str]]:
    """Pull `ref`, which must fail; return the exception and every way the failure breaks the
    contract (exact type, message naming `ref` and each of `causes`, `temporary`, and the
    store unchanged once the work the pull started has settled)."""
    problems: list[str] = []
    caught: BaseException | None = None
    try:
        record = run(svc.pull(ref, credentials=credentials))
    except Exception as err:
        caught = err
    else:
        problems.append(f"pull of {ref} succeeded ({record.id}), expected {error.__name__}")
    still_running = settle(run)
    if caught is not None:
        if type(caught) is not error:
            problems.append(
                f"pull raised {type(caught).__name__}: {caught!r}, expected {error.__name__}"
            )
        else:
            text = str(caught)
            for part in (ref, *causes):
                if part not in text:
                    problems.append(f"message does not name {part!r}: {text}")
            if caught.temporary is not temporary:
                problems.append(f"temporary is {not temporary}, expected {temporary}: {text}")
    after = store_state(svc)
    if after != before:
        problems.append(
            f"the visible store changed: {describe_change(before, after)} "
            f"(tasks of the pull still running when it raised: {still_running or 'none'})"
        )
    return caught, problems


def require(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


def ref_via(proxy: FaultProxy, image: PushedImage, *, by_digest: bool = False) -> str:
    """`image` as pulled through the proxy: `127.0.0.1:PROXYPORT/name:tag` (or `@digest`)."""
    if by_digest:
        return f"{proxy.host}/{image.name}@{image.digest}"
    return f"{proxy.host}/{image.name}:{image.tag}"


def own_layers(image: PushedImage, base: PushedImage) -> list[str]:
    """Digests of `image`'s layers that `base` does not have."""
    shared = {layer["digest"] for layer in base.manifest_json()["layers"]}
    return [d["digest"] for d in image.manifest_json()["layers"] if d["digest"] not in shared]


def config_digest(image: PushedImage) -> str:
    return str(image.manifest_json()["config"]["digest"])


def prepull(
    run: Runner, svc: ImageService, proxy: FaultProxy, images: ImageSet, which: str
) -> StoreState:
    """Pull busybox first when `which` is "busybox-present"; the store state to compare with."""
    if which == "busybox-present":
        run(svc.pull(ref_via(proxy, images.busybox)))
        assert len(svc.list_images()) == 1
    proxy.forget()
    return store_state(svc)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def assert_layer_matches_blob(
    svc: ImageService, record: ImageRecord, image: PushedImage, layer: str, tmp_path: Path
) -> None:
    """The unpacked layer `layer` of `record` holds what GNU tar extracts from its blob."""
    layers = [d["digest"] for d in image.manifest_json()["layers"]]
    chain = record.chain_ids[layers.index(layer)]
    reference = tmp_path / f"tar-{layer[7:19]}"
    reference.mkdir()
    blob = image.layout / "blobs" / "sha256" / layer.removeprefix("sha256:")
    run_tool(["tar", "-xzf", str(blob), "-C", str(reference), "--numeric-owner", "-p"])
    expected, actual = tree.snapshot(reference), tree.snapshot(svc.layers.path(chain) / "diff")
    expected.pop(".", None)
    actual.pop(".", None)
    assert tree.diff(expected, actual, a_label="tar", b_label="layer") == []
    assert sha256_file(svc.content.path(Digest(layer))) == layer


PRESENT = ["empty-store", "busybox-present"]


# -- corruption --------------------------------------------------------------------------


@pytest.mark.parametrize("present", PRESENT)
def test_flipped_byte_in_a_layer_is_a_digest_mismatch_then_a_clean_pull_succeeds(
    run: Runner, images: ImageSet, proxy: FaultProxy, via_proxy: ImageService, present: str
) -> None:
    """A layer with one flipped byte: DigestMismatchError, store intact; unbroken, it pulls."""
    before = prepull(run, via_proxy, proxy, images, present)
    layer = own_layers(images.multilayer, images.busybox)[-1]
    proxy.corrupt(layer)
    ref = ref_via(proxy, images.multilayer)
    _, problems = pull_failure(
        run, via_proxy, ref, error=DigestMismatchError, temporary=False,
        causes=(layer,), before=before,
    )  # fmt: skip
    assert [e.fault for e in proxy.requests(layer)] == ["corrupt@-1"]
    if via_proxy.content.partial_path(Digest(layer)).exists():
        problems.append("the corrupt download was kept in ingest/ to be resumed")
    require(problems)
    proxy.clear()
    record = run(via_proxy.pull(ref))
    assert record.manifest_digest == images.multilayer.digest
    assert via_proxy.content.has(Digest(layer))
    assert {r.id for r in via_proxy.list_images()} >= {r.id for r in before.images} | {record.id}


def test_flipped_byte_in_the_config_blob_is_a_digest_mismatch(
    run: Runner, images: ImageSet, proxy: FaultProxy, via_proxy: ImageService
) -> None:
    """A corrupted image config: DigestMismatchError naming the config digest; nothing kept."""
    config = config_digest(images.busybox)
    proxy.corrupt(config)
    ref = ref_via(proxy, images.busybox)
    _, problems = pull_failure(
        run, via_proxy, ref, error=DigestMismatchError, temporary=False,
        causes=(config,), before=store_state(via_proxy),
    )  # fmt: skip
    require(problems)
    assert list(via_proxy.content.ingest_dir.iterdir()) == []


def test_manifest_bytes_not_matching_the_pulled_digest_are_a_digest_mismatch(
    run: Runner, images: ImageSet, proxy: FaultProxy, via_proxy: ImageService
) -> None:
    """Pulled by digest, a manifest whose bytes hash otherwise is refused before anything else."""
    proxy.corrupt(r"/manifests/", at=10)
    ref = ref_via(proxy, images.busybox, by_digest=True)
    _, problems = pull_failure(
        run, via_proxy, ref, error=DigestMismatchError, temporary=False,
        causes=(images.busybox.digest, "served a manifest"), before=store_state(via_proxy),
    )  # fmt: skip
    require(problems)
    assert [e.path.rsplit("/", 2)[-2] for e in proxy.requests()] == ["manifests"]


@pytest.mark.parametrize("blob", ["layer", "config"])
def test_blob_corrupted_at_rest_in_the_registry_is_a_digest_mismatch(
    run: Runner,
    plain_registry: Registry,
    image_builder: ImageBuilder,
    images: ImageSet,
    service: ImageService,
    blob: str,
) -> None:
    """A blob whose bytes rotted in the registry's own storage: DigestMismatchError, no proxy."""
    # An image pushed only for this test: its top layer and config are in no other image.
    image = large(plain_registry, image_builder, 2, layers=1, name="rotten", tag=f"for-{blob}")
    digest = own_layers(image, images.busybox)[-1] if blob == "layer" else config_digest(image)
    hexdigest = digest.removeprefix("sha256:")
    data = (
        plain_registry.storage_dir
        / "docker/registry/v2/blobs/sha256"
        / hexdigest[:2]
        / hexdigest
        / "data"
    )
    original = data.read_bytes()
    offset = len(original) // 2
    run(service.pull(images.busybox.reference))  # shared base layer must survive the failure
    before = store_state(service)
    try:
        with data.open("r+b") as f:
            f.seek(offset)
            f.write(bytes([original[offset] ^ 0xFF]))
        _, problems = pull_failure(
            run, service, image.reference, error=DigestMismatchError, temporary=False,
            causes=(digest,), before=before,
        )  # fmt: skip
    finally:
        data.write_bytes(original)
    require(problems)


def test_truncated_manifest_is_a_temporary_incomplete_download(
    run: Runner, images: ImageSet, proxy: FaultProxy, via_proxy: ImageService
) -> None:
    """A manifest body cut short is a dropped connection (temporary), not a bad manifest."""
    proxy.add(Fault(path=r"/manifests/", cut_after=200, bytes_per_s=4000.0, name="cut"))
    _, problems = pull_failure(
        run, via_proxy, ref_via(proxy, images.busybox), error=IncompleteDownloadError,
        temporary=True, causes=("manifest",), before=store_state(via_proxy),
    )  # fmt: skip
    require(problems)


def test_slowly_served_manifest_still_pulls(
    run: Runner, images: ImageSet, proxy: FaultProxy, via_proxy: ImageService
) -> None:
    """A manifest arriving in small pieces over half a second is read whole, and the pull works."""
    proxy.throttle(r"/manifests/", bytes_per_s=2000.0)
    record = run(via_proxy.pull(ref_via(proxy, images.busybox)))
    assert record.manifest_digest == images.busybox.digest
    assert [e.complete for e in proxy.requests(r"/manifests/")] == [True]


# -- what the registry answers -----------------------------------------------------------


@pytest.mark.parametrize("present", PRESENT)
@pytest.mark.parametrize("missing", ["digest", "tag"])
def test_manifest_the_registry_lacks_is_manifest_unknown(
    run: Runner, images: ImageSet, proxy: FaultProxy, via_proxy: ImageService, present: str,
    missing: str,
) -> None:  # fmt: skip
    """A digest (or tag) the real registry does not have: ManifestUnknownError, 404."""
    before = prepull(run, via_proxy, proxy, images, present)
    absent = "sha256:" + hashlib.sha256(b"never pushed").hexdigest()
    ref = f"{proxy.host}/busybox@{absent}" if missing == "digest" else f"{proxy.host}/busybox:nope"
    _, problems = pull_failure(
        run, via_proxy, ref, error=ManifestUnknownError, temporary=False,
        causes=("404",), before=before,
    )  # fmt: skip
    require(problems)
    assert [(e.fault, e.status) for e in proxy.requests()] == [(None, 404)]


@pytest.mark.parametrize(
    ("content_type", "body", "named"),
    [
        (
            "application/vnd.example.image.manifest.v9+json",
            b'{"schemaVersion": 2, "mediaType": "application/vnd.example.image.manifest.v9+json"}',
            "application/vnd.example.image.manifest.v9+json",
        ),
        (
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            b'{"schemaVersion": 1, "name": "busybox", "tag": "latest", "fsLayers": []}',
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        ),
    ],
    ids=["unknown-mediaType", "docker-schema1"],
)
def test_unknown_manifest_media_type_is_unsupported(
    run: Runner,
    images: ImageSet,
    proxy: FaultProxy,
    via_proxy: ImageService,
    content_type: str,
    body: bytes,
    named: str,
) -> None:
    """A manifest of a media type we cannot read: UnsupportedMediaTypeError naming the type."""
    proxy.replace(r"/manifests/", content_type=content_type, body=body)
    _, problems = pull_failure(
        run, via_proxy, ref_via(proxy, images.busybox), error=UnsupportedMediaTypeError,
        temporary=False, causes=(named,), before=store_state(via_proxy),
    )  # fmt: skip
    require(problems)


@pytest.mark.parametrize(
    ("status", "challenge", "creds", "cause"),
    [
        (401, None, None, "401 without a challenge"),
        (401, 'Basic realm="fault-proxy"', None, "requires credentials"),
        (401, 'Basic realm="fault-proxy"', Credentials("someone", "wrong"), "(401)"),
        (403, None, None, "(403)"),
    ],
    ids=["401-no-challenge", "401-basic-no-creds", "401-basic-refused", "403"],
)
def test_refused_authentication_is_an_authentication_error(
    run: Runner,
    images: ImageSet,
    proxy: FaultProxy,
    via_proxy: ImageService,
    status: int,
    challenge: str | None,
    creds: Credentials | None,
    cause: str,
) -> None:
    """A registry saying 401/403 (with or without a Basic challenge): AuthenticationError."""
    proxy.answer(r"^/v2/", status, www_authenticate=challenge)
    _, problems = pull_failure(
        run, via_proxy, ref_via(proxy, images.busybox), error=AuthenticationError,
        temporary=False, causes=(cause,), before=store_state(via_proxy), credentials=creds,
    )  # fmt: skip
    require(problems)
    # With credentials for a Basic challenge the client answers it once, then gives up.
    assert len(proxy.requests()) == (2 if creds is not None else 1)


@pytest.mark.parametrize("blob", ["layer", "config"])
def test_blob_the_registry_lacks_is_blob_unknown(
    run: Runner, images: ImageSet, proxy: FaultProxy, via_proxy: ImageService, blob: str
) -> None:
    """A 404 for a blob the manifest names: BlobUnknownError naming it; shared layers stay."""
    before = prepull(run, via_proxy, proxy, images, "busybox-present")
    digest = (
        own_layers(images.multilayer, images.busybox)[-1]
        if blob == "layer"
        else config_digest(images.multilayer)
    )
    proxy.answer(digest, 404, body=b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}')
    _, problems = pull_failure(
        run, via_proxy, ref_via(proxy, images.multilayer), error=BlobUnknownError,
        temporary=False, causes=(digest, "404"), before=before,
    )  # fmt: skip
    require(problems)


@pytest.mark.parametrize("what", ["manifest", "config", "layer"])
def test_server_error_is_temporary(
    run: Runner, images: ImageSet, proxy: FaultProxy, via_proxy: ImageService, what: str
) -> None:
    """A 500 from the registry: RegistryServerError, temporary; the same pull then succeeds."""
    before = prepull(run, via_proxy, proxy, images, "busybox-present")
    path = {
        "manifest": r"/manifests/",
        "config": config_digest(images.multilayer),
        "layer": own_layers(images.multilayer, images.busybox)[-1],
    }[what]
    proxy.answer(path, 500)
    ref = ref_via(proxy, images.multilayer)
    _, problems = pull_failure(
        run, via_proxy, ref, error=RegistryServerError, temporary=True,
        causes=("500",), before=before,
    )  # fmt: skip
    require(problems)
    proxy.clear()
    assert run(via_proxy.pull(ref)).manifest_digest == images.multilayer.digest


@pytest.mark.parametrize("present", PRESENT)
def test_unreachable_registry_is_temporary(
    run: Runner, images: ImageSet, store_root: Path, plain_registry: Registry, present: str
) -> None:
    """Nothing listens on the registry's port: RegistryUnreachableError naming host and image."""
    host = f"127.0.0.1:{free_loopback_port()}"  # bound and released: connections are refused
    config = RegistryConfig(
        hosts={
            host: RegistryHost(plain_http=True),
            plain_registry.host: RegistryHost(plain_http=True),
        }
    )
    svc = ImageService(store_root, registry=config)
    try:
        if present == "busybox-present":
            run(svc.pull(images.busybox.reference))
        ref = f"{host}/busybox:latest"
        _, problems = pull_failure(
            run, svc, ref, error=RegistryUnreachableError, temporary=True,
            causes=(f"http://{host}", "unreachable"), before=store_state(svc),
        )  # fmt: skip
        require(problems)
    finally:
        run(svc.close())


# -- interrupted downloads ---------------------------------------------------------------


@pytest.mark.parametrize("blob", ["layer", "config"])
def test_truncated_download_is_kept_and_the_next_pull_resumes_it(
    run: Runner,
    images: ImageSet,
    large_image: PushedImage,
    proxy: FaultProxy,
    via_proxy: ImageService,
    tmp_path: Path,
    blob: str,
) -> None:
    """A body cut short: IncompleteDownloadError, partial kept; the next pull asks for the rest."""
    before = prepull(run, via_proxy, proxy, images, "busybox-present")
    if blob == "layer":
        digest, cut_at, rate = own_layers(large_image, images.busybox)[-1], 1_000_000, None
    else:
        # Slowly, so the client has read what arrived before the cut: aiohttp drops the bytes
        # still in its buffer when it learns the body ended early.
        digest = config_digest(large_image)
        cut_at, rate = int(large_image.manifest_json()["config"]["size"]) // 2, 4000.0
    proxy.add(Fault(path=digest, cut_after=cut_at, bytes_per_s=rate, name="cut"))
    ref = ref_via(proxy, large_image)
    _, problems = pull_failure(
        run, via_proxy, ref, error=IncompleteDownloadError, temporary=True,
        causes=(digest,), before=before,
    )  # fmt: skip
    partial = via_proxy.content.partial_path(Digest(digest))
    kept = partial.stat().st_size if partial.exists() else 0
    if not 0 < kept <= cut_at:
        problems.append(f"ingest/ holds {kept} bytes of {digest}, expected 1..{cut_at}")
    proxy.clear()
    proxy.forget()
    record = run(via_proxy.pull(ref))
    asked = [(e.range, e.status) for e in proxy.requests(digest)]
    if kept and asked != [(f"bytes={kept}-", 206)]:
        problems.append(f"the next pull fetched {digest} as {asked}, expected a resume at {kept}")
    require(problems)
    assert record.manifest_digest == large_image.digest
    assert not partial.exists()
    assert sha256_file(via_proxy.content.path(Digest(digest))) == digest
    if blob == "layer":
        assert_layer_matches_blob(via_proxy, record, large_image, digest, tmp_path)


def test_interrupted_download_restarts_when_the_registry_ignores_range(
    run: Runner,
    images: ImageSet,
    large_image: PushedImage,
    proxy: FaultProxy,
    via_proxy: ImageService,
    tmp_path: Path,
) -> None:
    """Resuming from a server that answers 200 to Range: the download restarts from byte 0."""
    layer = own_layers(large_image, images.busybox)[0]
    proxy.cut(layer, after=500_000)
    ref = ref_via(proxy, large_image)
    _, problems = pull_failure(
        run, via_proxy, ref, error=IncompleteDownloadError, temporary=True,
        causes=(layer,), before=store_state(via_proxy),
    )  # fmt: skip
    kept = via_proxy.content.partial_path(Digest(layer))
    if not kept.exists():
        problems.append("no partial download was kept to resume from")
    proxy.clear()
    proxy.forget()
    proxy.ignore_range(layer)
    record = run(via_proxy.pull(ref))
    sent = [(e.range, e.status, e.bytes_sent) for e in proxy.requests(layer)]
    if kept.exists() or not sent or sent[-1][1] != 200:
        problems.append(f"{layer} was fetched as {sent}; partial still there: {kept.exists()}")
    require(problems)
    assert_layer_matches_blob(via_proxy, record, large_image, layer, tmp_path)


def test_corrupt_partial_download_is_discarded_and_the_pull_after_restarts(
    run: Runner,
    images: ImageSet,
    large_image: PushedImage,
    proxy: FaultProxy,
    via_proxy: ImageService,
    tmp_path: Path,
) -> None:
    """A kept partial that holds a bad byte fails its resume (DigestMismatchError, partial gone);
    the pull after that downloads the blob whole and succeeds."""
    layer = own_layers(large_image, images.busybox)[-1]
    proxy.add(Fault(path=layer, flip_at=1000, cut_after=600_000, times=1, name="corrupt+cut"))
    ref = ref_via(proxy, large_image)
    before = store_state(via_proxy)
    _, problems = pull_failure(
        run, via_proxy, ref, error=IncompleteDownloadError, temporary=True,
        causes=(layer,), before=before,
    )  # fmt: skip
    _, more = pull_failure(
        run, via_proxy, ref, error=DigestMismatchError, temporary=False,
        causes=(layer,), before=before,
    )  # fmt: skip
    problems += more
    if via_proxy.content.partial_path(Digest(layer)).exists():
        problems.append("the partial that failed verification is still in ingest/")
    proxy.forget()
    record = run(via_proxy.pull(ref))
    ranges = [e.range for e in proxy.requests(layer)]
    if ranges != [None]:
        problems.append(f"the last pull fetched {layer} with Range headers {ranges}")
    require(problems)
    assert_layer_matches_blob(via_proxy, record, large_image, layer, tmp_path)


@pytest.mark.parametrize("blob", ["layer", "config"])
def test_complete_but_uncommitted_download_is_used_not_refetched_past_its_end(
    run: Runner, images: ImageSet, proxy: FaultProxy, via_proxy: ImageService, blob: str
) -> None:
    """A partial holding the whole blob (killed between the last write and the rename) is
    verified and committed by the next pull, which must not fail on `Range: bytes=<size>-`."""
    image = images.busybox
    digest = image.manifest_json()["layers"][0]["digest"] if blob == "layer" else None
    digest = digest or config_digest(image)
    partial = via_proxy.content.partial_path(Digest(digest))
    partial.write_bytes(image.layout.joinpath("blobs", "sha256", digest[7:]).read_bytes())
    try:
        record = run(via_proxy.pull(ref_via(proxy, image)))
    finally:
        asked = [(e.range, e.status) for e in proxy.requests(digest)]
    assert record.manifest_digest == image.digest, asked
    assert via_proxy.content.has(Digest(digest)) and not partial.exists()
    assert all(status < 400 for _, status in asked), asked


# -- a pull killed with SIGKILL ----------------------------------------------------------


def cli(root: Path, *args: str, plain_http: str) -> subprocess.Popen[str]:
    """Start `python3 -m kubelet_py images --root ROOT --plain-http HOST ARGS...`."""
    return subprocess.Popen(
        [sys.executable, "-m", "kubelet_py", "images", "--root", str(root),
         "--plain-http", plain_http, *args],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def cli_run(root: Path, *args: str, plain_http: str) -> subprocess.CompletedProcess[str]:
    proc = cli(root, *args, plain_http=plain_http)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigkill_mid_pull_leaves_no_partial_image_and_the_next_pull_succeeds(
    images: ImageSet, large_image: PushedImage, proxy: FaultProxy, tmp_path: Path
) -> None:
    """`kubelet-py images pull` killed mid-download: no image, only complete layers, no
    leftovers after the next start; the next pull resumes the partial blobs and succeeds."""
    root = tmp_path / "node"
    store = root / "images"
    ref = ref_via(proxy, large_image)
    large_layers = own_layers(large_image, images.busybox)
    proxy.throttle(r"/blobs/", bytes_per_s=512 * 1024)  # ~8 s for one 4 MiB layer

    def partials() -> dict[str, int]:
        ingest = store / "ingest"
        if not ingest.is_dir():
            return {}
        return {p.name.removesuffix(".partial"): p.stat().st_size for p in ingest.glob("*.partial")}

    pull = cli(root, "pull", ref, plain_http=proxy.host)
    try:
        wait_until(
            lambda: (
                pull.poll() is not None
                or any(partials().get(d[7:], 0) >= 256 * 1024 for d in large_layers)
            ),
            timeout_s=30,
            what="256 KiB of a large layer on disk",
        )
        assert pull.poll() is None, f"the pull ended before it was killed: {pull.communicate()}"
        os.kill(pull.pid, signal.SIGKILL)
        pull.wait(timeout=10)
    finally:
        if pull.poll() is None:
            os.kill(pull.pid, signal.SIGKILL)
        pull.communicate(timeout=10)
    assert pull.returncode == -signal.SIGKILL
    left = partials()
    assert any(left.get(d[7:], 0) > 0 for d in large_layers)

    # What the kill left: no record; a layer dir is either complete or a hidden .tmp- dir.
    assert list((store / "images").glob("*.json")) == []
    layers_dir = store / "layers"
    for entry in layers_dir.iterdir():
        if entry.name.startswith(".tmp-"):
            continue
        assert len(entry.name) == 64 and (entry / "layer.json").is_file(), entry
    for blob in (store / "blobs" / "sha256").iterdir():
        assert sha256_file(blob) == f"sha256:{blob.name}", f"blob {blob} lies about its content"
    killed_layers = {p.name for p in layers_dir.iterdir() if not p.name.startswith(".")}
    # What a kill inside an unpack leaves (timing decides whether this one did): must go.
    (layers_dir / f".tmp-{'0' * 64}-{pull.pid}-abcdef" / "diff").mkdir(parents=True)

    listing = cli_run(root, "ls", plain_http=proxy.host)  # a fresh ImageService starts here
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines() == ["IMAGE  TAG  IMAGE ID  SIZE"], listing.stdout
    assert [p.name for p in layers_dir.glob(".tmp-*")] == []
    absent = cli_run(root, "inspect", ref, plain_http=proxy.host)
    assert absent.returncode == 1 and "not present" in absent.stderr

    proxy.clear()
    proxy.forget()
    again = cli_run(root, "pull", "--quiet", ref, plain_http=proxy.host)
    assert again.returncode == 0, again.stderr
    image_id = again.stdout.strip()
    resumed = {
        e.path.rsplit(":", 1)[-1]: e.range_start
        for e in proxy.requests(r"/blobs/")
        if e.range_start
    }
    assert resumed, f"no blob was resumed; partials were {left}"
    for hexdigest, start in resumed.items():
        assert start == left.get(hexdigest), (hexdigest, start, left)
    shown = cli_run(root, "inspect", ref, plain_http=proxy.host)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["record"]["id"] == image_id
    assert doc["record"]["manifest_digest"] == large_image.digest
    assert all(Path(p).is_dir() for p in doc["lowerdirs"])
    chains = {c.removeprefix("sha256:") for c in doc["record"]["chain_ids"]}
    assert killed_layers <= chains
    assert {p.name for p in layers_dir.iterdir()} == chains
    assert list((store / "ingest").iterdir()) == []
