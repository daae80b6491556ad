"""The node agent assembled: runtime, sources, pod workers, node status, lease.

`Agent.run()` runs everything under one TaskGroup with named tasks; cancelling
it stops the agent and leaves containers running (they belong to the runtime,
which re-adopts them next time). With `embedded_runtime` the agent also serves
kubelet-py's own CRI runtime in-process on its socket; otherwise it talks to
whichever CRI runtime listens on `cri_socket` (containerd works too).
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubelet_py.metrics.kubelet as metrics
from kubelet_py.agent.apiclient import ApiClient, ApiError, load_kubeconfig
from kubelet_py.agent.cri_client import CRIError, GrpcCRI
from kubelet_py.agent.criconfig import POD_UID
from kubelet_py.agent.csi import CsiVolumes
from kubelet_py.agent.events import EventRecorder
from kubelet_py.agent.eviction import Candidate, EvictionManager
from kubelet_py.agent.housekeeping import Housekeeper
from kubelet_py.agent.kubeletconfig import KubeletConfiguration, default_eviction_hard
from kubelet_py.agent.model import Pod
from kubelet_py.agent.network import CNIPodNetwork, NetworkSettings, NodeNetwork, NodePaths
from kubelet_py.agent.node import NodeManager, NodeSettings, memory_capacity_bytes
from kubelet_py.agent.plan import Backoff
from kubelet_py.agent.pressure import PressureTracker, measure
from kubelet_py.agent.sources import ApiPodSource, StaticPodSource
from kubelet_py.agent.volumes import VolumeManager
from kubelet_py.agent.worker import NodeContext, PodWorker
from kubelet_py.bootstrap.csr import CertKind, CertRequest, serving_request
from kubelet_py.bootstrap.rotation import CertificateRotator
from kubelet_py.bootstrap.store import SERVER_PREFIX, CertStore
from kubelet_py.server import KubeletHost, KubeletServer, ServerConfig
from kubelet_py.stats import Sampler, SummaryProvider

log = logging.getLogger("kubelet_py.agent")

TERMINAL_REASONS = ("Evicted", "DeadlineExceeded")
"""A pod the API has as Failed with one of these was ended by its node: never restart it."""


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    node_ip: str
    root: Path = Path("/var/lib/kubelet-py")
    kubeconfig: Path | None = None
    static_pod_path: Path | None = None
    cri_socket: Path = Path("/run/kubelet-py/cri.sock")
    embedded_runtime: bool = True
    cgroup_parent: str = "kubelet-py"
    oci_runtime: str = "kubelet-py-oci"
    """The embedded runtime's OCI executor under conmon: ours, or runc / crun."""
    monitor: str = "node"
    """What holds the embedded runtime's containers: one node monitor, or a conmon each."""
    cluster_dns: tuple[str, ...] = ()
    cluster_domain: str = "cluster.local"
    node_labels: Mapping[str, str] = field(default_factory=dict)
    register_with_taints: tuple[Mapping[str, str], ...] = ()
    max_pods: int = 110
    network: NetworkSettings = field(default_factory=NetworkSettings)
    plain_http_registries: tuple[str, ...] = ()
    registry_certs_dir: Path | None = None
    """`<dir>/<host[:port]>/ca.crt`: the CA a registry's TLS certificate must chain to (the
    certs.d layout of Docker and containerd); None means <root>/certs.d."""
    pleg_period_s: float = 1.0
    kubelet_server: ServerConfig = field(default_factory=ServerConfig)
    rotate_client_certificates: bool = False
    """Renew the kubeconfig's client-certificate file via CSRs (kubelet --rotate-certificates)."""
    rotate_server_certificates: bool = False
    """Get and renew the serving cert through kubelet-serving CSRs (serverTLSBootstrap)."""
    plugins_registry: Path | None = None  # CSI plugin registration dir; <root>/plugins_registry
    kubelet: KubeletConfiguration = field(
        default_factory=lambda: KubeletConfiguration(eviction_hard=default_eviction_hard())
    )
    """The effective KubeletConfiguration (file + flags); /configz serves it."""


def _host_resolv() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "nameserver":
                servers += parts[1:2]
            elif parts[0] == "search":
                searches = parts[1:]
            elif parts[0] == "options":
                options += parts[1:]
    except OSError:
        pass
    return tuple(servers), tuple(searches), tuple(options)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.api: ApiClient | None = (
            ApiClient(load_kubeconfig(config.kubeconfig)) if config.kubeconfig else None
        )
        self.cri = GrpcCRI(str(config.cri_socket))
        self.events = EventRecorder(self.api, node_name=config.node_name)
        self.volumes = VolumeManager(
            config.root,
            api=self.api,
            node_name=config.node_name,
            node_allocatable_memory=memory_capacity_bytes(),
        )
        self.csi = CsiVolumes(
            config.root,
            node_name=config.node_name,
            api=self.api,
            registration_dir=config.plugins_registry,
            active_pods=lambda: set(self.workers),
        )
        self.volumes.external = self.csi
        self.backoff = Backoff()
        self.node_ctx = NodeContext(
            node_name=config.node_name,
            host_ip=config.node_ip,
            root=config.root,
            log_root=config.root / "logs" / "pods",
            cluster_dns=config.cluster_dns,
            cluster_domain=config.cluster_domain,
            host_resolv=_host_resolv(),
            sync_frequency_s=config.kubelet.sync_frequency_s,
            pod_pids_limit=config.kubelet.pod_pids_limit,
            image_pulls=asyncio.Semaphore(
                1
                if config.kubelet.serialize_image_pulls
                else (config.kubelet.max_parallel_image_pulls or 1_000_000)
            ),
        )
        self.net_paths = NodePaths.under(config.root, config.network)
        self.workers: dict[str, PodWorker] = {}
        self.finished: set[str] = set()
        self.pressure: dict[str, tuple[bool, str]] = {}
        """UIDs of pods this node ended as Failed (evicted, deadline) that the API still has."""
        self.worker_tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._runtime: Any = None
        self._server: Any = None
        self.ready = asyncio.Event()
        self.stats = SummaryProvider(
            node_name=config.node_name,
            root=config.root,
            log_root=self.node_ctx.log_root,
            runtime=self.cri,
            pods=lambda: [w.pod for w in self.workers.values()],
        )
        metrics.node_name.set(1, config.node_name)
        self.kubelet_server = KubeletServer(
            config.kubelet_server,
            KubeletHost(
                node_name=config.node_name,
                node_ip=config.node_ip,
                root=config.root,
                log_root=self.node_ctx.log_root,
                cri=self.cri,
                stats=self.stats,
                metrics=self.metrics_text,
                api=self.api,
                pods=lambda: [w.pod for w in self.workers.values()],
                waiting=lambda uid, name: (
                    self.workers[uid].waiting.get(name) if uid in self.workers else None
                ),
                ready=self.ready,
                configz=lambda: self.config.kubelet.to_v1beta1(),
            ),
        )

    # ---- pod manager ---------------------------------------------------------------

    def upsert(self, pod: Pod) -> None:
        worker = self.workers.get(pod.uid)
        if worker is not None:
            worker.update(pod)
            return
        if pod.uid in self.finished or (
            pod.phase == "Failed" and pod.status_reason in TERMINAL_REASONS
        ):
            # Ended by this node (evicted, past its deadline): it stays Failed in the API and
            # is never started again; once someone deletes it, it is removed for good.
            self.finished.add(pod.uid)
            if pod.terminating and self.api is not None and not pod.static:
                assert self._tg is not None
                self._tg.create_task(self._delete_finished(pod), name=f"delete:{pod.full_name}")
            return
        worker = PodWorker(
            pod,
            cri=self.cri,
            api=self.api,
            volumes=self.volumes,
            events=self.events,
            node=self.node_ctx,
            backoff=self.backoff,
            on_terminated=self._forget,
        )
        self.workers[pod.uid] = worker
        assert self._tg is not None
        self.worker_tasks[pod.uid] = self._tg.create_task(worker.run(), name=f"pod:{pod.full_name}")

    def remove(self, uid: str) -> None:
        self.finished.discard(uid)
        worker = self.workers.get(uid)
        if worker is not None:
            worker.remove()

    async def _delete_finished(self, pod: Pod) -> None:
        assert self.api is not None
        try:
            await self.api.delete(
                f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": pod.uid}},
            )
        except ApiError as err:
            if err.status not in (404, 409):
                log.warning("deleting finished pod %s failed: %s", pod.full_name, err)

    def _resend_status(self, uid: str) -> None:
        """A new mirror pod starts without status: make the worker send it again."""
        worker = self.workers.get(uid)
        if worker is not None:
            worker.last_status = None
            worker.wake.set()

    def _forget(self, uid: str) -> None:
        worker = self.workers.pop(uid, None)
        self.worker_tasks.pop(uid, None)
        if worker is not None and worker.terminal_reason and not worker.removed:
            self.finished.add(uid)

    def _eviction_candidates(self) -> list[Candidate]:
        return [
            Candidate(w.pod, self.volumes.size_limited_dirs(w.pod), w.evict)
            for w in self.workers.values()
            if not w.finished and not w.pod.terminating
        ]

    def report_static_error(self, path: str, message: str) -> None:
        log.error("static pod manifest %s is invalid: %s", path, message)

    # ---- runtime -------------------------------------------------------------------

    async def _start_embedded_runtime(self) -> None:
        from cri.images import ImageService, RegistryConfig, RegistryHost
        from cri.images.digest import Digest
        from cri.runtime.service import RuntimeService
        from cri.server import CRIServer

        hosts = {h: RegistryHost(plain_http=True) for h in self.config.plain_http_registries}
        certs = self.config.registry_certs_dir or self.config.root / "certs.d"
        if certs.is_dir():
            for d in sorted(certs.iterdir()):
                if (d / "ca.crt").is_file() and d.name not in hosts:
                    hosts[d.name] = RegistryHost(ca_file=d / "ca.crt")
                    log.info("registry %s: trusting the CA in %s", d.name, d / "ca.crt")
        images = ImageService(self.config.root / "images", registry=RegistryConfig(hosts=hosts))
        pod_network = None
        if self.config.network.mode == "cni":
            pod_network = CNIPodNetwork(self.net_paths, self.config.network.bin_dirs)
        runtime = RuntimeService(
            self.config.root / "runtime",
            images=images,
            cgroup_parent_name=self.config.cgroup_parent,
            oci_runtime=self.config.oci_runtime,
            monitor=self.config.monitor,
            network_ready=lambda: (True, ""),  # loopback-only pods need nothing more
            network=pod_network,
        )
        images.set_in_use(lambda: {Digest(c.image_id) for c in runtime.containers()})
        await runtime.start()
        server = CRIServer(socket_path=self.config.cri_socket, images=images, runtime=runtime)
        await server.start()
        self._runtime = (images, runtime)
        self._server = server

    async def _stop_embedded_runtime(self) -> None:
        if self._server is not None:
            await self._server.stop()
        if self._runtime is not None:
            images, runtime = self._runtime
            await runtime.close()
            await images.close()

    async def runtime_ready(self) -> tuple[bool, str]:
        try:
            status = await self.cri.status()
        except CRIError as err:
            return False, f"container runtime is down: {err}"
        for cond in status.status.conditions:
            if not cond.status:
                return (
                    False,
                    f"container runtime {cond.type} is false: {cond.reason}: {cond.message}",
                )
        return True, ""

    async def images_for_node(self) -> list[dict[str, Any]]:
        try:
            images = await self.cri.list_images()
        except CRIError:
            return []
        return [
            {"names": [*i.repo_digests, *i.repo_tags], "sizeBytes": i.size}
            for i in sorted(images, key=lambda i: -i.size)
        ]

    async def metrics_text(self) -> str:
        """/metrics: the running pod and container counts as of now, then every metric."""
        try:
            sandboxes, containers = await asyncio.gather(
                self.cri.list_pod_sandbox(), self.cri.list_containers()
            )
        except CRIError as err:
            log.debug("counting running pods for /metrics failed: %s", err)
        else:
            metrics.set_running_counts(sandboxes, containers)
        return metrics.REGISTRY.text()

    async def _service_env(self) -> dict[str, str]:
        """KUBERNETES_SERVICE_* for pods, from the `kubernetes` service (as the kubelet adds)."""
        if self.api is None:
            return {}
        try:
            svc = await self.api.get("/api/v1/namespaces/default/services/kubernetes")
        except ApiError:
            return {}
        ip = svc["spec"].get("clusterIP", "")
        port = str(svc["spec"]["ports"][0]["port"])
        return {
            "KUBERNETES_SERVICE_HOST": ip,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{ip}:{port}",
            f"KUBERNETES_PORT_{port}_TCP": f"tcp://{ip}:{port}",
            f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
            f"KUBERNETES_PORT_{port}_TCP_PORT": port,
            f"KUBERNETES_PORT_{port}_TCP_ADDR": ip,
        }

    # ---- PLEG -------------------------------------------------------------------------

    async def _pleg(self) -> None:
        """Relist containers; tell the workers of pods whose containers changed state,
        appeared or went away (their next sync asks the runtime; others reuse their view)."""
        last: dict[str, tuple[int, str]] = {}
        while True:
            await asyncio.sleep(self.config.pleg_period_s)
            started = time.monotonic()
            try:
                containers = await self.cri.list_containers()
                metrics.pleg_relist_duration.observe(time.monotonic() - started)
            except CRIError as err:
                log.warning("PLEG relist failed: %s", err)
                continue
            now = {c.id: (int(c.state), c.labels.get(POD_UID, "")) for c in containers}
            if now == last:
                continue
            uids = {v[1] for cid, v in now.items() if last.get(cid) != v}
            uids |= {v[1] for cid, v in last.items() if cid not in now}
            for uid in uids:
                worker = self.workers.get(uid)
                if worker is not None:
                    worker.runtime_event()
            last = now

    async def _adopt_orphans(self) -> None:
        """Pods the runtime has but no source knows (removed while we were down) are ended."""
        try:
            sandboxes = await self.cri.list_pod_sandbox()
        except CRIError:
            return
        for sb in sandboxes:
            uid = sb.metadata.uid
            if uid in self.workers:
                continue
            from kubelet_py.agent.model import Container

            orphan = Pod(
                uid=uid,
                name=sb.metadata.name,
                namespace=sb.metadata.namespace,
                node_name=self.config.node_name,
                containers=(Container(name="orphan", image=""),),
                deletion_timestamp="orphaned",
                termination_grace_s=2,
            )
            log.info("ending pod %s/%s: no source has it any more", orphan.namespace, orphan.name)
            self.upsert(orphan)

    # ---- certificates -------------------------------------------------------------------

    def _rotators(self) -> list[tuple[str, CertificateRotator]]:
        """Renewal loops for the client and serving certificates, as configured."""
        api, out = self.api, []
        if api is None:
            return []
        cert_file = api.cfg.cert_file
        if self.config.rotate_client_certificates:
            if cert_file is None or not cert_file.name.endswith("-current.pem"):
                log.warning(
                    "not rotating the client certificate: the kubeconfig does not name a "
                    "<prefix>-current.pem file (as `kubelet-py join` writes it)"
                )
            else:
                store = CertStore(cert_file.parent, cert_file.name.removesuffix("-current.pem"))
                current = store.current()
                if current is not None and current[0].not_valid_after_utc <= datetime.now(UTC):
                    log.error(
                        "the client certificate %s expired at %s: the API server will refuse "
                        "it and it cannot renew itself; join again with a new bootstrap token",
                        cert_file,
                        current[0].not_valid_after_utc.isoformat(),
                    )
                rotator = CertificateRotator(
                    api=api,
                    store=store,
                    request=CertRequest(CertKind.CLIENT, self.config.node_name),
                    on_rotated=lambda path: api.reload_client_certificate(Path(path)),
                )
                out.append(("rotate-client-cert", rotator))
        if self.config.rotate_server_certificates and self.config.kubelet_server.port:
            cert_dir = self.config.kubelet_server.cert_dir or self.config.root / "pki"
            rotator = CertificateRotator(
                api=api,
                store=CertStore(cert_dir, SERVER_PREFIX),
                request=serving_request(self.config.node_name, [self.config.node_ip]),
                on_rotated=self.kubelet_server.use_serving_cert,
            )
            out.append(("rotate-serving-cert", rotator))
        return out

    # ---- run ---------------------------------------------------------------------------

    async def _watch_pressure(self) -> None:
        """Measure the eviction signals every 10 s (upstream's monitoring interval)."""
        kc = self.config.kubelet
        tracker = PressureTracker(
            kc.eviction_hard, transition_s=kc.eviction_pressure_transition_period_s
        )
        images = self.config.root / "images"
        while True:
            try:
                signals = await asyncio.to_thread(
                    measure,
                    nodefs=self.config.root,
                    imagefs=images if images.exists() else self.config.root,
                    memory_capacity=memory_capacity_bytes(),
                )
            except (OSError, ValueError, KeyError) as err:
                log.warning("measuring node pressure failed: %s", err)
            else:
                now = tracker.update(signals)
                for cond, (under, why) in now.items():
                    if under != self.pressure.get(cond, (False, ""))[0]:
                        log.warning("node condition %s is now %s (%s)", cond, under, why or "ok")
                self.pressure = now
            await asyncio.sleep(10.0)

    async def run(self) -> None:
        started = time.monotonic()
        kc = self.config.kubelet
        if self.config.embedded_runtime:
            await self._start_embedded_runtime()
        try:
            version = await self.cri.version()
            log.info(
                "runtime %s %s on %s",
                version.runtime_name,
                version.runtime_version,
                self.config.cri_socket,
            )
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self.kubelet_server.run(), name="kubelet-server")
                for name, rotator in self._rotators():
                    tg.create_task(rotator.run(), name=name)
                tg.create_task(self._watch_pressure(), name="node-pressure")
                api_source = None
                if self.api is not None:
                    node = NodeManager(
                        self.api,
                        NodeSettings(
                            name=self.config.node_name,
                            host_ip=self.config.node_ip,
                            labels=self.config.node_labels,
                            taints=self.config.register_with_taints,
                            max_pods=self.config.max_pods,
                            kubelet_port=self.config.kubelet_server.port or 10250,
                            root=self.config.root,
                            reserved_cpu_milli=int(kc.reserved("cpu") * 1000),
                            reserved_memory_bytes=int(kc.reserved("memory")),
                            reserved_ephemeral_bytes=int(kc.reserved("ephemeral-storage")),
                            hard_eviction=kc.eviction_hard,
                            lease_renew_s=kc.lease_renew_s,
                            lease_duration_s=kc.node_lease_duration_s,
                            status_update_s=kc.node_status_update_frequency_s,
                            status_report_s=kc.node_status_report_frequency_s,
                            register_node=kc.register_node,
                            max_images=kc.node_status_max_images,
                        ),
                        runtime_ready=self.runtime_ready,
                        images=self.images_for_node,
                        pressure=lambda: self.pressure,
                    )
                    await node.register()
                if self.config.network.mode == "cni":
                    network = NodeNetwork(
                        api=self.api,
                        node_name=self.config.node_name,
                        node_ip=self.config.node_ip,
                        settings=self.config.network,
                        paths=self.net_paths,
                    )
                    tg.create_task(network.run(), name="node-network")
                if self.api is not None:
                    self.node_ctx.service_env = await self._service_env()
                    tg.create_task(node.run_lease_loop(), name="node-lease")
                    tg.create_task(node.run_status_loop(), name="node-status")
                    api_source = ApiPodSource(
                        self.api,
                        node_name=self.config.node_name,
                        upsert=self.upsert,
                        remove=self.remove,
                    )
                    tg.create_task(api_source.run(), name="source-api")
                tg.create_task(self.csi.run(), name="csi-plugins")
                if self.config.static_pod_path is not None:
                    static = StaticPodSource(
                        self.config.static_pod_path,
                        node_name=self.config.node_name,
                        upsert=self.upsert,
                        remove=self.remove,
                        api=self.api,
                        report_error=self.report_static_error,
                        mirrors=api_source.mirrors if api_source is not None else None,
                        mirror_created=self._resend_status,
                        interval_s=kc.file_check_frequency_s,
                    )
                    if api_source is not None:
                        api_source.mirrors_changed = static.nudge
                    static_pods = await asyncio.to_thread(static.scan)
                    for pod in static_pods.values():
                        self.upsert(pod)
                    static.pods = static_pods
                    tg.create_task(static.run(), name="source-static")
                if api_source is not None:
                    await asyncio.wait_for(api_source.synced.wait(), timeout=60)
                await self._adopt_orphans()
                tg.create_task(Sampler(self.stats).run(), name="stats-sampler")
                self.csi.sweeping = True  # every running pod has its worker now
                tg.create_task(self._pleg(), name="pleg")
                tg.create_task(
                    EvictionManager(self._eviction_candidates).run(), name="eviction-manager"
                )
                housekeeper = Housekeeper(
                    cri=self.cri,
                    config=kc,
                    running_logs=lambda: [
                        entry for w in list(self.workers.values()) for entry in w.running_logs()
                    ],
                    imagefs=self.config.root,
                )
                tg.create_task(housekeeper.run(), name="housekeeping")
                self.ready.set()
                log.info(
                    "node agent %s ready in %.2f s",
                    self.config.node_name,
                    time.monotonic() - started,
                )
        finally:
            self._tg = None
            await self.events.drain()
            await self.csi.close()
            if self.api is not None:
                await self.api.close()
            await self.cri.close()
            with contextlib.suppress(Exception):
                await self._stop_embedded_runtime()
