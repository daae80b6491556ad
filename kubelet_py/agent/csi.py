"""The kubelet side of CSI: plugin registration, CSINode, and CSI pod volumes.

Neighbours: `csi_volumes.registration` (the pluginregistration.v1 client calls),
`csi_volumes.api.csi.v1` (the CSI gRPC stubs), `volumes.py` (which hands
`persistentVolumeClaim` and `csi` volumes to `CsiVolumes.setup` and calls
`CsiVolumes.release` before it removes a pod's directory), `agent.py` (runs
`CsiVolumes.run`).

    <root>/plugins_registry/<name>-reg.sock ──GetInfo──▶ validate ──NodeGetInfo──▶ DriverRegistry
         ──▶ CSINode <node>.spec.drivers[] + Node annotation csi.volume.kubernetes.io/nodeid
         ──▶ NotifyRegistrationStatus(registered)          (socket gone → driver removed)

    pod volume (PVC → bound PV .spec.csi, or inline .csi)
         ──▶ VolumeSpec (pure, `spec_from_pv` / `spec_from_inline`)
         ──▶ stage once per node:
             <root>/plugins/kubernetes.io/csi/<driver>/<sha256(handle)>/globalmount
         ──▶ publish per pod:
             <root>/pods/<uid>/volumes/kubernetes.io~csi/<vol>/mount

Reconciled, not scripted: a `vol_data.json` record is written beside each staging
and target path *before* the RPC (an intent), and the mount table says what is
really mounted. Setup skips what is recorded and mounted (a restarted agent
neither double-mounts nor re-stages); release unpublishes every record of the
pod and unstages a volume when no pod's record names it any more; a periodic
sweep does the same for pods the agent no longer runs and for staged volumes no
pod uses (a crash between unpublish and unstage). All RPCs of one volume run
under one lock, so a pod releasing the last use cannot unstage under a pod that is
setting the same volume up.
"""

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from csi_volumes.api.csi.v1 import csi_pb2, csi_pb2_grpc
from csi_volumes.mountinfo import mounts
from csi_volumes.registration import (
    CSI_PLUGIN,
    PluginInfo,
    get_plugin_info,
    notify_registration_status,
)
from kubelet_py.agent.apiclient import ApiError
from kubelet_py.agent.model import Pod, Volume
from kubelet_py.agent.volumes import VolumeError

log = logging.getLogger("kubelet_py.csi")

CSI_DIR = "kubernetes.io~csi"
NODE_ID_ANNOTATION = "csi.volume.kubernetes.io/nodeid"
EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"

AccessMode = csi_pb2.VolumeCapability.AccessMode
_ACCESS = {
    "ReadWriteOnce": AccessMode.SINGLE_NODE_WRITER,
    "ReadOnlyMany": AccessMode.MULTI_NODE_READER_ONLY,
    "ReadWriteMany": AccessMode.MULTI_NODE_MULTI_WRITER,
    "ReadWriteOncePod": AccessMode.SINGLE_NODE_SINGLE_WRITER,
}


class CsiVolumeError(VolumeError):
    """A CSI volume could not be set up or torn down; the message names the volume and
    carries the driver's error."""


# ---- pure: specs, paths, plans ---------------------------------------------------------


@dataclass(frozen=True)
class SecretRef:
    namespace: str
    name: str


@dataclass(frozen=True)
class VolumeSpec:
    """Everything the node RPCs of one pod volume need, from a PV or an inline volume."""

    driver: str
    handle: str
    access_mode: int
    read_only: bool
    fs_type: str = ""
    mount_flags: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)
    stage_secret: SecretRef | None = None
    publish_secret: SecretRef | None = None
    ephemeral: bool = False
    pv_name: str = ""


def _ref(raw: Mapping[str, Any] | None, default_ns: str) -> SecretRef | None:
    if not raw or not raw.get("name"):
        return None
    return SecretRef(namespace=str(raw.get("namespace") or default_ns), name=str(raw["name"]))


def access_mode(modes: Sequence[str]) -> int:
    """The CSI access mode for a PV's accessModes (the most permissive one wins, as the
    kubelet's csi plugin picks the first it knows; RWX before ROX before RWO)."""
    for mode in ("ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod", "ReadWriteOnce"):
        if mode in modes:
            return _ACCESS[mode]
    return AccessMode.SINGLE_NODE_WRITER


def spec_from_pv(pv: Mapping[str, Any], *, claim_read_only: bool) -> VolumeSpec:
    """A PV with a `csi` source → VolumeSpec; raises CsiVolumeError for anything else."""
    spec = pv.get("spec") or {}
    name = str((pv.get("metadata") or {}).get("name", ""))
    src = spec.get("csi")
    if not src:
        raise CsiVolumeError(f"PersistentVolume {name} has no csi source")
    ns = str((spec.get("claimRef") or {}).get("namespace", ""))
    return VolumeSpec(
        driver=str(src["driver"]),
        handle=str(src["volumeHandle"]),
        access_mode=access_mode(tuple(spec.get("accessModes") or ())),
        read_only=bool(claim_read_only or src.get("readOnly")),
        fs_type=str(src.get("fsType") or ""),
        mount_flags=tuple(spec.get("mountOptions") or ()),
        attributes=dict(src.get("volumeAttributes") or {}),
        stage_secret=_ref(src.get("nodeStageSecretRef"), ns),
        publish_secret=_ref(src.get("nodePublishSecretRef"), ns),
        pv_name=name,
    )


def ephemeral_handle(pod_uid: str, volume_name: str) -> str:
    """The kubelet's handle for an inline volume: csi-<sha256(podUID + volume name)>."""
    return "csi-" + hashlib.sha256((pod_uid + volume_name).encode()).hexdigest()


def spec_from_inline(pod: Pod, vol: Volume) -> VolumeSpec:
    """An inline (ephemeral) `csi` pod volume → VolumeSpec; secrets from the pod's namespace."""
    src = vol.source
    secret = src.get("nodePublishSecretRef") or {}
    return VolumeSpec(
        driver=str(src.get("driver", "")),
        handle=ephemeral_handle(pod.uid, vol.name),
        access_mode=AccessMode.SINGLE_NODE_WRITER,
        read_only=bool(src.get("readOnly")),
        fs_type=str(src.get("fsType") or ""),
        attributes={**dict(src.get("volumeAttributes") or {}), EPHEMERAL_KEY: "true"},
        publish_secret=SecretRef(pod.namespace, str(secret["name"])) if secret else None,
        ephemeral=True,
    )


def staging_dir(root: Path, driver: str, handle: str) -> Path:
    """`<root>/plugins/kubernetes.io/csi/<driver>/<sha256(handle)>` (globalmount inside)."""
    digest = hashlib.sha256(handle.encode()).hexdigest()
    return root / "plugins" / "kubernetes.io" / "csi" / driver / digest


def pod_volume_dir(root: Path, pod_uid: str, volume_name: str) -> Path:
    """`<root>/pods/<uid>/volumes/kubernetes.io~csi/<vol>` (the target is `mount` inside)."""
    return root / "pods" / pod_uid / "volumes" / CSI_DIR / volume_name


def publish_context(spec: VolumeSpec, pod: Pod, *, pod_info_on_mount: bool) -> dict[str, str]:
    """Volume attributes plus, when the CSIDriver asks for it, the pod's identity."""
    ctx = dict(spec.attributes)
    if pod_info_on_mount:
        ctx.update(
            {
                "csi.storage.k8s.io/pod.name": pod.name,
                "csi.storage.k8s.io/pod.namespace": pod.namespace,
                "csi.storage.k8s.io/pod.uid": pod.uid,
                "csi.storage.k8s.io/serviceAccount.name": pod.service_account or "default",
                EPHEMERAL_KEY: "true" if spec.ephemeral else "false",
            }
        )
    return ctx


def apply_fs_group(policy: str, *, fs_group: int | None, spec: VolumeSpec) -> bool:
    """Whether the kubelet changes the volume's group ownership (CSIDriver fsGroupPolicy)."""
    if fs_group is None or spec.read_only or policy == "None":
        return False
    if policy == "File":
        return True
    # ReadWriteOnceWithFSType (the default): only for RWO volumes that declare an fsType
    return bool(spec.fs_type) and spec.access_mode == AccessMode.SINGLE_NODE_WRITER


def validate_plugin(info: PluginInfo) -> str:
    """Empty when `info` is a CSI plugin the kubelet can use, else why not."""
    if info.type != CSI_PLUGIN:
        return f"plugin type {info.type!r} is not {CSI_PLUGIN}"
    if not info.name:
        return "plugin name is empty"
    if not info.endpoint:
        return f"plugin {info.name} gave no endpoint"
    majors = {v.lstrip("v").split(".", 1)[0] for v in info.supported_versions}
    if "1" not in majors:
        return (
            f"plugin {info.name} supports CSI versions {list(info.supported_versions)};"
            " the kubelet speaks 1.x"
        )
    return ""


@dataclass(frozen=True)
class DriverInfo:
    name: str
    endpoint: str
    node_id: str
    max_volumes: int
    topology_keys: tuple[str, ...]
    stage_unstage: bool
    #: VOLUME_MOUNT_GROUP: the driver applies a pod's fsGroup itself, at mount time
    mount_group: bool = False


def csinode_drivers(
    current: Sequence[Mapping[str, Any]], *, add: DriverInfo | None = None, remove: str = ""
) -> list[dict[str, Any]]:
    """CSINode spec.drivers with one driver put in (replacing its old entry) or taken out."""
    name = add.name if add is not None else remove
    out = [dict(d) for d in current if d.get("name") != name]
    if add is not None:
        entry: dict[str, Any] = {
            "name": add.name,
            "nodeID": add.node_id,
            "topologyKeys": list(add.topology_keys) or None,
        }
        if add.max_volumes > 0:
            entry["allocatable"] = {"count": add.max_volumes}
        out.append({k: v for k, v in entry.items() if v is not None})
    return sorted(out, key=lambda d: str(d.get("name")))


def next_backoff_s(previous_s: float) -> float:
    """The kubelet's volume operation backoff: 0.5 s doubling to 2 min 2 s."""
    return 0.5 if previous_s <= 0 else min(previous_s * 2, 122.0)


# ---- records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StageRecord:
    driver: str
    handle: str
    staging_path: str


@dataclass(frozen=True)
class PublishRecord:
    driver: str
    handle: str
    staging_path: str  # "" when the driver has no STAGE_UNSTAGE or the volume is ephemeral
    target_path: str
    pod_uid: str
    volume_name: str


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def publish_records(root: Path, pod_uid: str = "*") -> list[PublishRecord]:
    """The publish records of one pod, or of every pod."""
    out = []
    for p in sorted((root / "pods").glob(f"{pod_uid}/volumes/{CSI_DIR}/*/vol_data.json")):
        doc = _read_json(p)
        if doc is not None:
            with contextlib.suppress(TypeError):
                out.append(PublishRecord(**doc))
    return out


def stage_records(root: Path) -> list[StageRecord]:
    out = []
    for p in sorted((root / "plugins" / "kubernetes.io" / "csi").glob("*/*/vol_data.json")):
        doc = _read_json(p)
        if doc is not None:
            with contextlib.suppress(TypeError):
                out.append(StageRecord(**doc))
    return out


def mounted_paths() -> set[str]:
    return {m.mountpoint for m in mounts()}


# ---- the driver client ---------------------------------------------------------------------


class DriverClient:
    """The node service of one registered driver over its unix socket."""

    def __init__(self, endpoint: str) -> None:
        path = endpoint.removeprefix("unix://")
        self.channel = grpc.aio.insecure_channel(f"unix://{path}")
        self.node = csi_pb2_grpc.NodeStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


def _rpc_error(err: grpc.aio.AioRpcError) -> str:
    """The way the kubelet prints a driver's error (Go's status: `code = Unauthenticated`)."""
    code = err.code()
    name = "".join(w.capitalize() for w in code.name.split("_")) if code else "Unknown"
    return f"rpc error: code = {name} desc = {err.details()}"


@dataclass
class _Registered:
    info: DriverInfo
    client: DriverClient
    socket: Path
    socket_id: tuple[int, int]


class Api(Protocol):
    async def get(self, path: str, **params: str) -> Any: ...
    async def create(self, path: str, body: Any) -> Any: ...
    async def put(self, path: str, body: Any) -> Any: ...
    async def patch(self, path: str, body: Any, *, kind: str = "strategic") -> Any: ...


# ---- the manager ---------------------------------------------------------------------------


class CsiVolumes:
    """Plugin watcher, driver registry, CSINode publisher and CSI volume reconciler."""

    def __init__(
        self,
        root: Path,
        *,
        node_name: str,
        api: Api | None,
        registration_dir: Path | None = None,
        active_pods: Callable[[], set[str]] = set,
        poll_s: float = 0.5,
        sweep_s: float = 15.0,
        retry_s: float = 10.0,
    ) -> None:
        self.root = root
        self.node_name = node_name
        self.api = api
        self.registration_dir = registration_dir or root / "plugins_registry"
        self.active_pods = active_pods
        self.poll_s = poll_s
        self.sweep_s = sweep_s
        self.retry_s = retry_s
        self.drivers: dict[str, _Registered] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._backoff: dict[tuple[str, str], tuple[float, float, str]] = {}
        self._refused: dict[Path, tuple[tuple[int, int], float]] = {}
        self._csinode_lock = asyncio.Lock()
        self.sweeping = False  # set once the pod sources have synced (see `sweep`)

    # ---- registration ----------------------------------------------------------------

    async def run(self) -> None:
        """Watch the registration directory; sweep orphaned mounts periodically."""
        await asyncio.to_thread(self.registration_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(os.chmod, self.registration_dir, 0o750)
        next_sweep = time.monotonic() + self.sweep_s
        while True:
            # this loop outlives any one failure (API down, a driver misbehaving): it is
            # the node's only plugin watcher, and the TaskGroup would end the agent
            try:
                await self.scan_registrations()
            except Exception:
                log.exception("plugin registration scan of %s failed", self.registration_dir)
            if self.sweeping and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.sweep_s
                try:
                    await self.sweep()
                except Exception:
                    log.exception("CSI volume sweep failed")
            await asyncio.sleep(self.poll_s)

    def _sockets(self) -> dict[Path, tuple[int, int]]:
        found = {}
        for entry in os.scandir(self.registration_dir):
            if entry.name.startswith("."):
                continue
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISSOCK(st.st_mode):
                    found[Path(entry.path)] = (st.st_ino, int(st.st_ctime_ns))
        return found

    async def scan_registrations(self) -> None:
        sockets = await asyncio.to_thread(self._sockets)
        for name, reg in list(self.drivers.items()):
            if sockets.get(reg.socket) != reg.socket_id:
                await self._unregister(name, why=f"socket {reg.socket} is gone")
        known = {reg.socket: reg.socket_id for reg in self.drivers.values()}
        now = time.monotonic()
        self._refused = {
            s: (i, t) for s, (i, t) in self._refused.items() if sockets.get(s) == i and t > now
        }
        for sock, ident in sockets.items():
            if known.get(sock) != ident and sock not in self._refused:
                await self._register(sock, ident)

    async def _register(self, sock: Path, ident: tuple[int, int]) -> None:
        try:
            info = await get_plugin_info(sock, timeout_s=5)
        except grpc.aio.AioRpcError as err:
            # a stale socket (its driver was killed): look again in a little while
            log.debug("GetInfo on %s failed (will retry): %s", sock, _rpc_error(err))
            self._refused[sock] = (ident, time.monotonic() + 2.0)
            return
        problem = validate_plugin(info)
        driver: DriverInfo | None = None
        client: DriverClient | None = None
        if not problem:
            client = DriverClient(info.endpoint)
            try:
                node_info = await client.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10)
                caps = await client.node.NodeGetCapabilities(
                    csi_pb2.NodeGetCapabilitiesRequest(), timeout=10
                )
            except grpc.aio.AioRpcError as err:
                problem = (
                    f"NodeGetInfo/NodeGetCapabilities of {info.name} failed: {_rpc_error(err)}"
                )
            else:
                rpc = csi_pb2.NodeServiceCapability.RPC
                driver = DriverInfo(
                    name=info.name,
                    endpoint=info.endpoint,
                    node_id=node_info.node_id,
                    max_volumes=int(node_info.max_volumes_per_node),
                    topology_keys=tuple(sorted(node_info.accessible_topology.segments)),
                    stage_unstage=any(
                        c.rpc.type == rpc.STAGE_UNSTAGE_VOLUME for c in caps.capabilities
                    ),
                    mount_group=any(
                        c.rpc.type == rpc.VOLUME_MOUNT_GROUP for c in caps.capabilities
                    ),
                )
                if not driver.node_id:
                    problem = f"NodeGetInfo of {info.name} returned an empty node_id"
        if not problem and driver is not None:
            try:
                await self._publish_csinode(add=driver)
            except ApiError as err:
                problem = f"updating CSINode {self.node_name} for {info.name} failed: {err}"
        if problem or driver is None or client is None:
            log.error("plugin registration of %s failed: %s", sock, problem)
            if client is not None:
                await client.close()
            with contextlib.suppress(grpc.aio.AioRpcError):
                await notify_registration_status(sock, registered=False, error=problem)
            # ask a refused plugin again later, not every poll (upstream retries with backoff)
            self._refused[sock] = (ident, time.monotonic() + self.retry_s)
            return
        old = self.drivers.pop(driver.name, None)
        if old is not None:
            await old.client.close()
        self.drivers[driver.name] = _Registered(driver, client, sock, ident)
        log.info(
            "CSI driver %s registered: endpoint %s, node id %s, stage/unstage %s,"
            " volume mount group %s",
            driver.name,
            driver.endpoint,
            driver.node_id,
            driver.stage_unstage,
            driver.mount_group,
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            await notify_registration_status(sock, registered=True)

    async def _unregister(self, name: str, *, why: str) -> None:
        reg = self.drivers.pop(name)
        await reg.client.close()
        log.info("CSI driver %s unregistered: %s", name, why)
        try:
            await self._publish_csinode(remove=name)
        except ApiError as err:
            log.warning("removing %s from CSINode %s failed: %s", name, self.node_name, err)

    async def _publish_csinode(self, *, add: DriverInfo | None = None, remove: str = "") -> None:
        """Put the driver into (or take it out of) CSINode <node> and the node-id annotation."""
        if self.api is None:
            return
        path = f"/apis/storage.k8s.io/v1/csinodes/{self.node_name}"
        async with self._csinode_lock:
            for _ in range(5):
                try:
                    current = await self.api.get(path)
                except ApiError as err:
                    if err.status != 404:
                        raise
                    current = None
                if current is None:
                    node = await self.api.get(f"/api/v1/nodes/{self.node_name}")
                    body = {
                        "apiVersion": "storage.k8s.io/v1",
                        "kind": "CSINode",
                        "metadata": {
                            "name": self.node_name,
                            "ownerReferences": [
                                {
                                    "apiVersion": "v1",
                                    "kind": "Node",
                                    "name": self.node_name,
                                    "uid": node["metadata"]["uid"],
                                }
                            ],
                        },
                        "spec": {"drivers": csinode_drivers([], add=add, remove=remove)},
                    }
                    try:
                        await self.api.create("/apis/storage.k8s.io/v1/csinodes", body)
                    except ApiError as err:
                        if err.status == 409:
                            continue
                        raise
                    break
                drivers = csinode_drivers(
                    current.get("spec", {}).get("drivers") or [], add=add, remove=remove
                )
                current["spec"]["drivers"] = drivers
                try:
                    await self.api.put(path, current)
                except ApiError as err:
                    if err.status == 409:
                        continue
                    raise
                break
            ids = {name: reg.info.node_id for name, reg in self.drivers.items()}
            if add is not None:
                ids[add.name] = add.node_id
            ids.pop(remove, None)
            await self.api.patch(
                f"/api/v1/nodes/{self.node_name}",
                {
                    "metadata": {
                        "annotations": {NODE_ID_ANNOTATION: json.dumps(ids) if ids else None}
                    }
                },
            )

    def driver(self, name: str) -> _Registered:
        reg = self.drivers.get(name)
        if reg is None:
            raise CsiVolumeError(
                f"driver name {name} not found in the list of registered CSI drivers"
            )
        return reg

    # ---- volumes ---------------------------------------------------------------------

    def handles(self, vol: Volume) -> bool:
        return vol.kind in ("persistentVolumeClaim", "csi")

    async def _api_get(self, path: str, *, what: str) -> dict[str, Any]:
        if self.api is None:
            raise CsiVolumeError(f"{what}: CSI volumes need an API server")
        try:
            doc: dict[str, Any] = await self.api.get(path)
        except ApiError as err:
            raise CsiVolumeError(f"{what}: {err}") from err
        return doc

    async def _spec(self, pod: Pod, vol: Volume, *, what: str) -> VolumeSpec:
        if vol.kind == "csi":
            return spec_from_inline(pod, vol)
        claim = str(vol.source.get("claimName", ""))
        pvc = await self._api_get(
            f"/api/v1/namespaces/{pod.namespace}/persistentvolumeclaims/{claim}", what=what
        )
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        if (pvc.get("status") or {}).get("phase") != "Bound" or not pv_name:
            raise CsiVolumeError(f"{what}: PersistentVolumeClaim {claim} is not bound")
        pv = await self._api_get(f"/api/v1/persistentvolumes/{pv_name}", what=what)
        try:
            return spec_from_pv(pv, claim_read_only=bool(vol.source.get("readOnly")))
        except CsiVolumeError as err:
            raise CsiVolumeError(f"{what}: {err}") from err

    async def _secret(self, ref: SecretRef | None, *, what: str) -> dict[str, str]:
        if ref is None:
            return {}
        doc = await self._api_get(
            f"/api/v1/namespaces/{ref.namespace}/secrets/{ref.name}", what=what
        )
        return {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}

    async def _csidriver(self, name: str) -> dict[str, Any]:
        if self.api is None:
            return {}
        try:
            doc: dict[str, Any] = await self.api.get(f"/apis/storage.k8s.io/v1/csidrivers/{name}")
        except ApiError as err:
            if err.status == 404:
                return {}
            raise
        return dict(doc.get("spec") or {})

    def _lock(self, driver: str, handle: str) -> asyncio.Lock:
        return self._locks.setdefault((driver, handle), asyncio.Lock())

    async def setup(self, pod: Pod, vol: Volume) -> Path:
        """Stage (once per node) and publish (per pod) one CSI volume; return the target."""
        what = f'volume "{vol.name}" of pod {pod.full_name}'
        key = (pod.uid, vol.name)
        now = time.monotonic()
        until, delay, last = self._backoff.get(key, (0.0, 0.0, ""))
        if now < until:
            raise CsiVolumeError(f"{last} (retrying in {until - now:.1f} s)")
        try:
            target = await self._setup(pod, vol, what=what)
        except CsiVolumeError as err:
            delay = next_backoff_s(delay)
            self._backoff[key] = (time.monotonic() + delay, delay, str(err))
            raise
        self._backoff.pop(key, None)
        return target

    async def _setup(self, pod: Pod, vol: Volume, *, what: str) -> Path:
        spec = await self._spec(pod, vol, what=what)
        reg = self.driver(spec.driver)
        csidriver = await self._csidriver(spec.driver)
        if spec.ephemeral and "Ephemeral" not in (csidriver.get("volumeLifecycleModes") or ()):
            raise CsiVolumeError(
                f"{what}: CSI driver {spec.driver} does not support inline ephemeral volumes"
                " (its CSIDriver object lacks volumeLifecycleModes: [Ephemeral])"
            )
        # A driver with VOLUME_MOUNT_GROUP gets the pod's fsGroup and applies it itself;
        # fsGroupPolicy is then not consulted (KEP 2317), and the kubelet changes nothing.
        delegate_group = reg.info.mount_group and pod.fs_group is not None
        cap = csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(
                fs_type=spec.fs_type,
                mount_flags=list(spec.mount_flags),
                volume_mount_group=str(pod.fs_group) if delegate_group else "",
            ),
            access_mode=csi_pb2.VolumeCapability.AccessMode(mode=spec.access_mode),  # type: ignore[arg-type]
        )
        vdir = pod_volume_dir(self.root, pod.uid, vol.name)
        target = vdir / "mount"
        staging = ""
        async with self._lock(spec.driver, spec.handle):
            present = await asyncio.to_thread(mounted_paths)
            if reg.info.stage_unstage and not spec.ephemeral:
                sdir = staging_dir(self.root, spec.driver, spec.handle)
                staging = str(sdir / "globalmount")
                if staging not in present or not (sdir / "vol_data.json").exists():
                    secrets = await self._secret(spec.stage_secret, what=what)
                    await asyncio.to_thread(
                        _write_json,
                        sdir / "vol_data.json",
                        asdict(StageRecord(spec.driver, spec.handle, staging)),
                    )
                    await asyncio.to_thread(
                        (sdir / "globalmount").mkdir, parents=True, exist_ok=True
                    )
                    log.info("NodeStageVolume %s %s -> %s", spec.driver, spec.handle, staging)
                    try:
                        await reg.client.node.NodeStageVolume(
                            csi_pb2.NodeStageVolumeRequest(
                                volume_id=spec.handle,
                                staging_target_path=staging,
                                volume_capability=cap,
                                secrets=secrets,
                                volume_context=dict(spec.attributes),
                            ),
                            timeout=120,
                        )
                    except grpc.aio.AioRpcError as err:
                        raise CsiVolumeError(
                            f'MountVolume.MountDevice failed for volume "{spec.pv_name}"'
                            f" ({what}): {_rpc_error(err)}"
                        ) from err
            if str(target) in present and (vdir / "vol_data.json").exists():
                return target  # published before (e.g. by the agent before a restart)
            secrets = await self._secret(spec.publish_secret, what=what)
            record = PublishRecord(
                spec.driver, spec.handle, staging, str(target), pod.uid, vol.name
            )
            await asyncio.to_thread(_write_json, vdir / "vol_data.json", asdict(record))
            log.info("NodePublishVolume %s %s -> %s", spec.driver, spec.handle, target)
            try:
                await reg.client.node.NodePublishVolume(
                    csi_pb2.NodePublishVolumeRequest(
                        volume_id=spec.handle,
                        staging_target_path=staging,
                        target_path=str(target),
                        volume_capability=cap,
                        readonly=spec.read_only,
                        secrets=secrets,
                        volume_context=publish_context(
                            spec, pod, pod_info_on_mount=bool(csidriver.get("podInfoOnMount"))
                        ),
                    ),
                    timeout=120,
                )
            except grpc.aio.AioRpcError as err:
                raise CsiVolumeError(
                    f"MountVolume.SetUp failed for {what}: {_rpc_error(err)}"
                ) from err
        policy = str(csidriver.get("fsGroupPolicy") or "ReadWriteOnceWithFSType")
        if not delegate_group and apply_fs_group(policy, fs_group=pod.fs_group, spec=spec):
            assert pod.fs_group is not None
            await asyncio.to_thread(_chgrp_tree, target, pod.fs_group)
        return target

    async def release(self, pod_uid: str) -> None:
        """NodeUnpublish every CSI volume of the pod; NodeUnstage those no pod uses any more."""
        records = await asyncio.to_thread(publish_records, self.root, pod_uid)
        for rec in records:
            await self._unpublish(rec)
        for key in [k for k in self._backoff if k[0] == pod_uid]:
            del self._backoff[key]

    async def _unpublish(self, rec: PublishRecord) -> None:
        reg = self.driver(rec.driver)
        async with self._lock(rec.driver, rec.handle):
            log.info("NodeUnpublishVolume %s %s <- %s", rec.driver, rec.handle, rec.target_path)
            try:
                await reg.client.node.NodeUnpublishVolume(
                    csi_pb2.NodeUnpublishVolumeRequest(
                        volume_id=rec.handle, target_path=rec.target_path
                    ),
                    timeout=120,
                )
            except grpc.aio.AioRpcError as err:
                raise CsiVolumeError(
                    f"UnmountVolume.TearDown failed for volume {rec.volume_name!r} of pod"
                    f" {rec.pod_uid}: {_rpc_error(err)}"
                ) from err
            vdir = Path(rec.target_path).parent
            await asyncio.to_thread(_remove_record_dir, vdir)
            if rec.staging_path:
                await self._unstage_if_unused(reg, rec.driver, rec.handle, rec.staging_path)

    async def _unstage_if_unused(
        self, reg: _Registered, driver: str, handle: str, staging_path: str
    ) -> None:
        users = [
            r
            for r in await asyncio.to_thread(publish_records, self.root)
            if r.driver == driver and r.handle == handle
        ]
        if users:
            return
        log.info("NodeUnstageVolume %s %s <- %s", driver, handle, staging_path)
        try:
            await reg.client.node.NodeUnstageVolume(
                csi_pb2.NodeUnstageVolumeRequest(
                    volume_id=handle, staging_target_path=staging_path
                ),
                timeout=120,
            )
        except grpc.aio.AioRpcError as err:
            raise CsiVolumeError(
                f"UnmountDevice failed for volume {handle}: {_rpc_error(err)}"
            ) from err
        await asyncio.to_thread(_remove_record_dir, Path(staging_path).parent)

    async def sweep(self) -> None:
        """Unpublish volumes of pods the agent no longer runs; unstage volumes no pod uses."""
        active = self.active_pods()
        for rec in await asyncio.to_thread(publish_records, self.root):
            if rec.pod_uid in active or rec.driver not in self.drivers:
                continue
            log.info("sweeping volume %s of gone pod %s", rec.volume_name, rec.pod_uid)
            try:
                await self._unpublish(rec)
            except CsiVolumeError as err:
                log.warning("%s", err)
        for st in await asyncio.to_thread(stage_records, self.root):
            reg = self.drivers.get(st.driver)
            if reg is None:
                continue
            async with self._lock(st.driver, st.handle):
                try:
                    await self._unstage_if_unused(reg, st.driver, st.handle, st.staging_path)
                except CsiVolumeError as err:
                    log.warning("%s", err)

    async def close(self) -> None:
        for reg in self.drivers.values():
            await reg.client.close()
        self.drivers.clear()


def _remove_record_dir(vdir: Path) -> None:
    """Drop the record and the now-empty mount directory (never anything still mounted)."""
    (vdir / "vol_data.json").unlink(missing_ok=True)
    for sub in ("mount", "globalmount"):
        p = vdir / sub
        if p.is_dir() and not os.path.ismount(p):
            with contextlib.suppress(OSError):
                p.rmdir()
    with contextlib.suppress(OSError):
        vdir.rmdir()


def _chgrp_tree(target: Path, gid: int) -> None:
    """fsGroup: group-own everything in the volume and make it group-writable (setgid dirs)."""
    for dirpath, dirnames, filenames in os.walk(target):
        base = Path(dirpath)
        for p in [base, *(base / n for n in dirnames + filenames)]:
            try:
                os.lchown(p, -1, gid)
                if p.is_symlink():
                    continue
                st = p.stat()
                p.chmod((st.st_mode & 0o7777) | (0o2070 if p.is_dir() else 0o060))
            except OSError as err:
                log.warning("fsGroup %d on %s: %s", gid, p, err)
