"""`kubelet-py join` against the real cluster: token discovery, TLS bootstrap, and bad input."""

import json
import os
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from kubernetes import client

from kubelet_py.bootstrap.token import NODE_TOKEN_GROUP
from kubelet_py.devcluster import LabNode
from kubelet_py.devcluster.netlab import run_in_netns
from tests.integration.agent.conftest import fresh_namespace
from tests.integration.join.conftest import IMAGE, JoinLab, csr_rows, node_ready, until, wait_for


def _leftovers(root: Path) -> list[str]:
    """Credential files a failed join must not leave (the root may hold other state)."""
    found = [p for p in ("kubelet.conf", "bootstrap-kubelet.conf") if (root / p).exists()]
    pki = root / "pki"
    if pki.exists():
        found += [f"pki/{p.name}" for p in pki.iterdir()]
    return found


def _serving_cert_issuer(lab: LabNode, ca_pem: bytes) -> str | None:
    """The issuer CN of the cert :10250 serves, if it verifies against the cluster CA."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())

    def probe() -> str | None:
        try:
            with (
                socket.create_connection((str(lab.address), 10250), timeout=3) as sock,
                ctx.wrap_socket(sock, server_hostname=str(lab.address)) as tls,
            ):
                cert = tls.getpeercert()
        except (OSError, ssl.SSLError):
            return None
        issuer = dict(x[0] for x in cert.get("issuer", ()))
        return str(issuer.get("commonName"))

    return run_in_netns(lab.netns_path, probe)


def test_fresh_node_joins_with_a_token_and_the_ca_hash_and_runs_a_pod(
    join_lab: JoinLab, admin_api: client.ApiClient
) -> None:
    """A fresh netns joins with token + hash only: CSR approved, Ready, pod runs, CA-signed API."""
    cluster = join_lab.cluster
    token = cluster.create_bootstrap_token()
    lab, root = join_lab.fresh_node()
    node = join_lab.start_joining_node(lab, root, token=token.value)
    core = client.CoreV1Api(admin_api)
    try:
        wait_for("the node to be Ready", lambda: node_ready(core, lab.name), 90, node)
        rows = csr_rows(cluster)
        client_csrs = [
            r for r in rows if r[2] == "kubernetes.io/kube-apiserver-client-kubelet"
            and r[3] == token.user
        ]  # fmt: skip
        assert client_csrs and client_csrs[0][-1] == "Approved,Issued", rows
        assert (root / "kubelet.conf").is_file()
        assert not (root / "bootstrap-kubelet.conf").exists()
        assert os.readlink(root / "pki/kubelet-client-current.pem").startswith("kubelet-client-")
        assert (root / "pki/kubelet-client-current.pem").stat().st_mode & 0o077 == 0

        # The serving CSR waits for an admin (nothing upstream approves them); then :10250
        # serves the CA-signed certificate without a restart.
        def serving_csr() -> str | None:
            for r in csr_rows(cluster):
                if r[2] == "kubernetes.io/kubelet-serving" and r[3] == f"system:node:{lab.name}":
                    return r[0]
            return None

        name = wait_for("the node's serving CSR", serving_csr, 60, node)
        assert "Pending" in cluster.kubectl("get", "csr", name, "--no-headers").stdout
        ca_pem = cluster.pki.ca.pair.cert_pem
        assert _serving_cert_issuer(lab, ca_pem) is None  # self-signed until approved
        cluster.kubectl("certificate", "approve", name)
        assert (
            wait_for(
                "the CA-signed serving cert on :10250",
                lambda: _serving_cert_issuer(lab, ca_pem),
                60,
                node,
            )
            == "kubernetes"
        )

        with fresh_namespace(admin_api, "join") as ns:
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "hello"},
                "spec": {
                    "nodeName": lab.name,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "main",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sh", "-c", "echo joined-node-says-hi; sleep 3600"],
                        }
                    ],
                },
            }
            core.create_namespaced_pod(ns, pod)
            wait_for(
                "the pod to run",
                lambda: core.read_namespaced_pod("hello", ns).status.phase == "Running",
                60,
                node,
            )
            logs = wait_for(
                "kubectl logs through the node's CA-signed API",
                lambda: (
                    "joined-node-says-hi"
                    in cluster.kubectl("logs", "-n", ns, "hello", check=False).stdout
                ),
                30,
                node,
            )
            assert logs
    finally:
        join_lab.teardown(node, admin_api)


def test_wrong_token_secret_fails_cleanly_and_a_retry_succeeds(join_lab: JoinLab) -> None:
    """A wrong secret: clear message, exit 1, no credentials; the right token then works."""
    cluster = join_lab.cluster
    token = cluster.create_bootstrap_token()
    lab, root = join_lab.fresh_node("w")
    try:
        wrong = f"{token.id}.{'0' * 16}"
        proc = join_lab.join_cmd(lab, root, token=wrong)
        assert proc.returncode == 1, proc.stderr
        assert "does not verify with the given token secret" in proc.stderr
        assert _leftovers(root) == []
        again = join_lab.join_cmd(lab, root, token=token.value)
        assert again.returncode == 0, again.stderr
        assert (root / "kubelet.conf").is_file()
        # A second run finds valid credentials and does not bootstrap again.
        third = join_lab.join_cmd(lab, root, token=wrong)
        assert third.returncode == 0 and "not bootstrapping again" in third.stderr
    finally:
        cluster.netlab.remove_node(lab.name)


def test_wrong_ca_hash_is_refused(join_lab: JoinLab) -> None:
    """A CA hash that is not the cluster's: refused before any credential is sent."""
    cluster = join_lab.cluster
    token = cluster.create_bootstrap_token()
    lab, root = join_lab.fresh_node("h")
    try:
        proc = join_lab.join_cmd(lab, root, token=token.value, ca_hash="sha256:" + "ab" * 32)
        assert proc.returncode == 1, proc.stderr
        assert "matches none of the given --discovery-token-ca-cert-hash" in proc.stderr
        assert _leftovers(root) == []
        bad = join_lab.join_cmd(lab, root, token=token.value, ca_hash="sha256:xyz")
        assert bad.returncode == 2 and "must be sha256:<64 hex digits>" in bad.stderr
    finally:
        cluster.netlab.remove_node(lab.name)


def test_expired_token_is_refused(join_lab: JoinLab) -> None:
    """An expired token is neither signed nor accepted: clear message, non-zero, nothing written."""
    cluster = join_lab.cluster
    token = cluster.create_bootstrap_token(ttl_s=-60, wait_signed=False)
    lab, root = join_lab.fresh_node("x")
    try:
        proc = join_lab.join_cmd(lab, root, token=token.value, extra=("--discovery-timeout", "4"))
        assert proc.returncode == 75, proc.stderr
        assert f"no signature for token id {token.id!r}" in proc.stderr
        assert "has expired" in proc.stderr
        assert _leftovers(root) == []
    finally:
        cluster.netlab.remove_node(lab.name)


def test_unreachable_apiserver_is_a_temporary_failure(join_lab: JoinLab) -> None:
    """Nobody listening: 'cannot reach', exit 75 (retry), nothing written."""
    cluster = join_lab.cluster
    token = cluster.create_bootstrap_token()
    lab, root = join_lab.fresh_node("u")
    try:
        proc = join_lab.join_cmd(
            lab,
            root,
            token=token.value,
            server=f"https://{cluster.netlab.gateway}:1",
            extra=("--discovery-timeout", "3"),
        )
        assert proc.returncode == 75, proc.stderr
        assert "cannot reach the API server" in proc.stderr
        assert "temporary: run the same command again" in proc.stderr
        assert _leftovers(root) == []
    finally:
        cluster.netlab.remove_node(lab.name)


def test_denied_csr_fails_cleanly_and_can_be_retried(join_lab: JoinLab) -> None:
    """A token group without auto-approval; an admin denies the CSR: exit 1, nothing written."""
    cluster = join_lab.cluster
    group = "system:bootstrappers:kubelet-py:manual-approval"
    binding = f"kpy-test-manual-{lab_suffix()}"
    cluster.kubectl(
        "create", "clusterrolebinding", binding,
        "--clusterrole=system:node-bootstrapper", f"--group={group}",
    )  # fmt: skip
    token = cluster.create_bootstrap_token(groups=(group,))
    lab, root = join_lab.fresh_node("d")

    def deny_when_it_comes() -> None:
        def pending() -> str | None:
            for r in csr_rows(cluster):
                if r[3] == token.user and r[-1] == "Pending":
                    return r[0]
            return None

        name = until(pending, 60)
        if name:
            cluster.kubectl("certificate", "deny", str(name))

    denier = threading.Thread(target=deny_when_it_comes, daemon=True)
    denier.start()
    try:
        proc = join_lab.join_cmd(lab, root, token=token.value)
        denier.join(timeout=70)
        assert proc.returncode == 1, proc.stderr
        assert "was denied" in proc.stderr
        assert _leftovers(root) == []
        rows = [r for r in csr_rows(cluster) if r[3] == token.user]
        assert rows and all(r[-1] == "Denied" for r in rows), rows
        # Retry with a token of the auto-approved group: joins.
        good = cluster.create_bootstrap_token(groups=(NODE_TOKEN_GROUP,))
        again = join_lab.join_cmd(lab, root, token=good.value)
        assert again.returncode == 0, again.stderr
    finally:
        cluster.kubectl("delete", "clusterrolebinding", binding, check=False)
        cluster.netlab.remove_node(lab.name)


def lab_suffix() -> str:
    return os.urandom(3).hex()


def test_token_create_prints_a_join_command_that_works(join_lab: JoinLab) -> None:
    """`kubelet-py token create` makes a signed token and a join command with the right hash."""
    cluster = join_lab.cluster
    out = subprocess.run(
        ["python3", "-m", "kubelet_py", "token", "create", "--kubeconfig",
         str(cluster.admin_kubeconfig), "--server", cluster.lab_server_url, "--ttl", "600"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    assert out[:2] == ["kubelet-py", "join"]
    args = dict(zip(out[2::2], out[3::2], strict=True))
    assert args["--discovery-token-ca-cert-hash"] == cluster.ca_cert_hash
    token_id = args["--token"].split(".")[0]
    secret = json.loads(
        cluster.kubectl(
            "get", "secret", f"bootstrap-token-{token_id}", "-n", "kube-system", "-o", "json"
        ).stdout
    )
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    lab, root = join_lab.fresh_node("t")
    try:
        wait_for(
            "the bootstrapsigner to sign the new token",
            lambda: (
                f"jws-kubeconfig-{token_id}"
                in cluster.kubectl(
                    "get", "cm", "cluster-info", "-n", "kube-public", "-o", "json"
                ).stdout
            ),
            30,
        )
        proc = join_lab.join_cmd(lab, root, token=args["--token"])
        assert proc.returncode == 0, proc.stderr
    finally:
        cluster.netlab.remove_node(lab.name)


@pytest.fixture(autouse=True)
def _no_stray_nodes(join_lab: JoinLab) -> None:
    """Every test starts from a cluster with the join objects in place."""
    assert (
        join_lab.cluster.kubectl("get", "cm", "cluster-info", "-n", "kube-public").returncode == 0
    )
