"""The main job for people: a local cluster with one kubelet-py node running the examples.

    kubelet-py cluster up --node

builds a busybox image locally (busybox-static + umoci: there is no internet to
pull from), starts the control plane, adds a node namespace, runs the node agent
in it with `manifests/static` as its static pod directory, applies
`manifests/workloads`, waits until the pods run, and shows them with kubectl.
Ctrl-C deletes the pods, stops the agent and tears everything down.
"""

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kubelet_py.devcluster.cluster import LocalCluster
from kubelet_py.devcluster.errors import DevClusterError

DEMO_IMAGE = "docker.io/library/busybox:1.36"
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "sleep", "id", "hostname", "httpd", "wget", "ps")

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


class NodeAgentProcess:
    """`kubelet-py node run` inside a lab node namespace, stopped by its PID."""

    def __init__(self, cluster: LocalCluster, name: str, root: Path, static_dir: Path) -> None:
        self.cluster = cluster
        self.node = cluster.add_node(name)
        self.root = root
        self.static_dir = static_dir
        self.log_path = root / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        kubeconfig = self.root / "kubeconfig"
        kubeconfig.write_bytes(self.cluster.node_kubeconfig(self.node.name))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.node.nsenter(), sys.executable, "-m", "kubelet_py", "node", "run",
                 "--kubeconfig", str(kubeconfig), "--node-name", self.node.name,
                 "--node-ip", str(self.node.address), "--root-dir", str(self.root),
                 "--pod-manifest-path", str(self.static_dir),
                 "--cgroup-parent", f"kpy-{self.node.name}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def stop(self, *, drain_timeout_s: float = 60.0) -> None:
        """Empty the static dir, delete the node's pods, wait for the runtime to be empty, stop."""
        for f in self.static_dir.iterdir():
            f.unlink()
        self.cluster.kubectl(
            "delete", "pods", "--all-namespaces", "--field-selector",
            f"spec.nodeName={self.node.name}", "--grace-period=1", "--wait=false", check=False,
        )  # fmt: skip
        self.cluster.kubectl(
            "delete", "-f", str(_manifests() / "workloads"), "--wait=false", check=False
        )
        sandboxes = self.root / "runtime" / "sandboxes"
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline and self.proc is not None and self.proc.poll() is None:
            if not sandboxes.exists() or not any(sandboxes.iterdir()):
                break
            time.sleep(0.5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.cluster.kubectl("delete", "node", self.node.name, "--wait=false", check=False)
        self.cluster.netlab.remove_node(self.node.name)


def _manifests() -> Path:
    return Path(__file__).resolve().parents[2] / "manifests"


def run_demo(cluster: LocalCluster, *, progress: Progress, wait: Callable[[], None]) -> None:
    from cri.images import ImageService

    work = Path(tempfile.mkdtemp(prefix="kubelet-py-demo-"))
    try:
        progress("building a busybox image locally (busybox-static + umoci)")
        layout = build_busybox_layout(work / "image")
        root = work / "node1"
        static_dir = root / "manifests"
        static_dir.mkdir(parents=True)

        async def load() -> None:
            svc = ImageService(root / "images")
            await svc.import_image(layout, name=DEMO_IMAGE)
            await svc.close()

        asyncio.run(load())
        for f in sorted((_manifests() / "static").glob("*.yaml")):
            shutil.copy(f, static_dir / f.name)
        agent = NodeAgentProcess(cluster, "node1", root, static_dir)
        agent.start()
        try:
            progress("waiting for node1 to be Ready")
            deadline = time.monotonic() + 60
            while True:
                out = cluster.kubectl(
                    "get", "node", "node1", "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False,
                )  # fmt: skip
                if out.stdout.strip() == "True":
                    break
                if time.monotonic() > deadline or (agent.proc and agent.proc.poll() is not None):
                    tail = agent.log_path.read_text()[-3000:]
                    raise DevClusterError(f"node1 did not become Ready; agent log:\n{tail}")
                time.sleep(0.5)
            cluster.kubectl("apply", "-f", str(_manifests() / "workloads"))
            progress("waiting for the example pods")
            cluster.kubectl("rollout", "status", "deployment/hello", "--timeout=90s", check=False)
            cluster.kubectl(
                "wait", "--for=condition=Ready", "pods", "--all", "-A", "--timeout=90s",
                check=False,
            )  # fmt: skip
            print(cluster.kubectl("get", "nodes", "-o", "wide").stdout)
            print(cluster.kubectl("get", "pods", "-A", "-o", "wide").stdout)
            print(f"""The node agent's log: {agent.log_path}
Container logs on the node: {root / "logs" / "pods"}
Static pod manifests (add, edit or remove files here): {static_dir}
""")
            wait()
        finally:
            progress("removing the example pods and stopping node1")
            agent.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
