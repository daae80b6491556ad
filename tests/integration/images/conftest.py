"""Session fixtures for the image service: a real registry (plain, and TLS + htpasswd) with
test images built by umoci and pushed by skopeo, and a fresh ImageService per test."""

import asyncio
import subprocess
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cri.images import ImageService, RegistryConfig, RegistryHost
from tests.support.images import ImageBuilder, ImageSet, busybox, push_all
from tests.support.registry import Registry

T = TypeVar("T")

AUTH_USER, AUTH_PASSWORD = "puller", "s3cret-pass"


class Runner:
    """Runs coroutines on one event loop per test, so a service's connections survive calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __call__(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture
def run() -> Iterator[Runner]:
    """`run(coro)`: the test's event loop."""
    runner = Runner()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def image_builder(require_root: None, tmp_path_factory: pytest.TempPathFactory) -> ImageBuilder:
    return ImageBuilder(tmp_path_factory.mktemp("image-builds"))


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry-plain")) as registry:
        yield registry


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(
        tmp_path_factory.mktemp("registry-auth"), username=AUTH_USER, password=AUTH_PASSWORD
    ) as registry:
        yield registry


@pytest.fixture(scope="session")
def images(plain_registry: Registry, image_builder: ImageBuilder) -> ImageSet:
    """Every standard test image, pushed to the plain registry."""
    return push_all(plain_registry, image_builder)


@pytest.fixture(scope="session")
def auth_busybox(auth_registry: Registry, image_builder: ImageBuilder) -> str:
    """busybox pushed to the TLS + htpasswd registry; returns its reference."""
    return busybox(auth_registry, image_builder).reference


def registry_config(plain: Registry, auth: Registry | None = None) -> RegistryConfig:
    hosts = {plain.host: RegistryHost(plain_http=True)}
    if auth is not None:
        assert auth.ca_path is not None
        hosts[auth.host] = RegistryHost(ca_file=auth.ca_path)
    return RegistryConfig(hosts=hosts)


@pytest.fixture
def store_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "store"
    yield root
    # Layers hold root-owned, setuid and immutable-free files; nothing is mounted here.


@pytest.fixture
def service(
    store_root: Path, plain_registry: Registry, auth_registry: Registry, run: Runner
) -> Iterator[ImageService]:
    svc = ImageService(store_root, registry=registry_config(plain_registry, auth_registry))
    yield svc
    run(svc.close())


class OverlayMount:
    """Mount an image's layers with overlayfs (rw, with its own upper/work) and unmount."""

    def __init__(self, lowerdirs: list[Path], base: Path) -> None:
        self.lowerdirs = lowerdirs
        self.base = base
        self.target = base / "merged"

    def __enter__(self) -> Path:
        for d in ("merged", "upper", "work"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        lower = ":".join(str(p) for p in self.lowerdirs)
        opts = f"lowerdir={lower},upperdir={self.base / 'upper'},workdir={self.base / 'work'}"
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(self.target)], check=True
        )
        return self.target

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.target)], check=True)
