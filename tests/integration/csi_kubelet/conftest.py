"""Two kubelet-py nodes with CSI: the real cluster, SeaweedFS, the S3 driver and the provisioner.

Layout (everything under one unique /tmp/kpy-csik-<hex>/ directory, so teardown can find
every mount and FUSE daemon of this run):

    <run>/seaweed/                     SeaweedFS (S3 on a free 127.0.0.1 port)
    <run>/<node>/                      the agent's --root-dir (agent runs in the node netns)
    <run>/<node>/plugins_registry/     the driver's registration socket (what the agent watches)
    <run>/<node>/csi/                  the node's driver process: CSI socket, state, log
    <run>/controller/                  the controller-side driver for the provisioner

The drivers and the provisioner run in the root network namespace: a CSI driver talks to
its kubelet only through unix sockets, and there it reaches SeaweedFS on loopback (a driver
runs with hostNetwork upstream too); the mounts it makes are in the one mount namespace the
agents share. The agents themselves run in lab node namespaces like every agent test.
"""

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubelet_py.devcluster import LocalCluster
from tests.integration.agent.conftest import (
    AgentNode,
    _ready,
    preload_image,
    start_agent,
    stop_agent,
    wait_for,
)
from tests.integration.csi.conftest import REPO, Driver, cleanup_mounts, fuse_daemons_under
from tests.support.images import ImageBuilder
from tests.support.seaweedfs import SeaweedS3

DRIVER = "s3.csi.kubelet-py.io"
IMAGE = "example.com/test/busybox:1"


@dataclass
class CsiNode:
    agent: AgentNode
    driver: Driver

    @property
    def name(self) -> str:
        return self.agent.name

    @property
    def root(self) -> Path:
        return self.agent.root

    def restart_agent(self, cluster: LocalCluster) -> None:
        self.agent.proc = start_agent(
            cluster,
            self.agent.lab,
            self.root,
            self.agent.static_dir,
            self.agent.log_path,
        )


@dataclass
class CsiEnv:
    cluster: LocalCluster
    api: client.ApiClient
    seaweed: SeaweedS3
    run_dir: Path
    nodes: list[CsiNode]
    namespace: str
    storage_class: str
    secret: str

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)


def our_mounts(root: Path) -> list[tuple[str, str]]:
    """(mountpoint, fstype) of every mount beneath `root`, from this process's mountinfo."""
    out = []
    prefix = str(root) + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        point = left.split()[4]
        if point.startswith(prefix):
            out.append((point, right.split()[0]))
    return out


def _load_image(root: Path, builder: ImageBuilder) -> None:
    layout = builder.busybox().layout

    preload_image(root, layout)


def delete_pods_and_wait(env: CsiEnv, timeout_s: float = 90) -> None:
    core = env.core
    for pod in core.list_namespaced_pod(env.namespace).items:
        with contextlib.suppress(client.ApiException):
            core.delete_namespaced_pod(pod.metadata.name, env.namespace, grace_period_seconds=1)
    wait_for(
        "every pod of the test namespace to be gone",
        lambda: not core.list_namespaced_pod(env.namespace).items,
        timeout_s,
        env.nodes[0].agent,
    )


@pytest.fixture(scope="module")
def csi_env(
    cluster: LocalCluster, admin_api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CsiEnv]:
    """SeaweedFS, two agent nodes each with a registered S3 driver, the provisioner, and a
    StorageClass; everything (pods, mounts, FUSE daemons, processes, nodes) removed after."""
    with csi_environment(cluster, admin_api, tmp_path_factory.mktemp("csik-images")) as env:
        yield env


@contextlib.contextmanager
def csi_environment(
    cluster: LocalCluster, admin_api: client.ApiClient, images_dir: Path, *, node_count: int = 2
) -> Iterator[CsiEnv]:
    """What `csi_env` provides, as a context manager (bench/csi_kubelet.py uses it too)."""
    tag = uuid.uuid4().hex[:6]
    run_dir = Path(f"/tmp/kpy-csik-{tag}")
    run_dir.mkdir()
    core = client.CoreV1Api(admin_api)
    storage = client.StorageV1Api(admin_api)
    seaweed = SeaweedS3(run_dir / "seaweed")
    nodes: list[CsiNode] = []
    drivers: list[Driver] = []
    provisioner: subprocess.Popen[bytes] | None = None
    namespace = f"csik-{tag}"
    storage_class = f"s3-{tag}"
    env: CsiEnv | None = None
    try:
        try:
            seaweed.start()
        except RuntimeError as err:
            pytest.fail(str(err))
        builder = ImageBuilder(images_dir)
        with contextlib.suppress(client.ApiException):
            storage.delete_csi_driver(DRIVER)
        storage.create_csi_driver(
            client.V1CSIDriver(
                metadata=client.V1ObjectMeta(name=DRIVER),
                spec=client.V1CSIDriverSpec(
                    attach_required=False,
                    pod_info_on_mount=True,
                    fs_group_policy="None",  # the driver applies fsGroup (VOLUME_MOUNT_GROUP)
                    volume_lifecycle_modes=["Persistent", "Ephemeral"],
                ),
            )
        )
        for suffix in "abcdefgh"[:node_count]:
            name = f"csik{suffix}-{tag}"
            root = run_dir / name
            (root / "manifests").mkdir(parents=True)
            _load_image(root, builder)
            (root / "csi").mkdir()
            # the node's own credentials: the driver posts volume Events on the node's pods
            kubeconfig = root / "csi" / "kubeconfig"
            kubeconfig.write_bytes(cluster.node_kubeconfig(name, from_root_namespace=True))
            driver = Driver(
                root / "csi",
                name,
                extra_args=(
                    "--registration-dir", str(root / "plugins_registry"),
                    "--kubeconfig", str(kubeconfig),
                ),
            )  # fmt: skip
            drivers.append(driver)
            driver.start()
            lab = cluster.add_node(name)
            log_path = root / "agent.log"
            proc = start_agent(cluster, lab, root, root / "manifests", log_path)
            agent = AgentNode(name, lab, root, root / "manifests", log_path, proc)
            nodes.append(CsiNode(agent, driver))
        for node in nodes:
            wait_for(f"node {node.name} Ready", lambda n=node: _ready(core, n.name), 90, node.agent)
        controller = Driver(run_dir / "controller", "controller")
        (run_dir / "controller").mkdir()
        drivers.append(controller)
        controller.start()
        prov_log = (run_dir / "provisioner.log").open("ab")
        provisioner = subprocess.Popen(
            [sys.executable, "-m", "csi_volumes.cli", "provisioner",
             "--kubeconfig", str(cluster.admin_kubeconfig),
             "--controller-endpoint", f"unix://{controller.socket}"],
            stdout=prov_log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        prov_log.close()
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        wait_for(
            "the default service account",
            lambda: any(
                sa.metadata.name == "default"
                for sa in core.list_namespaced_service_account(namespace).items
            ),
            30,
        )
        secret = "s3-creds"
        core.create_namespaced_secret(
            namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=secret), string_data=seaweed.secrets()
            ),
        )
        storage.create_storage_class(
            client.V1StorageClass(
                metadata=client.V1ObjectMeta(name=storage_class),
                provisioner=DRIVER,
                reclaim_policy="Delete",
                volume_binding_mode="Immediate",
                parameters={
                    "csi.storage.k8s.io/provisioner-secret-name": secret,
                    "csi.storage.k8s.io/provisioner-secret-namespace": namespace,
                    "csi.storage.k8s.io/node-stage-secret-name": secret,
                    "csi.storage.k8s.io/node-stage-secret-namespace": namespace,
                },
            )
        )
        env = CsiEnv(cluster, admin_api, seaweed, run_dir, nodes, namespace, storage_class, secret)
        yield env
    finally:
        # every step runs even if an earlier one fails; the first failure is raised at the end
        errors: list[BaseException] = []

        def step(fn: Callable[..., object], *args: object) -> None:
            try:
                fn(*args)
            except Exception as err:
                errors.append(err)

        if env is not None:
            step(delete_pods_and_wait, env, 60)
        for node in nodes:
            step(stop_agent, node.agent.proc)
        for d in drivers:
            step(d.kill)
        if provisioner is not None:
            step(_stop_process, provisioner)
        step(cleanup_mounts, run_dir)
        step(_kill_fuse, run_dir)
        step(_cleanup_api, core, storage, namespace, storage_class, [n.name for n in nodes])
        for node in nodes:
            step(cluster.netlab.remove_node, node.name)
        step(seaweed.stop)
        subprocess.run(["rm", "-rf", "--one-file-system", str(run_dir)], check=False)
        if errors:
            raise errors[0]


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _kill_fuse(run_dir: Path) -> None:
    for pid in fuse_daemons_under(run_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _cleanup_api(
    core: client.CoreV1Api,
    storage: client.StorageV1Api,
    namespace: str,
    storage_class: str,
    node_names: list[str],
) -> None:
    with contextlib.suppress(client.ApiException):
        for pvc in core.list_namespaced_persistent_volume_claim(namespace).items:
            core.delete_namespaced_persistent_volume_claim(pvc.metadata.name, namespace)
    for pv in core.list_persistent_volume().items:
        if (pv.spec.claim_ref and pv.spec.claim_ref.namespace == namespace) or (
            pv.metadata.name.startswith(namespace)
        ):
            with contextlib.suppress(client.ApiException):
                core.delete_persistent_volume(pv.metadata.name)
    with contextlib.suppress(client.ApiException):
        core.delete_namespace(namespace)
    with contextlib.suppress(client.ApiException):
        storage.delete_storage_class(storage_class)
    with contextlib.suppress(client.ApiException):
        storage.delete_csi_driver(DRIVER)
    for name in node_names:
        with contextlib.suppress(client.ApiException):
            # raw: the Python client cannot parse a CSINode whose drivers are null
            storage.delete_csi_node(name, _preload_content=False)
        with contextlib.suppress(client.ApiException):
            core.delete_node(name)


def make_claim(env: CsiEnv, access: str = "ReadWriteMany") -> str:
    name = f"data-{uuid.uuid4().hex[:6]}"
    env.core.create_namespaced_persistent_volume_claim(
        env.namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=[access],
                storage_class_name=env.storage_class,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )

    def bound() -> str:
        pvc = env.core.read_namespaced_persistent_volume_claim(name, env.namespace)
        return str(pvc.spec.volume_name) if pvc.status.phase == "Bound" else ""

    wait_for(f"PVC {name} to be Bound", bound, 90)
    return name


def run_pod(
    env: CsiEnv,
    node: CsiNode,
    script: str,
    claim: str,
    *,
    restart: str = "Never",
    read_only: bool = False,
    security_context: dict[str, Any] | None = None,
    volume_source: dict[str, Any] | None = None,
) -> str:
    """A busybox pod on `node` running `script` with the claim (or `volume_source`) at /data."""
    name = f"p-{uuid.uuid4().hex[:6]}"
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node.name,
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "c",
                    "image": IMAGE,
                    "command": ["sh", "-c", script],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [
                {
                    "name": "data",
                    **(
                        volume_source
                        or {"persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
                    ),
                }
            ],
        },
    }
    if security_context:
        body["spec"]["securityContext"] = security_context
    env.core.create_namespaced_pod(env.namespace, body)
    return name


def pod_phase(env: CsiEnv, name: str) -> str:
    try:
        return str(env.core.read_namespaced_pod(name, env.namespace).status.phase)
    except client.ApiException:
        return "Gone"


def wait_phase(
    env: CsiEnv, node: CsiNode, name: str, phases: set[str], timeout_s: float = 90
) -> str:
    return str(
        wait_for(
            f"pod {name} in {phases}",
            lambda: (p := pod_phase(env, name)) in phases and p,
            timeout_s,
            node.agent,
        )
    )


def delete_pod(env: CsiEnv, node: CsiNode, name: str, timeout_s: float = 90) -> None:
    with contextlib.suppress(client.ApiException):
        env.core.delete_namespaced_pod(name, env.namespace, grace_period_seconds=1)
    wait_phase(env, node, name, {"Gone"}, timeout_s)


WaitFor = Callable[..., Any]
