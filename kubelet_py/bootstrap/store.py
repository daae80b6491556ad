"""Certificates and kubeconfigs on disk, laid out as the kubelet does and never half-written.

    <root>/pki/kubelet-client-<UTC time>.pem    certificate + key (0600), one per issue
    <root>/pki/kubelet-client-current.pem       symlink to the newest; what kubelet.conf names
    <root>/pki/kubelet-server-<UTC time>.pem    the serving pair, same scheme
    <root>/kubelet.conf                         server, CA, client cert/key -> the current symlink

A new pair is written to a temporary name, fsynced and renamed; then a temporary symlink
is renamed over `-current.pem`, so a reader (or a crash) sees the old pair or the new one.
`install_join_credentials()` stages the first pair and the kubeconfig together in a temp
dir next to their destinations and moves the kubeconfig last: a kubeconfig that exists
always names a complete, signed pair.
"""

import base64
import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cri.fsutil import write_atomic
from kubelet_py.bootstrap.errors import CredentialsError

CLIENT_PREFIX = "kubelet-client"
SERVER_PREFIX = "kubelet-server"
_KEEP = 2  # the current pair and the one before it (what a rollback would want)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pair_pem(cert_pem: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Certificate chain then key, in one file (the kubelet's `-current.pem` format)."""
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem.rstrip(b"\n") + b"\n" + key_pem


def split_pair(pem: bytes) -> tuple[bytes, bytes]:
    """Split a `-current.pem` file into (certificate PEM, key PEM)."""
    marker = pem.find(b"-----BEGIN PRIVATE KEY-----")
    if marker < 0:
        marker = pem.find(b"-----BEGIN EC PRIVATE KEY-----")
    if marker < 0:
        raise CredentialsError("no private key in the certificate file")
    return pem[:marker], pem[marker:]


@dataclass(frozen=True)
class CertStore:
    """One rotating pair (`client` or `server`) under a pki directory."""

    directory: Path
    prefix: str

    @property
    def current_path(self) -> Path:
        return self.directory / f"{self.prefix}-current.pem"

    def current(self) -> tuple[x509.Certificate, Path] | None:
        """The current certificate, or None when there is none or it is unreadable."""
        try:
            pem = self.current_path.read_bytes()
            cert_pem, key_pem = split_pair(pem)
            serialization.load_pem_private_key(key_pem, password=None)
            return x509.load_pem_x509_certificate(cert_pem), self.current_path
        except (OSError, ValueError, CredentialsError):
            return None

    def stage(self, staging: Path, cert_pem: bytes, key: ec.EllipticCurvePrivateKey) -> Path:
        """Write a new dated pair into `staging` (fsynced), not yet visible."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H-%M-%S-%f")
        path = staging / f"{self.prefix}-{stamp}.pem"
        write_atomic(path, pair_pem(cert_pem, key), mode=0o600)
        return path

    def promote(self, staged: Path) -> Path:
        """Move a staged pair in and point `-current.pem` at it, each step atomic."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self.directory / staged.name
        staged.replace(final)
        link_tmp = self.directory / f".{self.prefix}-current.{os.getpid()}.tmp"
        link_tmp.unlink(missing_ok=True)
        link_tmp.symlink_to(final.name)
        link_tmp.replace(self.current_path)
        _fsync_dir(self.directory)
        self._prune(keep=final)
        return final

    def update(self, cert_pem: bytes, key: ec.EllipticCurvePrivateKey) -> Path:
        """Stage and promote a new pair in one go (rotation)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.prefix}-", dir=self.directory))
        try:
            return self.promote(self.stage(staging, cert_pem, key))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _prune(self, *, keep: Path) -> None:
        dated = sorted(
            p
            for p in self.directory.glob(f"{self.prefix}-*.pem")
            if p.name != self.current_path.name and not p.is_symlink()
        )
        for old in dated[:-_KEEP]:
            if old != keep:
                old.unlink(missing_ok=True)


def node_kubeconfig(
    *, server: str, ca_pem: bytes, node_name: str, client_pem: Path, cluster_name: str
) -> bytes:
    """kubelet.conf: the node's identity by file reference, so rotation needs no rewrite."""
    user = f"system:node:{node_name}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate": str(client_pem), "client-key": str(client_pem)},
            }
        ],
        "contexts": [{"name": "default", "context": {"cluster": cluster_name, "user": user}}],
        "current-context": "default",
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False).encode()


def bootstrap_kubeconfig(*, server: str, ca_pem: bytes, token: str, cluster_name: str) -> bytes:
    """bootstrap-kubelet.conf: the token as credentials, used only to get the first cert."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": "tls-bootstrap-token-user", "user": {"token": token}}],
        "contexts": [
            {
                "name": "tls-bootstrap-token-user@" + cluster_name,
                "context": {"cluster": cluster_name, "user": "tls-bootstrap-token-user"},
            }
        ],
        "current-context": "tls-bootstrap-token-user@" + cluster_name,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False).encode()


def install_join_credentials(
    *,
    kubeconfig: Path,
    store: CertStore,
    cert_pem: bytes,
    key: ec.EllipticCurvePrivateKey,
    server: str,
    ca_pem: bytes,
    node_name: str,
    cluster_name: str,
) -> Path:
    """Stage the first client pair and kubelet.conf in a temp dir; move the kubeconfig last."""
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    store.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=".join-", dir=store.directory))
    try:
        staged_pair = store.stage(staging, cert_pem, key)
        staged_conf = staging / "kubelet.conf"
        write_atomic(
            staged_conf,
            node_kubeconfig(
                server=server,
                ca_pem=ca_pem,
                node_name=node_name,
                client_pem=store.current_path.absolute(),
                cluster_name=cluster_name,
            ),
            mode=0o600,
        )
        store.promote(staged_pair)
        if staged_conf.stat().st_dev == kubeconfig.parent.stat().st_dev:
            staged_conf.replace(kubeconfig)
        else:  # another filesystem: copy beside the target, then rename there
            write_atomic(kubeconfig, staged_conf.read_bytes(), mode=0o600)
        _fsync_dir(kubeconfig.parent)
    except OSError as err:
        raise CredentialsError(f"writing the node's credentials to {kubeconfig}: {err}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return kubeconfig
