"""The Node object: registration, status (capacity, conditions, nodeInfo), and the Lease.

Registration creates the Node if it does not exist (a node identity may create
only itself: NodeRestriction), then status is patched when it changes and at
least every `status_report_s`; the Lease in kube-node-lease is renewed every
`lease_renew_s` with a `lease_duration_s` — the heartbeat the node lifecycle
controller watches.
"""

import asyncio
import datetime
import logging
import os
import platform
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubelet_py import __version__
from kubelet_py.agent.apiclient import ApiClient, ApiError
from kubelet_py.agent.kubeletconfig import Threshold

log = logging.getLogger("kubelet_py.node")

KUBELET_VERSION = "v1.37.2"


@dataclass(frozen=True)
class NodeSettings:
    name: str
    host_ip: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, str], ...] = ()
    max_pods: int = 110
    kubelet_port: int = 10250
    reserved_cpu_milli: int = 0
    reserved_memory_bytes: int = 0
    root: Path = Path("/var/lib/kubelet-py")
    lease_renew_s: float = 10.0
    lease_duration_s: int = 40
    status_update_s: float = 10.0
    """nodeStatusUpdateFrequency: how often status is computed (and patched if changed)."""
    status_report_s: float = 300.0
    """nodeStatusReportFrequency: status is patched at least this often even if unchanged."""
    register_node: bool = True
    reserved_ephemeral_bytes: int = 0
    hard_eviction: tuple[Threshold, ...] = ()
    """evictionHard: memory.available and nodefs.available are held back from allocatable."""
    max_images: int = 50
    runtime_version: str = f"kubelet-py://{__version__}"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def memory_capacity_bytes() -> int:
    """MemTotal, or this process's cgroup memory limit if that is lower."""
    total = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and (parts[1] == "memory" or parts[1] == ""):
            for f in (
                Path("/sys/fs/cgroup/memory") / parts[2].lstrip("/") / "memory.limit_in_bytes",
                Path("/sys/fs/cgroup") / parts[2].lstrip("/") / "memory.max",
            ):
                try:
                    text = f.read_text().strip()
                except OSError:
                    continue
                if text.isdigit() and 0 < int(text) < total:
                    total = int(text)
    return total


def node_object(settings: NodeSettings) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": settings.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(
            platform.machine(), platform.machine()
        ),
        "beta.kubernetes.io/os": "linux",
        **settings.labels,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": settings.name, "labels": labels},
        "spec": {"taints": [dict(t) for t in settings.taints]} if settings.taints else {},
    }


def _held_back(settings: NodeSettings, signal: str, capacity: int) -> int:
    for t in settings.hard_eviction:
        if t.signal == signal:
            return int(t.limit(capacity))
    return 0


PRESSURE_TEXT = {
    # condition: (reason when True, message when True, reason when False, message when False)
    "MemoryPressure": (
        "KubeletHasInsufficientMemory",
        "kubelet has insufficient memory available",
        "KubeletHasSufficientMemory",
        "kubelet has sufficient memory available",
    ),
    "DiskPressure": (
        "KubeletHasDiskPressure",
        "kubelet has disk pressure",
        "KubeletHasNoDiskPressure",
        "kubelet has no disk pressure",
    ),
    "PIDPressure": (
        "KubeletHasInsufficientPID",
        "kubelet has insufficient PID available",
        "KubeletHasSufficientPID",
        "kubelet has sufficient PID available",
    ),
}


def node_status(
    settings: NodeSettings,
    *,
    runtime_ready: tuple[bool, str],
    images: list[dict[str, Any]],
    previous: Mapping[str, Mapping[str, Any]] | None = None,
    pressure: Mapping[str, tuple[bool, str]] | None = None,
) -> dict[str, Any]:
    """The Node's status. `pressure[condition]` = (under pressure, which thresholds)."""
    cpus = os.cpu_count() or 1
    mem = memory_capacity_bytes()
    disk = shutil.disk_usage(settings.root if settings.root.exists() else Path("/"))
    capacity = {
        "cpu": str(cpus),
        "memory": f"{mem // 1024}Ki",
        "pods": str(settings.max_pods),
        "ephemeral-storage": f"{disk.total // 1024}Ki",
    }
    mem_allocatable = mem - settings.reserved_memory_bytes
    mem_allocatable -= _held_back(settings, "memory.available", mem)
    disk_allocatable = disk.total - settings.reserved_ephemeral_bytes
    disk_allocatable -= _held_back(settings, "nodefs.available", disk.total)
    allocatable = {
        "cpu": f"{max(0, cpus * 1000 - settings.reserved_cpu_milli)}m",
        "memory": f"{max(0, mem_allocatable) // 1024}Ki",
        "pods": str(settings.max_pods),
        "ephemeral-storage": f"{max(0, disk_allocatable) // 1024}Ki",
    }
    now = _now()
    ok, why = runtime_ready

    def cond(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
        prev = (previous or {}).get(kind)
        changed = prev.get("lastTransitionTime") if prev and prev.get("status") == status else now
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": changed,
        }

    conditions = []
    for kind, (yes_reason, yes_msg, no_reason, no_msg) in PRESSURE_TEXT.items():
        under, why = (pressure or {}).get(kind, (False, ""))
        conditions.append(
            cond(kind, "True", yes_reason, f"{yes_msg}: {why}" if why else yes_msg)
            if under
            else cond(kind, "False", no_reason, no_msg)
        )
    conditions += [
        cond(
            "Ready",
            "True" if ok else "False",
            "KubeletReady" if ok else "KubeletNotReady",
            "kubelet is posting ready status" if ok else why,
        ),
    ]
    uname = os.uname()
    os_image = "Linux"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_image = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    machine_id = ""
    for f in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            machine_id = Path(f).read_text().strip()
            break
        except OSError:
            continue
    return {
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": conditions,
        "addresses": [
            {"type": "InternalIP", "address": settings.host_ip},
            {"type": "Hostname", "address": settings.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": settings.kubelet_port}},
        "nodeInfo": {
            "machineID": machine_id,
            "systemUUID": machine_id,
            "bootID": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "kernelVersion": uname.release,
            "osImage": os_image,
            "containerRuntimeVersion": settings.runtime_version,
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": node_object(settings)["metadata"]["labels"]["kubernetes.io/arch"],
        },
        "images": images if settings.max_images < 0 else images[: settings.max_images],
    }


class NodeManager:
    def __init__(
        self,
        api: ApiClient,
        settings: NodeSettings,
        *,
        runtime_ready: Callable[[], "asyncio.Future[tuple[bool, str]] | Any"],
        images: Callable[[], Any],
        pressure: Callable[[], Mapping[str, tuple[bool, str]]] = dict,
    ) -> None:
        self.api = api
        self.settings = settings
        self._runtime_ready = runtime_ready
        self._images = images
        self._pressure = pressure
        self._last: dict[str, Any] | None = None
        self.registered = asyncio.Event()
        self.node_uid = ""

    async def register(self) -> None:
        path = f"/api/v1/nodes/{self.settings.name}"
        try:
            found = await self.api.get(path)
        except ApiError as err:
            if err.status != 404:
                raise
            if not self.settings.register_node:
                raise ApiError(
                    404,
                    "NotFound",
                    f"node {self.settings.name} does not exist and registerNode is false",
                ) from err
            found = await self.api.create("/api/v1/nodes", node_object(self.settings))
            log.info("registered node %s", self.settings.name)
        else:
            labels = node_object(self.settings)["metadata"]["labels"]
            await self.api.patch(path, {"metadata": {"labels": labels}})
        self.node_uid = str(found["metadata"]["uid"])
        await self.update_status(force=True)
        self.registered.set()

    async def update_status(self, *, force: bool = False) -> None:
        ready = await self._runtime_ready()
        images = await self._images()
        prev = {c["type"]: c for c in (self._last or {}).get("conditions", [])}
        status = node_status(
            self.settings,
            runtime_ready=ready,
            images=images,
            previous=prev,
            pressure=self._pressure(),
        )
        comparable = {k: v for k, v in status.items() if k != "conditions"}
        conds = [
            {k: v for k, v in c.items() if k != "lastHeartbeatTime"} for c in status["conditions"]
        ]
        last = self._last or {}
        last_cmp = {k: v for k, v in last.items() if k != "conditions"}
        last_conds = [
            {k: v for k, v in c.items() if k != "lastHeartbeatTime"}
            for c in last.get("conditions", [])
        ]
        if not force and comparable == last_cmp and conds == last_conds:
            return
        await self.api.patch(f"/api/v1/nodes/{self.settings.name}/status", {"status": status})
        self._last = status

    async def run_status_loop(self) -> None:
        last_full = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.status_update_s)
            force = loop.time() - last_full > self.settings.status_report_s
            try:
                await self.update_status(force=force)
                if force:
                    last_full = loop.time()
            except (ApiError, OSError) as err:
                log.warning("node status update failed: %s", err)

    async def run_lease_loop(self) -> None:
        path = (
            f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.settings.name}"
        )
        while True:
            try:
                await self._renew(path)
            except (ApiError, OSError) as err:
                log.warning("lease renewal failed: %s", err)
            await asyncio.sleep(self.settings.lease_renew_s)

    async def _renew(self, path: str) -> None:
        spec = {
            "holderIdentity": self.settings.name,
            "leaseDurationSeconds": self.settings.lease_duration_s,
            "renewTime": _micro_now(),
        }
        owner = {"apiVersion": "v1", "kind": "Node", "name": self.settings.name}
        try:
            # The owner reference goes along with every renewal: a Lease left by an earlier
            # Node object of the same name would otherwise be garbage-collected under us.
            meta = {"ownerReferences": [{**owner, "uid": self.node_uid}]} if self.node_uid else {}
            await self.api.patch(path, {"metadata": meta, "spec": spec}, kind="merge")
        except ApiError as err:
            if err.status != 404:
                raise
            node = await self.api.get(f"/api/v1/nodes/{self.settings.name}")
            self.node_uid = str(node["metadata"]["uid"])
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.settings.name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [{**owner, "uid": self.node_uid}],
                },
                "spec": spec,
            }
            await self.api.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body
            )
