"""The kubeadm-like PKI: subjects, usages, SANs and chains of what it issues."""

import ipaddress
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubelet_py.devcluster.pki import CertificateAuthority, create_cluster_pki, kubeconfig_yaml


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _orgs(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_ca_is_a_ca_and_signs_its_leaves() -> None:
    """Leaves verify against the CA that issued them and are not CAs themselves."""
    ca = CertificateAuthority.create("kubernetes")
    ca_cert = ca.pair.certificate
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf = ca.issue("someone", client=True).certificate
    leaf.verify_directly_issued_by(ca_cert)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_cluster_pki_apiserver_cert_has_the_sans_clients_dial(tmp_path: Path) -> None:
    """The serving cert names every address and service name clients use."""
    lab_ip = ipaddress.IPv4Address("10.77.0.1")
    pki = create_cluster_pki(
        tmp_path, apiserver_ips=[lab_ip], apiserver_dns_names=["kubernetes.default.svc"]
    )
    cert = x509.load_pem_x509_certificate(pki.cert("apiserver").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert lab_ip in san.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc" in san.get_values_for_type(x509.DNSName)
    assert _eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    cert.verify_directly_issued_by(pki.ca.pair.certificate)


def test_cluster_pki_writes_private_keys_owner_only(tmp_path: Path) -> None:
    """Private keys are 0600; certificates are world-readable."""
    pki = create_cluster_pki(tmp_path, apiserver_ips=[], apiserver_dns_names=["localhost"])
    assert pki.ca_key.stat().st_mode & 0o777 == 0o600
    assert pki.sa_private_key.stat().st_mode & 0o777 == 0o600
    assert pki.ca_cert.stat().st_mode & 0o777 == 0o644
    assert b"PUBLIC KEY" in pki.sa_public_key.read_bytes()


def test_node_identity_is_what_the_node_authorizer_expects(tmp_path: Path) -> None:
    """A node cert is `system:node:<name>` in `system:nodes`, for client auth only."""
    pki = create_cluster_pki(tmp_path, apiserver_ips=[], apiserver_dns_names=["localhost"])
    cert = pki.node_identity("worker-1").certificate
    assert _cn(cert) == "system:node:worker-1"
    assert _orgs(cert) == ["system:nodes"]
    assert _eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_kubeconfig_is_a_loadable_single_context_config() -> None:
    """The kubeconfig has one cluster, user and context, with credentials inline."""
    ca = CertificateAuthority.create("kubernetes")
    client = ca.issue("alice", client=True)
    doc = yaml.safe_load(
        kubeconfig_yaml(
            cluster_name="lab",
            server="https://10.77.0.1:6443",
            ca_pem=ca.pair.cert_pem,
            user="alice",
            client=client,
        )
    )
    assert doc["current-context"] == "alice@lab"
    assert doc["clusters"][0]["cluster"]["server"] == "https://10.77.0.1:6443"
    assert doc["users"][0]["user"]["client-certificate-data"]
    assert doc["users"][0]["user"]["client-key-data"]
