"""CSRs, the certificate store and rotation deadlines, without a cluster."""

import asyncio
import base64
import datetime
import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kubelet_py.agent.apiclient import load_kubeconfig
from kubelet_py.bootstrap.csr import (
    CertKind,
    CertRequest,
    build_csr,
    csr_object,
    csr_outcome,
    request_certificate,
    serving_request,
)
from kubelet_py.bootstrap.errors import CSRDenied, CSRTimeout
from kubelet_py.bootstrap.rotation import CertificateRotator, Clock, rotation_deadline, satisfies
from kubelet_py.bootstrap.store import CertStore, install_join_credentials
from kubelet_py.devcluster.pki import CertificateAuthority
from kubelet_py.x509util import new_key


def test_client_csr_is_what_the_node_client_approver_recognises() -> None:
    """CN system:node:<n>, O system:nodes, no SANs, usages digital signature + client auth."""
    req = CertRequest(CertKind.CLIENT, "n1")
    pem = build_csr(req, new_key())
    csr = x509.load_pem_x509_csr(pem)
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=system:node:n1,O=system:nodes"
    with pytest.raises(x509.ExtensionNotFound):
        csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    obj = csr_object(req, pem)
    assert obj["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
    assert obj["spec"]["usages"] == ["digital signature", "client auth"]
    assert base64.b64decode(obj["spec"]["request"]) == pem


def test_serving_csr_carries_the_node_name_and_addresses() -> None:
    """A serving CSR asks for server auth with DNS and IP SANs from the node's addresses."""
    req = serving_request("n1", ["10.77.0.10", "n1.example.com", "10.77.0.10"])
    assert req.dns_names == ("n1", "n1.example.com") and req.ip_addresses == ("10.77.0.10",)
    csr = x509.load_pem_x509_csr(build_csr(req, new_key()))
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.77.0.10")]
    assert csr_object(req, b"x")["spec"]["usages"] == ["digital signature", "server auth"]


def test_csr_outcome_reads_conditions_denial_first() -> None:
    """Denied or Failed beats Approved; a certificate counts only when present."""
    assert csr_outcome({}).certificate_pem is None
    approved = {"status": {"conditions": [{"type": "Approved", "status": "True"}]}}
    assert csr_outcome(approved).approved
    denied = {"status": {"conditions": [{"type": "Approved"}, {"type": "Denied", "message": "no"}]}}
    assert csr_outcome(denied).denied == "denied: no"
    signed = {"status": {"certificate": base64.b64encode(b"PEM").decode()}}
    assert csr_outcome(signed).certificate_pem == b"PEM"


class FakeCSRApi:
    """Answers create/get/watch from a script of CSR states (pure logic only)."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        self.states = states
        self.created: list[Any] = []

    async def create(self, path: str, body: Any) -> Any:
        self.created.append(body)
        return {"metadata": {"name": "node-csr-x", "resourceVersion": "1"}}

    async def get(self, path: str, **params: str) -> Any:
        return {"metadata": {"name": "node-csr-x", "resourceVersion": "2"}, **self.states[0]}

    async def watch(self, path: str, *, resource_version: str, params: Any = None) -> Any:
        # One change per watch: the next scripted state (the last one repeats).
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        yield "MODIFIED", {"metadata": {"name": "node-csr-x", "resourceVersion": "3"}, **state}


def test_request_certificate_returns_the_cert_or_says_why_not() -> None:
    """A signed CSR returns its cert; a denied one raises CSRDenied; silence times out."""
    signed = {"status": {"certificate": base64.b64encode(b"CERT").decode()}}
    denied = {"status": {"conditions": [{"type": "Denied", "status": "True", "message": "nope"}]}}
    req = CertRequest(CertKind.CLIENT, "n1")

    async def go(states: list[dict[str, Any]], timeout_s: float = 5) -> tuple[str, bytes]:
        return await request_certificate(
            FakeCSRApi(states), req, new_key(), timeout_s=timeout_s, progress=lambda m: None
        )

    assert asyncio.run(go([{}, signed])) == ("node-csr-x", b"CERT")
    with pytest.raises(CSRDenied, match=r"node-csr-x .* denied: nope"):
        asyncio.run(go([denied]))
    with pytest.raises(CSRTimeout, match="kubectl certificate approve node-csr-x"):
        asyncio.run(go([{}], timeout_s=0.2))


def _issue(ca: CertificateAuthority, days: float = 1) -> tuple[bytes, Any]:
    key = new_key()
    pair = ca.issue("system:node:n1", organizations=["system:nodes"], client=True,
                    validity=datetime.timedelta(days=days))  # fmt: skip
    # Re-sign for our own key: the store must keep a cert with the key it belongs to.
    del pair
    from cryptography.hazmat.primitives import hashes, serialization

    ca_key = serialization.load_pem_private_key(ca.pair.key_pem, password=None)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "system:node:n1")]))
        .issuer_name(ca.pair.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM), key


def test_store_swaps_current_atomically_and_prunes(tmp_path: Path) -> None:
    """Each update leaves -current.pem pointing at a complete 0600 pair; old ones are pruned."""
    ca = CertificateAuthority.create("kubernetes")
    store = CertStore(tmp_path / "pki", "kubelet-client")
    assert store.current() is None
    paths = [store.update(*_issue(ca)) for _ in range(4)]
    assert os.readlink(store.current_path) == paths[-1].name
    assert store.current() is not None
    assert (paths[-1].stat().st_mode & 0o777) == 0o600
    left = sorted(p.name for p in store.directory.iterdir())
    assert len(left) == 3 and not [p for p in left if p.startswith(".")]


def test_join_credentials_name_the_rotating_pair(tmp_path: Path) -> None:
    """kubelet.conf points at -current.pem and loads as a client-cert kubeconfig."""
    ca = CertificateAuthority.create("kubernetes")
    cert_pem, key = _issue(ca)
    conf = install_join_credentials(
        kubeconfig=tmp_path / "kubelet.conf",
        store=CertStore(tmp_path / "pki", "kubelet-client"),
        cert_pem=cert_pem,
        key=key,
        server="https://10.0.0.1:6443",
        ca_pem=ca.pair.cert_pem,
        node_name="n1",
        cluster_name="lab",
    )
    doc = yaml.safe_load(conf.read_text())
    assert doc["users"][0]["user"]["client-certificate"] == str(
        tmp_path / "pki/kubelet-client-current.pem"
    )
    cfg = load_kubeconfig(conf)
    assert cfg.cert_pem is not None and cfg.cert_pem.startswith(cert_pem)  # cert, then its key
    assert (
        x509.load_pem_x509_certificate(cfg.cert_pem).public_bytes(serialization.Encoding.PEM)
        == cert_pem
    )
    assert cfg.server == "https://10.0.0.1:6443"
    assert cfg.cert_file == tmp_path / "pki/kubelet-client-current.pem"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kubelet.conf", "pki"]


def test_rotation_deadline_is_70_to_90_percent_of_the_lifetime() -> None:
    """client-go's rule: notBefore + (0.7 + 0.2 * jitter) * lifetime."""
    t0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    t1 = t0 + datetime.timedelta(seconds=1000)
    assert rotation_deadline(t0, t1, 0.0) == t0 + datetime.timedelta(seconds=700)
    assert rotation_deadline(t0, t1, 1.0) == t0 + datetime.timedelta(seconds=900)
    assert rotation_deadline(t0, t1, 0.5) == t0 + datetime.timedelta(seconds=800)


def test_rotator_renews_at_once_when_nothing_usable_and_waits_otherwise(tmp_path: Path) -> None:
    """No cert or a cert for another name means now; a fresh one means its jittered deadline."""
    ca = CertificateAuthority.create("kubernetes")
    store = CertStore(tmp_path, "kubelet-client")
    now = datetime.datetime.now(datetime.UTC)
    rot = CertificateRotator(
        api=FakeCSRApi([]),
        store=store,
        request=CertRequest(CertKind.CLIENT, "n1"),
        on_rotated=lambda p: None,
        clock=Clock(now=lambda: now, jitter=lambda: 0.0),
    )
    assert rot.next_deadline() == now
    store.update(*_issue(ca, days=10))
    cert, _ = store.current() or (None, None)
    assert cert is not None and satisfies(cert, rot.request)
    expected = (
        cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) * 0.7
    )
    assert rot.next_deadline() == expected
    assert not satisfies(cert, CertRequest(CertKind.CLIENT, "other"))
    assert not satisfies(cert, serving_request("n1", ["10.0.0.9"]))


def test_rotator_backs_off_then_rotates_and_announces_the_new_pair(tmp_path: Path) -> None:
    """Two failed CSRs back off 2 s then 4 s; the third succeeds, is stored and announced."""
    ca = CertificateAuthority.create("kubernetes")
    store = CertStore(tmp_path, "kubelet-client")
    slept: list[float] = []
    announced: list[str] = []

    class FlakyApi(FakeCSRApi):
        calls = 0

        async def create(self, path: str, body: Any) -> Any:
            FlakyApi.calls += 1
            if FlakyApi.calls <= 2:
                from kubelet_py.agent.apiclient import ApiError

                raise ApiError(503, "ServiceUnavailable", "apiserver busy")
            return await super().create(path, body)

    async def fake_sleep(s: float) -> None:
        slept.append(s)
        if len(announced) == 1:
            raise asyncio.CancelledError  # stop the loop once the rotation is done

    def signed_for_request(body: Any) -> dict[str, Any]:
        csr = x509.load_pem_x509_csr(base64.b64decode(body["spec"]["request"]))
        from cryptography.hazmat.primitives import hashes, serialization

        ca_key = serialization.load_pem_private_key(ca.pair.key_pem, password=None)
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(ca.pair.certificate.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(hours=1))
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        pem = cert.public_bytes(serialization.Encoding.PEM)
        return {"status": {"certificate": base64.b64encode(pem).decode()}}

    api = FlakyApi([])
    original_create = api.create

    async def create_and_sign(path: str, body: Any) -> Any:
        created = await original_create(path, body)
        api.states[:] = [signed_for_request(body)]
        return created

    api.create = create_and_sign  # type: ignore[method-assign]
    rot = CertificateRotator(
        api=api,
        store=store,
        request=CertRequest(CertKind.CLIENT, "n1"),
        on_rotated=announced.append,
        clock=Clock(jitter=lambda: 0.0, sleep=fake_sleep),
    )
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(rot.run())
    assert slept[:2] == [2.0, 4.0]
    assert announced == [str(store.current_path)] and rot.rotations == 1
    cert, _ = store.current() or (None, None)
    assert cert is not None and satisfies(cert, rot.request)
    # The next wait is the 70 % point of the new one-hour certificate (about 42 minutes).
    assert 2400 < slept[2] < 2600


def test_join_cli_uses_existing_credentials_and_explains_missing_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid --kubeconfig needs no token; an expired one without --server is bad input (2)."""
    from kubelet_py.cli import main
    from kubelet_py.devcluster.pki import kubeconfig_yaml

    ca = CertificateAuthority.create("kubernetes")
    # "old": 30 s left, less than the minute join wants before trusting a certificate.
    for name, days in (("good.conf", 1.0), ("old.conf", 30 / 86400)):
        pair = ca.issue("system:node:n1", organizations=["system:nodes"], client=True,
                        validity=datetime.timedelta(days=days))  # fmt: skip
        (tmp_path / name).write_bytes(
            kubeconfig_yaml(
                cluster_name="c",
                server="https://10.0.0.1:6443",
                ca_pem=ca.pair.cert_pem,
                user="n1",
                client=pair,
            )
        )
    common = ["--no-start", "--root-dir", str(tmp_path / "root"), "--node-name", "n1"]
    assert main(["join", "--kubeconfig", str(tmp_path / "good.conf"), *common]) == 0
    assert "holds valid credentials" in capsys.readouterr().err
    assert main(["join", "--kubeconfig", str(tmp_path / "old.conf"), *common]) == 2
    err = capsys.readouterr().err
    assert "expires at" in err and "--server is needed" in err
