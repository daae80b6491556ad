"""Image references normalize the way kubelet and Docker users expect."""

import pytest

from cri.images import InvalidReferenceError, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
        ("someone/app:v2", "docker.io/someone/app:v2"),
        ("quay.io/org/app", "quay.io/org/app:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("127.0.0.1:5000/a/b/c:tag", "127.0.0.1:5000/a/b/c:tag"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"registry:5000/x:1@{DIGEST}", f"registry:5000/x@{DIGEST}"),
    ],
)
def test_normalization(text: str, expected: str) -> None:
    """Short names get docker.io/library and :latest; hosts are known by ".", ":" or localhost."""
    assert str(parse_reference(text)) == expected


def test_registry_port_is_not_mistaken_for_a_tag() -> None:
    """`host:5000/repo` has no tag; the colon belongs to the host."""
    ref = parse_reference("127.0.0.1:5000/repo")
    assert (ref.registry, ref.repository, ref.tag) == ("127.0.0.1:5000", "repo", "latest")


def test_digest_wins_over_tag_when_asking_the_registry() -> None:
    """A pinned digest is what the manifests endpoint is asked for."""
    assert parse_reference(f"a/b:1@{DIGEST}").reference == DIGEST


@pytest.mark.parametrize(
    "bad", ["", "UPPER/case", "busybox@sha256:short", "busybox:bad tag", "a//b", "busybox:"]
)
def test_invalid_references_say_what_is_wrong(bad: str) -> None:
    """Malformed references raise InvalidReferenceError, naming the reference."""
    with pytest.raises(InvalidReferenceError):
        parse_reference(bad)
