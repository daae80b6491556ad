"""gRPC probes against the real cluster: grpc.health.v1 Health/Check on the pod's port, with the
service name and every timing field, served by our own tiny health server (tests/support/
grpchealth, a static Go binary) in a busybox-based image.

The pods use hostNetwork (pods get no routable IP until CNI lands), so each uses its own port
in the node's network namespace; the agent probes 127.0.0.1:<port> there. The server logs
every Check it answers, and the CRI log's timestamps show when the probes ran.
"""

import asyncio
import datetime
import itertools
from collections.abc import Iterator

import pytest
from kubernetes import client

from cri.images import ImageService
from tests.integration.agent.conftest import AgentNode, fresh_namespace, wait_for
from tests.support.gobuild import grpc_health_binary
from tests.support.images import ImageBuilder

GRPC_IMAGE = "example.com/test/grpc:grpc-health"  # the tag names the layout tag to import


@pytest.fixture(scope="module")
def grpc_image(agent_node: AgentNode, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The grpc-health image, imported into the running node's image store."""
    binary = grpc_health_binary()
    layout = ImageBuilder(tmp_path_factory.mktemp("grpc-image")).grpc_health(binary).layout

    async def load() -> None:
        svc = ImageService(agent_node.root / "images")
        try:
            await svc.import_image(layout, name=GRPC_IMAGE)
        finally:
            await svc.close()

    asyncio.run(load())
    return GRPC_IMAGE


@pytest.fixture
def ns(admin_api: client.ApiClient) -> Iterator[str]:
    with fresh_namespace(admin_api, "g") as name:
        yield name


def _grpc(port: int, service: str = "", **timing: int) -> client.V1Probe:
    return client.V1Probe(grpc=client.V1GRPCAction(port=port, service=service or None), **timing)


def _pod(
    name: str, image: str, script: str, grace_s: int = 2, **probes: client.V1Probe
) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            node_name="agent1", host_network=True, termination_grace_period_seconds=grace_s,
            containers=[client.V1Container(
                name="main", image=image, image_pull_policy="IfNotPresent",
                command=["sh", "-c", script], **probes,
            )],
        ),
    )  # fmt: skip


def _conditions(core: client.CoreV1Api, ns: str, name: str) -> dict[str, str]:
    pod = core.read_namespaced_pod(name, ns)
    return {c.type: c.status for c in pod.status.conditions or []}


def _events(core: client.CoreV1Api, ns: str, name: str) -> list[tuple[str, str]]:
    return [
        (e.reason, e.message)
        for e in core.list_namespaced_event(ns).items
        if e.involved_object.name == name
    ]


def _checks(node: AgentNode, ns: str, pod: str) -> list[tuple[datetime.datetime, str]]:
    """(time, line) of each Check the server logged, from the CRI log's timestamps."""
    out = []
    for line in node.container_log(ns, pod, "main").splitlines():
        stamp, _, rest = line.partition(" ")
        text = rest.split(" ", 2)[-1]
        if text.startswith("check "):
            when = datetime.datetime.fromisoformat(stamp[:26].replace("T", " "))
            out.append((when, text))
    return out


def test_grpc_readiness_follows_the_served_status_of_the_named_service(
    agent_node: AgentNode, grpc_image: str, admin_api: client.ApiClient, ns: str
) -> None:
    """Readiness asks Health/Check for the named service on the pod's port: SERVING makes the
    pod Ready, NOT_SERVING takes it out, and the event quotes the served status."""
    core = client.CoreV1Api(admin_api)
    script = "/bin/grpc-health -port 19101 -service svc & sleep 6; touch /tmp/not-serving; wait"
    core.create_namespaced_pod(ns, _pod(
        "grpc-ready", grpc_image, script,
        readiness_probe=_grpc(19101, "svc", period_seconds=1, failure_threshold=1),
    ))  # fmt: skip
    wait_for(
        "Ready=True", lambda: _conditions(core, ns, "grpc-ready").get("Ready") == "True", 60,
        agent_node,
    )  # fmt: skip
    wait_for(
        "Ready=False after NOT_SERVING",
        lambda: _conditions(core, ns, "grpc-ready").get("Ready") == "False", 30, agent_node,
    )  # fmt: skip
    assert ("Unhealthy", 'Readiness probe failed: service unhealthy (responded with "NOT_SERVING")') in (
        _events(core, ns, "grpc-ready")
    )  # fmt: skip
    checks = _checks(agent_node, ns, "grpc-ready")
    assert checks and all('service="svc"' in text for _, text in checks)
    assert all('ua="kube-probe/1.37' in text for _, text in checks)


def test_grpc_liveness_restarts_with_the_probe_grace_period(
    agent_node: AgentNode, grpc_image: str, admin_api: client.ApiClient, ns: str
) -> None:
    """A failing gRPC liveness probe restarts the container, and the kill uses the probe's own
    terminationGracePeriodSeconds (1 s) rather than the pod's (120 s): the container ignores
    SIGTERM, so only the short grace lets the restart happen within a minute."""
    core = client.CoreV1Api(admin_api)
    script = (
        "trap '' TERM; /bin/grpc-health -port 19102 & sleep 4; touch /tmp/not-serving; "
        "while true; do sleep 1; done"
    )
    core.create_namespaced_pod(ns, _pod(
        "grpc-live", grpc_image, script, grace_s=120,
        liveness_probe=_grpc(19102, period_seconds=1, failure_threshold=2,
                             termination_grace_period_seconds=1),
    ))  # fmt: skip

    def restarted() -> bool:
        statuses = core.read_namespaced_pod("grpc-live", ns).status.container_statuses or []
        return bool(statuses) and statuses[0].restart_count >= 1

    wait_for("a liveness restart", restarted, 60, agent_node)
    reasons = {reason for reason, _ in _events(core, ns, "grpc-live")}
    assert {"Unhealthy", "Killing"} <= reasons
    core.delete_namespaced_pod("grpc-live", ns, grace_period_seconds=0)


def test_grpc_probe_timing_fields(
    agent_node: AgentNode, grpc_image: str, admin_api: client.ApiClient, ns: str
) -> None:
    """timeoutSeconds (a 3 s answer passes a 5 s startup probe and fails a 1 s readiness probe,
    with upstream's message), initialDelaySeconds and periodSeconds (seen in the server's log),
    and an unknown service (NOT_FOUND) failing the probe."""
    core = client.CoreV1Api(admin_api)
    script = "touch /tmp/slow; exec /bin/grpc-health -port 19103"
    core.create_namespaced_pod(ns, _pod(
        "grpc-slow", grpc_image, script,
        startup_probe=_grpc(19103, initial_delay_seconds=3, period_seconds=4, timeout_seconds=5,
                            failure_threshold=10),
        readiness_probe=_grpc(19103, period_seconds=2, timeout_seconds=1),
    ))  # fmt: skip
    core.create_namespaced_pod(ns, _pod(
        "grpc-unknown", grpc_image, "exec /bin/grpc-health -port 19104",
        readiness_probe=_grpc(19104, "nosuch", period_seconds=1),
    ))  # fmt: skip

    def started() -> bool:
        statuses = core.read_namespaced_pod("grpc-slow", ns).status.container_statuses or []
        return bool(statuses) and bool(statuses[0].started)

    wait_for("the startup probe to pass (started=true)", started, 60, agent_node)
    wait_for(
        "a readiness timeout",
        lambda: any(
            m == "Readiness probe failed: timeout: health rpc did not complete within 1s"
            for r, m in _events(core, ns, "grpc-slow")
        ),
        30,
        agent_node,
    )
    assert _conditions(core, ns, "grpc-slow").get("Ready") == "False"
    pod = core.read_namespaced_pod("grpc-slow", ns)
    running_since = pod.status.container_statuses[0].state.running.started_at.replace(tzinfo=None)
    checks = [when for when, _ in _checks(agent_node, ns, "grpc-slow")]
    assert checks, agent_node.container_log(ns, "grpc-slow", "main")
    # initialDelaySeconds 3: nothing was asked before; (startedAt has 1 s resolution)
    assert (checks[0] - running_since).total_seconds() >= 2.0
    # periodSeconds: readiness every 2 s, each answer taking 3 s: never two calls within 1 s
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(checks)]
    assert gaps and min(gaps) >= 0.9, gaps
    wait_for(
        "the unknown service to fail the probe",
        lambda: any(
            m == "Readiness probe failed: error: health rpc probe failed: "
            "rpc error: code = NotFound desc = unknown service"
            for r, m in _events(core, ns, "grpc-unknown")
        ),
        30,
        agent_node,
    )
    assert _conditions(core, ns, "grpc-unknown").get("Ready") == "False"
