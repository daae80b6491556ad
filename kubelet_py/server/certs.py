"""The kubelet's self-signed serving certificate, as the kubelet makes one without a CA.

`ensure_serving_cert(dir, node_name, node_ip)` keeps `kubelet.crt` and `kubelet.key` in
`<root-dir>/pki/`: an existing pair is reused while it still covers the node's name
and IP and has more than 30 days left; otherwise a new ECDSA P-256 pair, valid for a
year, replaces it (written to a temporary name, then renamed; the key is 0600).
"""

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cri.fsutil import write_atomic
from kubelet_py.x509util import key_pem, key_usage, new_key

CERT_NAME = "kubelet.crt"
# A CA-signed pair (cert + key in one file) from a kubelet-serving CSR, preferred when present.
ISSUED_SERVING_CERT = "kubelet-server-current.pem"
KEY_NAME = "kubelet.key"
_VALIDITY = datetime.timedelta(days=365)
_RENEW_BEFORE = datetime.timedelta(days=30)
_BACKDATE = datetime.timedelta(minutes=5)


def _sans(node_name: str, node_ip: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(node_name)]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(node_ip)))
    except ValueError:
        names.append(x509.DNSName(node_ip))
    return names


def _usable(cert_path: Path, key_path: Path, sans: list[x509.GeneralName]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return left > _RENEW_BEFORE and all(san in have for san in sans)


def ensure_serving_cert(directory: Path, node_name: str, node_ip: str) -> tuple[Path, Path]:
    """Paths of a serving certificate and key for this node, made if needed."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    sans = _sans(node_name, node_ip)
    if _usable(cert_path, key_path, sans):
        return cert_path, key_path
    key = new_key()
    now = datetime.datetime.now(datetime.UTC)
    cn = f"{node_name}@{int(now.timestamp())}"  # as the kubelet names its self-signed cert
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            key_usage(ca=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(key_path, key_pem(key), mode=0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path
