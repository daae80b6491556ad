"""The node agent against the real cluster: registration, lease, Deployments, static pods,
init order, crash backoff, env from configMap, and the projected service-account token."""

import subprocess
import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from kubelet_py.devcluster import LocalCluster
from tests.integration.agent.conftest import IMAGE, AgentNode, fresh_namespace, wait_for


@pytest.fixture
def ns(admin_api: client.ApiClient) -> Iterator[str]:
    with fresh_namespace(admin_api, "a") as name:
        yield name


def cri_lines(text: str) -> list[str]:
    """Whole lines from a CRI log: `P` (partial) chunks join the next `F` (full) one."""
    out: list[str] = []
    pending = ""
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3:
            continue
        chunk = parts[3] if len(parts) == 4 else ""
        if parts[2] == "P":
            pending += chunk
        else:
            out.append(pending + chunk)
            pending = ""
    return out


def _pod(name: str, command: list[str], **extra: object) -> client.V1Pod:
    container = client.V1Container(
        name="main", image=IMAGE, image_pull_policy="IfNotPresent", command=command
    )
    for k, v in extra.pop("container", {}).items():  # type: ignore[attr-defined]
        setattr(container, k, v)
    spec = client.V1PodSpec(
        containers=[container], termination_grace_period_seconds=2, node_name="agent1", **extra
    )
    return client.V1Pod(metadata=client.V1ObjectMeta(name=name), spec=spec)


def test_node_registers_ready_with_capacity_labels_and_lease(
    agent_node: AgentNode, admin_api: client.ApiClient
) -> None:
    """`kubectl get nodes` sees the node Ready, with capacity, labels and a renewing Lease."""
    node = client.CoreV1Api(admin_api).read_node(agent_node.name)
    labels = node.metadata.labels
    assert (
        labels["kubernetes.io/hostname"] == "agent1"
        and labels["example.com/engine"] == "kubelet-py"
    )
    assert int(node.status.capacity["pods"]) == 110 and node.status.capacity["cpu"]
    assert node.status.node_info.container_runtime_version.startswith("kubelet-py://")
    assert {a.type: a.address for a in node.status.addresses}["InternalIP"] == str(
        agent_node.lab.address
    )
    core = client.CoreV1Api(admin_api)
    wait_for(
        "a podCIDR from the controller-manager", lambda: core.read_node("agent1").spec.pod_cidr, 30
    )
    coord = client.CoordinationV1Api(admin_api)
    first = coord.read_namespaced_lease("agent1", "kube-node-lease").spec.renew_time
    wait_for(
        "a lease renewal",
        lambda: coord.read_namespaced_lease("agent1", "kube-node-lease").spec.renew_time > first,
        30,
    )


def test_deployment_runs_scales_and_deletes_gracefully(
    agent_node: AgentNode, admin_api: client.ApiClient, ns: str
) -> None:
    """A Deployment of 3 replicas becomes 3 Ready pods; scaling down ends pods gracefully."""
    apps, core = client.AppsV1Api(admin_api), client.CoreV1Api(admin_api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(ns, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=3, selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(termination_grace_period_seconds=2, containers=[client.V1Container(
                    name="web", image=IMAGE, image_pull_policy="IfNotPresent",
                    command=["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"])]),
            ),
        ),
    ))  # fmt: skip
    wait_for(
        "3 ready replicas",
        lambda: (apps.read_namespaced_deployment("web", ns).status.ready_replicas or 0) == 3,
        90,
        agent_node,
    )
    pods = core.list_namespaced_pod(ns).items
    assert all(p.status.phase == "Running" and p.spec.node_name == "agent1" for p in pods)
    assert all(p.status.container_statuses[0].ready for p in pods)
    apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 1}})
    wait_for(
        "scale down to 1 pod", lambda: len(core.list_namespaced_pod(ns).items) == 1, 60, agent_node
    )


def test_static_pod_runs_with_a_mirror_pod(
    agent_node: AgentNode, admin_api: client.ApiClient
) -> None:
    """A manifest dropped into the static pod directory runs, and a mirror pod shows it in the API."""
    (agent_node.static_dir / "static-web.yaml").write_text(
        f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: static-web\n  namespace: default\nspec:\n"
        f"  containers:\n  - name: main\n    image: {IMAGE}\n    command: [sh, -c, 'echo static up; sleep 3600']\n"
    )
    core = client.CoreV1Api(admin_api)

    def mirror_running() -> client.V1Pod | None:
        try:
            p = core.read_namespaced_pod("static-web-agent1", "default")
        except client.ApiException:
            return None
        return p if p.status.phase == "Running" else None

    mirror = wait_for("the mirror pod to be Running", mirror_running, 60, agent_node)
    assert "kubernetes.io/config.mirror" in mirror.metadata.annotations
    assert "static up" in agent_node.container_log("default", "static-web-agent1", "main")
    # Deleting the mirror pod does not stop the static pod; the mirror comes back.
    core.delete_namespaced_pod("static-web-agent1", "default", grace_period_seconds=0)
    wait_for("the mirror pod to be recreated", mirror_running, 30, agent_node)
    (agent_node.static_dir / "static-web.yaml").unlink()


def test_init_containers_run_in_order_before_main(
    agent_node: AgentNode, admin_api: client.ApiClient, ns: str
) -> None:
    """Init containers run one after another, then the main container sees their work."""
    core = client.CoreV1Api(admin_api)
    vol = [client.V1VolumeMount(name="w", mount_path="/w")]
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="inits"), spec=client.V1PodSpec(
        node_name="agent1", termination_grace_period_seconds=2,
        volumes=[client.V1Volume(name="w", empty_dir={})],
        init_containers=[
            client.V1Container(name="one", image=IMAGE, command=["sh", "-c", "echo one >> /w/order"], volume_mounts=vol),
            client.V1Container(name="two", image=IMAGE, command=["sh", "-c", "echo two >> /w/order"], volume_mounts=vol),
        ],
        containers=[client.V1Container(name="main", image=IMAGE, command=["sh", "-c", "cat /w/order; sleep 3600"], volume_mounts=vol)],
    ))  # fmt: skip
    core.create_namespaced_pod(ns, pod)
    wait_for(
        "the pod to be Running",
        lambda: core.read_namespaced_pod("inits", ns).status.phase == "Running",
        60,
        agent_node,
    )
    time.sleep(0.5)
    assert agent_node.container_log(ns, "inits", "main").split("stdout F ")[1:3] == [
        "one\n2",
        "two\n",
    ] or (
        "one" in agent_node.container_log(ns, "inits", "main")
        and agent_node.container_log(ns, "inits", "main").index("one")
        < agent_node.container_log(ns, "inits", "main").index("two")
    )
    status = core.read_namespaced_pod("inits", ns).status
    assert [s.state.terminated.exit_code for s in status.init_container_statuses] == [0, 0]
    assert {c.type: c.status for c in status.conditions}["Initialized"] == "True"


def test_crash_loop_backoff(agent_node: AgentNode, admin_api: client.ApiClient, ns: str) -> None:
    """A failing container restarts with CrashLoopBackOff and a growing restartCount."""
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_pod(ns, _pod("crasher", ["sh", "-c", "echo boom; exit 3"]))

    def crash_looping() -> bool:
        cs = core.read_namespaced_pod("crasher", ns).status.container_statuses or []
        return (
            bool(cs)
            and cs[0].state.waiting is not None
            and cs[0].state.waiting.reason == "CrashLoopBackOff"
        )

    wait_for("CrashLoopBackOff", crash_looping, 60, agent_node)
    cs = core.read_namespaced_pod("crasher", ns).status.container_statuses[0]
    assert cs.last_state.terminated.exit_code == 3
    reasons = [
        e.reason
        for e in core.list_namespaced_event(ns).items
        if e.involved_object.name == "crasher"
    ]
    assert "BackOff" in reasons and "Started" in reasons


def test_env_from_configmap_and_downward_api(
    agent_node: AgentNode, admin_api: client.ApiClient, ns: str
) -> None:
    """env from a configMap key, envFrom, fieldRef and $(VAR) expansion reach the process."""
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_config_map(
        ns,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="cfg"), data={"greeting": "hello", "COLOR": "blue"}
        ),
    )
    pod = _pod("envs", ["sh", "-c", "echo G=$G C=$COLOR N=$N X=$(X); sleep 3600"], container={
        "env": [
            client.V1EnvVar(name="G", value_from=client.V1EnvVarSource(config_map_key_ref=client.V1ConfigMapKeySelector(name="cfg", key="greeting"))),
            client.V1EnvVar(name="N", value_from=client.V1EnvVarSource(field_ref=client.V1ObjectFieldSelector(field_path="metadata.namespace"))),
            client.V1EnvVar(name="X", value="$(G)-world"),
        ],
        "env_from": [client.V1EnvFromSource(config_map_ref=client.V1ConfigMapEnvSource(name="cfg"))],
        "args": None,
    })  # fmt: skip
    pod.spec.containers[0].command = ["sh", "-c", "echo G=$G C=$COLOR N=$N X=$X; sleep 3600"]
    core.create_namespaced_pod(ns, pod)
    wait_for(
        "the pod to be Running",
        lambda: core.read_namespaced_pod("envs", ns).status.phase == "Running",
        60,
        agent_node,
    )
    wait_for("its output", lambda: "G=" in agent_node.container_log(ns, "envs", "main"), 10)
    assert f"G=hello C=blue N={ns} X=hello-world" in agent_node.container_log(ns, "envs", "main")


def test_missing_configmap_is_reported_and_others_run(
    agent_node: AgentNode, admin_api: client.ApiClient, ns: str
) -> None:
    """A pod needing a missing configMap waits with CreateContainerConfigError; others still run."""
    core = client.CoreV1Api(admin_api)
    bad = _pod("needs-cfg", ["sleep", "3600"], container={"env": [client.V1EnvVar(
        name="X", value_from=client.V1EnvVarSource(config_map_key_ref=client.V1ConfigMapKeySelector(name="nope", key="k")))]})  # fmt: skip
    core.create_namespaced_pod(ns, bad)
    core.create_namespaced_pod(ns, _pod("fine", ["sleep", "3600"]))

    def waiting_reason() -> str | None:
        cs = core.read_namespaced_pod("needs-cfg", ns).status.container_statuses or []
        return cs[0].state.waiting.reason if cs and cs[0].state.waiting else None

    wait_for(
        "CreateContainerConfigError",
        lambda: waiting_reason() == "CreateContainerConfigError",
        60,
        agent_node,
    )
    wait_for(
        "the other pod Running",
        lambda: core.read_namespaced_pod("fine", ns).status.phase == "Running",
        60,
        agent_node,
    )
    msg = (
        core.read_namespaced_pod("needs-cfg", ns).status.container_statuses[0].state.waiting.message
    )
    assert "nope" in msg


def test_projected_token_is_valid_against_the_apiserver(
    agent_node: AgentNode, admin_api: client.ApiClient, ns: str, cluster: LocalCluster, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Every pod gets a service-account token (TokenRequest) that authenticates as its SA."""
    core = client.CoreV1Api(admin_api)
    wait_for(
        "the default service account",
        lambda: any(
            sa.metadata.name == "default" for sa in core.list_namespaced_service_account(ns).items
        ),
        30,
    )
    core.create_namespaced_pod(
        ns,
        _pod(
            "tok",
            [
                "sh",
                "-c",
                "cat /var/run/secrets/kubernetes.io/serviceaccount/token; echo; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; sleep 3600",
            ],
        ),
    )
    wait_for(
        "the pod to be Running",
        lambda: core.read_namespaced_pod("tok", ns).status.phase == "Running",
        60,
        agent_node,
    )
    wait_for(
        "its output", lambda: len(cri_lines(agent_node.container_log(ns, "tok", "main"))) >= 2, 10
    )
    token, namespace = cri_lines(agent_node.container_log(ns, "tok", "main"))[:2]
    assert namespace == ns
    out = subprocess.run(
        [str(cluster.binaries.kubectl), f"--server={cluster.server_url}", f"--certificate-authority={cluster.pki.ca_cert}",
         f"--token={token}", "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"system:serviceaccount:{ns}:default"


def test_agent_killed_and_restarted_keeps_pods_running(
    agent_node: AgentNode, admin_api: client.ApiClient, cluster: LocalCluster, ns: str
) -> None:
    """kill -9 of the agent leaves containers running; the restarted agent adopts them unchanged."""
    import os
    import signal

    from tests.integration.agent.conftest import start_agent

    core = client.CoreV1Api(admin_api)
    core.create_namespaced_pod(
        ns,
        _pod(
            "survivor",
            ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"],
        ),
    )
    wait_for(
        "the pod to be Running",
        lambda: core.read_namespaced_pod("survivor", ns).status.phase == "Running",
        60,
        agent_node,
    )
    before = core.read_namespaced_pod("survivor", ns).status.container_statuses[0]
    os.kill(agent_node.proc.pid, signal.SIGKILL)
    agent_node.proc.wait()
    time.sleep(2)
    ticks_while_down = len(cri_lines(agent_node.container_log(ns, "survivor", "main")))
    agent_node.proc = start_agent(
        cluster, agent_node.lab, agent_node.root, agent_node.static_dir, agent_node.log_path
    )
    time.sleep(3)
    after = core.read_namespaced_pod("survivor", ns).status.container_statuses[0]
    assert after.container_id == before.container_id and after.restart_count == 0
    assert after.state.running is not None
    lines = cri_lines(agent_node.container_log(ns, "survivor", "main"))
    assert len(lines) > ticks_while_down > 10
    assert [int(x.split()[1]) for x in lines] == list(range(len(lines)))  # no gap, no restart


def test_liveness_probe_restarts_and_readiness_gates_ready(
    agent_node: AgentNode, admin_api: client.ApiClient, ns: str
) -> None:
    """A failing liveness probe restarts the container; readiness decides the Ready condition."""
    core = client.CoreV1Api(admin_api)
    live = _pod("live", ["sh", "-c", "touch /tmp/alive; sleep 2; rm /tmp/alive; sleep 3600"], container={
        "liveness_probe": client.V1Probe(_exec=client.V1ExecAction(command=["busybox", "test", "-f", "/tmp/alive"]), period_seconds=1, failure_threshold=2),
    })  # fmt: skip
    ready = _pod("ready", ["sh", "-c", "sleep 3; touch /tmp/ready; sleep 3600"], container={
        "readiness_probe": client.V1Probe(_exec=client.V1ExecAction(command=["busybox", "test", "-f", "/tmp/ready"]), period_seconds=1),
    })  # fmt: skip
    core.create_namespaced_pod(ns, live)
    core.create_namespaced_pod(ns, ready)

    def conditions(name: str) -> dict[str, str]:
        return {
            c.type: c.status for c in core.read_namespaced_pod(name, ns).status.conditions or []
        }

    wait_for(
        "the ready pod Running",
        lambda: core.read_namespaced_pod("ready", ns).status.phase == "Running",
        60,
        agent_node,
    )
    assert conditions("ready").get("Ready") == "False"  # not ready before the probe passes
    wait_for(
        "readiness to pass", lambda: conditions("ready").get("Ready") == "True", 30, agent_node
    )
    wait_for(
        "a liveness restart",
        lambda: (
            (core.read_namespaced_pod("live", ns).status.container_statuses or [None])[0]
            is not None
            and core.read_namespaced_pod("live", ns).status.container_statuses[0].restart_count >= 1
        ),
        60,
        agent_node,
    )
    reasons = {
        e.reason for e in core.list_namespaced_event(ns).items if e.involved_object.name == "live"
    }
    assert {"Unhealthy", "Killing"} <= reasons


def test_prestop_hook_runs_on_graceful_delete(
    agent_node: AgentNode, admin_api: client.ApiClient, ns: str
) -> None:
    """Deleting a pod runs its preStop hook before the container is stopped, then it is gone."""
    core = client.CoreV1Api(admin_api)
    pod = _pod("hooked", ["sh", "-c", "echo started; sleep 3600"], container={
        "lifecycle": client.V1Lifecycle(pre_stop=client.V1LifecycleHandler(_exec=client.V1ExecAction(command=["sh", "-c", "echo prestop ran > /proc/1/fd/1"]))),
    })  # fmt: skip
    core.create_namespaced_pod(ns, pod)
    wait_for(
        "the pod Running",
        lambda: core.read_namespaced_pod("hooked", ns).status.phase == "Running",
        60,
        agent_node,
    )
    core.delete_namespaced_pod("hooked", ns, grace_period_seconds=5)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("hooked", ns)
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_for("the pod to be deleted", gone, 30, agent_node)
    assert "prestop ran" in agent_node.container_log(
        ns, "hooked", "main"
    ) or "prestop ran" in agent_node.log_tail(200)


def test_stopped_agent_turns_the_node_not_ready(
    agent_node: AgentNode, admin_api: client.ApiClient, cluster: LocalCluster
) -> None:
    """With the agent stopped, the Lease expires and the node goes NotReady; restarted, Ready again."""
    from tests.integration.agent.conftest import start_agent, stop_agent

    core = client.CoreV1Api(admin_api)

    def ready_status() -> str:
        conds = core.read_node("agent1").status.conditions or []
        return next((c.status for c in conds if c.type == "Ready"), "")

    stop_agent(agent_node.proc)
    wait_for("the node to go NotReady (Unknown)", lambda: ready_status() == "Unknown", 60)
    agent_node.proc = start_agent(
        cluster, agent_node.lab, agent_node.root, agent_node.static_dir, agent_node.log_path
    )
    wait_for("the node to be Ready again", lambda: ready_status() == "True", 60, agent_node)
