"""kubectl exec / port-forward with the agent on a remote CRI runtime (`--remote-runtime`).

The runtime is a separate `kubelet-py cri serve` process in the node's namespace; the
kubelet API gets each stream's URL from CRI Exec/PortForward and proxies the upgraded
connection to it, as the upstream kubelet does with containerd or CRI-O.
"""

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest
from kubernetes import client

from kubelet_py.devcluster import LocalCluster
from tests.integration.agent.conftest import (
    IMAGE,
    OCI_RUNTIME,
    AgentNode,
    _ready,
    _teardown,
    fresh_namespace,
    preload_image,
    start_agent,
    wait_for,
)
from tests.integration.agent.test_kubelet_streaming import SPDY_ENV, WS_ENV, kubectl, port_forward
from tests.support.images import ImageBuilder

NODE = "remote1"


@pytest.fixture(scope="module")
def remote_node(
    cluster: LocalCluster, admin_api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentNode]:
    """An agent whose runtime is a separate `cri serve` (same root layout), both in the node netns."""
    lab = cluster.add_node(NODE)
    root = tmp_path_factory.mktemp("remote-root")
    static_dir = root / "manifests"
    static_dir.mkdir()
    layout = ImageBuilder(tmp_path_factory.mktemp("remote-images")).busybox().layout

    preload_image(root, layout)
    socket = root / "remote-cri.sock"
    cri_log = (root / "cri.log").open("ab")
    cri = subprocess.Popen(
        [*lab.nsenter(), "python3", "-m", "kubelet_py", "cri", "serve", "--root", str(root),
         "--socket", str(socket), "--cgroup-parent", f"kpy-{NODE}", "--oci-runtime", OCI_RUNTIME,
         "--network", "loopback"],
        stdout=cri_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    cri_log.close()
    core = client.CoreV1Api(admin_api)
    node: AgentNode | None = None
    try:
        deadline = time.monotonic() + 30
        while b"serving CRI v1 on" not in (root / "cri.log").read_bytes():  # listening
            if cri.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"cri serve did not start: {(root / 'cri.log').read_text()}")
            time.sleep(0.1)
        log_path = root / "agent.log"
        proc = start_agent(
            cluster, lab, root, static_dir, log_path,
            ("--remote-runtime", "--cri-socket", str(socket)),
        )  # fmt: skip
        node = AgentNode(NODE, lab, root, static_dir, log_path, proc)
        wait_for("the node to be Ready", lambda: _ready(core, NODE), 60, node)
        yield node
    finally:
        if node is not None:
            _teardown(cluster, core, node)  # pods removed through the runtime, then the agent
        else:
            cluster.netlab.remove_node(NODE)
        if cri.poll() is None:
            cri.send_signal(signal.SIGTERM)
            try:
                cri.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(cri.pid, signal.SIGKILL)
                cri.wait(timeout=5)


@pytest.fixture(scope="module")
def ns(remote_node: AgentNode, admin_api: client.ApiClient) -> Iterator[str]:
    with fresh_namespace(admin_api, "r") as name:
        yield name


def _pod(admin_api: client.ApiClient, ns: str, node: AgentNode, name: str, script: str) -> str:
    core = client.CoreV1Api(admin_api)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            node_name=NODE, termination_grace_period_seconds=1,
            containers=[client.V1Container(name="main", image=IMAGE, image_pull_policy="IfNotPresent",
                                           command=["sh", "-c", script])],
        ),
    )  # fmt: skip
    core.create_namespaced_pod(ns, pod)
    wait_for(
        f"pod {name} to run",
        lambda: core.read_namespaced_pod(name, ns).status.phase == "Running",
        60,
        node,
    )
    return name


@pytest.mark.parametrize("env", [WS_ENV, SPDY_ENV], ids=["websocket", "spdy"])
def test_exec_through_a_remote_runtime(
    cluster: LocalCluster,
    admin_api: client.ApiClient,
    remote_node: AgentNode,
    ns: str,
    env: dict[str, str],
) -> None:
    """`kubectl exec` (stdin, stderr, exit code) reaches a container of the remote runtime."""
    name = f"sleeper-{'ws' if env is WS_ENV else 'spdy'}"
    _pod(admin_api, ns, remote_node, name, "sleep 3600")
    res = kubectl(
        cluster, "exec", "-i", "-n", ns, name, "--", "sh", "-c", "cat; echo e >&2; exit 4",
        input=b"remote\n", env=env,
    )  # fmt: skip
    assert res.stdout == b"remote\n" and b"e\n" in res.stderr, (res, remote_node.log_tail())
    assert res.returncode == 4
    assert not (remote_node.root / "cri.sock").exists()  # no embedded runtime was started


def test_port_forward_through_a_remote_runtime(
    cluster: LocalCluster, admin_api: client.ApiClient, remote_node: AgentNode, ns: str
) -> None:
    """`kubectl port-forward` to a pod of the remote runtime serves its page."""
    name = _pod(
        admin_api, ns, remote_node, "web",
        "mkdir -p /www && echo remote-page > /www/index.html && exec busybox httpd -f -p 8080 -h /www",
    )  # fmt: skip
    with port_forward(cluster, ns, f"pod/{name}", 18091, 8080, WS_ENV):
        deadline = time.monotonic() + 20
        body = b""
        while time.monotonic() < deadline and not body:
            try:
                with urllib.request.urlopen("http://127.0.0.1:18091/", timeout=5) as resp:
                    body = resp.read()
            except OSError:
                time.sleep(0.3)
        assert body == b"remote-page\n"
