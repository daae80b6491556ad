"""What the local cluster registers for metrics-server, and how it is started (pure parts)."""

import base64
from pathlib import Path

from kubelet_py.devcluster.metrics_server import argv, manifests


def test_manifests_route_the_apiservice_to_the_lab_address() -> None:
    """Service port and EndpointSlice port share a name; the slice names the address; the
    APIService trusts the given CA and points at the Service; RBAC binds the user."""
    objs = manifests(address="10.77.0.1", port=4443, ca_bundle_pem=b"PEM")
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    svc = by_kind[("Service", "metrics-server")]
    assert "selector" not in svc["spec"]  # endpoints come from our slice only
    (sport,) = svc["spec"]["ports"]
    eps = by_kind[("EndpointSlice", "metrics-server-lab")]
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "metrics-server"
    assert eps["ports"] == [{"name": sport["name"], "port": 4443, "protocol": "TCP"}]
    assert eps["endpoints"][0]["addresses"] == ["10.77.0.1"]
    api = by_kind[("APIService", "v1beta1.metrics.k8s.io")]["spec"]
    assert api["service"] == {"name": "metrics-server", "namespace": "kube-system", "port": 443}
    assert base64.b64decode(api["caBundle"]) == b"PEM" and "insecureSkipTLSVerify" not in api
    role = by_kind[("ClusterRole", "system:metrics-server")]
    assert {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]} in role["rules"]
    for name in ("system:metrics-server", "metrics-server:system:auth-delegator"):
        subjects = by_kind[("ClusterRoleBinding", name)]["subjects"]
        assert subjects == [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "metrics-server"}
        ]


def test_argv_checks_kubelet_certs_when_given_a_ca() -> None:
    """With a kubelet CA the serving certs are verified; without one, --kubelet-insecure-tls."""
    common = dict(work_dir=Path("/w"), kubeconfig=Path("/k"), address="10.77.0.1", port=4443)
    with_ca = argv(Path("/ms"), kubelet_ca=Path("/ca.crt"), **common)  # type: ignore[arg-type]
    assert "--kubelet-certificate-authority=/ca.crt" in with_ca
    assert "--kubelet-insecure-tls" not in with_ca
    assert "--metric-resolution=10s" in with_ca and "--kubelet-request-timeout=5s" in with_ca
    assert "--kubelet-insecure-tls" in argv(Path("/ms"), kubelet_ca=None, **common)  # type: ignore[arg-type]
