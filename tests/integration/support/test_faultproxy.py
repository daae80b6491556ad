"""The fault proxy forwards a real registry verbatim, each fault does what it says, and stop()
leaves no thread, socket or listener behind."""

import http.client
import json
import os
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.images import (
    OCI_MANIFEST,
    ImageBuilder,
    PushedImage,
    busybox,
    sha256_digest,
    skopeo,
)
from tests.support.registry import Registry, free_loopback_port


@pytest.fixture(scope="module")
def image(plain_registry: Registry, image_builder: ImageBuilder) -> PushedImage:
    """busybox, also under a second name so the catalog can paginate."""
    busybox(plain_registry, image_builder, name="proxy-second")
    return busybox(plain_registry, image_builder)


@pytest.fixture
def proxy(plain_registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(plain_registry.url) as fault_proxy:
        yield fault_proxy


def fetch(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def layer_of(image: PushedImage) -> tuple[str, int]:
    layer = image.manifest_json()["layers"][0]
    return str(layer["digest"]), int(layer["size"])


def test_requests_are_forwarded_verbatim_and_recorded(
    plain_registry: Registry, image: PushedImage, proxy: FaultProxy
) -> None:
    """Manifests, HEAD, Range and query strings pass unchanged; every exchange is recorded."""
    accept = {"Accept": OCI_MANIFEST}
    path = f"/v2/busybox/manifests/{image.tag}"
    direct = fetch(plain_registry.port, "GET", path, accept)
    proxied = fetch(proxy.port, "GET", path, accept)
    assert proxied[0] == direct[0] == 200 and proxied[2] == direct[2] == image.manifest
    for header in ("content-type", "content-length", "docker-content-digest"):
        assert proxied[1][header] == direct[1][header]
    digest, size = layer_of(image)
    blob = f"/v2/busybox/blobs/{digest}"
    status, headers, body = fetch(proxy.port, "HEAD", blob)
    assert (status, headers["content-length"], body) == (200, str(size), b"")
    whole = fetch(plain_registry.port, "GET", blob)[2]
    status, headers, body = fetch(proxy.port, "GET", blob, {"Range": "bytes=100-1099"})
    assert status == 206 and body == whole[100:1100]
    assert headers["content-range"] == f"bytes 100-1099/{size}"
    catalog = fetch(proxy.port, "GET", "/v2/_catalog?n=1")
    assert catalog[2] == fetch(plain_registry.port, "GET", "/v2/_catalog?n=1")[2]
    assert catalog[0] == 200 and len(json.loads(catalog[2])["repositories"]) == 1
    assert "n=1" in catalog[1]["link"]  # the registry saw the query and paginated
    seen = [(e.method, e.path, e.query, e.range, e.status) for e in proxy.requests()]
    assert seen == [
        ("GET", path, "", None, 200),
        ("HEAD", blob, "", None, 200),
        ("GET", blob, "", "bytes=100-1099", 206),
        ("GET", "/v2/_catalog", "n=1", None, 200),
    ]
    assert proxy.bytes_sent(r"/blobs/") == 1000


def test_skopeo_pushes_through_the_proxy(
    plain_registry: Registry, image_builder: ImageBuilder, proxy: FaultProxy
) -> None:
    """Uploads (POST, PATCH with a streamed body, PUT, Location headers) work through it."""
    layout = image_builder.busybox()
    skopeo(
        image_builder.work_dir, "copy", "--dest-tls-verify=false", "--preserve-digests",
        layout.skopeo_ref, f"docker://{proxy.host}/through-proxy:latest",
    )  # fmt: skip
    status, _, body = fetch(
        plain_registry.port,
        "GET",
        "/v2/through-proxy/manifests/latest",
        {"Accept": OCI_MANIFEST},
    )
    assert status == 200 and sha256_digest(body) == layout.digest
    methods = {e.method for e in proxy.requests()}
    assert {"POST", "PUT"} <= methods
    assert all(e.status < 400 or e.method == "HEAD" for e in proxy.requests())


def test_chunked_upload_streams_through_the_proxy(
    plain_registry: Registry, proxy: FaultProxy
) -> None:
    """A blob upload with a chunked PATCH body arrives whole; Location points at the proxy."""
    data = os.urandom(3 << 20)
    digest = sha256_digest(data)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("POST", "/v2/uploaded/blobs/uploads/")
        resp = conn.getresponse()
        resp.read()
        location = resp.getheader("Location") or ""
        assert resp.status == 202 and location.startswith(f"{proxy.url}/v2/uploaded/")
        upload = location.removeprefix(proxy.url)
        pieces = (data[i : i + 100_000] for i in range(0, len(data), 100_000))
        conn.request(
            "PATCH",
            upload,
            body=pieces,
            headers={"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 202, resp.status
        upload = (resp.getheader("Location") or "").removeprefix(proxy.url)
        sep = "&" if "?" in upload else "?"
        conn.request("PUT", f"{upload}{sep}digest={digest}", headers={"Content-Length": "0"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 201
    finally:
        conn.close()
    assert fetch(plain_registry.port, "GET", f"/v2/uploaded/blobs/{digest}")[2] == data
    patch = proxy.requests(method="PATCH")
    assert [e.status for e in patch] == [202]


def test_each_fault_does_what_it_says(image: PushedImage, proxy: FaultProxy) -> None:
    """answer, replace, cut, corrupt, throttle, ignore_range and `times` each alter only what
    they name."""
    digest, size = layer_of(image)
    blob = f"/v2/busybox/blobs/{digest}"
    whole = fetch(proxy.port, "GET", blob)[2]
    assert len(whole) == size

    proxy.answer(r"^/v2/$", 401, www_authenticate='Basic realm="x"', times=1)
    status, headers, body = fetch(proxy.port, "GET", "/v2/")
    assert (status, headers["www-authenticate"]) == (401, 'Basic realm="x"')
    assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    assert fetch(proxy.port, "GET", "/v2/")[0] == 200  # times=1: used up

    proxy.replace(r"/manifests/", content_type="application/x-test", body=b"{}", times=1)
    status, headers, body = fetch(
        proxy.port, "GET", f"/v2/busybox/manifests/{image.tag}", {"Accept": OCI_MANIFEST}
    )
    assert (status, headers["content-type"], headers["content-length"], body) == (
        200,
        "application/x-test",
        "2",
        b"{}",
    )

    proxy.corrupt(digest, times=1)
    corrupted = fetch(proxy.port, "GET", blob)[2]
    assert len(corrupted) == size
    assert [i for i in range(size) if corrupted[i] != whole[i]] == [size // 2]

    proxy.cut(digest, after=5000, times=1)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("GET", blob)
        resp = conn.getresponse()
        assert resp.getheader("Content-Length") == str(size)
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
        assert cut.value.partial == whole[:5000]
    finally:
        conn.close()

    proxy.throttle(digest, bytes_per_s=size / 0.5, times=1)
    started = time.monotonic()
    assert fetch(proxy.port, "GET", blob)[2] == whole
    assert time.monotonic() - started >= 0.4

    proxy.ignore_range(digest, times=1)
    status, _, body = fetch(proxy.port, "GET", blob, {"Range": "bytes=10-"})
    assert (status, body) == (200, whole)

    faults = [e.fault for e in proxy.requests(r"/blobs/")]
    assert faults == [None, "corrupt@-1", "cut@5000", f"throttle {size / 0.5}", "no-range"]
    assert proxy.requests(r"/blobs/")[2].bytes_sent == 5000


def test_stop_leaves_no_thread_socket_or_listener(
    plain_registry: Registry, image: PushedImage
) -> None:
    """Stopping in the middle of a throttled download ends the thread and closes every socket."""
    fds_before = set(os.listdir("/proc/self/fd"))
    proxy = FaultProxy(plain_registry.url).start()
    port = proxy.port
    digest, size = layer_of(image)
    proxy.throttle(digest, bytes_per_s=50_000)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", f"/v2/busybox/blobs/{digest}")
        resp = conn.getresponse()
        assert resp.read(1000)
        started = time.monotonic()
        proxy.stop()
        assert time.monotonic() - started < 5
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            resp.read()
    finally:
        conn.close()
    proxy.stop()  # idempotent
    assert not proxy.running
    assert not [t for t in threading.enumerate() if t.name.startswith("faultproxy-")]
    assert set(os.listdir("/proc/self/fd")) <= fds_before
    with pytest.raises(ConnectionRefusedError):
        fetch(port, "GET", "/v2/")
    assert size > 1000


def test_upstream_down_is_a_502(require_root: None) -> None:
    """With nothing behind it the proxy answers 502 and records why."""
    with FaultProxy(f"http://127.0.0.1:{free_loopback_port()}") as proxy:
        status, _, body = fetch(proxy.port, "GET", "/v2/")
        assert status == 502 and json.loads(body)["errors"]
        (exchange,) = proxy.requests()
        assert exchange.status == 502 and exchange.error and "upstream" in exchange.error
