"""An OCI distribution client: manifests and blobs over HTTP(S), with auth and mirrors.

Per registry host, the configuration says which mirrors to try first, whether
the host speaks plain HTTP (only when explicitly allowed), and which CA to trust.
On a 401 the client answers the `WWW-Authenticate` challenge (Basic, or Bearer
via the token realm) and retries once; tokens are cached per endpoint and
repository. Transport failures become typed errors naming the registry.
"""

import base64
import hashlib
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from cri.images import mediatypes as mt
from cri.images.auth import Challenge, Credentials, parse_challenge
from cri.images.digest import Digest, sha256_of
from cri.images.errors import (
    AuthenticationError,
    BlobUnknownError,
    DigestMismatchError,
    IncompleteDownloadError,
    ManifestUnknownError,
    PullError,
    RegistryServerError,
    RegistryUnreachableError,
)
from cri.images.reference import DOCKER_HUB, ImageReference
from cri.images.store import RangeIgnored

_CHUNK = 256 * 1024
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class RegistryHost:
    """How to reach one registry host."""

    mirrors: tuple[str, ...] = ()
    mirrors_only: bool = False
    """Never contact the host itself, only its mirrors (air-gapped nodes, tests)."""
    plain_http: bool = False
    ca_file: Path | None = None
    skip_tls_verify: bool = False


@dataclass(frozen=True)
class RegistryConfig:
    hosts: Mapping[str, RegistryHost] = field(default_factory=dict)

    def for_host(self, host: str) -> RegistryHost:
        return self.hosts.get(host, RegistryHost())


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: Digest
    endpoint: str


def _creds_key(creds: Credentials | None) -> str:
    if creds is None:
        return ""
    raw = "\0".join((creds.username, creds.password, creds.identity_token, creds.registry_token))
    return hashlib.sha256(raw.encode()).hexdigest()


def _basic(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _origin(host: str, cfg: RegistryHost) -> str:
    scheme = "http" if cfg.plain_http else "https"
    return f"{scheme}://{'registry-1.docker.io' if host == DOCKER_HUB else host}"


class RegistryClient:
    def __init__(self, config: RegistryConfig, *, connect_timeout_s: float = 10.0) -> None:
        self.config = config
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=60
        )
        self._session: aiohttp.ClientSession | None = None
        # Cached Authorization headers, per endpoint, repository *and credentials*: a pull
        # must never ride on a token or Basic header that another caller's secret earned.
        self._auth: dict[tuple[str, str, str], str] = {}
        self._ssl: dict[str, ssl.SSLContext | bool] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, auto_decompress=False, trust_env=False
            )
        return self._session

    def endpoints(self, host: str) -> list[str]:
        cfg = self.config.for_host(host)
        mirrors = [m.rstrip("/") for m in cfg.mirrors]
        return mirrors if cfg.mirrors_only and mirrors else [*mirrors, _origin(host, cfg)]

    def _realm_ssl(self, realm: str, registry_host: str) -> ssl.SSLContext | bool:
        """The registry's TLS settings apply to its token realm only on the same host."""
        realm_host = urlsplit(realm).netloc
        return self._ssl_for(registry_host) if realm_host == registry_host else True

    def _ssl_for(self, host: str) -> ssl.SSLContext | bool:
        if host not in self._ssl:
            cfg = self.config.for_host(host)
            if cfg.skip_tls_verify:
                self._ssl[host] = False
            elif cfg.ca_file is not None:
                self._ssl[host] = ssl.create_default_context(cafile=str(cfg.ca_file))
            else:
                self._ssl[host] = True
        return self._ssl[host]

    async def _authorize(
        self, challenge: Challenge, *, ref: ImageReference, creds: Credentials | None, what: str
    ) -> str:
        if challenge.scheme == "basic":
            if creds is None or not creds.has_basic:
                raise AuthenticationError(f"{what}: registry {ref.registry} requires credentials")
            return _basic(creds)
        if challenge.scheme != "bearer":
            raise AuthenticationError(
                f"{what}: registry {ref.registry} wants auth scheme {challenge.scheme!r}, "
                "which is not supported"
            )
        if creds is not None and creds.registry_token:
            return f"Bearer {creds.registry_token}"
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthenticationError(f"{what}: bearer challenge without a realm")
        params = {"scope": challenge.params.get("scope") or f"repository:{ref.repository}:pull"}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        token_headers = {}
        if creds is not None and creds.has_basic:
            token_headers["Authorization"] = _basic(creds)
        try:
            async with self._sess().get(
                realm,
                params=params,
                headers=token_headers,
                ssl=self._realm_ssl(realm, ref.registry),
            ) as resp:
                if resp.status in (401, 403):
                    raise AuthenticationError(
                        f"{what}: token service {realm} refused the credentials ({resp.status})"
                    )
                if resp.status != 200:
                    raise AuthenticationError(
                        f"{what}: token service {realm} answered {resp.status}"
                    )
                try:
                    body = await resp.json(content_type=None)
                except ValueError as err:
                    raise AuthenticationError(
                        f"{what}: token service {realm} answered something that is not JSON"
                    ) from err
        except aiohttp.ClientError as err:
            raise RegistryUnreachableError(f"{what}: token service {realm}: {err}") from err
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not token:
            raise AuthenticationError(f"{what}: token service {realm} returned no token")
        return f"Bearer {token}"

    async def _request(
        self,
        base: str,
        path: str,
        *,
        ref: ImageReference,
        creds: Credentials | None,
        headers: Mapping[str, str],
        what: str,
    ) -> aiohttp.ClientResponse:
        url = f"{base}/v2/{ref.repository}/{path}"
        key = (base, ref.repository, _creds_key(creds))
        for attempt in (1, 2):
            send = dict(headers)
            if key in self._auth:
                send["Authorization"] = self._auth[key]
            try:
                resp = await self._sess().get(url, headers=send, ssl=self._ssl_for(ref.registry))
            except aiohttp.ClientSSLError as err:
                raise RegistryUnreachableError(f"{what}: TLS with {base} failed: {err}") from err
            except (TimeoutError, aiohttp.ClientError, OSError) as err:
                raise RegistryUnreachableError(
                    f"{what}: registry {base} unreachable: {err or type(err).__name__}"
                ) from err
            if resp.status == 401 and attempt == 1:
                header = resp.headers.get("WWW-Authenticate", "")
                resp.release()
                if not header:
                    raise AuthenticationError(f"{what}: {base} answered 401 without a challenge")
                self._auth[key] = await self._authorize(
                    parse_challenge(header), ref=ref, creds=creds, what=what
                )
                continue
            return resp
        raise AssertionError("unreachable")

    @staticmethod
    def _raise_for(resp: aiohttp.ClientResponse, *, base: str, what: str, kind: str) -> None:
        status = resp.status
        if status in (401, 403):
            raise AuthenticationError(
                f"{what}: registry {base} denied access ({status}); check the pull credentials"
            )
        if status == 404:
            if kind == "manifest":
                raise ManifestUnknownError(f"{what}: not found on registry {base} (404)")
            raise BlobUnknownError(f"{what}: blob not found on registry {base} (404)")
        if status >= 500:
            raise RegistryServerError(f"{what}: registry {base} answered {status}")
        raise PullError(f"{what}: registry {base} answered unexpected status {status}")

    async def get_manifest(
        self, ref: ImageReference, reference: str, *, creds: Credentials | None, what: str
    ) -> FetchedManifest:
        """Fetch a manifest or index by tag or digest, trying mirrors before the origin."""
        errors: list[PullError] = []
        for base in self.endpoints(ref.registry):
            try:
                resp = await self._request(
                    base,
                    f"manifests/{reference}",
                    ref=ref,
                    creds=creds,
                    headers={"Accept": mt.MANIFEST_ACCEPT},
                    what=what,
                )
                async with resp:
                    if resp.status != 200:
                        self._raise_for(resp, base=base, what=what, kind="manifest")
                    data = await _read_body(resp, limit=_MAX_MANIFEST_BYTES, what=what)
                    media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            except PullError as err:
                errors.append(err)
                continue
            digest = sha256_of(data)
            if reference.startswith("sha256:") and digest != reference:
                raise DigestMismatchError(
                    f"{what}: registry {base} served a manifest with digest {digest}"
                )
            return FetchedManifest(data=data, media_type=media_type, digest=digest, endpoint=base)
        raise errors[-1]

    async def open_blob(
        self,
        ref: ImageReference,
        digest: Digest,
        offset: int,
        *,
        creds: Credentials | None,
        what: str,
        prefer: str | None = None,
    ) -> AsyncIterator[bytes]:
        """Open a blob stream from `offset` (Range); raise RangeIgnored if the server sent all."""
        bases = self.endpoints(ref.registry)
        if prefer in bases:
            bases.remove(prefer)
            bases.insert(0, prefer)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        errors: list[PullError] = []
        for base in bases:
            try:
                resp = await self._request(
                    base, f"blobs/{digest}", ref=ref, creds=creds, headers=headers, what=what
                )
            except PullError as err:
                errors.append(err)
                continue
            if resp.status == 200 and offset:
                resp.release()
                raise RangeIgnored()
            if resp.status not in (200, 206):
                try:
                    self._raise_for(resp, base=base, what=f"{what} blob {digest}", kind="blob")
                except PullError as err:
                    resp.release()
                    errors.append(err)
                    continue
            return _stream(resp, what=f"{what}: blob {digest} from {base}")
        raise errors[-1]


async def _stream(resp: aiohttp.ClientResponse, *, what: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_chunked(_CHUNK):
            yield chunk
    except (TimeoutError, aiohttp.ClientError, OSError) as err:
        raise IncompleteDownloadError(
            f"{what}: connection lost: {err or type(err).__name__}"
        ) from err
    finally:
        resp.release()


async def _read_body(resp: aiohttp.ClientResponse, *, limit: int, what: str) -> bytes:
    """The whole body (not just what has arrived so far), checked against Content-Length."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise PullError(f"{what}: manifest larger than {limit} bytes")
            chunks.append(chunk)
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        raise IncompleteDownloadError(
            f"{what}: manifest download broke off: {err or type(err).__name__}"
        ) from err
    if resp.content_length is not None and size != resp.content_length:
        raise IncompleteDownloadError(
            f"{what}: manifest ended after {size} of {resp.content_length} bytes"
        )
    return b"".join(chunks)
