"""Token discovery's pure checks: token format, JWS signatures, CA pins, cluster-info."""

import datetime

import pytest

from kubelet_py.bootstrap.clusterside import cluster_info_kubeconfig
from kubelet_py.bootstrap.discovery import (
    ca_cert_hash_of_pem,
    check_server_url,
    detached_signature,
    detached_signature_valid,
    parse_ca_hash,
    verify_cluster_info,
)
from kubelet_py.bootstrap.errors import BadInput, DiscoveryError, TokenNotSigned
from kubelet_py.bootstrap.token import BootstrapToken
from kubelet_py.devcluster.pki import CertificateAuthority

# Vectors from k8s.io/cluster-bootstrap token/jws/jws_test.go (what the bootstrapsigner computes).
CONTENT = "Hello from the other side. I must have called a thousand times."
GO_TOKEN = BootstrapToken("joshua", "my voice is my passcode")
GO_SIG = "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8"
GO_SIG_EMPTY = (
    "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..7Ui1ALizW4jXphVUB7xUqC9vLYLL9RZeOFfVLoB7Tgk"
)


def test_signature_matches_the_go_implementation() -> None:
    """Our detached HS256 JWS is byte-identical to cluster-bootstrap's for its test vectors."""
    assert detached_signature(CONTENT, GO_TOKEN) == GO_SIG
    assert detached_signature("", GO_TOKEN) == GO_SIG_EMPTY


def test_signature_verifies_only_with_the_right_secret_content_and_id() -> None:
    """A wrong secret, changed content, other kid or a non-detached JWS fail verification."""
    assert detached_signature_valid(GO_SIG, CONTENT, GO_TOKEN)
    assert not detached_signature_valid(GO_SIG, CONTENT, BootstrapToken("joshua", "nope"))
    assert not detached_signature_valid(GO_SIG, CONTENT + " ", GO_TOKEN)
    assert not detached_signature_valid(GO_SIG, CONTENT, BootstrapToken("abcdef", GO_TOKEN.secret))
    assert not detached_signature_valid(GO_SIG.replace("..", ".eA."), CONTENT, GO_TOKEN)
    assert not detached_signature_valid("garbage", CONTENT, GO_TOKEN)


def test_token_parsing_and_generation() -> None:
    """Tokens are <6>.<16> of [a-z0-9]; anything else is bad input; repr hides the secret."""
    tok = BootstrapToken.parse("abcdef.0123456789abcdef")
    assert (tok.id, tok.secret, tok.user) == (
        "abcdef",
        "0123456789abcdef",
        "system:bootstrap:abcdef",
    )
    assert "0123456789abcdef" not in repr(tok)
    for bad in ("abcdef0123456789abcdef", "ABCDEF.0123456789abcdef", "abcde.0123456789abcdef", ""):
        with pytest.raises(BadInput):
            BootstrapToken.parse(bad)
    assert BootstrapToken.parse(BootstrapToken.generate().value)


def test_token_secret_manifest_has_the_cluster_bootstrap_keys() -> None:
    """The Secret carries what the apiserver's authenticator and the bootstrapsigner read."""
    tok = BootstrapToken("abcdef", "0123456789abcdef")
    when = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    secret = tok.secret_manifest(expiration=when)
    assert secret["metadata"] == {"name": "bootstrap-token-abcdef", "namespace": "kube-system"}
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    data = secret["stringData"]
    assert data["expiration"] == "2030-01-02T03:04:05Z"
    assert data["usage-bootstrap-signing"] == data["usage-bootstrap-authentication"] == "true"
    assert data["auth-extra-groups"] == "system:bootstrappers:kubelet-py:default-node-token"
    with pytest.raises(BadInput):
        tok.secret_manifest(expiration=None, groups=["system:masters"])


def _cluster_info(ca_pem: bytes, token: BootstrapToken) -> dict[str, str]:
    kubeconfig = cluster_info_kubeconfig(server="https://10.0.0.1:6443", ca_pem=ca_pem)
    return {
        "kubeconfig": kubeconfig,
        f"jws-kubeconfig-{token.id}": detached_signature(kubeconfig, token),
    }


def test_cluster_info_verifies_and_yields_server_and_ca() -> None:
    """A signed cluster-info whose CA matches the pin gives the server and the CA."""
    ca = CertificateAuthority.create("kubernetes")
    tok = BootstrapToken.generate()
    pin = ca_cert_hash_of_pem(ca.pair.cert_pem)
    info = verify_cluster_info(
        _cluster_info(ca.pair.cert_pem, tok), tok, [pin.upper().replace("SHA256", "sha256")]
    )
    assert info.server == "https://10.0.0.1:6443"
    assert info.ca_pem == ca.pair.cert_pem


def test_cluster_info_rejects_wrong_secret_wrong_pin_and_unsigned_tokens() -> None:
    """Each failure names its cause; only a missing signature is temporary."""
    ca, other = CertificateAuthority.create("kubernetes"), CertificateAuthority.create("evil")
    tok = BootstrapToken.generate()
    data = _cluster_info(ca.pair.cert_pem, tok)
    pin = ca_cert_hash_of_pem(ca.pair.cert_pem)
    with pytest.raises(DiscoveryError, match="does not verify") as wrong:
        verify_cluster_info(data, BootstrapToken(tok.id, "x" * 16), [pin])
    assert not wrong.value.temporary
    with pytest.raises(DiscoveryError, match="matches none") as mismatch:
        verify_cluster_info(data, tok, [ca_cert_hash_of_pem(other.pair.cert_pem)])
    assert not mismatch.value.temporary
    with pytest.raises(TokenNotSigned) as unsigned:
        verify_cluster_info(data, BootstrapToken.generate(), [pin])
    assert unsigned.value.temporary
    with pytest.raises(DiscoveryError, match="no `kubeconfig`"):
        verify_cluster_info({}, tok, [pin])


def test_ca_hash_is_sha256_of_the_subject_public_key_info() -> None:
    """The pin is over the DER SubjectPublicKeyInfo, as kubeadm's pubkeypin computes it."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca = CertificateAuthority.create("kubernetes")
    cert = x509.load_pem_x509_certificate(ca.pair.cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert ca_cert_hash_of_pem(ca.pair.cert_pem) == "sha256:" + hashlib.sha256(spki).hexdigest()
    with pytest.raises(BadInput):
        parse_ca_hash("md5:abcd")


def test_server_url_must_be_https() -> None:
    """--server accepts https URLs (or host:port) and refuses plain http."""
    assert check_server_url("https://10.0.0.1:6443/") == "https://10.0.0.1:6443"
    assert check_server_url("10.0.0.1:6443") == "https://10.0.0.1:6443"
    with pytest.raises(BadInput):
        check_server_url("http://10.0.0.1:6443")
