"""The main job for people: a local cluster, two kubelet-py nodes joined by token, the examples.

    kubelet-py cluster up --node          (what ./scripts/demo runs)

builds a busybox image locally (busybox-static + umoci: there is no internet to
pull from), starts the control plane, installs the Helm chart (bootstrap RBAC,
cluster-info, the overlay's RBAC), creates a bootstrap token, and joins two
node namespaces with `kubelet-py join --token … --discovery-token-ca-cert-hash …`
exactly as a person would on two machines; the nodes network their pods with
CNI (a bridge each, a VXLAN overlay between them). node1 also runs
`manifests/static`; `manifests/workloads` is applied with kubectl. Once the
pods run it prints what to try. Ctrl-C deletes the pods, stops the agents and
tears everything down. `kubelet-py demo-standalone` runs the static examples
on a node with no cluster at all.
"""

import asyncio
import base64
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubelet_py.devcluster.cluster import LocalCluster, stop_process
from kubelet_py.devcluster.errors import DevClusterError
from kubelet_py.devcluster.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedS3

DEMO_IMAGE = "docker.io/library/busybox:1.36"
BUSYBOX_APPLETS = (
    "sh", "ls", "cat", "echo", "sleep", "id", "hostname", "httpd", "wget", "ps", "date", "nc",
    "seq", "tar",
)  # fmt: skip

Progress = Callable[[str], None]


def build_busybox_layout(work: Path) -> Path:
    """An OCI image layout holding busybox (from Debian's busybox-static), made with umoci."""
    layout = work / "layout"
    bundle = work / "bundle"
    image = f"{layout}:busybox"

    def umoci(*args: str) -> None:
        proc = subprocess.run(["umoci", *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise DevClusterError(f"umoci {args[0]} failed: {proc.stderr.strip()}")

    umoci("init", "--layout", str(layout))
    umoci("new", "--image", image)
    umoci("unpack", "--image", image, str(bundle))
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
    )
    (rootfs / "etc" / "group").write_text("root:x:0:\nnobody:x:65534:\n")
    for d in ("tmp", "www", "root"):
        (rootfs / d).mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    umoci("repack", "--image", image, str(bundle))
    umoci("config", "--image", image, "--config.cmd", "sh", "--config.env", "PATH=/bin")
    shutil.rmtree(bundle)
    return layout


class JoinedNode:
    """`kubelet-py join` (which goes on to run the node) inside a lab node namespace."""

    def __init__(self, cluster: LocalCluster, name: str, root: Path, static_dir: Path) -> None:
        self.cluster = cluster
        self.node = cluster.add_node(name)
        self.name = name
        self.root = root
        self.static_dir = static_dir
        self.log_path = root / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, token: str) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.node.nsenter(), sys.executable, "-m", "kubelet_py", "join",
                 "--server", self.cluster.lab_server_url, "--token", token,
                 "--discovery-token-ca-cert-hash", self.cluster.ca_cert_hash,
                 "--node-name", self.name, "--node-ip", str(self.node.address),
                 "--root-dir", str(self.root), "--pod-manifest-path", str(self.static_dir),
                 "--cgroup-parent", f"kpy-{self.name}",
                 "--network", "cni", "--cluster-cidr", str(self.cluster.networks.cluster_cidr)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def ready(self) -> bool:
        out = self.cluster.kubectl(
            "get", "node", self.name, "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False,
        )  # fmt: skip
        return out.stdout.strip() == "True"

    def failed(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self, *, drain_timeout_s: float = 60.0) -> None:
        """Empty the static dir, delete the node's pods, wait for the runtime to be empty, stop."""
        for f in self.static_dir.iterdir():
            f.unlink()
        self.cluster.kubectl(
            "delete", "pods", "--all-namespaces", "--field-selector",
            f"spec.nodeName={self.name}", "--grace-period=1", "--wait=false", check=False,
        )  # fmt: skip
        stop_agent(self.proc, self.root, timeout_s=drain_timeout_s)
        self.cluster.kubectl("delete", "node", self.name, "--wait=false", check=False)
        self.cluster.netlab.remove_node(self.name)


def stop_agent(proc: subprocess.Popen[bytes] | None, root: Path, *, timeout_s: float) -> None:
    """Once the agent has ended its pods (its runtime holds no sandbox), stop it by its PID."""
    sandboxes = root / "runtime" / "sandboxes"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc is not None and proc.poll() is None:
        if not sandboxes.exists() or not any(sandboxes.iterdir()):
            break
        time.sleep(0.5)
    stop_process(proc, grace_s=20)


class CsiProcess:
    """`kubelet-py-csi` (the S3 driver or the provisioner), stopped by its PID."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "csi_volumes.cli", *argv],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def wait_for(self, path: Path, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise DevClusterError(f"the CSI driver did not serve {path}:\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc, grace_s=15)


def s3_driver(
    root: Path, node_id: str, *, mode: str, kubeconfig: bytes | None = None
) -> CsiProcess:
    """The S3 CSI driver for one node (registering through its plugins_registry) or the
    controller; in the root namespaces, where SeaweedFS listens on loopback. A node's driver
    given `kubeconfig` (the node's credentials) posts volume Events on the node's pods."""
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "csi.sock"
    argv = ["s3", "--endpoint", f"unix://{sock}", "--node-id", node_id, "--mode", mode,
            "--state-dir", str(root / "state")]  # fmt: skip
    if mode == "node":
        argv += ["--registration-dir", str(root.parent / "plugins_registry")]
    if kubeconfig is not None:
        (root / "kubeconfig").write_bytes(kubeconfig)
        (root / "kubeconfig").chmod(0o600)
        argv += ["--kubeconfig", str(root / "kubeconfig")]
    driver = CsiProcess(argv, root / "driver.log")
    driver.wait_for(sock)
    return driver


def _unmount_under(work: Path) -> None:
    """Lazily unmount whatever is still mounted under the demo's directory (FUSE, binds)."""
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(str(work) + "/")
    ]
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


@dataclass
class Demo:
    """What is running while the demo waits: handed to `wait` (the e2e test checks it)."""

    cluster: LocalCluster
    nodes: list[JoinedNode] = field(default_factory=list)
    s3: SeaweedS3 | None = None


def manifests_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "manifests"


def chart_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "helm" / "kubelet-py"


def _helm(helm: Path, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(work / "helm" / "cache"),
        "HELM_CONFIG_HOME": str(work / "helm" / "config"),
        "HELM_DATA_HOME": str(work / "helm" / "data"),
    }
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def install_chart(
    cluster: LocalCluster, work: Path, *, progress: Progress, s3_endpoint: str
) -> None:
    """`helm install` the chart into kube-system, as a cluster admin prepares a cluster."""
    from kubelet_py.devcluster.build import ensure_go_tool

    helm = ensure_go_tool("helm", progress=progress)
    progress(
        "installing the kubelet-py Helm chart "
        "(bootstrap RBAC, cluster-info, overlay RBAC, CSIDriver + StorageClass s3)"
    )
    ca = base64.b64encode(cluster.pki.ca.pair.cert_pem).decode()
    out = _helm(
        helm, work, "install", "kubelet-py", str(chart_dir()), "--namespace", "kube-system",
        "--set", f"clusterInfo.server={cluster.lab_server_url}",
        "--set", f"clusterInfo.caData={ca}",
        "--set", "csi.credentials.create=true",
        "--set", f"csi.credentials.endpoint={s3_endpoint}",
        "--set", f"csi.credentials.accessKeyID={ACCESS_KEY}",
        "--set", f"csi.credentials.secretAccessKey={SECRET_KEY}",
        f"--kubeconfig={cluster.admin_kubeconfig}",
    )  # fmt: skip
    if out.returncode != 0:
        raise DevClusterError(f"helm install failed: {(out.stderr or out.stdout).strip()}")


def _load_image(root: Path, layout: Path) -> None:
    from cri.images import ImageService

    async def load() -> None:
        svc = ImageService(root / "images")
        await svc.import_image(layout, name=DEMO_IMAGE)
        await svc.close()

    asyncio.run(load())


def _wait_until(what: str, ok: Callable[[], bool], node: JoinedNode, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        if time.monotonic() > deadline or node.failed():
            tail = node.log_path.read_text(errors="replace")[-3000:]
            raise DevClusterError(f"{what} did not happen; {node.name}'s log:\n{tail}")
        time.sleep(0.5)


def run_demo(
    cluster: LocalCluster,
    *,
    progress: Progress,
    wait: Callable[[Demo], None],
    node_count: int = 2,
) -> None:
    work = Path(tempfile.mkdtemp(prefix="kubelet-py-demo-"))
    demo = Demo(cluster)
    approver: subprocess.Popen[bytes] | None = None
    csi: list[CsiProcess] = []
    try:
        progress("building a busybox image locally (busybox-static + umoci)")
        layout = build_busybox_layout(work / "image")
        progress("starting SeaweedFS, a real S3 server, on loopback")
        demo.s3 = SeaweedS3(work / "s3")
        try:
            demo.s3.start()
        except RuntimeError as err:
            raise DevClusterError(str(err)) from err
        install_chart(cluster, work, progress=progress, s3_endpoint=demo.s3.endpoint)
        progress("starting the S3 CSI controller and the kopf provisioner")
        controller = s3_driver(work / "csi-controller", "controller", mode="controller")
        csi.append(controller)
        csi.append(
            CsiProcess(
                ["provisioner", "--kubeconfig", str(cluster.admin_kubeconfig),
                 "--controller-endpoint", f"unix://{work / 'csi-controller' / 'csi.sock'}"],
                work / "provisioner.log",
            )
        )  # fmt: skip
        token = cluster.create_bootstrap_token()
        with (work / "approver.log").open("ab") as log:
            approver = subprocess.Popen(
                [sys.executable, "-m", "kubelet_py", "approve-serving-csrs",
                 "--kubeconfig", str(cluster.admin_kubeconfig), "--interval", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        for i in range(node_count):
            name = f"node{i + 1}"
            root = work / name
            static_dir = root / "manifests"
            static_dir.mkdir(parents=True)
            _load_image(root, layout)
            if i == 0:
                for f in sorted((manifests_dir() / "static").glob("*.yaml")):
                    shutil.copy(f, static_dir / f.name)
            creds = cluster.node_kubeconfig(name, from_root_namespace=True)
            csi.append(s3_driver(root / "csi", name, mode="node", kubeconfig=creds))
            node = JoinedNode(cluster, name, root, static_dir)
            demo.nodes.append(node)
            progress(f"{name} joins with a bootstrap token and the CA hash (kubelet-py join)")
            node.start(token=token.value)
        for node in demo.nodes:
            progress(f"waiting for {node.name} to be Ready")
            _wait_until(f"{node.name} Ready", node.ready, node, 120)
        cluster.kubectl("apply", "-f", str(manifests_dir() / "workloads"))
        progress("waiting for the example workloads")
        cluster.kubectl("rollout", "status", "deployment/webapp", "--timeout=120s", check=False)
        cluster.kubectl(
            "wait", "--for=condition=Complete", "job/sum", "--timeout=120s", check=False
        )
        print(cluster.kubectl("get", "nodes", "-o", "wide").stdout)
        print(cluster.kubectl("get", "pods", "-A", "-o", "wide").stdout)
        print(_what_to_try(demo, work))
        wait(demo)
    finally:
        progress("removing the examples and stopping the nodes")
        cluster.kubectl(
            "delete", "-f", str(manifests_dir() / "workloads"), "--wait=false", check=False
        )
        for node in demo.nodes:
            node.stop()
        deadline = time.monotonic() + 30  # the provisioner deletes the PVC's bucket and PV
        while time.monotonic() < deadline and csi:
            pvs = cluster.kubectl("get", "pv", "-o", "name", check=False).stdout.strip()
            if not pvs:
                break
            time.sleep(0.5)
        for proc in reversed(csi):
            proc.stop()
        stop_process(approver)
        _unmount_under(work)
        if demo.s3 is not None:
            demo.s3.stop()
        shutil.rmtree(work, ignore_errors=True)


def _what_to_try(demo: Demo, work: Path) -> str:
    n1 = demo.nodes[0]
    lab = " ".join(demo.cluster.netlab.nsenter())
    return f"""Two kubelet-py nodes joined the cluster and run the examples. Try:

  kubectl get nodes -o wide; kubectl get csr
  kubectl logs job/sum
  kubectl get pvc,pv; kubectl exec s3-writer -- cat /data/hello.txt   # an S3 bucket, via CSI
  kubectl logs deploy/webapp -c content
  kubectl exec -it deploy/webapp -c httpd -- sh
  kubectl port-forward deploy/webapp 8080:8080   # then: curl localhost:8080
  kubectl describe pod -l app=webapp
  {lab} python3 -c "import urllib.request as u; print(u.urlopen('http://{n1.node.address}:30080').read().decode())"
  {lab} python3 -c "import urllib.request as u; print(u.urlopen('http://{n1.node.address}:18080').read().decode())"

The nodes' logs: {" ".join(str(n.log_path) for n in demo.nodes)}
Static pod manifests of node1 (add, edit or remove files here): {n1.static_dir}
Everything lives under {work}; Ctrl-C removes it.
"""


def http_get_in(netns: Path, url: str, *, timeout_s: float = 3.0) -> str:
    """GET `url` from a thread inside a lab namespace (the root namespace has no such routes)."""
    import urllib.request

    from kubelet_py.devcluster.netlab import run_in_netns

    def get() -> str:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - lab URL
            return str(resp.read().decode())

    return run_in_netns(netns, get)


def _retry(fn: Callable[[], str], timeout_s: float) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return True, fn()
        except OSError as err:
            if time.monotonic() > deadline:
                return False, str(err)
            time.sleep(0.5)


def check_examples(demo: Demo, *, timeout_s: float = 60.0) -> list[tuple[str, bool, str]]:
    """Each example's observable effect, checked from the lab underlay: (what, ok, detail)."""
    cluster = demo.cluster
    lab = cluster.netlab.lab_netns_path
    results: list[tuple[str, bool, str]] = []
    for node in demo.nodes:
        results.append((f"{node.name} Ready", node.ready(), ""))
    n1 = demo.nodes[0]
    ok, text = _retry(lambda: http_get_in(lab, f"http://{n1.node.address}:18080/"), timeout_s)
    results.append(("static pod web answers on node1:18080", ok and "static pod" in text, text))
    for node in demo.nodes:
        url = f"http://{node.node.address}:30080/"
        ok, text = _retry(functools.partial(http_get_in, lab, url), timeout_s)
        results.append((f"webapp answers on {node.name}:30080", ok and "webapp on" in text, text))
    out = cluster.kubectl(
        "wait", "--for=condition=Complete", "job/sum", f"--timeout={timeout_s:.0f}s", check=False
    )
    logs = cluster.kubectl("logs", "job/sum", check=False).stdout.strip()
    results.append(("job sum completed", out.returncode == 0 and "= 500500" in logs, logs))
    if demo.s3 is not None:
        found = _wait_for_object(demo.s3, "hello.txt", timeout_s)
        results.append(
            ("s3-writer's file is in the bucket", "through an S3 CSI volume" in found, found)
        )
    return results


def _wait_for_object(s3: SeaweedS3, key: str, timeout_s: float) -> str:
    """The text of the first object called `key` in any bucket ('' if none appears in time)."""
    client = s3.client()
    deadline = time.monotonic() + timeout_s
    while True:
        for bucket in client.list_buckets().get("Buckets", []):
            listed = client.list_objects_v2(Bucket=bucket["Name"])
            for obj in listed.get("Contents", []):
                if obj["Key"].rsplit("/", 1)[-1] == key:
                    body = client.get_object(Bucket=bucket["Name"], Key=obj["Key"])["Body"]
                    return f"s3://{bucket['Name']}/{obj['Key']}: {body.read().decode().strip()}"
        if time.monotonic() > deadline:
            return ""
        time.sleep(1)


def run_standalone(*, progress: Progress, wait: Callable[[str], None]) -> None:
    """A node with no cluster: the static examples only, in a namespace of its own."""
    from kubelet_py.devcluster.cluster import new_prefix
    from kubelet_py.devcluster.netlab import NetLab

    work = Path(tempfile.mkdtemp(prefix="kubelet-py-standalone-"))
    lab = NetLab(new_prefix())
    proc: subprocess.Popen[bytes] | None = None
    try:
        progress("building a busybox image locally (busybox-static + umoci)")
        layout = build_busybox_layout(work / "image")
        lab.create()
        node = lab.add_node("solo")
        root = work / "solo"
        static_dir = root / "manifests"
        static_dir.mkdir(parents=True)
        _load_image(root, layout)
        for f in sorted((manifests_dir() / "static").glob("*.yaml")):
            shutil.copy(f, static_dir / f.name)
        log_path = root / "agent.log"
        progress(f"starting a standalone kubelet-py node in {node.netns} (no API server)")
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [*node.nsenter(), sys.executable, "-m", "kubelet_py", "node", "run",
                 "--node-name", "solo", "--node-ip", str(node.address), "--root-dir", str(root),
                 "--pod-manifest-path", str(static_dir), "--cgroup-parent", f"kpy-{lab.prefix}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        ok, text = _retry(
            lambda: http_get_in(lab.lab_netns_path, f"http://{node.address}:18080/"), 90
        )
        if not ok:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise DevClusterError(f"the static pod did not answer: {text}; agent log:\n{tail}")
        print(f"static pod web on {node.address}:18080 says: {text.strip()}")
        print(f"""
A kubelet-py node runs the static pods in {static_dir} with no API server. Try:

  crictl --runtime-endpoint unix://{root / "cri.sock"} pods
  crictl --runtime-endpoint unix://{root / "cri.sock"} ps
  {" ".join(lab.nsenter())} python3 -c "import urllib.request as u; print(u.urlopen('http://{node.address}:18080').read().decode())"
  edit or remove files in {static_dir} and watch the pods follow

Agent log: {log_path}. Ctrl-C stops it and removes everything.
""")
        wait(text)
    finally:
        if proc is not None:
            for f in (work / "solo" / "manifests").glob("*"):
                f.unlink()
            stop_agent(proc, work / "solo", timeout_s=60)
        lab.destroy()
        shutil.rmtree(work, ignore_errors=True)
