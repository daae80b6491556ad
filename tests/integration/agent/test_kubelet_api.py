"""The kubelet HTTPS API on :10250 against the real apiserver: `kubectl logs` (tail, timestamps,
since, previous, limit-bytes, follow), and direct requests: 401, 403, TokenReview, fine-grained
authorization, kubelet error wording, /healthz, /pods, /configz."""

import datetime
import http.client
import json
import queue
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from kubernetes import client

from kubelet_py.devcluster import LocalCluster
from kubelet_py.devcluster.netlab import run_in_netns
from tests.integration.agent.conftest import IMAGE, AgentNode, fresh_namespace, wait_for

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")


# ---- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_ns(agent_node: AgentNode, admin_api: client.ApiClient) -> Iterator[str]:
    """A namespace for this module's pods (its default service account exists)."""
    with fresh_namespace(admin_api, "k") as name:
        yield name


def _pod(name: str, script: str, *, restart: str = "Always", volumes: bool = False) -> client.V1Pod:
    mounts = [client.V1VolumeMount(name="w", mount_path="/w")] if volumes else None
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            node_name="agent1", termination_grace_period_seconds=1, restart_policy=restart,
            volumes=[client.V1Volume(name="w", empty_dir={})] if volumes else None,
            containers=[client.V1Container(name="main", image=IMAGE, image_pull_policy="IfNotPresent",
                                           command=["sh", "-c", script], volume_mounts=mounts)],
        ),
    )  # fmt: skip


def run_pod(core: client.CoreV1Api, ns: str, pod: client.V1Pod, node: AgentNode) -> None:
    core.create_namespaced_pod(ns, pod)
    wait_for(
        f"pod {pod.metadata.name} to run",
        lambda: (
            core.read_namespaced_pod(pod.metadata.name, ns).status.phase in ("Running", "Succeeded")
        ),
        60,
        node,
    )


def logs(cluster: LocalCluster, ns: str, pod: str, *args: str) -> str:
    return cluster.kubectl("logs", "-n", ns, pod, *args).stdout


@pytest.fixture(scope="module")
def talker(
    agent_node: AgentNode, admin_api: client.ApiClient, api_ns: str, cluster: LocalCluster
) -> str:
    """A running pod that wrote `line 1`..`line 5` to stdout, `oops` to stderr, then `late` 2 s later."""
    core = client.CoreV1Api(admin_api)
    script = (
        "for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; sleep 2; echo late; sleep 3600"
    )
    run_pod(core, api_ns, _pod("talker", script), agent_node)
    wait_for(
        "all its output",
        lambda: "late" in agent_node.container_log(api_ns, "talker", "main"),
        20,
        agent_node,
    )
    return "talker"


@pytest.fixture(scope="module")
def certs(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Path]]:
    """Client certificates signed by the cluster CA: the admin (system:masters), alice and bob (no RBAC)."""
    out = {"admin": (cluster.pki.cert("admin"), cluster.pki.key("admin"))}
    d = tmp_path_factory.mktemp("client-certs")
    for user in ("alice", "bob"):
        out[user] = cluster.pki.ca.issue(user, client=True).write(d, user)
    return out


def kubelet_request(
    node: AgentNode,
    path: str,
    *,
    cert: tuple[Path, Path] | None = None,
    token: str | None = None,
    healthz_port: bool = False,
) -> tuple[int, str]:
    """GET from the node's kubelet API inside its namespace; the serving cert is verified (IP SAN)."""

    def call() -> tuple[int, str]:
        conn: http.client.HTTPConnection
        if healthz_port:
            conn = http.client.HTTPConnection("127.0.0.1", 10248, timeout=15)
        else:
            ctx = ssl.create_default_context(cafile=str(node.root / "pki" / "kubelet.crt"))
            if cert is not None:
                ctx.load_cert_chain(str(cert[0]), str(cert[1]))
            conn = http.client.HTTPSConnection(
                str(node.lab.address), 10250, context=ctx, timeout=15
            )
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    return run_in_netns(node.lab.netns_path, call)


class LineReader:
    """Lines of a subprocess's stdout, read by a thread so the test can wait with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self.lines.put(line.rstrip("\n"))
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def take(self, n: int, timeout_s: float) -> list[str]:
        out: list[str] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            out.append(line)
        return out


# ---- kubectl logs through the apiserver ------------------------------------------------------------


def test_kubectl_logs_prints_the_containers_output(
    cluster: LocalCluster, api_ns: str, talker: str
) -> None:
    """`kubectl logs POD` returns what the container wrote to stdout and stderr."""
    out = logs(cluster, api_ns, talker)
    assert [line for line in out.splitlines() if line.startswith("line")] == [
        f"line {i}" for i in range(1, 6)
    ]
    assert "oops" in out.splitlines() and out.endswith("late\n")


def test_kubectl_logs_tail(cluster: LocalCluster, api_ns: str, talker: str) -> None:
    """`--tail=2` gives the last two lines."""
    assert logs(cluster, api_ns, talker, "--tail=2") in ("oops\nlate\n", "line 5\nlate\n")
    assert logs(cluster, api_ns, talker, "--tail=1") == "late\n"


def test_kubectl_logs_timestamps(cluster: LocalCluster, api_ns: str, talker: str) -> None:
    """`--timestamps` prefixes every line with its RFC 3339 time in nanoseconds, in UTC."""
    lines = logs(cluster, api_ns, talker, "--timestamps").splitlines()
    assert len(lines) == 7 and all(TS.match(line) for line in lines), lines
    assert lines[-1].endswith(" late")
    stamp = datetime.datetime.fromisoformat(lines[-1].split()[0][:26] + "+00:00")
    assert abs((datetime.datetime.now(datetime.UTC) - stamp).total_seconds()) < 600


def test_kubectl_logs_since(cluster: LocalCluster, api_ns: str, talker: str) -> None:
    """`--since=1h` keeps every line; `--since-time` between two lines keeps only the later one."""
    assert logs(cluster, api_ns, talker, "--since=1h") == logs(cluster, api_ns, talker)
    first = logs(cluster, api_ns, talker, "--timestamps").splitlines()[0].split()[0]
    # sinceTime travels in whole seconds: the next second after `line 1` is before `late` (2 s later)
    after = datetime.datetime.fromisoformat(first[:19] + "+00:00") + datetime.timedelta(seconds=1)
    assert logs(cluster, api_ns, talker, f"--since-time={after:%Y-%m-%dT%H:%M:%SZ}") == "late\n"


def test_kubectl_logs_limit_bytes(cluster: LocalCluster, api_ns: str, talker: str) -> None:
    """`--limit-bytes=10` stops after exactly 10 bytes."""
    assert logs(cluster, api_ns, talker, "--limit-bytes=10") == "line 1\nlin"


def test_kubectl_logs_previous_without_a_restart_is_an_error(
    cluster: LocalCluster, api_ns: str, talker: str
) -> None:
    """`--previous` of a container that never restarted fails with the kubelet's message."""
    out = cluster.kubectl("logs", "-n", api_ns, talker, "--previous", check=False)
    assert out.returncode != 0
    assert f'previous terminated container "main" in pod "{talker}" not found' in out.stderr


def test_kubectl_logs_previous_after_a_restart(
    agent_node: AgentNode, admin_api: client.ApiClient, cluster: LocalCluster, api_ns: str
) -> None:
    """In a crash-looping pod, `--previous` shows the run before the current one."""
    core = client.CoreV1Api(admin_api)
    script = "n=$(cat /w/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /w/n; echo run $n; exit 1"
    core.create_namespaced_pod(api_ns, _pod("crashy", script, volumes=True))

    def backing_off_after_first_run() -> bool:
        cs = core.read_namespaced_pod("crashy", api_ns).status.container_statuses or []
        return bool(cs) and cs[0].restart_count == 0 and cs[0].last_state.terminated is not None

    # after the first crash, the one run there was is both current and lastState (as upstream)
    wait_for("the first crash", backing_off_after_first_run, 60, agent_node)
    assert logs(cluster, api_ns, "crashy", "--previous") == "run 1\n"
    wait_for(
        "a second run's output",
        lambda: cluster.kubectl("logs", "-n", api_ns, "crashy", check=False).stdout == "run 2\n",
        90,
        agent_node,
    )
    assert logs(cluster, api_ns, "crashy", "--previous") == "run 1\n"
    assert logs(cluster, api_ns, "crashy", "-p", "--timestamps").endswith(" run 1\n")


def test_kubectl_logs_follow_streams_new_lines(
    agent_node: AgentNode, admin_api: client.ApiClient, cluster: LocalCluster, api_ns: str
) -> None:
    """`kubectl logs -f` keeps printing lines as the container writes them, until it is killed."""
    core = client.CoreV1Api(admin_api)
    run_pod(
        core,
        api_ns,
        _pod("ticker", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done"),
        agent_node,
    )
    wait_for(
        "a first tick", lambda: "tick 0" in agent_node.container_log(api_ns, "ticker", "main"), 10
    )
    proc = subprocess.Popen(
        [str(cluster.binaries.kubectl), f"--kubeconfig={cluster.admin_kubeconfig}", "logs", "-f", "--tail=1", "-n", api_ns, "ticker"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        started = time.monotonic()
        lines = LineReader(proc).take(6, timeout_s=20)
        took = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert len(lines) == 6, (lines, proc.stderr.read() if proc.stderr else "")
    ticks = [int(line.split()[1]) for line in lines]
    assert ticks == list(range(ticks[0], ticks[0] + 6))  # in order, none missing
    assert took > 1.0  # five new lines at 0.3 s each: they were streamed, not already there


def test_kubectl_logs_follow_ends_when_the_container_exits(
    agent_node: AgentNode, admin_api: client.ApiClient, cluster: LocalCluster, api_ns: str
) -> None:
    """`kubectl logs -f` of a container that exits prints everything, then returns by itself."""
    core = client.CoreV1Api(admin_api)
    run_pod(
        core, api_ns, _pod("brief", "echo first; sleep 3; echo last", restart="Never"), agent_node
    )
    started = time.monotonic()
    out = cluster.kubectl("logs", "-f", "-n", api_ns, "brief")
    assert out.stdout == "first\nlast\n"
    assert time.monotonic() - started < 30


def test_unknown_container_is_an_error_naming_it(
    cluster: LocalCluster, api_ns: str, talker: str
) -> None:
    """`kubectl logs -c nope` fails with an error that names the container."""
    out = cluster.kubectl("logs", "-n", api_ns, talker, "-c", "nope", check=False)
    assert out.returncode != 0 and "nope" in out.stderr


# ---- direct requests: authentication and authorization -------------------------------------------


def test_request_without_credentials_is_401(
    agent_node: AgentNode, api_ns: str, talker: str
) -> None:
    """Without a client certificate or token the kubelet answers 401 and shows nothing."""
    status, body = kubelet_request(agent_node, f"/containerLogs/{api_ns}/{talker}/main")
    assert (status, body) == (401, "Unauthorized")
    assert kubelet_request(agent_node, "/pods")[0] == 401


def test_client_cert_without_rbac_is_403(
    agent_node: AgentNode, api_ns: str, talker: str, certs: dict[str, tuple[Path, Path]]
) -> None:
    """A valid client certificate of a user RBAC does not allow nodes/proxy gets 403, not logs."""
    status, body = kubelet_request(
        agent_node, f"/containerLogs/{api_ns}/{talker}/main", cert=certs["alice"]
    )
    assert status == 403 and "line 1" not in body
    assert body == "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[proxy])\n"
    status, body = kubelet_request(agent_node, "/pods", cert=certs["alice"])
    assert (status, body) == (
        403,
        "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[pods proxy])\n",
    )


def test_fine_grained_nodes_pods_allows_pods_but_not_logs(
    agent_node: AgentNode,
    cluster: LocalCluster,
    api_ns: str,
    talker: str,
    certs: dict[str, tuple[Path, Path]],
) -> None:
    """RBAC `get nodes/pods` lets a user list /pods; container logs still need nodes/proxy."""
    cluster.kubectl(
        "create", "clusterrole", "kpy-test-node-pods", "--verb=get", "--resource=nodes/pods"
    )
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        "kpy-test-bob",
        "--clusterrole=kpy-test-node-pods",
        "--user=bob",
    )
    try:
        status, body = kubelet_request(agent_node, "/pods", cert=certs["bob"])
        assert status == 200, body
        doc = json.loads(body)
        assert doc["kind"] == "PodList"
        assert (api_ns, talker) in {
            (p["metadata"]["namespace"], p["metadata"]["name"]) for p in doc["items"]
        }
        assert (
            kubelet_request(
                agent_node, f"/containerLogs/{api_ns}/{talker}/main", cert=certs["bob"]
            )[0]
            == 403
        )
    finally:
        cluster.kubectl("delete", "clusterrolebinding", "kpy-test-bob", check=False)
        cluster.kubectl("delete", "clusterrole", "kpy-test-node-pods", check=False)


def test_bearer_tokens_are_checked_with_tokenreview(
    agent_node: AgentNode, cluster: LocalCluster, api_ns: str, talker: str
) -> None:
    """A service-account token allowed nodes/proxy reads logs; a made-up token is a 401."""
    cluster.kubectl("create", "serviceaccount", "log-reader", "-n", api_ns)
    cluster.kubectl(
        "create", "clusterrole", "kpy-test-node-proxy", "--verb=get", "--resource=nodes/proxy"
    )
    cluster.kubectl("create", "clusterrolebinding", "kpy-test-log-reader", "--clusterrole=kpy-test-node-proxy",
                    f"--serviceaccount={api_ns}:log-reader")  # fmt: skip
    try:
        token = cluster.kubectl("create", "token", "log-reader", "-n", api_ns).stdout.strip()
        status, body = kubelet_request(
            agent_node, f"/containerLogs/{api_ns}/{talker}/main?tailLines=1", token=token
        )
        assert (status, body) == (200, "late\n")
        assert kubelet_request(agent_node, "/pods", token="not-a-token")[0] == 401
    finally:
        cluster.kubectl("delete", "clusterrolebinding", "kpy-test-log-reader", check=False)
        cluster.kubectl("delete", "clusterrole", "kpy-test-node-proxy", check=False)


def test_node_identity_may_review_tokens_and_access(
    cluster: LocalCluster, agent_node: AgentNode
) -> None:
    """system:node:<name> may create tokenreviews and subjectaccessreviews (the Node authorizer's node rules)."""
    for resource in (
        "tokenreviews.authentication.k8s.io",
        "subjectaccessreviews.authorization.k8s.io",
    ):
        out = cluster.kubectl("auth", "can-i", "create", resource, f"--as=system:node:{agent_node.name}",
                              "--as-group=system:nodes", check=False)  # fmt: skip
        assert out.stdout.strip() == "yes", (resource, out.stdout, out.stderr)


# ---- direct requests: what the kubelet answers ------------------------------------------------------


def test_healthz_answers_ok(agent_node: AgentNode, certs: dict[str, tuple[Path, Path]]) -> None:
    """/healthz is `ok` on plain HTTP 127.0.0.1:10248 and, authenticated, on :10250."""
    assert kubelet_request(agent_node, "/healthz", healthz_port=True) == (200, "ok")
    assert kubelet_request(agent_node, "/healthz", cert=certs["admin"]) == (200, "ok")
    status, body = kubelet_request(agent_node, "/healthz?verbose", cert=certs["admin"])
    assert status == 200 and "[+]syncloop ok" in body
    assert kubelet_request(agent_node, "/healthz")[0] == 401


def test_kubelet_log_errors_and_stream_selection(
    agent_node: AgentNode, api_ns: str, talker: str, certs: dict[str, tuple[Path, Path]]
) -> None:
    """Unknown pod/container are 404, bad parameters 400/422, in the kubelet's words; stream=Stderr works."""
    admin = certs["admin"]
    base = f"/containerLogs/{api_ns}/{talker}"
    assert kubelet_request(agent_node, f"{base}/main?stream=Stderr", cert=admin) == (200, "oops\n")
    assert kubelet_request(agent_node, f"{base}/main?stream=Stdout&limitBytes=7", cert=admin) == (
        200,
        "line 1\n",
    )
    assert kubelet_request(agent_node, f"/containerLogs/{api_ns}/ghost/main", cert=admin) == (
        404,
        'pod "ghost" does not exist',
    )
    assert kubelet_request(agent_node, f"{base}/nope", cert=admin) == (
        404,
        f'container "nope" not found in pod "{talker}"',
    )
    assert kubelet_request(agent_node, f"{base}/main?tailLines=x", cert=admin) == (
        400,
        '{"message": "Unable to decode query."}',
    )
    assert kubelet_request(agent_node, f"{base}/main?tailLines=-1", cert=admin)[0] == 422


def test_configz_and_pods(
    agent_node: AgentNode, api_ns: str, talker: str, certs: dict[str, tuple[Path, Path]]
) -> None:
    """/configz shows the agent's configuration; /pods lists the pods the node runs."""
    status, body = kubelet_request(agent_node, "/configz", cert=certs["admin"])
    assert status == 200, body
    cfg = json.loads(body)["kubeletconfig"]
    assert cfg["kind"] == "KubeletConfiguration" and cfg["port"] == 10250
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    status, body = kubelet_request(agent_node, "/pods", cert=certs["admin"])
    pod = next(p for p in json.loads(body)["items"] if p["metadata"]["name"] == talker)
    assert pod["spec"]["nodeName"] == "agent1" and pod["metadata"]["namespace"] == api_ns


def test_serving_cert_is_self_signed_for_node_name_and_ip(agent_node: AgentNode) -> None:
    """The serving certificate in <root-dir>/pki names the node and its IP."""
    cert = x509.load_pem_x509_certificate((agent_node.root / "pki" / "kubelet.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["agent1"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [
        str(agent_node.lab.address)
    ]
    assert cert.issuer == cert.subject
    assert oct((agent_node.root / "pki" / "kubelet.key").stat().st_mode & 0o777) == "0o600"
