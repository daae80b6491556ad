"""Bearer-token auth against a real registry: docker-registry 2.8 in `auth: token:` mode,
trusting JWTs from our test token service (tests/support/tokenserver.py).

The registry answers 401 `Bearer realm=...,service=...,scope=...`; the client asks the realm
for a token with Basic credentials and retries with it. skopeo pushes the test images
through the same flow (`--dest-creds`), so the registry's contents never come from us.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cri.images import (
    AuthenticationError,
    Credentials,
    ImageService,
    RegistryConfig,
    RegistryHost,
)
from tests.integration.images.conftest import Runner
from tests.support.images import ImageBuilder, LayoutImage, sha256_digest, skopeo
from tests.support.registry import Registry
from tests.support.tokenserver import TokenRequest, TokenServer

USER, PASSWORD = "bearer-puller", "t0ken-s3cret"


@dataclass(frozen=True)
class BearerImage:
    name: str  # repository on the token registry
    reference: str
    digest: str  # of the manifest the registry serves

    @property
    def by_digest(self) -> str:
        return f"{self.reference.rsplit(':', 1)[0]}@{self.digest}"


@dataclass(frozen=True)
class BearerImages:
    busybox: BearerImage
    nonroot: BearerImage


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    with TokenServer(
        tmp_path_factory.mktemp("token-server"), username=USER, password=PASSWORD
    ) as server:
        yield server


@pytest.fixture(scope="module")
def token_registry(
    token_server: TokenServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    with Registry(
        tmp_path_factory.mktemp("registry-token"), token_auth=token_server.registry_auth()
    ) as registry:
        yield registry


def _push(registry: Registry, builder: ImageBuilder, image: LayoutImage, name: str) -> BearerImage:
    """skopeo push with `--dest-creds` (skopeo does the bearer flow), then read it back."""
    reference = registry.reference(name)
    creds = f"{USER}:{PASSWORD}"
    skopeo(
        builder.work_dir, "copy", "--dest-tls-verify=false", f"--dest-creds={creds}",
        "--preserve-digests", image.skopeo_ref, f"docker://{reference}",
    )  # fmt: skip
    raw = skopeo(
        builder.work_dir, "inspect", "--raw", "--tls-verify=false", f"--creds={creds}",
        f"docker://{reference}",
    )  # fmt: skip
    assert sha256_digest(raw) == image.digest, f"{reference} serves another manifest"
    return BearerImage(name=name, reference=reference, digest=image.digest)


@pytest.fixture(scope="module")
def bearer_images(
    token_registry: Registry, token_server: TokenServer, image_builder: ImageBuilder
) -> BearerImages:
    """busybox and nonroot, pushed by skopeo through the token flow."""
    images = BearerImages(
        busybox=_push(token_registry, image_builder, image_builder.busybox(), "team/busybox"),
        nonroot=_push(token_registry, image_builder, image_builder.nonroot(), "team/nonroot"),
    )
    # the push itself went through the token service with push scope
    assert any(
        r.authenticated and f"repository:{images.busybox.name}:pull,push" in r.scopes
        for r in token_server.requests
    ), token_server.requests
    return images


@pytest.fixture
def seen(token_server: TokenServer) -> TokenServer:
    """The token server, with the requests of earlier tests and pushes forgotten."""
    token_server.clear()
    return token_server


def _service(root: Path, registry: Registry) -> ImageService:
    return ImageService(
        root, registry=RegistryConfig(hosts={registry.host: RegistryHost(plain_http=True)})
    )


@pytest.fixture
def service(tmp_path: Path, token_registry: Registry, run: Runner) -> Iterator[ImageService]:
    svc = _service(tmp_path / "store", token_registry)
    yield svc
    run(svc.close())


def _for_repo(requests: list[TokenRequest], name: str) -> list[TokenRequest]:
    return [r for r in requests if f"repository:{name}:pull" in r.scopes]


def test_registry_demands_a_bearer_token(
    token_registry: Registry, token_server: TokenServer
) -> None:
    """Without a token the registry challenges with our realm, service and the scope."""
    status, headers, _ = token_registry.request("GET", "/v2/team/busybox/manifests/latest")
    assert status == 401
    assert headers["www-authenticate"] == (
        f'Bearer realm="{token_server.realm}",service="{token_server.service}",'
        'scope="repository:team/busybox:pull"'
    )


def test_pull_with_credentials_uses_the_token_service(
    run: Runner, bearer_images: BearerImages, seen: TokenServer, service: ImageService
) -> None:
    """Right credentials: the pull succeeds with a token asked for with service, scope, Basic."""
    image = bearer_images.busybox
    record = run(service.pull(image.reference, credentials=Credentials(USER, PASSWORD)))
    assert record.manifest_digest == image.digest
    assert record.repo_tags == (image.reference,)
    requests = seen.requests
    assert requests, "the client never asked the token service"
    for r in requests:
        assert r.params == {
            "service": [seen.service],
            "scope": [f"repository:{image.name}:pull"],
        }
        assert r.credentials_given and r.authenticated and r.username == USER
        assert r.status == 200
        assert [(g.name, g.actions) for g in r.granted] == [(image.name, ("pull",))]
    # one token per repository, reused for the manifest and every blob
    assert len(requests) == 1


def test_pulls_work_repeatedly(
    run: Runner,
    bearer_images: BearerImages,
    seen: TokenServer,
    service: ImageService,
    tmp_path: Path,
    token_registry: Registry,
) -> None:
    """A second repository gets its own token; pulling again, here or elsewhere, still works."""
    creds = Credentials(USER, PASSWORD)
    first = run(service.pull(bearer_images.busybox.reference, credentials=creds))
    second = run(service.pull(bearer_images.nonroot.reference, credentials=creds))
    assert second.manifest_digest == bearer_images.nonroot.digest
    assert run(service.pull(bearer_images.busybox.reference, credentials=creds)).id == first.id
    assert {r.id for r in service.list_images()} == {first.id, second.id}
    assert len(_for_repo(seen.requests, bearer_images.nonroot.name)) == 1

    other = _service(tmp_path / "other-store", token_registry)
    try:
        again = run(other.pull(bearer_images.busybox.reference, credentials=creds))
        assert again.id == first.id
        again = run(other.pull(bearer_images.busybox.by_digest, credentials=creds))
        assert again.id == first.id
    finally:
        run(other.close())
    assert all(r.authenticated and r.status == 200 for r in seen.requests)


def test_wrong_password_is_refused(
    run: Runner, bearer_images: BearerImages, seen: TokenServer, service: ImageService
) -> None:
    """Wrong password: the token service answers 401; the pull fails and stores nothing."""
    image = bearer_images.busybox
    with pytest.raises(AuthenticationError, match=re.escape(image.reference)) as err:
        run(service.pull(image.reference, credentials=Credentials(USER, "wrong")))
    assert "token service" in str(err.value) and "401" in str(err.value)
    assert [(r.credentials_given, r.authenticated, r.status) for r in seen.requests] == [
        (True, False, 401)
    ]
    assert service.list_images() == []
    assert service.content.digests() == set()


def test_no_credentials_get_a_token_without_access(
    run: Runner,
    bearer_images: BearerImages,
    seen: TokenServer,
    service: ImageService,
    token_registry: Registry,
) -> None:
    """No credentials: an anonymous token grants nothing, the registry refuses it again."""
    image = bearer_images.busybox
    with pytest.raises(AuthenticationError, match=re.escape(token_registry.host)):
        run(service.pull(image.reference))
    requests = seen.requests
    assert [(r.credentials_given, r.status, r.granted) for r in requests] == [(False, 200, ())]
    assert requests[0].params["scope"] == [f"repository:{image.name}:pull"]
    assert service.list_images() == []
    assert service.content.digests() == set()


def test_a_token_is_not_reused_for_other_credentials(
    run: Runner, bearer_images: BearerImages, seen: TokenServer, service: ImageService
) -> None:
    """After a pull with good credentials, a pull without any must still be refused."""
    image = bearer_images.busybox
    record = run(service.pull(image.reference, credentials=Credentials(USER, PASSWORD)))
    service.remove(record.id)
    assert service.list_images() == []
    with pytest.raises(AuthenticationError):
        run(service.pull(image.reference))
