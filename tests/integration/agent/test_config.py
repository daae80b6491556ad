"""A node configured by a KubeletConfiguration file, against the real cluster: the fields take
effect (maxPods, lease duration, taints, reserved resources, podPidsLimit, status update
period), unknown fields are warned about, /configz (through the apiserver's node proxy) shows
the effective configuration, and a tiny evictionHard threshold puts the node under
DiskPressure, which the node lifecycle controller turns into a taint."""

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from kubelet_py.devcluster import LocalCluster
from tests.integration.agent.conftest import (
    IMAGE,
    AgentNode,
    _ready,
    _teardown,
    fresh_namespace,
    preload_image,
    wait_for,
)
from tests.support.images import ImageBuilder

NODE = "cfgnode"
CONFIG = {
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "kind": "KubeletConfiguration",
    "maxPods": 42,
    "nodeLeaseDurationSeconds": 20,
    "nodeStatusUpdateFrequency": "2s",
    "fileCheckFrequency": "5s",
    "registerWithTaints": [
        {"key": "example.com/configured", "value": "yes", "effect": "NoSchedule"}
    ],
    "systemReserved": {"cpu": "500m", "memory": "256Mi"},
    # every filesystem has less than 100 % free: DiskPressure for sure, nothing else
    "evictionHard": {"nodefs.available": "100%"},
    "evictionPressureTransitionPeriod": "30s",
    "podPidsLimit": 64,
    "clusterDomain": "cfg.local",
    "containerLogMaxSize": "4Ki",
    "containerLogMaxFiles": 3,
    "bogusField": True,
}


@pytest.fixture(scope="module")
def cfg_node(
    cluster: LocalCluster, admin_api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentNode]:
    """An agent started with --config (CONFIG); torn down like the shared agent node."""
    lab = cluster.add_node(NODE)
    root = tmp_path_factory.mktemp("cfg-root")
    static_dir = root / "manifests"
    static_dir.mkdir()
    layout = ImageBuilder(tmp_path_factory.mktemp("cfg-images")).busybox().layout

    preload_image(root, layout)
    config = root / "kubelet.yaml"
    config.write_text(json.dumps(CONFIG))
    kubeconfig = root / "kubeconfig"
    kubeconfig.write_bytes(cluster.node_kubeconfig(NODE))
    log_path = root / "agent.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [*lab.nsenter(), "python3", "-m", "kubelet_py", "node", "run", "--config", str(config),
             "--kubeconfig", str(kubeconfig), "--node-name", NODE, "--node-ip", str(lab.address),
             "--root-dir", str(root), "--pod-manifest-path", str(static_dir),
             "--cgroup-parent", f"kpy-{NODE}-{os.getpid()}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    node = AgentNode(NODE, lab, root, static_dir, log_path, proc)
    core = client.CoreV1Api(admin_api)
    try:
        wait_for("the configured node to be Ready", lambda: _ready(core, NODE), 60, node)
        yield node
    finally:
        _teardown(cluster, core, node)


@pytest.fixture
def ns(admin_api: client.ApiClient) -> Iterator[str]:
    with fresh_namespace(admin_api, "c") as name:
        yield name


def _quantity_ki(text: str) -> int:
    assert text.endswith("Ki"), text
    return int(text[:-2])


def test_configured_fields_take_effect(cfg_node: AgentNode, admin_api: client.ApiClient) -> None:
    """maxPods, registerWithTaints, systemReserved, nodeLeaseDurationSeconds, and the unknown
    field warning, as the cluster and the agent's log show them."""
    core = client.CoreV1Api(admin_api)
    node = core.read_node(NODE)
    assert node.status.capacity["pods"] == "42" and node.status.allocatable["pods"] == "42"
    cap_mem = _quantity_ki(node.status.capacity["memory"])
    alloc_mem = _quantity_ki(node.status.allocatable["memory"])
    assert cap_mem - alloc_mem == 256 * 1024  # systemReserved; no memory threshold configured
    cpus = int(node.status.capacity["cpu"])
    assert node.status.allocatable["cpu"] == f"{cpus * 1000 - 500}m"
    taints = {(t.key, t.effect) for t in node.spec.taints or []}
    assert ("example.com/configured", "NoSchedule") in taints
    lease = client.CoordinationV1Api(admin_api).read_namespaced_lease(NODE, "kube-node-lease")
    assert lease.spec.lease_duration_seconds == 20
    log = cfg_node.log_tail(400)
    assert 'unknown field "bogusField"' in log, log


def test_tiny_eviction_threshold_means_disk_pressure(
    cfg_node: AgentNode, admin_api: client.ApiClient
) -> None:
    """nodefs.available < 100 %: DiskPressure True with the threshold named, the other
    pressures False, and the controller-manager taints the node disk-pressure."""
    core = client.CoreV1Api(admin_api)

    def conditions() -> dict[str, client.V1NodeCondition]:
        return {c.type: c for c in core.read_node(NODE).status.conditions or []}

    wait_for("DiskPressure", lambda: conditions()["DiskPressure"].status == "True", 60, cfg_node)
    conds = conditions()
    disk = conds["DiskPressure"]
    assert disk.reason == "KubeletHasDiskPressure"
    assert disk.message == "kubelet has disk pressure: nodefs.available below 100%"
    assert conds["MemoryPressure"].status == "False" and conds["PIDPressure"].status == "False"
    assert conds["Ready"].status == "True"
    wait_for(
        "the disk-pressure taint",
        lambda: any(
            t.key == "node.kubernetes.io/disk-pressure" for t in core.read_node(NODE).spec.taints
        ),
        60,
        cfg_node,
    )


def test_configz_shows_the_effective_configuration(
    cfg_node: AgentNode, admin_api: client.ApiClient
) -> None:
    """/configz through the apiserver's node proxy: file values, and defaults for the rest."""
    core = client.CoreV1Api(admin_api)
    raw = core.connect_get_node_proxy_with_path(NODE, "configz", _preload_content=False).data
    cfg = json.loads(raw)["kubeletconfig"]
    assert cfg["kind"] == "KubeletConfiguration"
    assert cfg["maxPods"] == 42 and cfg["nodeLeaseDurationSeconds"] == 20
    assert cfg["fileCheckFrequency"] == "5s" and cfg["nodeStatusUpdateFrequency"] == "2s"
    assert cfg["evictionHard"] == {"nodefs.available": "100%"}
    assert cfg["clusterDomain"] == "cfg.local" and cfg["podPidsLimit"] == 64
    assert cfg["syncFrequency"] == "1m0s" and cfg["port"] == 10250  # defaults
    assert cfg["staticPodPath"] == str(cfg_node.static_dir)  # the flag, over the file


def test_pod_pids_limit_caps_processes(
    cfg_node: AgentNode, admin_api: client.ApiClient, ns: str
) -> None:
    """podPidsLimit 64: a container that starts 100 sleepers hits the limit (fork fails,
    EAGAIN) and never gets to report that it started them all."""
    core = client.CoreV1Api(admin_api)
    script = (
        "i=0; while [ $i -lt 100 ]; do sleep 60 & i=$((i+1)); done 2>&1; "
        "echo started=$i; sleep 3600"
    )
    core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="forker"),
        spec=client.V1PodSpec(
            node_name=NODE, termination_grace_period_seconds=1,
            tolerations=[client.V1Toleration(operator="Exists")],
            containers=[client.V1Container(name="main", image=IMAGE, image_pull_policy="IfNotPresent",
                                           command=["sh", "-c", script])],
        ),
    ))  # fmt: skip
    wait_for(
        "a failed fork", lambda: "can't fork" in cfg_node.container_log(ns, "forker", "main"),
        60, cfg_node,
    )  # fmt: skip
    out = cfg_node.container_log(ns, "forker", "main")
    assert "started=100" not in out, out
    assert "Resource temporarily unavailable" in out, out


def test_container_logs_are_rotated(
    cfg_node: AgentNode, admin_api: client.ApiClient, ns: str
) -> None:
    """containerLogMaxSize 4Ki / containerLogMaxFiles 3: a chatty container's log is rotated
    (renamed, reopened by the runtime, still written) and never more than 3 files are kept."""
    core = client.CoreV1Api(admin_api)
    script = (
        "i=0; while true; do echo line $i padding-padding-padding; i=$((i+1)); sleep 0.01; done"
    )
    core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="chatty"),
        spec=client.V1PodSpec(
            node_name=NODE, termination_grace_period_seconds=1,
            tolerations=[client.V1Toleration(operator="Exists")],
            containers=[client.V1Container(name="main", image=IMAGE, image_pull_policy="IfNotPresent",
                                           command=["sh", "-c", script])],
        ),
    ))  # fmt: skip

    def log_files() -> list[Path]:
        return sorted((cfg_node.root / "logs" / "pods").glob(f"{ns}_chatty_*/main/0.log*"))

    wait_for("two rotations", lambda: len(log_files()) >= 3, 90, cfg_node)
    for _ in range(3):  # keeps rotating, never keeps more than 3 files
        time.sleep(4)
        files = log_files()
        assert len(files) <= 3, files
    current = log_files()[0]
    assert current.name == "0.log"  # the runtime reopened it after each rename and writes on
    wait_for("new lines in the reopened log", lambda: "line" in current.read_text(), 10)
    assert any("line" in f.read_text() for f in log_files() if f.name != "0.log")
