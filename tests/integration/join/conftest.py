"""Nodes that join a real cluster with `kubelet-py join`, from a fresh node namespace.

A joining node starts with nothing but the token and the CA hash: an empty root dir
(plus a preloaded busybox image, so pods need no registry), the lab's API server URL.
`join_cmd()` runs the CLI inside the node's network namespace, as a person would on
the machine; teardown removes its pods, stops it, deletes its Node and namespace.
"""

import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from kubelet_py.devcluster import LabNode, LocalCluster
from tests.integration.agent.conftest import IMAGE, AgentNode, _teardown, preload_image, wait_for
from tests.support.images import ImageBuilder

__all__ = ["IMAGE", "JoinLab", "csr_rows", "wait_for"]


@dataclass
class JoinLab:
    """A cluster prepared for joining, and a way to make fresh node namespaces on it."""

    cluster: LocalCluster
    image_layout: Path
    tmp: pytest.TempPathFactory

    def fresh_node(self, prefix: str = "j") -> tuple[LabNode, Path]:
        lab = self.cluster.add_node(f"{prefix}{secrets.token_hex(2)}")
        root = self.tmp.mktemp(f"root-{lab.name}")
        return lab, root

    def join_argv(
        self,
        lab: LabNode,
        root: Path,
        *,
        token: str,
        ca_hash: str | None = None,
        server: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> list[str]:
        return [
            *lab.nsenter(), "python3", "-m", "kubelet_py", "join",
            "--server", server or self.cluster.lab_server_url,
            "--token", token,
            "--discovery-token-ca-cert-hash", ca_hash or self.cluster.ca_cert_hash,
            "--node-name", lab.name, "--node-ip", str(lab.address), "--root-dir", str(root),
            "--cgroup-parent", f"kpy-{lab.name}", *extra,
        ]  # fmt: skip

    def join_cmd(
        self, lab: LabNode, root: Path, *, timeout_s: float = 120, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        """Run `kubelet-py join --no-start` to completion."""
        argv = self.join_argv(lab, root, extra=("--no-start", *kw.pop("extra", ())), **kw)  # type: ignore[arg-type]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)

    def preload(self, root: Path) -> None:
        preload_image(root, self.image_layout)

    def start_joining_node(self, lab: LabNode, root: Path, *, token: str) -> AgentNode:
        """`kubelet-py join` that goes on to run the node (the command a person runs)."""
        self.preload(root)
        static_dir = root / "manifests"
        static_dir.mkdir(exist_ok=True)
        log_path = root / "join.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                self.join_argv(
                    lab, root, token=token, extra=("--pod-manifest-path", str(static_dir))
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return AgentNode(lab.name, lab, root, static_dir, log_path, proc)

    def teardown(self, node: AgentNode, admin_api: client.ApiClient) -> None:
        _teardown(self.cluster, client.CoreV1Api(admin_api), node)


def csr_rows(cluster: LocalCluster) -> list[list[str]]:
    """`kubectl get csr` as rows: NAME AGE SIGNERNAME REQUESTOR REQUESTEDDURATION CONDITION."""
    out = cluster.kubectl("get", "csr", "--no-headers").stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def node_ready(core: client.CoreV1Api, name: str) -> bool:
    try:
        n = core.read_node(name)
    except client.ApiException:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])


def until(fn: Callable[[], object], timeout_s: float) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.3)
    return None


@pytest.fixture(scope="module")
def image_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox OCI layout to preload into each joining node's image store."""
    return ImageBuilder(tmp_path_factory.mktemp("join-images")).busybox().layout


@pytest.fixture(scope="module")
def join_lab(
    cluster: LocalCluster, image_layout: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JoinLab]:
    """The session cluster with the join objects applied (what the Helm chart installs)."""
    cluster.prepare_for_joining()
    yield JoinLab(cluster, image_layout, tmp_path_factory)
