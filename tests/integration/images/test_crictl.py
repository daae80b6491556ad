"""crictl, built from its Go module, drives our CRI ImageService over gRPC."""

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubelet_py.devcluster.build import ensure_go_tool
from tests.support.images import ImageSet
from tests.support.registry import Registry


@pytest.fixture(scope="module")
def crictl_bin(require_root: None) -> Path:
    return ensure_go_tool("crictl")


@pytest.fixture
def cri_socket(tmp_path: Path, plain_registry: Registry) -> Iterator[Path]:
    """`kubelet-py cri serve` on a unix socket; stopped by PID afterwards."""
    sock = tmp_path / "cri.sock"
    log = (tmp_path / "cri.log").open("wb")
    proc = subprocess.Popen(
        ["python3", "-m", "kubelet_py", "cri", "serve", "--root", str(tmp_path / "root"),
         "--socket", str(sock), "--plain-http", plain_registry.host],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"cri serve did not start: {(tmp_path / 'cri.log').read_text()}")
            time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def crictl(binary: Path, sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    endpoint = f"unix://{sock}"
    return subprocess.run(
        [str(binary), "--image-endpoint", endpoint, "--runtime-endpoint", endpoint,
         "--timeout", "60s", *args],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def test_crictl_pull_images_inspecti_rmi(
    crictl_bin: Path, cri_socket: Path, images: ImageSet
) -> None:
    """pull, images, inspecti, imagefsinfo and rmi all work against our socket."""
    ref = images.nonroot.reference
    pulled = crictl(crictl_bin, cri_socket, "pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    assert "Image is up to date for sha256:" in pulled.stdout

    listed = crictl(crictl_bin, cri_socket, "images", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    imgs = json.loads(listed.stdout)["images"]
    assert [i["repoTags"] for i in imgs] == [[ref]]
    assert imgs[0]["username"] == "app"

    inspected = crictl(crictl_bin, cri_socket, "inspecti", ref)
    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert info["status"]["repoDigests"] == [images.nonroot.by_digest]
    assert info["info"]["imageSpec"]["config"]["StopSignal"] == "SIGINT"
    assert info["info"]["chainID"].startswith("sha256:")

    fsinfo = crictl(crictl_bin, cri_socket, "imagefsinfo", "-o", "json")
    assert fsinfo.returncode == 0, fsinfo.stderr
    assert int(json.loads(fsinfo.stdout)["status"]["imageFilesystems"][0]["usedBytes"]["value"]) > 0

    removed = crictl(crictl_bin, cri_socket, "rmi", ref)
    assert removed.returncode == 0, removed.stderr
    assert json.loads(crictl(crictl_bin, cri_socket, "images", "-o", "json").stdout)["images"] == []


def test_crictl_pull_errors_are_readable(
    crictl_bin: Path, cri_socket: Path, plain_registry: Registry
) -> None:
    """A missing image gives NotFound with the image name, as kubelets show it in events."""
    missing = plain_registry.reference("does-not-exist", "v9")
    out = crictl(crictl_bin, cri_socket, "pull", missing)
    assert out.returncode != 0
    assert "NotFound" in out.stderr and "does-not-exist" in out.stderr
