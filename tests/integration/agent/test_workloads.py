"""Workloads against the real cluster: a Deployment's rolling update, image pull errors with
back-off, imagePullSecrets against an authenticated TLS registry, and static manifest edits.

The registry (Debian's docker-registry, TLS + htpasswd) runs inside the node's network
namespace, where the agent pulls from 127.0.0.1:<port>; the node trusts its CA through
<root>/certs.d/<host:port>/ca.crt (the agent reads certs.d when it starts, so the module
fixture restarts it once). busybox is pushed there by skopeo, also from inside that
namespace.
"""

import base64
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from kubelet_py.devcluster import LocalCluster
from kubelet_py.devcluster.netlab import run_in_netns
from tests.integration.agent.conftest import (
    IMAGE,
    AgentNode,
    fresh_namespace,
    start_agent,
    stop_agent,
    wait_for,
)
from tests.support.images import ImageBuilder, busybox
from tests.support.registry import REGISTRY_BINARY, Registry


class NodeRegistry(Registry):
    """A `Registry` whose process (and our requests to it) live in a node's network namespace."""

    def __init__(self, work_dir: Path, netns: Path, **kwargs: Any) -> None:
        super().__init__(work_dir, **kwargs)
        self.netns = netns

    def _spawn(self) -> None:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.work_dir)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={self.netns}", str(REGISTRY_BINARY), "serve",
                 str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.work_dir, start_new_session=True,
            )  # fmt: skip

    def request(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        return run_in_netns(self.netns, lambda: super(NodeRegistry, self).request(*args, **kwargs))


@pytest.fixture(scope="module")
def registry(
    agent_node: AgentNode, cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeRegistry]:
    """TLS + htpasswd registry in the node netns with busybox at `private/busybox:1`; the
    node trusts its CA (certs.d) after one agent restart."""
    reg = NodeRegistry(
        tmp_path_factory.mktemp("node-registry"), agent_node.lab.netns_path,
        username="puller", password="s3cret-pull",
    )  # fmt: skip
    reg.start()
    try:
        builder = ImageBuilder(tmp_path_factory.mktemp("registry-images"))
        run_in_netns(
            agent_node.lab.netns_path,
            lambda: busybox(reg, builder, name="private/busybox", tag="1"),
        )
        assert reg.ca_path is not None
        certs = agent_node.root / "certs.d" / reg.host
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(reg.ca_path, certs / "ca.crt")
        stop_agent(agent_node.proc)
        agent_node.proc = start_agent(
            cluster, agent_node.lab, agent_node.root, agent_node.static_dir, agent_node.log_path
        )
        wait_for(
            "the agent to trust the registry",
            lambda: f"registry {reg.host}: trusting" in agent_node.log_tail(400),
            60,
            agent_node,
        )
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def ns(admin_api: client.ApiClient) -> Iterator[str]:
    with fresh_namespace(admin_api, "w") as name:
        yield name


def _pull_secret(core: client.CoreV1Api, ns: str, reg: Registry) -> str:
    auth = base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()
    config = {"auths": {reg.host: {"username": reg.username, "password": reg.password,
                                   "auth": auth}}}  # fmt: skip
    core.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="regcred"), type="kubernetes.io/dockerconfigjson",
        data={".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    ))  # fmt: skip
    return "regcred"


def _pod(name: str, image: str, *, secret: str | None = None) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            node_name="agent1", termination_grace_period_seconds=1,
            image_pull_secrets=[client.V1LocalObjectReference(name=secret)] if secret else None,
            containers=[client.V1Container(name="main", image=image, image_pull_policy="Always",
                                           command=["sleep", "3600"])],
        ),
    )  # fmt: skip


def _waiting(core: client.CoreV1Api, ns: str, name: str) -> tuple[str, str]:
    statuses = core.read_namespaced_pod(name, ns).status.container_statuses or []
    if statuses and statuses[0].state.waiting is not None:
        return statuses[0].state.waiting.reason or "", statuses[0].state.waiting.message or ""
    return "", ""


def _events(core: client.CoreV1Api, ns: str, name: str) -> list[tuple[str, str]]:
    return [
        (e.reason, e.message)
        for e in core.list_namespaced_event(ns).items
        if e.involved_object.name == name
    ]


def test_image_pull_secret_is_needed_and_used(
    agent_node: AgentNode, registry: NodeRegistry, admin_api: client.ApiClient, ns: str
) -> None:
    """With a dockerconfigjson Secret the pod pulls from the authenticated registry and runs;
    without it the pull is refused (ErrImagePull: the registry requires credentials)."""
    core = client.CoreV1Api(admin_api)
    image = registry.reference("private/busybox", "1")
    secret = _pull_secret(core, ns, registry)
    core.create_namespaced_pod(ns, _pod("with-secret", image, secret=secret))
    core.create_namespaced_pod(ns, _pod("no-secret", image))
    wait_for(
        "the pod with the secret to run",
        lambda: core.read_namespaced_pod("with-secret", ns).status.phase == "Running",
        90,
        agent_node,
    )
    pulled = [m for r, m in _events(core, ns, "with-secret") if r == "Pulled"]
    assert any(m.startswith(f'Successfully pulled image "{image}"') for m in pulled), pulled
    wait_for(
        "the pod without it to fail pulling",
        lambda: _waiting(core, ns, "no-secret")[0] in ("ErrImagePull", "ImagePullBackOff"),
        60,
        agent_node,
    )
    failures = [m for r, m in _events(core, ns, "no-secret") if r == "Failed"]
    assert any(f'Failed to pull image "{image}"' in m for m in failures), failures
    assert any("requires credentials" in m for m in failures), failures
    assert core.read_namespaced_pod("no-secret", ns).status.phase == "Pending"


def test_missing_image_backs_off(
    agent_node: AgentNode, registry: NodeRegistry, admin_api: client.ApiClient, ns: str
) -> None:
    """A missing image: ErrImagePull, then ImagePullBackOff in the status with the reason, and
    Failed/BackOff events; retries are spaced by the back-off (10 s first), not a hot loop."""
    core = client.CoreV1Api(admin_api)
    image = registry.reference("private/nope", "1")
    secret = _pull_secret(core, ns, registry)
    core.create_namespaced_pod(ns, _pod("missing", image, secret=secret))
    reasons_seen: set[str] = set()

    def backing_off() -> bool:
        reason, message = _waiting(core, ns, "missing")
        reasons_seen.add(reason)
        return reason == "ImagePullBackOff" and message.startswith(
            f'Back-off pulling image "{image}"'
        )

    wait_for("ImagePullBackOff", backing_off, 60, agent_node)
    time.sleep(6)
    events = _events(core, ns, "missing")
    assert ("Failed", "Error: ErrImagePull") in events
    assert ("BackOff", f'Back-off pulling image "{image}"') in events
    failed = [m for r, m in events if r == "Failed" and m.startswith("Failed to pull image")]
    assert failed and ("not found" in failed[0].lower() or "unknown" in failed[0].lower()), failed
    pulls = [m for r, m in events if r == "Pulling"]
    assert 1 <= len(pulls) <= 2, events  # within ~10 s of the first failure: one retry at most
    assert core.read_namespaced_pod("missing", ns).status.phase == "Pending"


def test_deployment_rolling_update_replaces_pods_gracefully(
    agent_node: AgentNode, admin_api: client.ApiClient, ns: str
) -> None:
    """An env change rolls a Deployment over: new pods run on our node with the new value, and
    each old pod's container got SIGTERM and exited 0 from its trap before the pod went away."""
    apps, core = client.AppsV1Api(admin_api), client.CoreV1Api(admin_api)
    labels = {"app": "roll"}
    script = (
        "trap 'echo bye $VERSION; exit 0' TERM; echo hello $VERSION; while true; do sleep 0.2; done"
    )
    apps.create_namespaced_deployment(ns, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="roll"),
        spec=client.V1DeploymentSpec(
            replicas=2, selector=client.V1LabelSelector(match_labels=labels),
            strategy=client.V1DeploymentStrategy(
                type="RollingUpdate",
                rolling_update=client.V1RollingUpdateDeployment(max_surge=1, max_unavailable=0)),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(node_name="agent1", termination_grace_period_seconds=10,
                    containers=[client.V1Container(
                        name="app", image=IMAGE, image_pull_policy="IfNotPresent",
                        command=["sh", "-c", script],
                        env=[client.V1EnvVar(name="VERSION", value="v1")])]),
            ),
        ),
    ))  # fmt: skip

    def rolled(version: str) -> bool:
        dep = apps.read_namespaced_deployment("roll", ns)
        st = dep.status
        pods = core.list_namespaced_pod(ns, label_selector="app=roll").items
        return (
            (st.updated_replicas or 0) == 2
            and (st.ready_replicas or 0) == 2
            and (st.replicas or 0) == 2
            and len(pods) == 2
            and all(p.spec.containers[0].env[0].value == version for p in pods)
            and all(p.status.phase == "Running" for p in pods)
        )

    wait_for("2 ready v1 replicas", lambda: rolled("v1"), 90, agent_node)
    old = {p.metadata.name for p in core.list_namespaced_pod(ns, label_selector="app=roll").items}
    last_seen: dict[str, Any] = {}
    stop = threading.Event()

    def watch_pods() -> None:
        w = watch.Watch()
        for event in w.stream(core.list_namespaced_pod, ns, timeout_seconds=120):
            pod = event["object"]
            for cs in pod.status.container_statuses or []:
                if cs.state.terminated is not None:
                    last_seen[pod.metadata.name] = cs.state.terminated
            if stop.is_set():
                w.stop()

    watcher = threading.Thread(target=watch_pods, daemon=True)
    watcher.start()
    time.sleep(0.5)
    apps.patch_namespaced_deployment(
        "roll", ns,
        {"spec": {"template": {"spec": {"containers": [
            {"name": "app", "env": [{"name": "VERSION", "value": "v2"}]}]}}}},
    )  # fmt: skip
    wait_for("the rollout to v2", lambda: rolled("v2"), 120, agent_node)
    new = {p.metadata.name for p in core.list_namespaced_pod(ns, label_selector="app=roll").items}
    assert not new & old
    wait_for("the final status of the old pods", lambda: old <= set(last_seen), 30, agent_node)
    stop.set()
    for name in old:
        term = last_seen[name]
        assert term.exit_code == 0, (name, term)  # the trap ran: SIGTERM, not SIGKILL
    for name in new:
        assert "hello v2" in agent_node.container_log(ns, name, "app")


def test_static_manifest_edit_replaces_the_pod_at_once(
    agent_node: AgentNode, admin_api: client.ApiClient
) -> None:
    """Editing a static manifest is seen through inotify: the pod is replaced by the new one
    well before the 20 s periodic rescan (fileCheckFrequency) would have found it."""
    core = client.CoreV1Api(admin_api)
    path = agent_node.static_dir / "edited.yaml"

    def manifest(word: str) -> str:
        return (
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: edited\n  namespace: default\nspec:\n"
            f"  containers:\n  - name: main\n    image: {IMAGE}\n"
            f"    command: [sh, -c, 'echo {word}; sleep 3600']\n"
        )

    def mirror_says(word: str) -> bool:
        try:
            pod = core.read_namespaced_pod("edited-agent1", "default")
        except client.ApiException:
            return False
        return pod.status.phase == "Running" and word in pod.spec.containers[0].command[2]

    path.write_text(manifest("first"))
    wait_for("the first version", lambda: mirror_says("first"), 60, agent_node)
    started = time.monotonic()
    path.write_text(manifest("second"))
    wait_for("the edited version", lambda: mirror_says("second"), 60, agent_node)
    assert time.monotonic() - started < 15, "the edit waited for the periodic rescan"
    assert "second" in agent_node.container_log("default", "edited-agent1", "main")
    path.unlink()
