"""A kubelet-py node agent in a lab node namespace, joined to the session's real cluster."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from cri.images import ImageService
from kubelet_py.devcluster import LabNode, LocalCluster
from tests.support.images import ImageBuilder

IMAGE = "example.com/test/busybox:1"
OCI_RUNTIME = os.environ.get("KUBELET_PY_TEST_OCI_RUNTIME", "kubelet-py-oci")
"""The agent's executor; runc stays selectable (KUBELET_PY_TEST_OCI_RUNTIME=runc)."""


@dataclass
class AgentNode:
    name: str
    lab: LabNode
    root: Path
    static_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        found = sorted((self.root / "logs" / "pods").glob(f"{namespace}_{pod}_*/{container}/*.log"))
        return "\n".join(p.read_text() for p in found)


def preload_image(root: Path, layout: Path, name: str = IMAGE) -> None:
    """Import an OCI layout into a node's image store before its agent starts (no registry)."""

    async def load() -> None:
        svc = ImageService(root / "images")
        try:
            await svc.import_image(layout, name=name)
        finally:
            await svc.close()

    asyncio.run(load())


def wait_for(what: str, fn, timeout_s: float = 60.0, node: AgentNode | None = None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\nagent log:\n{node.log_tail()}" if node is not None else ""
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}{extra}")
        time.sleep(0.3)


def start_agent(
    cluster: LocalCluster,
    lab: LabNode,
    root: Path,
    static_dir: Path,
    log_path: Path,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    kubeconfig = root / "kubeconfig"
    kubeconfig.write_bytes(cluster.node_kubeconfig(lab.name))
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [*lab.nsenter(), "python3", "-m", "kubelet_py", "node", "run",
         "--kubeconfig", str(kubeconfig), "--node-name", lab.name, "--node-ip", str(lab.address),
         "--root-dir", str(root), "--pod-manifest-path", str(static_dir),
         "--cgroup-parent", f"kpy-{lab.name}", "--oci-runtime", OCI_RUNTIME,
         "--node-labels", "example.com/engine=kubelet-py", *extra],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    return proc


def stop_agent(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def agent_node(
    cluster: LocalCluster, admin_api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentNode]:
    """One node agent, with busybox preloaded; on teardown its pods, Node and state are removed."""
    name = "agent1"
    lab = cluster.add_node(name)
    root = tmp_path_factory.mktemp("agent-root")
    static_dir = root / "manifests"
    static_dir.mkdir()
    builder = ImageBuilder(tmp_path_factory.mktemp("agent-images"))
    layout = builder.busybox().layout

    preload_image(root, layout)
    log_path = root / "agent.log"
    proc = start_agent(cluster, lab, root, static_dir, log_path)
    node = AgentNode(name, lab, root, static_dir, log_path, proc)
    core = client.CoreV1Api(admin_api)
    try:
        wait_for("the node to be Ready", lambda: _ready(core, name), 60, node)
        yield node
    finally:
        _teardown(cluster, core, node)


def _ready(core: client.CoreV1Api, name: str) -> bool:
    try:
        n = core.read_node(name)
    except client.ApiException:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])


def _teardown(cluster: LocalCluster, core: client.CoreV1Api, node: AgentNode) -> None:
    # Remove every pod (static ones by emptying the directory), let the agent end them, stop it.
    for f in node.static_dir.iterdir():
        f.unlink()
    for ns in core.list_namespace().items:
        for pod in core.list_namespaced_pod(
            ns.metadata.name, field_selector=f"spec.nodeName={node.name}"
        ).items:
            try:
                core.delete_namespaced_pod(
                    pod.metadata.name, ns.metadata.name, grace_period_seconds=1
                )
            except client.ApiException:
                pass
    deadline = time.monotonic() + 60
    runtime = node.root / "runtime" / "sandboxes"
    while time.monotonic() < deadline and node.proc.poll() is None:
        if not runtime.exists() or not any(runtime.iterdir()):
            break
        time.sleep(0.5)
    stop_agent(node.proc)
    try:
        core.delete_node(node.name)
    except client.ApiException:
        pass
    cluster.netlab.remove_node(node.name)


@contextlib.contextmanager
def fresh_namespace(admin_api: client.ApiClient, prefix: str) -> Iterator[str]:
    """A new namespace whose default service account exists (pods are refused before it does)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(admin_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(
        "the default service account",
        lambda: any(
            sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items
        ),
        30,
    )
    try:
        yield name
    finally:
        core.delete_namespace(name)


def pod_json(name: str, containers: list[dict[str, object]], **spec: object) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": "agent1",
            "containers": containers,
            "terminationGracePeriodSeconds": 2,
            **spec,
        },
    }


def dumps(obj: object) -> str:
    return json.dumps(obj)
