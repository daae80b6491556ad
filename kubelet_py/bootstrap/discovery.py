"""Token discovery, as kubeadm does it: trust the cluster CA because a token and a hash say so.

    GET /api/v1/namespaces/kube-public/configmaps/cluster-info   (anonymous, TLS unverified)
      data.kubeconfig               a kubeconfig with the cluster's server and CA
      data.jws-kubeconfig-<id>      HS256 JWS of data.kubeconfig keyed by the token secret,
                                    payload detached: "<header>..<signature>"
    1. the signature must verify with our token (proves the publisher knows the secret)
    2. sha256 of a CA certificate's SubjectPublicKeyInfo must equal a pinned hash
    3. fetch again, now verifying TLS against that CA; the kubeconfig must be identical

The bootstrapsigner controller (kube-controller-manager `--controllers=...,bootstrapsigner`)
adds and removes the `jws-kubeconfig-<id>` keys as tokens with usage-bootstrap-signing come
and go; the ConfigMap itself and anonymous read access are the cluster admin's (kubeadm's
`bootstrap-token` phase, or this project's Helm chart). The verification functions are
pure; `discover()` does the HTTP.
"""

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kubelet_py.bootstrap.errors import (
    ApiUnreachable,
    BadInput,
    BootstrapError,
    DiscoveryError,
    Forbidden,
    TokenNotSigned,
)
from kubelet_py.bootstrap.token import BootstrapToken

CLUSTER_INFO_PATH = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
JWS_PREFIX = "jws-kubeconfig-"
_HASH_RE = re.compile(r"\Asha256:([0-9a-fA-F]{64})\Z")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ClusterInfo:
    """What discovery establishes: where the API server is and which CA to trust."""

    server: str
    ca_pem: bytes
    cluster_name: str


def ca_cert_hash(cert: x509.Certificate) -> str:
    """kubeadm's pin: `sha256:<hex>` of the certificate's DER SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def ca_cert_hash_of_pem(pem: bytes) -> str:
    return ca_cert_hash(x509.load_pem_x509_certificate(pem))


def parse_ca_hash(text: str) -> str:
    """Normalize one `--discovery-token-ca-cert-hash` value to `sha256:<lower hex>`."""
    m = _HASH_RE.match(text.strip())
    if m is None:
        raise BadInput(
            f"CA hash {text!r} must be sha256:<64 hex digits> (the SHA-256 of the CA "
            "certificate's SubjectPublicKeyInfo, as `kubeadm token create --print-join-command` "
            "prints it)"
        )
    return "sha256:" + m.group(1).lower()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def detached_signature(payload: str, token: BootstrapToken) -> str:
    """The JWS the bootstrapsigner writes: HS256, `kid` = token id, payload left out."""
    header = _b64url(json.dumps({"alg": "HS256", "kid": token.id}, separators=(",", ":")).encode())
    signing_input = f"{header}.{_b64url(payload.encode())}".encode()
    mac = hmac.new(token.secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}..{_b64url(mac)}"


def detached_signature_valid(jws: str, payload: str, token: BootstrapToken) -> bool:
    """Verify a detached compact JWS over `payload` with the token secret (HS256 only)."""
    parts = jws.strip().split(".")
    if len(parts) != 3 or parts[1] != "":
        return False
    header_b64, _, sig_b64 = parts
    try:
        header = json.loads(_b64url_decode(header_b64))
        signature = _b64url_decode(sig_b64)
    except (ValueError, binascii.Error):
        return False
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        return False
    if header.get("kid", token.id) != token.id:
        return False
    signing_input = f"{header_b64}.{_b64url(payload.encode())}".encode()
    expected = hmac.new(token.secret.encode(), signing_input, hashlib.sha256).digest()
    return hmac.compare_digest(expected, signature)


def _cluster_of(kubeconfig: str) -> tuple[str, str, bytes]:
    try:
        doc = yaml.safe_load(kubeconfig)
        entry = doc["clusters"][0]
        cluster = entry["cluster"]
        server = str(cluster["server"])
        ca = base64.b64decode(cluster["certificate-authority-data"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError, binascii.Error) as err:
        raise DiscoveryError(
            f"the kubeconfig in kube-public/cluster-info is malformed ({err!r}); "
            "it needs clusters[0].cluster.server and certificate-authority-data"
        ) from err
    return str(entry.get("name") or "kubernetes"), server, ca


def verify_cluster_info(
    data: Mapping[str, str], token: BootstrapToken, ca_hashes: Sequence[str]
) -> ClusterInfo:
    """Check cluster-info's signature for `token` and its CA against the pinned hashes."""
    kubeconfig = data.get("kubeconfig")
    if not kubeconfig:
        raise DiscoveryError(
            "kube-public/cluster-info has no `kubeconfig` key: this cluster is not set up "
            "for token bootstrapping"
        )
    jws = data.get(JWS_PREFIX + token.id)
    if not jws:
        raise TokenNotSigned(
            f"kube-public/cluster-info has no signature for token id {token.id!r}: the token "
            "does not exist, has expired, lacks usage-bootstrap-signing, or the "
            "bootstrapsigner controller has not signed it yet"
        )
    if not detached_signature_valid(jws, kubeconfig, token):
        raise DiscoveryError(
            f"the signature of kube-public/cluster-info for token id {token.id!r} does not "
            "verify with the given token secret: the token is wrong"
        )
    name, server, ca_pem = _cluster_of(kubeconfig)
    try:
        certs = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as err:
        raise DiscoveryError(f"the CA in kube-public/cluster-info is not PEM: {err}") from err
    found = [ca_cert_hash(c) for c in certs]
    if not set(found) & {parse_ca_hash(h) for h in ca_hashes}:
        raise DiscoveryError(
            f"the cluster CA's public key hash ({', '.join(found)}) matches none of the given "
            f"--discovery-token-ca-cert-hash values ({', '.join(ca_hashes)}): refusing to trust "
            "this API server"
        )
    return ClusterInfo(server=server.rstrip("/"), ca_pem=ca_pem, cluster_name=name)


def check_server_url(server: str) -> str:
    parts = urlsplit(server if "://" in server else f"https://{server}")
    if parts.scheme != "https" or not parts.hostname:
        raise BadInput(f"--server {server!r} must be an https:// URL of the API server")
    return f"https://{parts.netloc}"


def _tls(ca_pem: bytes | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_pem is None:
        # The first fetch cannot verify anything yet: trust comes from the signature and hash.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca_pem.decode())
    return ctx


async def fetch_cluster_info(
    server: str, *, ca_pem: bytes | None, timeout_s: float = 10.0
) -> dict[str, str]:
    """GET cluster-info anonymously; unverified TLS when `ca_pem` is None."""
    url = server + CLUSTER_INFO_PATH
    try:
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=_tls(ca_pem)),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                headers={"Accept": "application/json", "User-Agent": "kubelet-py/join"},
            ) as session,
            session.get(url) as resp,
        ):
            text = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as err:
        why = str(err) or type(err).__name__
        raise ApiUnreachable(f"cannot reach the API server at {server}: {why}") from err
    if status == 404:
        raise DiscoveryError(
            f"{server} has no kube-public/cluster-info ConfigMap: the cluster is not prepared "
            "for joining (install the kubelet-py Helm chart, or kubeadm's bootstrap-token phase)"
        )
    if status in (401, 403):
        raise Forbidden(
            f"{server} does not let anonymous users read kube-public/cluster-info ({status}); "
            "the Role/RoleBinding for system:anonymous is missing"
        )
    if status >= 400:
        exc: BootstrapError = ApiUnreachable(f"GET {url}: HTTP {status}: {text[:300]}")
        raise exc
    try:
        doc: Any = json.loads(text)
        data = doc.get("data") or {}
    except (ValueError, AttributeError) as err:
        raise DiscoveryError(f"GET {url} did not return a ConfigMap: {text[:200]!r}") from err
    return {str(k): str(v) for k, v in data.items()}


async def discover(
    server: str,
    token: BootstrapToken,
    ca_hashes: Sequence[str],
    *,
    timeout_s: float = 300.0,
    retry_interval_s: float = 2.0,
    progress: Progress = print,
) -> ClusterInfo:
    """Fetch and verify cluster-info; retry temporary failures until `timeout_s` has passed."""
    if not ca_hashes:
        raise BadInput("at least one --discovery-token-ca-cert-hash is needed")
    hashes = [parse_ca_hash(h) for h in ca_hashes]
    server = check_server_url(server)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            data = await fetch_cluster_info(server, ca_pem=None)
            info = verify_cluster_info(data, token, hashes)
            secure = await fetch_cluster_info(server, ca_pem=info.ca_pem)
            if secure.get("kubeconfig") != data.get("kubeconfig"):
                raise DiscoveryError(
                    "kube-public/cluster-info read over verified TLS differs from the first "
                    "(unverified) read: refusing to continue"
                )
        except BootstrapError as err:
            left = deadline - time.monotonic()
            if not err.temporary or left <= 0:
                raise
            progress(f"discovery: {err}; retrying for another {left:.0f} s")
            await asyncio.sleep(min(retry_interval_s, max(left, 0.05)))
        else:
            return info
