"""Session fixtures for the image-service test support: registries and pushed test images.

Each fixture is a thin wrapper over a plain function in `tests.support` (`serve_registry`,
`ImageBuilder`, `push_all`), so other conftest files can make the same fixtures.
"""

import sys
from collections.abc import Iterator

import pytest

from tests.support.images import ImageBuilder, ImageSet, PushedImage, busybox, push_all
from tests.support.registry import Registry, serve_registry


@pytest.fixture(scope="session")
def image_builder(require_root: None, tmp_path_factory: pytest.TempPathFactory) -> ImageBuilder:
    """Builds the test images into OCI layouts once per session (lazily, per image)."""
    return ImageBuilder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def plain_registry(
    require_root: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """A plain-HTTP registry without auth on 127.0.0.1; stopped after the session."""
    yield from serve_registry(tmp_path_factory.mktemp("registry-plain"))


@pytest.fixture(scope="session")
def tls_registry(
    require_root: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """An HTTPS registry with basic auth (user `tester`, random password); stopped after."""
    yield from serve_registry(tmp_path_factory.mktemp("registry-tls"), auth=True)


@pytest.fixture(scope="session")
def pushed_images(plain_registry: Registry, image_builder: ImageBuilder) -> ImageSet:
    """Every standard test image, pushed to `plain_registry`."""
    images = push_all(plain_registry, image_builder)
    timings = {**image_builder.timings, **{f"push {k}": v for k, v in images.timings.items()}}
    print(
        "[images] " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()),
        file=sys.stderr,
    )
    return images


@pytest.fixture(scope="session")
def tls_busybox(tls_registry: Registry, image_builder: ImageBuilder) -> PushedImage:
    """The busybox image pushed to `tls_registry` (with its CA and credentials)."""
    return busybox(tls_registry, image_builder)
