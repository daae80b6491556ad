"""The local control plane is real: health, authorization, admission, controllers, scheduler."""

import base64
import json
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubelet_py.devcluster import LocalCluster
from kubelet_py.devcluster.pki import kubeconfig_yaml
from tests.integration.conftest import api_client_for

T = TypeVar("T")


def message_of(err: ApiException) -> str:
    """The human-readable message of an API error (its body is a JSON Status)."""
    return str(json.loads(err.body)["message"])


def wait_for(what: str, fn: Callable[[], T | None], timeout_s: float = 60.0) -> T:
    """Poll `fn` until it returns something truthy, or fail saying what never happened."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def namespace(admin_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(admin_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def node_names(admin_api: client.ApiClient) -> Iterator[list[str]]:
    """Names for Node objects a test creates; every one is deleted afterwards."""
    names: list[str] = []
    yield names
    core = client.CoreV1Api(admin_api)
    for name in names:
        try:
            core.delete_node(name)
        except ApiException as err:
            if err.status != 404:
                raise


def test_readyz_and_admin_lists_namespaces(
    cluster: LocalCluster, admin_api: client.ApiClient
) -> None:
    """/readyz answers ok and the admin kubeconfig lists the built-in namespaces."""
    readyz = cluster.kubectl("get", "--raw", "/readyz").stdout.strip()
    assert readyz == "ok"
    names = {ns.metadata.name for ns in client.CoreV1Api(admin_api).list_namespace().items}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names


def test_binaries_report_the_pinned_release(
    cluster: LocalCluster, admin_api: client.ApiClient
) -> None:
    """The apiserver reports the release we built, not a development version."""
    info = client.VersionApi(admin_api).get_code()
    assert info.git_version == cluster.binaries.version


def test_node_may_write_its_own_node_only(
    cluster: LocalCluster, admin_api: client.ApiClient, node_names: list[str], tmp_path: Path
) -> None:
    """The Node authorizer and NodeRestriction let a node edit itself and nothing else."""
    me, other = f"n-{secrets.token_hex(3)}", f"n-{secrets.token_hex(3)}"
    node_names += [me, other]
    node_api = client.CoreV1Api(
        api_client_for(cluster.node_kubeconfig(me, from_root_namespace=True), tmp_path)
    )
    admin = client.CoreV1Api(admin_api)

    node_api.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=me)))
    patched = node_api.patch_node(me, {"metadata": {"labels": {"example.com/role": "web"}}})
    assert patched.metadata.labels["example.com/role"] == "web"
    node_api.patch_node_status(
        me,
        {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "Testing",
                        "message": "set by the test",
                    }
                ]
            }
        },
    )

    # Creating another node's object: refused by NodeRestriction admission.
    with pytest.raises(ApiException) as exc:
        node_api.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=other)))
    assert exc.value.status == 403
    assert f'node "{me}" is not allowed to modify node "{other}"' in message_of(exc.value)

    admin.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=other)))
    with pytest.raises(ApiException) as exc:
        node_api.patch_node(other, {"metadata": {"labels": {"example.com/role": "db"}}})
    assert exc.value.status == 403

    # A restricted label prefix on its own Node: NodeRestriction, not RBAC, refuses it.
    with pytest.raises(ApiException) as exc:
        node_api.patch_node(me, {"metadata": {"labels": {"node-restriction.kubernetes.io/x": "y"}}})
    assert exc.value.status == 403
    assert "node-restriction.kubernetes.io" in message_of(exc.value)

    # A secret no pod on this node references: the Node authorizer finds no relationship.
    with pytest.raises(ApiException) as exc:
        node_api.read_namespaced_secret("anything", "default")
    assert exc.value.status == 403
    assert "no relationship found" in message_of(exc.value)


def test_node_namespace_reaches_the_apiserver_on_the_underlay(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """From a node namespace, a node identity reaches the apiserver at the lab address."""
    node = cluster.add_node(f"w{secrets.token_hex(2)}")
    try:
        kubeconfig = tmp_path / "node.conf"
        kubeconfig.write_bytes(cluster.node_kubeconfig(node.name))
        out = subprocess.run(
            [
                *node.nsenter(),
                str(cluster.binaries.kubectl),
                f"--kubeconfig={kubeconfig}",
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"system:node:{node.name}"
    finally:
        cluster.netlab.remove_node(node.name)


def test_controller_manager_allocates_pod_cidrs(
    admin_api: client.ApiClient, node_names: list[str]
) -> None:
    """--allocate-node-cidrs gives each new Node a podCIDR out of the cluster CIDR."""
    name = f"n-{secrets.token_hex(3)}"
    node_names.append(name)
    core = client.CoreV1Api(admin_api)
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
    cidr = wait_for("a podCIDR on the node", lambda: core.read_node(name).spec.pod_cidr)
    assert cidr.startswith("10.244.") and cidr.endswith("/24")


def test_deployment_gets_replicaset_and_pods(admin_api: client.ApiClient, namespace: str) -> None:
    """The deployment and replicaset controllers turn a Deployment into Pods."""
    apps, core = client.AppsV1Api(admin_api), client.CoreV1Api(admin_api)
    labels = {"app": "hello"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="hello"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[
                            client.V1Container(name="c", image="busybox", command=["sleep", "3600"])
                        ]
                    ),
                ),
            ),
        ),
    )
    rs = wait_for("a ReplicaSet", lambda: apps.list_namespaced_replica_set(namespace).items)
    assert rs[0].metadata.owner_references[0].name == "hello"
    pods = wait_for(
        "2 pods", lambda: (p := core.list_namespaced_pod(namespace).items) and len(p) == 2 and p
    )
    assert all(p.metadata.owner_references[0].kind == "ReplicaSet" for p in pods)


def test_unschedulable_pod_gets_a_failed_scheduling_event(
    admin_api: client.ApiClient, namespace: str
) -> None:
    """With no node to run on, the scheduler leaves the pod Pending and says why in an event."""
    core = client.CoreV1Api(admin_api)
    assert core.list_node().items == [], "another test left a Node behind"
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="lonely"),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
        ),
    )

    def failed_scheduling() -> str | None:
        for ev in core.list_namespaced_event(namespace).items:
            if ev.involved_object.name == "lonely" and ev.reason == "FailedScheduling":
                return str(ev.message)
        return None

    message = wait_for("a FailedScheduling event", failed_scheduling)
    assert message == "no nodes available to schedule pods"
    pod = core.read_namespaced_pod("lonely", namespace)
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    scheduled = [c for c in pod.status.conditions or [] if c.type == "PodScheduled"]
    assert scheduled and scheduled[0].status == "False" and scheduled[0].reason == "Unschedulable"


def test_controller_manager_signs_approved_csrs_with_the_cluster_ca(
    cluster: LocalCluster, admin_api: client.ApiClient
) -> None:
    """An approved kube-apiserver-client CSR is signed by the cluster CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr_pem = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csr-test-user")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    certs = client.CertificatesV1Api(admin_api)
    name = f"csr-{secrets.token_hex(3)}"
    certs.create_certificate_signing_request(
        client.V1CertificateSigningRequest(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1CertificateSigningRequestSpec(
                request=base64.b64encode(csr_pem).decode(),
                signer_name="kubernetes.io/kube-apiserver-client",
                usages=["client auth"],
                expiration_seconds=3600,
            ),
        )
    )
    try:
        csr = certs.read_certificate_signing_request(name)
        csr.status.conditions = [
            client.V1CertificateSigningRequestCondition(
                type="Approved", status="True", reason="Test", message="approved by the test"
            )
        ]
        certs.replace_certificate_signing_request_approval(name, csr)
        issued = wait_for(
            "the signed certificate",
            lambda: certs.read_certificate_signing_request(name).status.certificate,
        )
        cert = x509.load_pem_x509_certificate(base64.b64decode(issued))
        cert.verify_directly_issued_by(cluster.pki.ca.pair.certificate)
    finally:
        certs.delete_certificate_signing_request(name)


def test_bootstrap_tokens_authenticate(
    cluster: LocalCluster, admin_api: client.ApiClient, tmp_path: Path
) -> None:
    """A bootstrap token secret in kube-system authenticates as system:bootstrap:<id>."""
    token_id, token_secret = secrets.token_hex(3), secrets.token_hex(8)
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_secret(
        "kube-system",
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=f"bootstrap-token-{token_id}"),
            type="bootstrap.kubernetes.io/token",
            string_data={
                "token-id": token_id,
                "token-secret": token_secret,
                "usage-bootstrap-authentication": "true",
                "auth-extra-groups": "system:bootstrappers:kubelet-py",
            },
        ),
    )
    try:
        kubeconfig = tmp_path / "bootstrap.conf"
        kubeconfig.write_bytes(
            kubeconfig_yaml(
                cluster_name="lab",
                server=cluster.server_url,
                ca_pem=cluster.pki.ca.pair.cert_pem,
                user="bootstrap",
                token=f"{token_id}.{token_secret}",
            )
        )
        out = subprocess.run(
            [
                str(cluster.binaries.kubectl),
                f"--kubeconfig={kubeconfig}",
                "auth",
                "whoami",
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert f"system:bootstrap:{token_id}" in out.stdout
        assert "system:bootstrappers:kubelet-py" in out.stdout
    finally:
        core.delete_namespaced_secret(f"bootstrap-token-{token_id}", "kube-system")


def test_example_manifests_are_valid_for_the_real_apiserver(cluster: LocalCluster) -> None:
    """Every example in manifests/ passes the apiserver's validation and admission (dry run)."""
    root = Path(__file__).resolve().parents[3] / "manifests"
    files = sorted(root.rglob("*.yaml"))
    assert files, "manifests/ has no examples"
    for path in files:
        out = cluster.kubectl("create", "--dry-run=server", "-f", str(path), check=False)
        assert out.returncode == 0, f"{path.name}: {out.stderr}"
