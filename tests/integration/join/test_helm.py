"""The Helm chart: lint, template, and `helm install` into a real cluster that nodes then join.

The installed cluster signs certificates for 150 s (kcm --cluster-signing-duration), so a
joined node renews both its certificates within about two minutes: the test watches
that happen under a running pod and an open `kubectl logs -f` stream.
"""

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from kubelet_py.bootstrap.clusterside import join_objects
from kubelet_py.devcluster import LocalCluster, ensure_binaries
from kubelet_py.devcluster.build import ensure_go_tool
from kubelet_py.devcluster.netrbac import node_network_rbac
from tests.integration.join.conftest import IMAGE, JoinLab, csr_rows, node_ready, wait_for

CHART = Path(__file__).resolve().parents[3] / "helm" / "kubelet-py"
SIGNING_S = 150
TICKER = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done"


def _progress(message: str) -> None:
    print(f"[helm-cluster] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def helm() -> Path:
    """helm, built from its Go module (cached like the control plane)."""
    return ensure_go_tool("helm", progress=_progress)


def _helm(
    helm: Path, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    home = Path("/tmp/kubelet-py-helm")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    extra = [f"--kubeconfig={kubeconfig}"] if kubeconfig else []
    return subprocess.run(
        [str(helm), *args, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_chart_lints(helm: Path) -> None:
    """`helm lint` passes with the defaults and with cluster-info and a token turned on."""
    plain = _helm(helm, "lint", "--strict", str(CHART))
    assert plain.returncode == 0, plain.stdout + plain.stderr
    full = _helm(
        helm, "lint", "--strict", str(CHART),
        "--set", "clusterInfo.server=https://10.0.0.1:6443",
        "--set", f"clusterInfo.caData={base64.b64encode(b'x').decode()}",
        "--set", "bootstrapToken.create=true,bootstrapToken.id=abcdef",
        "--set", "bootstrapToken.secret=0123456789abcdef",
    )  # fmt: skip
    assert full.returncode == 0, full.stdout + full.stderr


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in obj["metadata"].items() if k != "labels"}
    out = {**obj, "metadata": meta}
    if obj["kind"] == "ConfigMap" and "kubeconfig" in obj.get("data", {}):
        out["data"] = {"kubeconfig": yaml.safe_load(obj["data"]["kubeconfig"])}
    return out


def test_template_renders_the_objects_the_devcluster_applies(helm: Path) -> None:
    """helm template renders the objects the devcluster applies (bootstrap, overlay)."""
    ca = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    out = _helm(
        helm, "template", "kp", str(CHART),
        "--set", "clusterInfo.server=https://10.0.0.1:6443",
        "--set", f"clusterInfo.caData={base64.b64encode(ca).decode()}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    assert ("CSIDriver", "s3.csi.kubelet-py.io") in kinds and ("StorageClass", "s3") in kinds
    assert ("ConfigMap", "kubelet-py-network") in kinds
    ours = {
        (o["kind"], o["metadata"]["name"]): o
        for o in [*join_objects(server="https://10.0.0.1:6443", ca_pem=ca), *node_network_rbac()]
    }
    theirs = {(d["kind"], d["metadata"]["name"]): d for d in rendered}
    for key, obj in ours.items():
        assert key in theirs, f"the chart lacks {key}"
        assert _strip(theirs[key]) == _strip(obj), key


def test_template_wires_the_s3_driver_as_csi_volumes_expects(helm: Path) -> None:
    """StorageClass secret parameters, the credentials Secret keys and the provisioner pod."""
    out = _helm(
        helm, "template", "kp", str(CHART),
        "--set", "csi.provisioner.enabled=true,csi.provisioner.image.repository=example.com/kpy",
        "--set", "csi.credentials.create=true,csi.credentials.endpoint=http://s3:8333",
        "--set", "csi.credentials.accessKeyID=a,csi.credentials.secretAccessKey=b",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}
    sc = docs[("StorageClass", "s3")]
    assert sc["provisioner"] == "s3.csi.kubelet-py.io"
    assert (
        sc["parameters"]["csi.storage.k8s.io/node-stage-secret-name"] == "kubelet-py-s3-credentials"
    )
    secret = docs[("Secret", "kubelet-py-s3-credentials")]
    assert set(secret["stringData"]) == {"endpoint", "accessKeyID", "secretAccessKey", "region"}
    pod = docs[("Deployment", "kubelet-py-s3-provisioner")]["spec"]["template"]["spec"]
    commands = {c["name"]: c["command"] for c in pod["containers"]}
    assert commands["provisioner"][:2] == ["kubelet-py-csi", "provisioner"]
    assert (
        "unix:///csi/csi.sock" in commands["driver"]
        and "unix:///csi/csi.sock" in commands["provisioner"]
    )
    missing = _helm(helm, "template", "kp", str(CHART), "--set", "csi.provisioner.enabled=true")
    assert missing.returncode != 0 and "image.repository" in missing.stderr


@pytest.fixture(scope="module")
def helm_cluster(
    require_root: None, helm: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """A second real cluster, short certificate lifetimes, prepared by `helm install` only."""
    lab = LocalCluster(
        binaries=ensure_binaries(progress=_progress),
        work_dir=tmp_path_factory.mktemp("helm-cluster"),
        progress=_progress,
        cluster_signing_duration_s=SIGNING_S,
    )
    lab.start()
    try:
        wait_for(
            "kube-public/kube-root-ca.crt (the chart reads the CA from it)",
            lambda: (
                lab.kubectl(
                    "get", "cm", "kube-root-ca.crt", "-n", "kube-public", check=False
                ).returncode
                == 0
            ),
            60,
        )
        out = _helm(
            helm, "install", "kubelet-py", str(CHART), "--namespace", "kube-system",
            "--set", f"clusterInfo.server={lab.lab_server_url}",
            kubeconfig=lab.admin_kubeconfig,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        yield lab
    finally:
        lab.stop()


def _pem_target(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def test_helm_installed_cluster_joins_a_node_that_rotates_both_certificates(
    helm_cluster: LocalCluster,
    helm: Path,
    image_layout: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """After helm install a node joins by token + hash; 150 s certs rotate; pod, stream live on."""
    cluster = helm_cluster
    listed = _helm(
        helm, "list", "-n", "kube-system", "-o", "yaml", kubeconfig=cluster.admin_kubeconfig
    )
    assert yaml.safe_load(listed.stdout)[0]["status"] == "deployed"
    info = cluster.kubectl("get", "cm", "cluster-info", "-n", "kube-public", "-o", "yaml").stdout
    assert "app.kubernetes.io/managed-by: Helm" in info
    admin_api = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
    core = client.CoreV1Api(admin_api)
    lab_env = JoinLab(cluster, image_layout, tmp_path_factory)
    token = cluster.create_bootstrap_token()
    lab, root = lab_env.fresh_node("r")
    node = lab_env.start_joining_node(lab, root, token=token.value)
    # The serving CSRs (first and renewed) are approved by kubelet-py's approver, which
    # checks their SANs against the Node; nothing upstream approves them.
    approver_log = (root.parent / f"approver-{lab.name}.log").open("wb")
    approver = subprocess.Popen(
        ["python3", "-m", "kubelet_py", "approve-serving-csrs", "--kubeconfig",
         str(cluster.admin_kubeconfig), "--interval", "0.5"],
        stdout=approver_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    logs: subprocess.Popen[str] | None = None
    try:
        wait_for("the node to be Ready", lambda: node_ready(core, lab.name), 90, node)
        client_pem, server_pem = (
            root / "pki/kubelet-client-current.pem",
            root / "pki/kubelet-server-current.pem",
        )
        first_client = _pem_target(client_pem)
        first_server = wait_for("the first serving cert", lambda: _pem_target(server_pem), 60, node)
        pod = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ticker"},
            "spec": {"nodeName": lab.name, "terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", TICKER],
            }]},
        }  # fmt: skip
        core.create_namespaced_pod("default", pod)
        wait_for(
            "the pod to run",
            lambda: core.read_namespaced_pod("ticker", "default").status.phase == "Running",
            60,
            node,
        )
        before = core.read_namespaced_pod("ticker", "default").status.container_statuses[0]
        logs = subprocess.Popen(
            [
                str(cluster.binaries.kubectl),
                f"--kubeconfig={cluster.admin_kubeconfig}",
                "logs",
                "-f",
                "ticker",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.extend(iter(logs.stdout.readline, "")) if logs.stdout else None,
            daemon=True,
        )
        reader.start()
        started = time.monotonic()
        wait_for(
            "both certificates to rotate (150 s lifetimes, renewed at 70-90 %)",
            lambda: (
                _pem_target(client_pem) != first_client and _pem_target(server_pem) != first_server
            ),
            SIGNING_S + 60,
            node,
        )
        rotated_after_s = time.monotonic() - started
        seen_at_rotation = len(lines)
        # The node keeps talking to the API with the new client cert (lease renewals)...
        coord = client.CoordinationV1Api(admin_api)
        renew = coord.read_namespaced_lease(lab.name, "kube-node-lease").spec.renew_time
        wait_for(
            "a lease renewal after rotation",
            lambda: (
                coord.read_namespaced_lease(lab.name, "kube-node-lease").spec.renew_time > renew
            ),
            30,
            node,
        )
        # ...the pod was not restarted, and the stream opened before rotation still flows.
        after = core.read_namespaced_pod("ticker", "default").status.container_statuses[0]
        assert after.container_id == before.container_id and after.restart_count == 0
        wait_for(
            "new log lines on the old stream", lambda: len(lines) > seen_at_rotation + 2, 20, node
        )
        assert logs.poll() is None, "kubectl logs -f ended during rotation"
        assert node_ready(core, lab.name)
        renewals = [
            r
            for r in csr_rows(cluster)
            if r[2] == "kubernetes.io/kube-apiserver-client-kubelet"
            and r[3] == f"system:node:{lab.name}"
        ]
        assert renewals and renewals[0][-1] == "Approved,Issued", csr_rows(cluster)
        print(f"both certificates rotated {rotated_after_s:.0f} s into the stream", file=sys.stderr)
        approvals = json.loads(cluster.kubectl("get", "csr", "-o", "json").stdout)["items"]

        def by_approver(c: dict[str, Any]) -> bool:
            conds = c["status"].get("conditions", [])
            return (
                c["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
                and c["spec"]["username"] == f"system:node:{lab.name}"
                and any(x.get("reason") == "KubeletPyServingApprover" for x in conds)
            )

        assert len([c for c in approvals if by_approver(c)]) >= 2, (
            "the first serving cert and its renewal, both by the approver"
        )
    finally:
        if logs is not None:
            logs.kill()
            logs.wait(timeout=10)
        approver.terminate()
        approver.wait(timeout=10)
        approver_log.close()
        lab_env.teardown(node, admin_api)
