"""Pod networking end to end: three kubelet-py nodes on the lab underlay, CNI + VXLAN overlay.

Every node runs `kubelet-py node run --network cni` in its own network
namespace; the controller manager hands out pod CIDRs, each node writes its
conflist, brings up its VTEP, publishes it on its Node and programs routes to
the others. Pods are placed with spec.nodeName; traffic is checked from inside
pods (kubectl exec through the real apiserver) and from the node and underlay
namespaces. Nothing touches the root network namespace.
"""

import ipaddress
import json
import subprocess
import uuid
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
    start_agent,
    wait_for,
)
from tests.support.images import ImageBuilder

CLUSTER_CIDR = "10.244.0.0/16"
# An HTTP GET run with nsenter in a node or the lab namespace (busybox wget crashes there).
HTTP_GET = (
    "python3", "-c",
    "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=3)"
    ".read().decode())",
)  # fmt: skip
NODES = ("neta", "netb", "netc")
WEB = (
    "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && "
    "exec busybox httpd -f -v -p 8080 -h /www"
)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """busybox as an OCI layout, imported into every node's store."""
    return ImageBuilder(tmp_path_factory.mktemp("net-images")).busybox().layout


def start_node(
    cluster: LocalCluster, layout: Path, root: Path, name: str, extra: tuple[str, ...]
) -> AgentNode:
    """A node agent in a fresh lab node namespace, busybox preloaded."""
    lab = cluster.add_node(name)
    static_dir = root / "manifests"
    static_dir.mkdir(parents=True)

    preload_image(root, layout)
    log_path = root / "agent.log"
    proc = start_agent(cluster, lab, root, static_dir, log_path, ("--network", "cni", *extra))
    return AgentNode(name, lab, root, static_dir, log_path, proc)


@pytest.fixture(scope="module")
def nodes(
    cluster: LocalCluster,
    admin_api: client.ApiClient,
    layout: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, AgentNode]]:
    """Three CNI nodes, Ready (which needs their pod network configured), busybox preloaded."""
    cluster.prepare_for_pod_network()  # the overlay's RBAC, as the Helm chart grants it
    core = client.CoreV1Api(admin_api)
    started: dict[str, AgentNode] = {}
    try:
        for name in NODES:
            root = tmp_path_factory.mktemp(f"{name}-root")
            started[name] = start_node(
                cluster, layout, root, name, ("--cluster-cidr", CLUSTER_CIDR)
            )
        for name, node in started.items():
            wait_for(f"node {name} to be Ready", lambda n=name: _ready(core, n), 90, node)
        yield started
    finally:
        for node in started.values():
            _teardown(cluster, core, node)


@pytest.fixture(scope="module")
def ns(nodes: dict[str, AgentNode], admin_api: client.ApiClient) -> Iterator[str]:
    with fresh_namespace(admin_api, "net") as name:
        yield name


def _sh(argv: list[str], timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)


def run_pod(
    core: client.CoreV1Api,
    ns: str,
    node: AgentNode,
    script: str,
    *,
    ports: list[client.V1ContainerPort] | None = None,
) -> client.V1Pod:
    """A busybox pod on `node`, Running with an IP."""
    name = f"p-{uuid.uuid4().hex[:6]}"
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            node_name=node.name, termination_grace_period_seconds=1,
            containers=[client.V1Container(
                name="main", image=IMAGE, image_pull_policy="IfNotPresent",
                command=["sh", "-c", script], ports=ports,
            )],
        ),
    )  # fmt: skip
    core.create_namespaced_pod(ns, pod)

    def running() -> client.V1Pod | None:
        p = core.read_namespaced_pod(name, ns)
        return p if p.status.phase == "Running" and p.status.pod_ip else None

    result: client.V1Pod = wait_for(f"pod {name} on {node.name} to run", running, 60, node)
    return result


def pod_exec(cluster: LocalCluster, ns: str, pod: client.V1Pod, *cmd: str) -> str:
    res = _sh(
        [str(cluster.binaries.kubectl), f"--kubeconfig={cluster.admin_kubeconfig}",
         "exec", "-n", ns, pod.metadata.name, "--", *cmd],
    )  # fmt: skip
    assert res.returncode == 0, f"{' '.join(cmd)} in {pod.metadata.name}: {res.stdout}{res.stderr}"
    return res.stdout


def fetch(cluster: LocalCluster, ns: str, client_pod: client.V1Pod, ip: str, port: int) -> str:
    """HTTP GET from inside a pod (retried briefly: a fresh httpd may not listen yet).

    With nc: Debian's static busybox `wget` crashes in a bare rootfs (glibc NSS).
    """
    url = f"http://{ip}:{port}/"
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {ip} {port}"
    last = ""
    for _ in range(20):
        res = _sh(
            [str(cluster.binaries.kubectl), f"--kubeconfig={cluster.admin_kubeconfig}",
             "exec", "-n", ns, client_pod.metadata.name, "--", "sh", "-c", request],
        )  # fmt: skip
        if res.returncode == 0 and "\n\n" in res.stdout:  # text mode turned CRLF into LF
            return res.stdout.split("\n\n", 1)[1]
        last = f"exit {res.returncode}: {res.stdout!r} {res.stderr!r}"
        subprocess.run(["sleep", "0.3"], check=False)
    pytest.fail(f"GET {url} from {client_pod.metadata.name} failed: {last}")


def _logs(cluster: LocalCluster, ns: str, pod: client.V1Pod) -> str:
    res = _sh(
        [str(cluster.binaries.kubectl), f"--kubeconfig={cluster.admin_kubeconfig}",
         "logs", "-n", ns, pod.metadata.name],
    )  # fmt: skip
    return res.stdout


def node_cidr(core: client.CoreV1Api, name: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(core.read_node(name).spec.pod_cidr)


def test_nodes_get_pod_cidrs_and_publish_their_vtep(
    nodes: dict[str, AgentNode], admin_api: client.ApiClient
) -> None:
    """Each node has a distinct /24 from the cluster CIDR and its VTEP annotations."""
    core = client.CoreV1Api(admin_api)
    cidrs = {name: node_cidr(core, name) for name in nodes}
    assert len(set(cidrs.values())) == len(nodes)
    for name, cidr in cidrs.items():
        assert cidr.subnet_of(ipaddress.IPv4Network(CLUSTER_CIDR))
        ann = core.read_node(name).metadata.annotations or {}
        assert ann.get("vxlan.kubelet-py.io/public-ip") == str(nodes[name].lab.address)
        assert ann.get("vxlan.kubelet-py.io/vtep-mac")


def test_pod_ips_come_from_the_node_cidr(
    nodes: dict[str, AgentNode], admin_api: client.ApiClient, ns: str
) -> None:
    """A pod's IP (status.podIP and podIPs) lies in its node's podCIDR."""
    core = client.CoreV1Api(admin_api)
    pod = run_pod(core, ns, nodes["neta"], "sleep 3600")
    ip = ipaddress.IPv4Address(pod.status.pod_ip)
    assert ip in node_cidr(core, "neta")
    assert [p.ip for p in pod.status.pod_ips] == [str(ip)]


def test_pod_to_pod_on_one_node_and_across_nodes(
    nodes: dict[str, AgentNode], admin_api: client.ApiClient, ns: str, cluster: LocalCluster
) -> None:
    """TCP and ping between pods on the same node and over the overlay to another node."""
    core = client.CoreV1Api(admin_api)
    web = run_pod(core, ns, nodes["neta"], WEB)
    local_client = run_pod(core, ns, nodes["neta"], "sleep 3600")
    remote_client = run_pod(core, ns, nodes["netb"], "sleep 3600")
    import os

    if os.environ.get("NETDEBUG"):
        for n in ("neta", "netb"):
            print(_sh(["ip", "-n", nodes[n].lab.netns, "-d", "addr"]).stdout)
            print(_sh(["ip", "-n", nodes[n].lab.netns, "route"]).stdout)
            print(_sh(["ip", "netns", "exec", nodes[n].lab.netns, "nft", "list", "ruleset"]).stdout)
        print(pod_exec(cluster, ns, local_client, "sh", "-c", "ip addr; ip route"))
        print(_logs(cluster, ns, web))
        print(pod_exec(cluster, ns, web, "sh", "-c", "netstat -ltn; ip addr"))
    for c in (local_client, remote_client):
        assert fetch(cluster, ns, c, web.status.pod_ip, 8080).startswith("hello-from-")
        out = pod_exec(cluster, ns, c, "busybox", "ping", "-c", "1", "-W", "3", web.status.pod_ip)
        assert "1 packets received" in out
    # The server logs the remote client's own pod IP: no masquerade inside the cluster CIDR.
    wait_for(
        "the web server to log the remote pod's address",
        lambda: remote_client.status.pod_ip in _logs(cluster, ns, web),
        15,
    )


def test_node_and_pod_reach_each_other(
    nodes: dict[str, AgentNode], admin_api: client.ApiClient, ns: str, cluster: LocalCluster
) -> None:
    """A node reaches pods on itself and on other nodes; a pod reaches its node's address."""
    core = client.CoreV1Api(admin_api)
    web = run_pod(core, ns, nodes["netb"], WEB)
    for name in ("netb", "netc"):
        argv = [*nodes[name].lab.nsenter(), *HTTP_GET]
        res = None
        for _ in range(20):
            res = _sh([*argv, f"http://{web.status.pod_ip}:8080/"])
            if res.returncode == 0:
                break
        assert res is not None and res.returncode == 0, f"{name} -> pod: {res and res.stderr}"
        assert res.stdout.startswith("hello-from-")
    out = pod_exec(
        cluster, ns, web, "busybox", "ping", "-c", "1", "-W", "3", str(nodes["netb"].lab.address)
    )
    assert "1 packets received" in out


def test_host_port_is_reachable_on_the_node_address(
    nodes: dict[str, AgentNode], admin_api: client.ApiClient, ns: str, cluster: LocalCluster
) -> None:
    """hostPort: the underlay (lab namespace) reaches a pod at <node IP>:<hostPort>."""
    core = client.CoreV1Api(admin_api)
    run_pod(
        core, ns, nodes["netc"], WEB,
        ports=[client.V1ContainerPort(container_port=8080, host_port=18080, protocol="TCP")],
    )  # fmt: skip
    argv = [*cluster.netlab.nsenter(), *HTTP_GET]
    url = f"http://{nodes['netc'].lab.address}:18080/"
    res = None
    for _ in range(20):
        res = _sh([*argv, url])
        if res.returncode == 0:
            break
    assert res is not None and res.returncode == 0, f"underlay -> {url}: {res and res.stderr}"
    assert res.stdout.startswith("hello-from-")


def _reaches(cluster: LocalCluster, ns: str, client_pod: client.V1Pod, ip: str) -> bool:
    """One TCP request from inside a pod (3 s timeout): does the server answer?"""
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {ip} 8080"
    res = _sh(
        [str(cluster.binaries.kubectl), f"--kubeconfig={cluster.admin_kubeconfig}",
         "exec", "-n", ns, client_pod.metadata.name, "--", "sh", "-c", request],
    )  # fmt: skip
    return res.returncode == 0 and "hello-from-" in res.stdout


def test_isolation_blocks_pods_of_a_node_but_not_outside(
    nodes: dict[str, AgentNode],
    admin_api: client.ApiClient,
    ns: str,
    cluster: LocalCluster,
    layout: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """--pod-isolation (Docker's --icc=false): same-node pods can't talk; other nodes can."""
    core = client.CoreV1Api(admin_api)
    iso = start_node(
        cluster, layout, tmp_path_factory.mktemp("netiso-root"), "netiso",
        ("--cluster-cidr", CLUSTER_CIDR, "--pod-isolation"),
    )  # fmt: skip
    try:
        wait_for("node netiso to be Ready", lambda: _ready(core, "netiso"), 90, iso)
        web = run_pod(core, ns, iso, WEB)
        neighbour = run_pod(core, ns, iso, "sleep 3600")
        remote = run_pod(core, ns, nodes["neta"], "sleep 3600")
        # from another node: flows (retried while httpd starts)
        assert fetch(cluster, ns, remote, web.status.pod_ip, 8080).startswith("hello-from-")
        # from a pod on the same bridge: blocked, every time
        assert not any(_reaches(cluster, ns, neighbour, web.status.pod_ip) for _ in range(3))
        # without isolation (neta) the same-node request works: see the pod-to-pod test
    finally:
        _teardown(cluster, core, iso)


def test_exhausted_range_fails_the_sandbox_with_the_cni_error(
    nodes: dict[str, AgentNode],
    admin_api: client.ApiClient,
    ns: str,
    cluster: LocalCluster,
    layout: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A hand-written conflist with two addresses: the third pod's event carries the CNI error."""
    core = client.CoreV1Api(admin_api)
    root = tmp_path_factory.mktemp("netfull-root")
    conf_dir = root / "net.d"
    conf_dir.mkdir()
    conf_dir.joinpath("10-small.conflist").write_text(json.dumps({
        "cniVersion": "1.1.0", "name": "small",
        "plugins": [{
            "type": "bridge", "bridge": "kpysmall0", "isGateway": True, "ipMasq": True,
            "ipam": {"type": "host-local", "dataDir": str(root / "ipam"), "ranges": [[{
                "subnet": "10.250.0.0/24", "rangeStart": "10.250.0.10",
                "rangeEnd": "10.250.0.11",
            }]]},
        }],
    }))  # fmt: skip
    full = start_node(
        cluster, layout, root, "netfull",
        ("--cni-manage-config", "false", "--cni-conf-dir", str(conf_dir)),
    )  # fmt: skip
    try:
        wait_for("node netfull to be Ready", lambda: _ready(core, "netfull"), 90, full)
        ips = {run_pod(core, ns, full, "sleep 3600").status.pod_ip for _ in range(2)}
        assert ips == {"10.250.0.10", "10.250.0.11"}
        name = f"p-{uuid.uuid4().hex[:6]}"
        core.create_namespaced_pod(ns, client.V1Pod(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PodSpec(node_name="netfull", termination_grace_period_seconds=1,
                                  containers=[client.V1Container(
                                      name="main", image=IMAGE, image_pull_policy="IfNotPresent",
                                      command=["sleep", "3600"])]),
        ))  # fmt: skip

        def failed_event() -> str:
            events = core.list_namespaced_event(
                ns, field_selector=f"involvedObject.name={name}"
            ).items
            return next((e.message for e in events if e.reason == "FailedCreatePodSandBox"), "")

        message = wait_for("a FailedCreatePodSandBox event", failed_event, 60, full)
        assert "no IP addresses available" in message, message
        assert core.read_namespaced_pod(name, ns).status.phase == "Pending"
    finally:
        _teardown(cluster, core, full)
    # DEL gave every address back: the IPAM store holds no allocation any more
    leftovers = [p.name for p in (root / "ipam" / "small").glob("10.250.*")]
    assert leftovers == [], leftovers


def _node_net_state(node: AgentNode) -> dict[str, str]:
    """What pods leave in a node's namespace: veths, routes, FDB, nft rules, IPAM files."""
    n = node.lab.netns
    veths = _sh(["ip", "-n", n, "-o", "link", "show", "type", "veth"]).stdout
    nft = _sh(["ip", "netns", "exec", n, "nft", "list", "ruleset"]).stdout
    ipam = sorted(p.name for p in (node.root / "cni" / "ipam").rglob("*") if p.is_file())
    return {
        "veths": "\n".join(sorted(line.split(":")[1].split("@")[0] for line in veths.splitlines())),
        "routes": _sh(["ip", "-n", n, "route", "show"]).stdout.replace(" linkdown", ""),
        "fdb": _sh(["bridge", "-n", n, "fdb", "show", "dev", "kpy.1"]).stdout,
        "nft": "\n".join(line for line in nft.splitlines() if "elements" not in line),
        "nft elements": "\n".join(line for line in nft.splitlines() if "elements" in line),
        "ipam": "\n".join(f for f in ipam if f[0].isdigit()),
    }


def test_200_pod_create_delete_cycles_leave_nothing_behind(
    nodes: dict[str, AgentNode], admin_api: client.ApiClient, ns: str
) -> None:
    """200 pods through the API (10 waves of 20) on one node: no veth, address, route, FDB
    entry or nft rule is left once they are gone."""
    core = client.CoreV1Api(admin_api)
    node = nodes["netb"]
    sandboxes = node.root / "runtime" / "sandboxes"
    kept = set(sandboxes.iterdir())  # the earlier tests' pods stay running
    before = _node_net_state(node)
    for wave in range(10):
        names = [f"cyc-{wave}-{i}" for i in range(20)]
        for name in names:
            core.create_namespaced_pod(ns, client.V1Pod(
                metadata=client.V1ObjectMeta(name=name, labels={"cycle": "yes"}),
                spec=client.V1PodSpec(
                    node_name="netb", termination_grace_period_seconds=0,
                    containers=[client.V1Container(
                        name="main", image=IMAGE, image_pull_policy="IfNotPresent",
                        command=["sleep", "3600"])],
                ),
            ))  # fmt: skip

        def running(names: list[str] = names) -> bool:
            pods = core.list_namespaced_pod(ns, label_selector="cycle=yes").items
            up = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
            return len(up) == len(names)

        wait_for(f"wave {wave}: 20 pods running with IPs", running, 120, node)
        core.delete_collection_namespaced_pod(
            ns, label_selector="cycle=yes", grace_period_seconds=0
        )
        wait_for(
            f"wave {wave}: the pods to be gone",
            lambda: not core.list_namespaced_pod(ns, label_selector="cycle=yes").items,
            120,
            node,
        )
    wait_for(
        "the runtime to drop the 200 sandboxes", lambda: set(sandboxes.iterdir()) == kept, 60, node
    )
    after = _node_net_state(node)
    for key in before:
        assert after[key] == before[key], (
            f"{key} differs after 200 pods:\n{before[key]}\n--\n{after[key]}"
        )


def _routes(node: AgentNode) -> str:
    return _sh(["ip", "-n", node.lab.netns, "route", "show"]).stdout


def test_a_node_leaving_takes_its_routes_away(
    nodes: dict[str, AgentNode], admin_api: client.ApiClient, cluster: LocalCluster
) -> None:
    """When a Node is deleted, the others drop its route, neighbour and FDB entry."""
    core = client.CoreV1Api(admin_api)
    leaving = nodes["netc"]
    cidr = str(node_cidr(core, "netc"))
    mac = (core.read_node("netc").metadata.annotations or {})["vxlan.kubelet-py.io/vtep-mac"]
    for name in ("neta", "netb"):
        wait_for(f"{name} to route {cidr}", lambda n=name: cidr in _routes(nodes[n]), 30)
        fdb = _sh(["bridge", "-n", nodes[name].lab.netns, "fdb", "show", "dev", "kpy.1"]).stdout
        assert mac in fdb
    _teardown(cluster, core, leaving)  # stops the agent, deletes the Node, removes its netns
    nodes.pop("netc")
    for name in ("neta", "netb"):
        wait_for(f"{name} to drop {cidr}", lambda n=name: cidr not in _routes(nodes[n]), 30)
        fdb = _sh(["bridge", "-n", nodes[name].lab.netns, "fdb", "show", "dev", "kpy.1"]).stdout
        assert mac not in fdb
        neigh = _sh(["ip", "-n", nodes[name].lab.netns, "neigh", "show", "dev", "kpy.1"]).stdout
        assert mac not in neigh
