"""`kubelet-py join`: from a token and a CA hash to a node identity on disk, as kubeadm does.

    discover (discovery.py)  cluster-info verified by the token's signature and the CA pin
    bootstrap-kubelet.conf   the token as credentials, with the now-trusted CA (0600)
    client CSR (csr.py)      kube-apiserver-client-kubelet, system:node:<name>; wait for the
                             csrapproving controller (or an admin) and the signer
    kubelet.conf + pair      installed by store.install_join_credentials (kubeconfig last)
    bootstrap-kubelet.conf   removed: the token's job is done

A node that already holds a valid kubelet.conf skips all of it (the kubelet does the
same with --bootstrap-kubeconfig). A failure at any step leaves no kubelet.conf behind
and nothing that a second run would trip over, so a fixed cause plus a re-run works.
"""

import datetime
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cri.fsutil import write_atomic
from kubelet_py.agent.apiclient import ApiClient, KubeConfig, load_kubeconfig
from kubelet_py.bootstrap.csr import CertKind, CertRequest, request_certificate
from kubelet_py.bootstrap.discovery import discover
from kubelet_py.bootstrap.errors import BootstrapError, CredentialsError
from kubelet_py.bootstrap.store import (
    CLIENT_PREFIX,
    CertStore,
    bootstrap_kubeconfig,
    install_join_credentials,
)
from kubelet_py.bootstrap.token import BootstrapToken
from kubelet_py.x509util import new_key

log = logging.getLogger("kubelet_py.bootstrap")

Progress = Callable[[str], None]
BOOTSTRAP_KUBECONFIG = "bootstrap-kubelet.conf"


@dataclass(frozen=True)
class JoinRequest:
    """Everything `join()` needs; the CLI builds it from flags."""

    server: str
    token: BootstrapToken
    ca_hashes: tuple[str, ...]
    node_name: str
    root: Path
    kubeconfig: Path
    discovery_timeout_s: float = 300.0
    csr_timeout_s: float = 900.0

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def client_store(self) -> CertStore:
        return CertStore(self.pki_dir, CLIENT_PREFIX)


def usable_kubeconfig(path: Path, *, min_left: datetime.timedelta) -> str | None:
    """Why `path` cannot be used as the node's credentials, or None if it can."""
    if not path.exists():
        return f"{path} does not exist"
    try:
        cfg = load_kubeconfig(path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path} is not a readable kubeconfig: {err}"
    if cfg.token:
        return None
    if not cfg.cert_pem or not cfg.key_pem:
        return f"{path} has neither a token nor a client certificate and key"
    try:
        cert = x509.load_pem_x509_certificate(cfg.cert_pem)
        serialization.load_pem_private_key(cfg.key_pem, password=None)
    except ValueError as err:
        return f"the client certificate or key named in {path} is unreadable: {err}"
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if left < min_left:
        return f"the client certificate in {path} expires at {cert.not_valid_after_utc.isoformat()}"
    return None


def _check_issued(cert_pem: bytes, node_name: str, key_public: bytes) -> None:
    cert = x509.load_pem_x509_certificate(cert_pem)
    public = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if public != key_public:
        raise CredentialsError("the signed certificate is not for the key we generated")
    cns = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if cns != [f"system:node:{node_name}"]:
        raise CredentialsError(f"the signed certificate is for {cns}, not system:node:{node_name}")


async def join(request: JoinRequest, *, progress: Progress = print) -> Path:
    """Obtain the node's client credentials; return the path of its kubeconfig."""
    progress(f"discovering the cluster at {request.server} (token id {request.token.id})")
    info = await discover(
        request.server,
        request.token,
        request.ca_hashes,
        timeout_s=request.discovery_timeout_s,
        progress=progress,
    )
    progress(f"cluster CA verified; API server {info.server}")
    bootstrap_path = request.root / BOOTSTRAP_KUBECONFIG
    request.root.mkdir(parents=True, exist_ok=True)
    write_atomic(
        bootstrap_path,
        bootstrap_kubeconfig(
            server=info.server,
            ca_pem=info.ca_pem,
            token=request.token.value,
            cluster_name=info.cluster_name,
        ),
        mode=0o600,
    )
    api = ApiClient(
        KubeConfig(
            server=info.server,
            ca_pem=info.ca_pem,
            cert_pem=None,
            key_pem=None,
            token=request.token.value,
        ),
        user_agent="kubelet-py/join",
    )
    key = new_key()
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        try:
            _, cert_pem = await request_certificate(
                api,
                CertRequest(CertKind.CLIENT, request.node_name),
                key,
                timeout_s=request.csr_timeout_s,
                progress=progress,
            )
        finally:
            await api.close()
        _check_issued(cert_pem, request.node_name, public)
        path = install_join_credentials(
            kubeconfig=request.kubeconfig,
            store=request.client_store,
            cert_pem=cert_pem,
            key=key,
            server=info.server,
            ca_pem=info.ca_pem,
            node_name=request.node_name,
            cluster_name=info.cluster_name,
        )
    finally:
        # Done or failed, the token's file goes: a retry writes it again, and a token
        # should not lie around on disk longer than the join that needed it.
        bootstrap_path.unlink(missing_ok=True)
    progress(f"wrote {path} (client certificate {request.client_store.current_path})")
    return path


def describe_failure(err: BootstrapError) -> str:
    """One line for the terminal: the error, and whether running again as-is may help."""
    hint = "temporary: run the same command again" if err.temporary else "fix the cause, then rerun"
    return f"join failed: {err} ({hint}; no credentials were written)"


__all__: Sequence[str] = ["JoinRequest", "describe_failure", "join", "usable_kubeconfig"]
