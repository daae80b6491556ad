"""Settings of the kubelet API server (the kubelet's flags of the same names)."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerConfig:
    port: int = 10250
    """HTTPS port (--port); 0 turns the HTTPS API off."""
    address: str = "0.0.0.0"  # noqa: S104 - the apiserver reaches the kubelet on the node IP
    healthz_port: int = 10248
    """Plain-HTTP /healthz port (--healthz-port); 0 turns it off."""
    healthz_bind_address: str = "127.0.0.1"
    anonymous_auth: bool = False
    client_ca_file: Path | None = None
    """CA bundle for client certificates; None means the CA of the kubeconfig."""
    cert_dir: Path | None = None
    """Where the serving certificate lives; None means <root-dir>/pki."""
    tls_cert_file: Path | None = None
    """A serving certificate (tlsCertFile) to use instead of the self-signed one."""
    tls_private_key_file: Path | None = None
    authn_cache_ttl_s: float = 120.0
    authz_allowed_ttl_s: float = 300.0
    authz_denied_ttl_s: float = 30.0
