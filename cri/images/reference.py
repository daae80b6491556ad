"""Image references, normalized the way kubelet and Docker users expect. Pure.

    busybox                       -> docker.io/library/busybox:latest
    library/busybox:1.36          -> docker.io/library/busybox:1.36
    quay.io/org/app@sha256:…      -> quay.io/org/app@sha256:…
    127.0.0.1:5000/x/y:tag        -> registry 127.0.0.1:5000, repository x/y

The first path component is a registry host when it contains a '.' or ':', or is
`localhost`; otherwise the image lives on Docker Hub.
"""

import re
from dataclasses import dataclass

from cri.images.errors import InvalidReferenceError

DOCKER_HUB = "docker.io"
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_REPO_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class ImageReference:
    """A parsed, normalized reference: registry host, repository, and a tag or a digest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """`registry/repository`, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What to ask the registry's manifests endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or 'latest'}"

    def with_digest(self, digest: str) -> "ImageReference":
        return ImageReference(self.registry, self.repository, None, digest)


def parse_reference(text: str) -> ImageReference:
    """Parse and normalize `text`, or raise InvalidReferenceError saying what is wrong."""
    raw = text.strip()
    if not raw:
        raise InvalidReferenceError("empty image reference")
    digest = None
    if "@" in raw:
        raw, digest = raw.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise InvalidReferenceError(f"invalid digest in image reference {text!r}")
    tag = None
    last_slash = raw.rfind("/")
    colon = raw.rfind(":")
    if colon > last_slash:
        raw, tag = raw[:colon], raw[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidReferenceError(f"invalid tag {tag!r} in image reference {text!r}")
    parts = raw.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry, path = parts[0], parts[1:]
    else:
        registry, path = DOCKER_HUB, parts
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and len(path) == 1:
        path = ["library", *path]
    for component in path:
        if not _REPO_COMPONENT_RE.match(component):
            raise InvalidReferenceError(
                f"invalid repository name {'/'.join(path)!r} in image reference {text!r}"
                " (lowercase letters, digits and separators . _ - only)"
            )
    if digest is None and tag is None:
        tag = "latest"
    return ImageReference(registry=registry, repository="/".join(path), tag=tag, digest=digest)
