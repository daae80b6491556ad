"""`LocalCluster`: etcd, kube-apiserver, kube-controller-manager and kube-scheduler in a lab netns.

Start order: lab namespace -> PKI -> loopback forwarder -> etcd (wait /health) ->
apiserver, controller-manager and scheduler together (each retries the apiserver
until it answers) -> wait apiserver /readyz, then both components' /healthz.
Every component writes its log to `<work_dir>/logs/<name>.log`; a component that
exits or never turns healthy fails the start with the tail of its log, and
everything already started is torn down again.

The apiserver runs as a real cluster's does: Node,RBAC authorization, the
NodeRestriction admission plugin on top of the defaults, bootstrap tokens, and
service-account tokens signed by the cluster's key. The controller-manager
allocates pod CIDRs to nodes and signs CSRs with the cluster CA.

Processes are ended by the PIDs this object recorded, never by name.
"""

import datetime
import http.client
import ipaddress
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from kubelet_py.bootstrap.clusterside import join_objects
from kubelet_py.bootstrap.discovery import ca_cert_hash_of_pem
from kubelet_py.bootstrap.token import NODE_TOKEN_GROUP, BootstrapToken
from kubelet_py.devcluster.build import ControlPlaneBinaries
from kubelet_py.devcluster.errors import ComponentStartError, DevClusterError
from kubelet_py.devcluster.forward import LoopbackForwarder
from kubelet_py.devcluster.fsutil import write_atomic
from kubelet_py.devcluster.netlab import LabNode, NetLab, remove_namespaces, run_in_netns
from kubelet_py.devcluster.netrbac import node_network_rbac
from kubelet_py.devcluster.pki import CertKeyPair, ClusterPKI, create_cluster_pki, kubeconfig_yaml

Progress = Callable[[str], None]

APISERVER_PORT = 6443
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259
ETCD_CLIENT_PORT = 2379
STATE_FILE = "cluster.json"


@dataclass(frozen=True)
class ClusterNetworks:
    """The address plan of the cluster (not of the lab underlay)."""

    service_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.96.0.0/16")
    cluster_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.244.0.0/16")
    node_cidr_mask_size: int = 24
    cluster_domain: str = "cluster.local"

    @property
    def kubernetes_service_ip(self) -> ipaddress.IPv4Address:
        return self.service_cidr.network_address + 1

    @property
    def cluster_dns_ip(self) -> ipaddress.IPv4Address:
        return self.service_cidr.network_address + 10


class Component:
    """One control-plane process, started inside the lab namespace."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, nsenter: Sequence[str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*nsenter, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, wait up to `grace_s`, then SIGKILL; only our own PID."""
        stop_process(self.proc, grace_s=grace_s)


def stop_process(proc: "subprocess.Popen[bytes] | None", *, grace_s: float = 10.0) -> None:
    """SIGTERM a process we started (by its PID), wait up to `grace_s`, then SIGKILL; reaped."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _https_status(
    host: str, port: int, path: str, *, context: ssl.SSLContext, timeout_s: float = 2.0
) -> tuple[int, str]:
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=timeout_s)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(4096).decode(errors="replace")
    finally:
        conn.close()


def _http_status(host: str, port: int, path: str, *, timeout_s: float = 2.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(4096).decode(errors="replace")
    finally:
        conn.close()


def _insecure_tls() -> ssl.SSLContext:
    # Component /healthz endpoints serve self-signed certs; only liveness is read from them.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def new_prefix() -> str:
    """A short, unique namespace prefix for one cluster."""
    return f"kpy-{secrets.token_hex(3)}"


class LocalCluster:
    """A real control plane in a lab network namespace; a context manager."""

    def __init__(
        self,
        *,
        binaries: ControlPlaneBinaries,
        work_dir: Path | None = None,
        prefix: str | None = None,
        networks: ClusterNetworks | None = None,
        progress: Progress = print,
        remove_work_dir: bool | None = None,
        cluster_signing_duration_s: int | None = None,
    ) -> None:
        self.binaries = binaries
        self._own_work_dir = work_dir is None
        self.work_dir = (
            work_dir
            if work_dir is not None
            else Path(tempfile.mkdtemp(prefix="kubelet-py-cluster-"))
        )
        self._remove_work_dir = self._own_work_dir if remove_work_dir is None else remove_work_dir
        self.prefix = prefix or new_prefix()
        self.networks = networks or ClusterNetworks()
        self.progress = progress
        self.netlab = NetLab(self.prefix)
        self.components: list[Component] = []
        self._forwarder: LoopbackForwarder | None = None
        self._pki: ClusterPKI | None = None
        self.api_port = 0
        # kcm's --cluster-signing-duration: short lifetimes let tests watch rotation happen.
        self.cluster_signing_duration_s = cluster_signing_duration_s

    # ---- paths and addresses -------------------------------------------------

    @property
    def pki(self) -> ClusterPKI:
        if self._pki is None:
            raise DevClusterError("the cluster's PKI does not exist before start()")
        return self._pki

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def admin_kubeconfig(self) -> Path:
        """For use from the root namespace (through the loopback forwarder)."""
        return self.work_dir / "admin.conf"

    @property
    def lab_admin_kubeconfig(self) -> Path:
        """For use from inside the lab or a node namespace."""
        return self.work_dir / "lab-admin.conf"

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def lab_server_url(self) -> str:
        return f"https://{self.netlab.gateway}:{APISERVER_PORT}"

    # ---- lifecycle -------------------------------------------------------------

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, *, timeout_s: float = 120.0) -> None:
        """Bring the control plane up; on any failure tear down what was made, then raise."""
        started = time.monotonic()
        try:
            self._start(timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise
        self.progress(f"control plane ready in {time.monotonic() - started:.1f} s")

    def _start(self, *, timeout_s: float) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.progress(f"creating lab network namespace {self.netlab.lab_netns}")
        self.netlab.create()
        self._write_state()
        self._pki = create_cluster_pki(
            self.work_dir / "pki",
            apiserver_ips=[
                self.netlab.gateway,
                ipaddress.IPv4Address("127.0.0.1"),
                self.networks.kubernetes_service_ip,
            ],
            apiserver_dns_names=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                f"kubernetes.default.svc.{self.networks.cluster_domain}",
            ],
        )
        self._forwarder = LoopbackForwarder(
            target_netns=self.netlab.lab_netns_path,
            target_host="127.0.0.1",
            target_port=APISERVER_PORT,
        )
        self.api_port = self._forwarder.start()
        self._write_kubeconfigs()

        deadline = time.monotonic() + timeout_s
        etcd = self._launch("etcd", self._etcd_argv())
        self._wait(etcd, deadline, self._etcd_healthy)
        apiserver = self._launch("kube-apiserver", self._apiserver_argv())
        kcm = self._launch("kube-controller-manager", self._controller_manager_argv())
        scheduler = self._launch("kube-scheduler", self._scheduler_argv())
        self._wait(apiserver, deadline, self._apiserver_ready)
        self._wait(kcm, deadline, lambda: self._component_healthy(CONTROLLER_MANAGER_PORT))
        self._wait(scheduler, deadline, lambda: self._component_healthy(SCHEDULER_PORT))

    def stop(self) -> None:
        """Stop every process we started (by PID), the forwarder and the namespaces."""
        for component in reversed(self.components):
            component.stop()
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        self.netlab.destroy()
        state = self.work_dir / STATE_FILE
        state.unlink(missing_ok=True)
        if self._remove_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # ---- nodes -----------------------------------------------------------------

    def add_node(self, name: str) -> LabNode:
        """A node namespace on the underlay, able to reach the apiserver at lab_server_url."""
        node = self.netlab.add_node(name)
        self._write_state()
        return node

    def node_credentials(self, node_name: str) -> CertKeyPair:
        return self.pki.node_identity(node_name)

    def node_kubeconfig(self, node_name: str, *, from_root_namespace: bool = False) -> bytes:
        """A kubeconfig for `system:node:<name>`, pointing at the lab or the loopback address."""
        return kubeconfig_yaml(
            cluster_name="kubelet-py-lab",
            server=self.server_url if from_root_namespace else self.lab_server_url,
            ca_pem=self.pki.ca.pair.cert_pem,
            user=f"system:node:{node_name}",
            client=self.node_credentials(node_name),
        )

    # ---- joining (TLS bootstrap) ---------------------------------------------------

    @property
    def ca_cert_hash(self) -> str:
        """kubeadm's `sha256:<hex>` pin of the cluster CA, for `kubelet-py join`."""
        return ca_cert_hash_of_pem(self.pki.ca.pair.cert_pem)

    def apply(self, objects: Sequence[Mapping[str, Any]]) -> None:
        """`kubectl apply` a list of objects as admin."""
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        proc = subprocess.run(
            [
                str(self.binaries.kubectl),
                f"--kubeconfig={self.admin_kubeconfig}",
                "apply",
                "-f",
                "-",
            ],
            input=doc,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if proc.returncode != 0:
            raise DevClusterError(f"kubectl apply failed: {proc.stderr.strip()}")

    def prepare_for_pod_network(self) -> None:
        """What the Helm chart grants the overlay: nodes read every Node (netrbac.py)."""
        self.apply(node_network_rbac())

    def prepare_for_joining(self, **rbac: Any) -> None:
        """What the Helm chart installs for joining: bootstrap RBAC, cluster-info and its RBAC."""
        self.apply(
            join_objects(server=self.lab_server_url, ca_pem=self.pki.ca.pair.cert_pem, **rbac)
        )

    def create_bootstrap_token(
        self,
        *,
        ttl_s: float | None = 3600.0,
        groups: Sequence[str] = (NODE_TOKEN_GROUP,),
        wait_signed: bool = True,
        timeout_s: float = 30.0,
    ) -> BootstrapToken:
        """A new token Secret; by default wait until the bootstrapsigner has signed cluster-info."""
        token = BootstrapToken.generate()
        expiration = (
            datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=ttl_s)
            if ttl_s is not None
            else None
        )
        self.apply([token.secret_manifest(expiration=expiration, groups=groups)])
        deadline = time.monotonic() + timeout_s
        while wait_signed:
            out = self.kubectl(
                "get", "configmap", "cluster-info", "-n", "kube-public", "-o", "json"
            ).stdout
            if f"jws-kubeconfig-{token.id}" in json.loads(out).get("data", {}):
                break
            if time.monotonic() > deadline:
                raise DevClusterError(
                    f"the bootstrapsigner did not sign cluster-info for token {token.id} "
                    f"within {timeout_s:.0f} s (is cluster-info there? prepare_for_joining())"
                )
            time.sleep(0.2)
        return token

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl as admin from the root namespace."""
        return subprocess.run(
            [str(self.binaries.kubectl), f"--kubeconfig={self.admin_kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def launch(self, name: str, argv: Sequence[str]) -> Component:
        """Start one more process in the lab namespace (an add-on such as metrics-server);
        it is stopped, by PID, with the control plane."""
        return self._launch(name, argv)

    # ---- internals -------------------------------------------------------------

    def _launch(self, name: str, argv: Sequence[str]) -> Component:
        self.progress(f"starting {name}")
        component = Component(name, argv, log_path=self.logs_dir / f"{name}.log")
        component.start(self.netlab.nsenter())
        self.components.append(component)
        self._write_state()
        return component

    def _wait(self, component: Component, deadline: float, healthy: Callable[[], bool]) -> None:
        while True:
            code = component.exit_code()
            if code is not None:
                raise ComponentStartError(
                    f"{component.name} exited with code {code} during start; "
                    f"log {component.log_path}:\n{component.log_tail()}"
                )
            try:
                if healthy():
                    return
            except (OSError, http.client.HTTPException, ssl.SSLError):
                pass
            if time.monotonic() > deadline:
                raise ComponentStartError(
                    f"{component.name} did not become healthy in time; "
                    f"log {component.log_path}:\n{component.log_tail()}"
                )
            time.sleep(0.2)

    def _etcd_healthy(self) -> bool:
        status, body = run_in_netns(
            self.netlab.lab_netns_path,
            lambda: _http_status("127.0.0.1", ETCD_CLIENT_PORT, "/health"),
        )
        return status == 200 and '"health":"true"' in body.replace(" ", "")

    def _apiserver_ready(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(self.pki.cert("admin"), self.pki.key("admin"))
        status, _ = _https_status("127.0.0.1", self.api_port, "/readyz", context=ctx)
        return status == 200

    def _component_healthy(self, port: int) -> bool:
        status, body = run_in_netns(
            self.netlab.lab_netns_path,
            lambda: _https_status("127.0.0.1", port, "/healthz", context=_insecure_tls()),
        )
        return status == 200 and body.strip() == "ok"

    def _write_kubeconfigs(self) -> None:
        pki = self.pki
        ca_pem = pki.ca.pair.cert_pem
        admin = pki.ca.issue("kubernetes-admin", organizations=["system:masters"], client=True)
        admin.write(pki.directory, "admin")
        for path, server in (
            (self.admin_kubeconfig, self.server_url),
            (self.lab_admin_kubeconfig, self.lab_server_url),
        ):
            write_atomic(
                path,
                kubeconfig_yaml(
                    cluster_name="kubelet-py-lab",
                    server=server,
                    ca_pem=ca_pem,
                    user="kubernetes-admin",
                    client=admin,
                ),
                mode=0o600,
            )
        local = f"https://127.0.0.1:{APISERVER_PORT}"
        for stem, cn in (
            ("controller-manager", "system:kube-controller-manager"),
            ("scheduler", "system:kube-scheduler"),
        ):
            write_atomic(
                self.work_dir / f"{stem}.conf",
                pki.client_kubeconfig(server=local, common_name=cn),
                mode=0o600,
            )

    def _etcd_argv(self) -> list[str]:
        peer = "http://127.0.0.1:2380"
        client = f"http://127.0.0.1:{ETCD_CLIENT_PORT}"
        return [
            str(self.binaries.etcd),
            "--name=lab",
            f"--data-dir={self.work_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=lab={peer}",
            "--listen-metrics-urls=http://127.0.0.1:2381",
            # A test cluster's data dies with it; fsync only slows it down.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def _apiserver_argv(self) -> list[str]:
        pki = self.pki
        return [
            str(self.binaries.kube_apiserver),
            f"--advertise-address={self.netlab.gateway}",
            "--bind-address=0.0.0.0",
            f"--secure-port={APISERVER_PORT}",
            f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
            f"--client-ca-file={pki.ca_cert}",
            f"--tls-cert-file={pki.cert('apiserver')}",
            f"--tls-private-key-file={pki.key('apiserver')}",
            f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
            f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--service-account-issuer=https://kubernetes.default.svc.{self.networks.cluster_domain}",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_private_key}",
            f"--service-cluster-ip-range={self.networks.service_cidr}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--enable-bootstrap-token-auth=true",
            "--allow-privileged=true",
            f"--requestheader-client-ca-file={pki.cert('front-proxy-ca')}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-username-headers=X-Remote-User",
            f"--proxy-client-cert-file={pki.cert('front-proxy-client')}",
            f"--proxy-client-key-file={pki.key('front-proxy-client')}",
            # aggregated APIs (metrics-server) are dialled at their endpoints, not the
            # service IP: there is no kube-proxy in the lab
            "--enable-aggregator-routing=true",
            "--profiling=false",
            "--v=1",
        ]

    def _controller_manager_argv(self) -> list[str]:
        pki = self.pki
        kubeconfig = self.work_dir / "controller-manager.conf"
        return [
            str(self.binaries.kube_controller_manager),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={CONTROLLER_MANAGER_PORT}",
            "--cluster-name=kubelet-py-lab",
            "--allocate-node-cidrs=true",
            f"--cluster-cidr={self.networks.cluster_cidr}",
            f"--node-cidr-mask-size={self.networks.node_cidr_mask_size}",
            f"--service-cluster-ip-range={self.networks.service_cidr}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--root-ca-file={pki.ca_cert}",
            f"--service-account-private-key-file={pki.sa_private_key}",
            f"--requestheader-client-ca-file={pki.cert('front-proxy-ca')}",
            f"--client-ca-file={pki.ca_cert}",
            "--use-service-account-credentials=true",
            "--controllers=*,bootstrapsigner,tokencleaner",
            *(
                [f"--cluster-signing-duration={self.cluster_signing_duration_s}s"]
                if self.cluster_signing_duration_s
                else []
            ),
            "--leader-elect=false",
            # A lab cluster notices a dead node in ~20 s instead of 50 s, so tests of
            # NotReady stay short; heartbeats (Lease, 10 s) are unchanged.
            "--node-monitor-grace-period=20s",
            "--node-monitor-period=2s",
            "--profiling=false",
            "--v=1",
        ]

    def _scheduler_argv(self) -> list[str]:
        kubeconfig = self.work_dir / "scheduler.conf"
        return [
            str(self.binaries.kube_scheduler),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={SCHEDULER_PORT}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ]

    def _write_state(self) -> None:
        """Record what to clean up, so `kubelet-py cluster down` can finish a crashed run."""
        state = {
            "prefix": self.prefix,
            "namespaces": [self.netlab.lab_netns, *(n.netns for n in self.netlab.nodes.values())],
            "processes": [
                {"name": c.name, "pid": c.pid, "exe": c.argv[0]}
                for c in self.components
                if c.pid is not None
            ],
        }
        write_atomic(self.work_dir / STATE_FILE, json.dumps(state, indent=2).encode())


def cleanup_from_state(work_dir: Path, *, progress: Progress = print) -> bool:
    """Finish tearing down a cluster whose owner died: its processes (by recorded PID) and netns.

    A PID is only signalled if /proc/<pid>/exe still is the binary we started, so a
    recycled PID belonging to someone else is never touched. Returns False when
    there was no state file.
    """
    path = work_dir / STATE_FILE
    if not path.is_file():
        return False
    state = json.loads(path.read_text())
    for proc in reversed(state.get("processes", [])):
        pid, exe = int(proc["pid"]), str(proc["exe"])
        try:
            running = Path(f"/proc/{pid}/exe").readlink()
        except OSError:
            continue
        if Path(running).resolve() != Path(exe).resolve():
            continue
        progress(f"stopping {proc['name']} (pid {pid})")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    remove_namespaces([n for n in state.get("namespaces", []) if isinstance(n, str)])
    path.unlink()
    return True
