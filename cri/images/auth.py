"""Registry credentials and the `WWW-Authenticate` challenge. Pure.

Credentials come from a CRI AuthConfig or from a dockerconfigjson document
(what `imagePullSecrets` hold). A challenge is either `Basic realm=...` or
`Bearer realm=...,service=...,scope=...` (distribution's token auth): for the
latter the client fetches a token from the realm and retries with it.
"""

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cri.images.errors import AuthenticationError
from cri.images.reference import DOCKER_HUB


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""

    def __repr__(self) -> str:  # never print secrets in logs or errors
        return f"Credentials(username={self.username!r}, password=<redacted>)"

    @property
    def has_basic(self) -> bool:
        return bool(self.username or self.password)


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer"
    params: Mapping[str, str]


_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_challenge(header: str) -> Challenge:
    """Parse one `WWW-Authenticate` header value."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM_RE.finditer(rest)
    }
    return Challenge(scheme=scheme.lower(), params=params)


def normalize_registry_host(key: str) -> str:
    """A dockerconfig `auths` key (host, URL, or Docker Hub's v1 URL) as a registry host."""
    host = re.sub(r"^https?://", "", key.strip()).split("/", 1)[0]
    if host in ("index.docker.io", "registry-1.docker.io", "docker.io"):
        return DOCKER_HUB
    return host


def credentials_from_auth_entry(entry: Mapping[str, Any]) -> Credentials:
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    auth = entry.get("auth")
    if auth and not (username or password):
        try:
            decoded = base64.b64decode(str(auth)).decode()
        except ValueError as err:
            raise AuthenticationError(
                f"malformed 'auth' field in registry credentials: {err}"
            ) from err
        username, _, password = decoded.partition(":")
    return Credentials(
        username=username,
        password=password,
        identity_token=str(entry.get("identitytoken") or entry.get("identity_token") or ""),
        registry_token=str(entry.get("registrytoken") or entry.get("registry_token") or ""),
    )


def parse_dockerconfigjson(data: bytes | str) -> dict[str, Credentials]:
    """`{"auths": {host: {auth|username/password}}}` -> {registry host: Credentials}."""
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise AuthenticationError(f"dockerconfigjson is not JSON: {err}") from err
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        raise AuthenticationError("dockerconfigjson has no 'auths' object")
    return {
        normalize_registry_host(host): credentials_from_auth_entry(entry)
        for host, entry in auths.items()
        if isinstance(entry, dict)
    }
