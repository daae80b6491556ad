"""/stats/summary: the node, its pods and their containers, in stats/v1alpha1's JSON shape.

    CRI  ListPodSandbox + ListContainers   who runs, since when (startTime = created_at)
         ListPodSandboxStats               cgroup cpu/memory per pod and container, writable
                                           layers, pod network (read in the pod's netns)
         ImageFsInfo                       runtime.imageFs usage
    kernel (node.py)                       node cpu/memory/fs/rlimit/network
    the agent's own dirs                   container logs, pod volumes (walked)

As upstream's CRI stats provider: one sandbox per pod (the ready one, else the newest),
per container name the running attempts or else the latest one, usageNanoCores from the
previous sample of the same counter (rates.py; `Sampler` keeps samples coming), and
ephemeral-storage = writable layers + logs + local ephemeral volumes. Field names, units
and omissions follow staging/src/k8s.io/kubelet/pkg/apis/stats/v1alpha1/types.go.
"""

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from cri_api.v1 import api_pb2

from cri.runtime.usage import DirUsage, InterfaceUsage, dir_usage, netns_interfaces
from kubelet_py.agent.cri_client import CRIError
from kubelet_py.agent.model import Pod
from kubelet_py.stats.node import FsReading, NodeReader, fs_reading
from kubelet_py.stats.rates import CpuRates

log = logging.getLogger("kubelet_py.stats")

# Volumes whose contents count toward ephemeral storage (volumeutil.IsLocalEphemeralVolume).
_EPHEMERAL_KINDS = ("emptyDir", "configMap", "downwardAPI")
_RUNNING = api_pb2.ContainerState.CONTAINER_RUNNING
_READY = api_pb2.PodSandboxState.SANDBOX_READY

Json = dict[str, Any]


class StatsRuntime(Protocol):
    """The CRI calls the summary needs."""

    async def list_pod_sandbox(self, labels: dict[str, str] | None = None) -> list[Any]: ...
    async def list_containers(self, labels: dict[str, str] | None = None) -> list[Any]: ...
    async def list_pod_sandbox_stats(self, labels: dict[str, str] | None = None) -> list[Any]: ...
    async def list_container_stats(self, labels: dict[str, str] | None = None) -> list[Any]: ...
    async def image_fs_info(self) -> Any: ...


class StatsError(Exception):
    """The summary could not be made (the runtime did not answer)."""


def rfc3339(ns: int) -> str:
    """metav1.Time's JSON form: RFC 3339 in UTC, whole seconds."""
    dt = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _u(msg: Any, name: str) -> int | None:
    """A UInt64Value field of a CRI message, None when unset."""
    return int(getattr(msg, name).value) if msg.HasField(name) else None


def _put(out: Json, **values: Any) -> Json:
    """Set the values that are not None (the schema's `omitempty` pointers)."""
    out.update({k: v for k, v in values.items() if v is not None})
    return out


def fs_json(at_ns: int, fs: FsReading | None, used: DirUsage | None) -> Json:
    """FsStats: capacity of the filesystem holding something, and what that something uses."""
    out: Json = {"time": rfc3339(at_ns)}
    if fs is not None:
        _put(
            out,
            availableBytes=fs.available_bytes,
            capacityBytes=fs.capacity_bytes,
            inodesFree=fs.inodes_free,
            inodes=fs.inodes,
        )
    if used is not None:
        _put(out, usedBytes=used.used_bytes, inodesUsed=used.inodes_used)
    return out


def cpu_json(cpu: Any, key: str, rates: CpuRates) -> Json | None:
    if cpu is None or not cpu.timestamp:
        return None
    total = _u(cpu, "usage_core_nano_seconds")
    rate = _u(cpu, "usage_nano_cores")
    if rate is None and total is not None:
        rate = rates.observe(key, at_ns=cpu.timestamp, usage_ns=total)
    return _put({"time": rfc3339(cpu.timestamp)}, usageNanoCores=rate, usageCoreNanoSeconds=total)


def memory_json(mem: Any) -> Json | None:
    if mem is None or not mem.timestamp:
        return None
    return _put(
        {"time": rfc3339(mem.timestamp)},
        availableBytes=_u(mem, "available_bytes"),
        usageBytes=_u(mem, "usage_bytes"),
        workingSetBytes=_u(mem, "working_set_bytes"),
        rssBytes=_u(mem, "rss_bytes"),
        pageFaults=_u(mem, "page_faults"),
        majorPageFaults=_u(mem, "major_page_faults"),
    )


def _iface_json(
    name: str, rx: int | None, rxe: int | None, tx: int | None, txe: int | None
) -> Json:
    return _put({"name": name}, rxBytes=rx, rxErrors=rxe, txBytes=tx, txErrors=txe)


def network_json(at_ns: int, interfaces: Iterable[InterfaceUsage]) -> Json:
    """NetworkStats: every interface but lo; eth0 (else the first) also inline."""
    items = [
        _iface_json(i.name, i.rx_bytes, i.rx_errors, i.tx_bytes, i.tx_errors)
        for i in interfaces
        if i.name != "lo"
    ]
    default = next((i for i in items if i["name"] == "eth0"), items[0] if items else {"name": ""})
    out: Json = {"time": rfc3339(at_ns), **default}
    if items:
        out["interfaces"] = items
    return out


def _cri_iface_json(i: Any) -> Json:
    return _iface_json(
        i.name, _u(i, "rx_bytes"), _u(i, "rx_errors"), _u(i, "tx_bytes"), _u(i, "tx_errors")
    )


def cri_network_json(net: Any) -> Json | None:
    if net is None or not net.timestamp:
        return None
    items = [_cri_iface_json(i) for i in net.interfaces]
    default = (
        _cri_iface_json(net.default_interface)
        if net.HasField("default_interface")
        else {"name": ""}
    )
    out: Json = {"time": rfc3339(net.timestamp), **default}
    if items:
        out["interfaces"] = items
    return out


def pod_stats_from_containers(cstats: Iterable[Any], containers: Iterable[Any]) -> list[Any]:
    """PodSandboxStats per sandbox from its containers' ContainerStats: cpu and memory summed
    (the counters of a pod cgroup are its children's, plus what sits in the pod level itself,
    which for CRI runtimes is nothing), taken at the latest of their timestamps."""
    sandbox_of = {c.id: c.pod_sandbox_id for c in containers}
    out: dict[str, Any] = {}
    for cs in cstats:
        sid = sandbox_of.get(cs.attributes.id)
        if sid is None:
            continue
        pod = out.setdefault(
            sid, api_pb2.PodSandboxStats(attributes=api_pb2.PodSandboxAttributes(id=sid))
        )
        pod.linux.containers.append(cs)
        cpu, mem = pod.linux.cpu, pod.linux.memory
        if cs.HasField("cpu") and cs.cpu.HasField("usage_core_nano_seconds"):
            cpu.timestamp = max(cpu.timestamp, cs.cpu.timestamp)
            cpu.usage_core_nano_seconds.value += cs.cpu.usage_core_nano_seconds.value
        if cs.HasField("memory"):
            mem.timestamp = max(mem.timestamp, cs.memory.timestamp)
            for name in ("working_set_bytes", "usage_bytes", "rss_bytes", "page_faults",
                         "major_page_faults"):  # fmt: skip
                if cs.memory.HasField(name):
                    getattr(mem, name).value += getattr(cs.memory, name).value
    return list(out.values())


def pick_containers(containers: Iterable[Any]) -> list[Any]:
    """Per (pod, name): the running attempts, else the latest one (removeTerminatedContainers)."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for c in sorted(containers, key=lambda c: c.created_at):
        groups.setdefault((c.pod_sandbox_id, c.metadata.name), []).append(c)
    out = []
    for group in groups.values():
        running = [c for c in group if c.state == _RUNNING]
        out.extend(running or group[-1:])
    return out


def pick_sandboxes(sandboxes: Iterable[Any]) -> dict[str, Any]:
    """Pod UID -> its sandbox: the newest ready one, else the newest."""
    out: dict[str, Any] = {}
    for sb in sorted(sandboxes, key=lambda s: (s.state == _READY, s.created_at)):
        out[sb.metadata.uid] = sb
    return out


@dataclass(frozen=True)
class _Disk:
    """Blocking readings made in one thread: filesystems, logs and volumes."""

    node_fs: FsReading | None
    log_fs: FsReading | None
    fs_by_path: dict[str, FsReading | None]
    logs: dict[tuple[str, str], DirUsage]  # (pod uid, container) -> usage
    volumes: dict[str, list[tuple[str, str, FsReading | None, DirUsage]]] = field(
        default_factory=dict
    )  # uid -> [(name, kind, fs, usage)]


class SummaryProvider:
    def __init__(
        self,
        *,
        node_name: str,
        root: Path,
        log_root: Path,
        runtime: StatsRuntime,
        pods: Callable[[], Iterable[Pod]],
        reader: NodeReader | None = None,
        clock_ns: Callable[[], int] | None = None,
    ) -> None:
        self.node_name = node_name
        self.root = root
        self.log_root = log_root
        self.runtime = runtime
        self.pods = pods
        self.reader = reader or NodeReader()
        self.rates = CpuRates()
        self.clock_ns = clock_ns or time.time_ns
        self._boot_ns: int | None = None
        self.last_asked_ns = 0
        self._no_pod_stats = False
        """When someone other than the sampler last asked (the sampler idles otherwise)."""

    async def _pod_stats(self, containers: list[Any]) -> list[Any]:
        """ListPodSandboxStats, or for runtimes without it (containerd 1.6) pod stats made
        from ListContainerStats: what the pod's containers use, summed."""
        if not self._no_pod_stats:
            try:
                return await self.runtime.list_pod_sandbox_stats()
            except CRIError as err:
                if err.code != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self._no_pod_stats = True
                log.info(
                    "the runtime has no ListPodSandboxStats: pod cpu and memory are the sum of "
                    "its containers' (ListContainerStats), pod network is not reported"
                )
        return pod_stats_from_containers(await self.runtime.list_container_stats(), containers)

    # ---- the node -------------------------------------------------------------------------

    def _node_blocking(self, cpu_and_memory_only: bool, times: dict[str, int]) -> Json:
        now = self.clock_ns()
        times["node"] = now
        if self._boot_ns is None:
            self._boot_ns = self.reader.boot_time_s() * 1_000_000_000
        cpu_total = self.reader.cpu_usage_ns()
        mem = self.reader.memory()
        node: Json = {
            "nodeName": self.node_name,
            "startTime": rfc3339(self._boot_ns),
            "cpu": _put(
                {"time": rfc3339(now)},
                usageNanoCores=self.rates.observe("node", at_ns=now, usage_ns=cpu_total),
                usageCoreNanoSeconds=cpu_total,
            ),
            "memory": {
                "time": rfc3339(now),
                "availableBytes": mem.available_bytes,
                "usageBytes": mem.usage_bytes,
                "workingSetBytes": mem.working_set_bytes,
                "rssBytes": mem.rss_bytes,
                "pageFaults": mem.page_faults,
                "majorPageFaults": mem.major_page_faults,
            },
        }
        if cpu_and_memory_only:
            return node
        try:
            node["network"] = network_json(now, netns_interfaces(None))
        except OSError as err:
            log.debug("reading the node's interfaces failed: %s", err)
        lim = self.reader.rlimit()
        node["rlimit"] = _put({"time": rfc3339(now)}, maxpid=lim.max_pid, curproc=lim.running_tasks)
        return node

    # ---- disks (blocking) -------------------------------------------------------------------

    def _disk_blocking(
        self, pods: list[Pod], containers: list[tuple[Any, str]], mounts: list[str]
    ) -> _Disk:
        def fs(path: Path) -> FsReading | None:
            try:
                return fs_reading(path)
            except OSError:
                return None

        logs = {
            (meta.uid, name): dir_usage(
                self.log_root / f"{meta.namespace}_{meta.name}_{meta.uid}" / name
            )
            for meta, name in containers
        }
        volumes: dict[str, list[tuple[str, str, FsReading | None, DirUsage]]] = {}
        for pod in pods:
            for vol in pod.volumes:
                if vol.kind in ("hostPath", "unsupported"):
                    continue  # upstream reports no metrics for hostPath
                path = self.root / "pods" / pod.uid / "volumes" / vol.kind / vol.name
                if path.is_dir():
                    volumes.setdefault(pod.uid, []).append(
                        (vol.name, vol.kind, fs(path), dir_usage(path))
                    )
        return _Disk(
            node_fs=fs(self.root),
            log_fs=fs(self.log_root if self.log_root.exists() else self.root),
            fs_by_path={m: fs(Path(m)) for m in mounts},
            logs=logs,
            volumes=volumes,
        )

    # ---- the whole summary --------------------------------------------------------------------

    async def summary(
        self, *, cpu_and_memory_only: bool = False, times: dict[str, int] | None = None
    ) -> Json:
        """The Summary object. Raises StatsError when the runtime cannot be asked.

        `times`, if given, receives the read time (ns) of each figure, finer than the JSON's
        whole seconds: "node", "pod/<uid>", "container/<uid>/<name>".
        """
        times = times if times is not None else {}
        return await self._summary(cpu_and_memory_only=cpu_and_memory_only, times=times)

    async def sample(self) -> None:
        """A CPU-and-memory reading for the rates only (does not count as being asked)."""
        await self._summary(cpu_and_memory_only=True, times={}, asked=False)

    async def _summary(
        self, *, cpu_and_memory_only: bool, times: dict[str, int], asked: bool = True
    ) -> Json:
        if asked:
            self.last_asked_ns = self.clock_ns()
        try:
            sandboxes, containers = await asyncio.gather(
                self.runtime.list_pod_sandbox(), self.runtime.list_containers()
            )
            stats = await self._pod_stats(containers)
            image_fs = None if cpu_and_memory_only else await self.runtime.image_fs_info()
        except CRIError as err:
            raise StatsError(f"asking the runtime for stats failed: {err}") from err
        node = await asyncio.to_thread(self._node_blocking, cpu_and_memory_only, times)

        chosen = pick_sandboxes(sandboxes)
        known = {p.uid: p for p in self.pods()}
        picked = pick_containers(containers)
        by_sandbox: dict[str, list[Any]] = {}
        for c in picked:
            by_sandbox.setdefault(c.pod_sandbox_id, []).append(c)
        stats_by_id = {s.attributes.id: s for s in stats}

        disk: _Disk | None = None
        if image_fs is not None:
            mounts = {
                cs.writable_layer.fs_id.mountpoint
                for s in stats
                for cs in s.linux.containers
                if cs.HasField("writable_layer")
            }
            mounts |= {f.fs_id.mountpoint for f in image_fs.image_filesystems}
            pods_here = [known[uid] for uid in chosen if uid in known]
            log_targets = [
                (sb.metadata, c.metadata.name)
                for sb in chosen.values()
                for c in by_sandbox.get(sb.id, [])
            ]
            disk = await asyncio.to_thread(
                self._disk_blocking, pods_here, log_targets, sorted(m for m in mounts if m)
            )
            nfs = disk.node_fs
            node["fs"] = fs_json(
                self.clock_ns(), nfs, DirUsage(nfs.used_bytes, nfs.inodes_used) if nfs else None
            )
            node["runtime"] = _runtime_json(image_fs, disk)

        pods_json = []
        for uid, sb in chosen.items():
            pod_stats = stats_by_id.get(sb.id)
            pods_json.append(
                self._pod_json(
                    sb, pod_stats, by_sandbox.get(sb.id, []), known.get(uid), disk, times
                )
            )
        self.rates.forget_stale(self.clock_ns())
        return {"node": node, "pods": pods_json}

    def _pod_json(
        self,
        sb: Any,
        pod_stats: Any,
        containers: list[Any],
        pod: Pod | None,
        disk: _Disk | None,
        times: dict[str, int],
    ) -> Json:
        meta = sb.metadata
        out: Json = {
            "podRef": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
            "startTime": rfc3339(sb.created_at),
        }
        cstats = {s.attributes.id: s for s in (pod_stats.linux.containers if pod_stats else ())}
        items = []
        for c in containers:
            cs = cstats.get(c.id)
            item: Json = {"name": c.metadata.name, "startTime": rfc3339(c.created_at)}
            if cs is not None:
                if read_at := cs.cpu.timestamp or cs.memory.timestamp:
                    times[f"container/{meta.uid}/{c.metadata.name}"] = read_at
                _put(
                    item,
                    cpu=cpu_json(cs.cpu if cs.HasField("cpu") else None, c.id, self.rates),
                    memory=memory_json(cs.memory if cs.HasField("memory") else None),
                )
            if disk is not None:
                now = self.clock_ns()
                if cs is not None and cs.HasField("writable_layer"):
                    wl = cs.writable_layer
                    used = DirUsage(
                        used_bytes=_u(wl, "used_bytes") or 0, inodes_used=_u(wl, "inodes_used") or 0
                    )
                    item["rootfs"] = fs_json(
                        wl.timestamp or now, disk.fs_by_path.get(wl.fs_id.mountpoint), used
                    )
                logs = disk.logs.get((meta.uid, c.metadata.name))
                if logs is not None:
                    item["logs"] = fs_json(now, disk.log_fs, logs)
            items.append(item)
        out["containers"] = items
        if pod_stats is not None:
            linux = pod_stats.linux
            if read_at := linux.cpu.timestamp or linux.memory.timestamp:
                times[f"pod/{meta.uid}"] = read_at
            pod_cpu = linux.cpu if linux.HasField("cpu") else None
            _put(
                out,
                cpu=cpu_json(pod_cpu, f"pod/{meta.uid}", self.rates),
                memory=memory_json(linux.memory if linux.HasField("memory") else None),
            )
            if disk is not None:
                _put(
                    out,
                    network=cri_network_json(linux.network if linux.HasField("network") else None),
                )
                if linux.HasField("process") and linux.process.HasField("process_count"):
                    out["process_stats"] = {"process_count": linux.process.process_count.value}
        if disk is not None:
            now = self.clock_ns()
            vols = []
            ephemeral_used = ephemeral_inodes = 0
            for name, kind, fs, used in disk.volumes.get(meta.uid, []):
                vols.append({**fs_json(now, fs, used), "name": name})
                if kind in _EPHEMERAL_KINDS:
                    ephemeral_used += used.used_bytes
                    ephemeral_inodes += used.inodes_used
            if vols:
                out["volume"] = vols
            for item in items:
                for part in ("rootfs", "logs"):
                    if part in item:
                        ephemeral_used += item[part].get("usedBytes", 0)
                        ephemeral_inodes += item[part].get("inodesUsed", 0)
            root_fs = next(iter(disk.fs_by_path.values()), None) or disk.node_fs
            out["ephemeral-storage"] = fs_json(
                now, root_fs, DirUsage(used_bytes=ephemeral_used, inodes_used=ephemeral_inodes)
            )
        return out


def _runtime_json(image_fs: Any, disk: _Disk) -> Json:
    """RuntimeStats: imageFs is the runtime's own figure on its filesystem; containerFs the same."""
    out: Json = {}
    for f in image_fs.image_filesystems[:1]:
        used = DirUsage(used_bytes=_u(f, "used_bytes") or 0, inodes_used=_u(f, "inodes_used") or 0)
        out["imageFs"] = fs_json(f.timestamp, disk.fs_by_path.get(f.fs_id.mountpoint), used)
    for f in image_fs.container_filesystems[:1]:
        used = DirUsage(used_bytes=_u(f, "used_bytes") or 0, inodes_used=_u(f, "inodes_used") or 0)
        out["containerFs"] = fs_json(f.timestamp, disk.fs_by_path.get(f.fs_id.mountpoint), used)
    if "imageFs" in out and "containerFs" not in out:
        out["containerFs"] = out["imageFs"]  # one filesystem for both (upstream does the same)
    return out


class Sampler:
    """Takes a CPU-and-memory reading every `period_s` while stats are being asked for (in
    the last `active_s`), so usageNanoCores has a recent previous sample; an idle node whose
    stats nobody reads pays nothing."""

    def __init__(
        self, provider: SummaryProvider, *, period_s: float = 10.0, active_s: float = 300.0
    ) -> None:
        self.provider = provider
        self.period_s = period_s
        self.active_s = active_s

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            idle_ns = self.provider.clock_ns() - self.provider.last_asked_ns
            if idle_ns > self.active_s * 1e9:
                continue
            try:
                await self.provider.sample()
            except StatsError as err:
                log.debug("stats sample failed: %s", err)
            except Exception:  # a bad reading must not end the agent's task group
                log.exception("stats sample failed")
