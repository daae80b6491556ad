"""A kubeadm-like PKI for the local cluster, made with `cryptography`.

What it makes mirrors `kubeadm init phase certs/kubeconfig`: a cluster CA (which
also signs CSRs through the controller-manager), the apiserver's serving cert,
its kubelet-client cert, a front-proxy CA and client, the service-account signing
key pair, and client certificates for the admin, the controller-manager and the
scheduler. `node_identity()` mints `system:node:<name>` certs in `system:nodes`
for tests, as the TLS bootstrap flow would hand a kubelet.

Keys are ECDSA P-256: the apiserver accepts them everywhere (ES256 service-account
tokens included) and they are made in microseconds, which keeps cluster start fast.
"""

import base64
import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubelet_py.devcluster.fsutil import write_atomic
from kubelet_py.x509util import key_pem, key_usage, new_key

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_VALIDITY = datetime.timedelta(days=365)
_CA_VALIDITY = datetime.timedelta(days=3650)
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate small clock skew between processes


@dataclass(frozen=True)
class CertKeyPair:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.crt` and `<stem>.key` (0600) into `directory`."""
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        write_atomic(cert_path, self.cert_pem)
        write_atomic(key_path, self.key_pem, mode=0o600)
        return cert_path, key_path


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA that issues leaf certificates."""

    pair: CertKeyPair

    @classmethod
    def create(cls, common_name: str) -> "CertificateAuthority":
        key = new_key()
        now = datetime.datetime.now(datetime.UTC)
        name = _name(common_name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                key_usage(ca=True),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(CertKeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem(key)))

    def issue(
        self,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[IPAddress] = (),
        client: bool = False,
        server: bool = False,
        validity: datetime.timedelta = _VALIDITY,
    ) -> CertKeyPair:
        """Issue a leaf certificate for client auth, server auth, or both."""
        ca_cert = self.pair.certificate
        ca_key = serialization.load_pem_private_key(self.pair.key_pem, password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = new_key()
        now = datetime.datetime.now(datetime.UTC)
        usages = []
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                key_usage(ca=False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ip) for ip in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return CertKeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def kubeconfig_yaml(
    *,
    cluster_name: str,
    server: str,
    ca_pem: bytes,
    user: str,
    client: CertKeyPair | None = None,
    token: str | None = None,
) -> bytes:
    """A kubeconfig with one cluster, one user and one current context, credentials inline."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    user_entry: dict[str, str] = {}
    if client is not None:
        user_entry["client-certificate-data"] = b64(client.cert_pem)
        user_entry["client-key-data"] = b64(client.key_pem)
    if token is not None:
        user_entry["token"] = token
    context = f"{user}@{cluster_name}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [{"name": context, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": context,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False).encode()


@dataclass(frozen=True)
class ClusterPKI:
    """Paths of everything the control plane reads, all under one directory."""

    directory: Path
    ca: CertificateAuthority
    front_proxy_ca: CertificateAuthority

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    def cert(self, stem: str) -> Path:
        return self.directory / f"{stem}.crt"

    def key(self, stem: str) -> Path:
        return self.directory / f"{stem}.key"

    @property
    def sa_public_key(self) -> Path:
        return self.directory / "sa.pub"

    @property
    def sa_private_key(self) -> Path:
        return self.directory / "sa.key"

    def node_identity(self, node_name: str) -> CertKeyPair:
        """A client certificate a kubelet would hold: `system:node:<name>` in `system:nodes`."""
        return self.ca.issue(
            f"system:node:{node_name}", organizations=["system:nodes"], client=True
        )

    def client_kubeconfig(
        self, *, server: str, common_name: str, organizations: Sequence[str] = ()
    ) -> bytes:
        """A kubeconfig for a freshly issued client certificate."""
        pair = self.ca.issue(common_name, organizations=organizations, client=True)
        return kubeconfig_yaml(
            cluster_name="kubelet-py-lab",
            server=server,
            ca_pem=self.ca.pair.cert_pem,
            user=common_name,
            client=pair,
        )


def create_cluster_pki(
    directory: Path,
    *,
    apiserver_ips: Sequence[IPAddress],
    apiserver_dns_names: Sequence[str],
) -> ClusterPKI:
    """Make the whole PKI under `directory` and return where everything is."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create("kubernetes")
    ca.pair.write(directory, "ca")
    front_proxy_ca = CertificateAuthority.create("front-proxy-ca")
    front_proxy_ca.pair.write(directory, "front-proxy-ca")

    ca.issue(
        "kube-apiserver",
        dns_names=apiserver_dns_names,
        ip_addresses=apiserver_ips,
        server=True,
    ).write(directory, "apiserver")
    # The apiserver's identity when it calls kubelets (logs, exec, port-forward).
    ca.issue("kube-apiserver-kubelet-client", organizations=["system:masters"], client=True).write(
        directory, "apiserver-kubelet-client"
    )
    front_proxy_ca.issue("front-proxy-client", client=True).write(directory, "front-proxy-client")

    sa_key = new_key()
    write_atomic(directory / "sa.key", key_pem(sa_key), mode=0o600)
    write_atomic(
        directory / "sa.pub",
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return ClusterPKI(directory=directory, ca=ca, front_proxy_ca=front_proxy_ca)
