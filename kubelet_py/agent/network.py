"""Pod networking on a node: CNI behind the runtime's seam, the node's network config, the overlay.

    Node.spec.podCIDR ──▶ NodeNetwork ──▶ <root>/cni/net.d/10-kubelet-py.conflist
                              │              (bridge + host-local over the podCIDR + portmap
                              │               [+ kpy-isolation])
                              ├─▶ VXLAN VTEP (cni.vxlan) + its MAC / underlay IP on our Node
                              └─◀ watch Nodes ─▶ Vtep.reconcile(peers): a route, neighbour and
                                                 FDB entry per remote node
    RuntimeService ──PodNetwork──▶ CNIPodNetwork ──▶ cni.NetworkManager ──▶ plugin executables

`CNIPodNetwork` adapts the CNI caller of `cni/` to `cri.runtime.network.PodNetwork`,
so the runtime never imports `cni`. `NodeNetwork` is the node agent's part: it
waits for the controller manager to give the Node a pod CIDR, writes the
network configuration (only when the node manages it; a hand-written conflist,
e.g. for Debian's reference plugins, is used as it is), sets up the overlay
and keeps it in step with the other Nodes. Netlink and plugin runs block, so
they go through threads.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cni.vxlan as vxlan
from cni.caller import NetworkManager, PodRef
from cni.errors import CNIError
from cni.install import install as install_plugins
from cni.types import PortMapping as CNIPortMapping
from cri.fsutil import write_atomic
from cri.runtime.network import PodNetworkRequest
from kubelet_py.agent.apiclient import ApiClient, ApiError, WatchExpired

log = logging.getLogger("kubelet_py.agent.network")

CONFLIST_NAME = "10-kubelet-py.conflist"
NETWORK_NAME = "kubelet-py"
BRIDGE_NAME = "kpy0"
STATUS_CACHE_S = 60.0


@dataclass(frozen=True)
class NetworkSettings:
    """How a node networks its pods (flags `--network`, `--cni-*`, `--cluster-cidr`, …)."""

    mode: str = "loopback"  # "loopback": lo only; "cni": the conflist in conf_dir
    conf_dir: Path | None = None  # default <root>/cni/net.d
    bin_dirs: tuple[Path, ...] = ()  # extra plugin dirs (e.g. /usr/lib/cni) after ours
    manage_config: bool = True  # write our conflist from the Node's podCIDR
    cluster_cidr: str = ""  # traffic inside it is not masqueraded
    overlay: str = "vxlan"  # "vxlan" or "none" (pods reach only their own node's pods)
    vni: int = 1
    vxlan_port: int = vxlan.DEFAULT_PORT
    isolation: bool = False  # Docker's --icc=false between pods of this node
    mtu: int = 0  # 0: the underlay's (minus the VXLAN overhead with the overlay)


@dataclass(frozen=True)
class NodePaths:
    conf_dir: Path
    bin_dir: Path  # our plugin shims
    cache_dir: Path
    ipam_dir: Path

    @classmethod
    def under(cls, root: Path, settings: NetworkSettings) -> NodePaths:
        base = root / "cni"
        return cls(
            conf_dir=settings.conf_dir or base / "net.d",
            bin_dir=base / "bin",
            cache_dir=base / "cache",
            ipam_dir=base / "ipam",
        )


def node_conflist(
    *,
    pod_cidr: str,
    cluster_cidr: str,
    mtu: int,
    ipam_dir: Path,
    isolation: bool,
) -> dict[str, Any]:
    """The node's network configuration (pure): bridge + host-local + portmap (+ isolation)."""
    bridge: dict[str, Any] = {
        "type": "bridge",
        "bridge": BRIDGE_NAME,
        "isGateway": True,
        "isDefaultGateway": True,
        "ipMasq": True,
        "hairpinMode": True,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": pod_cidr}]],
            "dataDir": str(ipam_dir),
        },
    }
    if mtu:
        bridge["mtu"] = mtu
    if cluster_cidr:
        bridge["ipMasqExclude"] = [cluster_cidr]
    plugins: list[dict[str, Any]] = [
        bridge,
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]
    if isolation:
        plugins.append({"type": "kpy-isolation"})
    return {"cniVersion": "1.1.0", "name": NETWORK_NAME, "plugins": plugins}


class CNIPodNetwork:
    """`cri.runtime.network.PodNetwork` over the CNI caller (blocking; the runtime threads it)."""

    def __init__(self, paths: NodePaths, extra_bin_dirs: Iterable[Path] = ()) -> None:
        self.paths = paths
        self.manager = NetworkManager(
            paths.conf_dir, [paths.bin_dir, *extra_bin_dirs], paths.cache_dir
        )
        self._ready_until = 0.0

    def _has_config(self) -> bool:
        d = self.paths.conf_dir
        return d.is_dir() and any(
            p.suffix in (".conflist", ".conf", ".json") for p in d.iterdir() if p.is_file()
        )

    def setup(self, request: PodNetworkRequest) -> tuple[str, ...]:
        if not self._has_config():
            raise CNIError(6, f"no CNI network configuration in {self.paths.conf_dir} yet")
        attachment = self.manager.setup(
            request.sandbox_id,
            request.netns_path,
            pod=PodRef(request.namespace, request.name, request.uid),
            port_mappings=[
                CNIPortMapping(
                    host_port=m.host_port,
                    container_port=m.container_port,
                    protocol=m.protocol.lower(),
                    host_ip=m.host_ip,
                )
                for m in request.port_mappings
                if m.host_port
            ],
        )
        return tuple(str(ip.ip) for ip in attachment.ips)

    def teardown(self, sandbox_id: str, netns_path: str | None) -> None:
        if not self._has_config():
            return  # nothing was ever attached through a network that does not exist
        self.manager.teardown(sandbox_id, netns_path)

    def status(self) -> tuple[bool, str]:
        if not self._has_config():
            return False, f"no CNI network configuration in {self.paths.conf_dir}"
        now = time.monotonic()
        if now < self._ready_until:
            return True, ""
        try:
            self.manager.status()
        except CNIError as err:
            self._ready_until = 0.0
            return False, f"CNI network is not ready: {err}"
        self._ready_until = now + STATUS_CACHE_S  # STATUS runs every plugin: not every call
        return True, ""

    def gc(self, valid_sandbox_ids: Iterable[str]) -> None:
        if not self._has_config():
            return
        for err in self.manager.gc([(sid, "eth0") for sid in valid_sandbox_ids]):
            log.warning("CNI GC: %s", err)


def underlay_device(node_ip: str) -> tuple[str, int]:
    """(name, MTU) of the link holding `node_ip` in this network namespace (blocking)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for addr in ipr.get_addr(family=2):
            if addr.get_attr("IFA_ADDRESS") == node_ip:
                link = ipr.get_links(addr["index"])[0]
                return str(link.get_attr("IFLA_IFNAME")), int(link.get_attr("IFLA_MTU"))
    raise CNIError(6, f"no link holds the node address {node_ip}")


class NodeNetwork:
    """The node agent's networking loop: config from podCIDR, VTEP, peers from Nodes."""

    def __init__(
        self,
        *,
        api: ApiClient | None,
        node_name: str,
        node_ip: str,
        settings: NetworkSettings,
        paths: NodePaths,
        poll_s: float = 1.0,
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.node_ip = node_ip
        self.settings = settings
        self.paths = paths
        self.poll_s = poll_s
        self.pod_cidr: str | None = None
        self._vtep: vxlan.Vtep | None = None
        self._peers: dict[str, vxlan.Peer] = {}
        self.configured = asyncio.Event()

    def install_plugins(self) -> None:
        """Our plugin shims into <root>/cni/bin (blocking, quick)."""
        install_plugins(self.paths.bin_dir)

    async def run(self) -> None:
        await asyncio.to_thread(self.install_plugins)
        if not self.settings.manage_config or self.api is None:
            self.configured.set()
            return  # a hand-written conflist (or standalone): nothing to derive from Nodes
        self.pod_cidr = await self._wait_for_pod_cidr()
        mtu = self.settings.mtu
        if self.settings.overlay == "vxlan":
            mtu = await self._start_overlay()
        elif not mtu:
            mtu = (await asyncio.to_thread(underlay_device, self.node_ip))[1]
        conf = node_conflist(
            pod_cidr=self.pod_cidr,
            cluster_cidr=self.settings.cluster_cidr,
            mtu=mtu,
            ipam_dir=self.paths.ipam_dir,
            isolation=self.settings.isolation,
        )
        await asyncio.to_thread(self._write_conflist, conf)
        log.info(
            "pod network configured: %s on %s (mtu %d, overlay %s)",
            self.pod_cidr,
            BRIDGE_NAME,
            mtu,
            self.settings.overlay,
        )
        self.configured.set()
        if self.settings.overlay == "vxlan":
            await self._watch_nodes()

    def _write_conflist(self, conf: dict[str, Any]) -> None:
        self.paths.conf_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(
            self.paths.conf_dir / CONFLIST_NAME,
            (json.dumps(conf, indent=2) + "\n").encode(),
        )

    async def _wait_for_pod_cidr(self) -> str:
        assert self.api is not None
        waited = 0.0
        while True:
            try:
                node = await self.api.get(f"/api/v1/nodes/{self.node_name}")
                cidr = node.get("spec", {}).get("podCIDR")
                if cidr:
                    return str(ipaddress.ip_network(cidr))
            except (ApiError, OSError) as err:
                log.warning("reading node %s for its pod CIDR failed: %s", self.node_name, err)
            if waited >= 10 and int(waited) % 30 == 0:
                log.info("waiting for node %s to get a pod CIDR", self.node_name)
            await asyncio.sleep(self.poll_s)
            waited += self.poll_s

    async def _start_overlay(self) -> int:
        assert self.api is not None and self.pod_cidr is not None
        dev, underlay_mtu = await asyncio.to_thread(underlay_device, self.node_ip)
        config = vxlan.VtepConfig(
            node=self.node_name,
            pod_cidr=ipaddress.IPv4Network(self.pod_cidr),
            underlay_ip=ipaddress.IPv4Address(self.node_ip),
            underlay_dev=dev,
            vni=self.settings.vni,
            port=self.settings.vxlan_port,
        )
        self._vtep = vxlan.Vtep(config)
        mac, vtep_mtu = await asyncio.to_thread(self._vtep.ensure)
        annotations = vxlan.node_annotations(
            mac, ipaddress.IPv4Address(self.node_ip), self.settings.vni
        )
        await self.api.patch(
            f"/api/v1/nodes/{self.node_name}", {"metadata": {"annotations": annotations}}
        )
        mtu = min(self.settings.mtu or vtep_mtu, vtep_mtu, underlay_mtu - vxlan.VXLAN_OVERHEAD)
        return mtu

    async def _watch_nodes(self) -> None:
        assert self.api is not None
        while True:
            try:
                listing = await self.api.get("/api/v1/nodes")
                self._peers = {}
                for item in listing.get("items", []):
                    self._note(item, deleted=False)
                await self._reconcile()
                rv = listing["metadata"]["resourceVersion"]
                async for kind, obj in self.api.watch("/api/v1/nodes", resource_version=rv):
                    if kind == "BOOKMARK":
                        continue
                    if self._note(obj, deleted=kind == "DELETED"):
                        await self._reconcile()
            except WatchExpired:
                continue
            except (TimeoutError, ApiError, OSError) as err:
                log.warning("watching nodes for the overlay failed: %s; retrying", err)
                await asyncio.sleep(self.poll_s)

    def _note(self, node: dict[str, Any], *, deleted: bool) -> bool:
        """Record a Node event; True when the set of peers changed."""
        meta = node.get("metadata", {})
        name = str(meta.get("name", ""))
        if not name or name == self.node_name:
            return False
        peer = None
        if not deleted:
            peer = vxlan.peer_from_node(
                name,
                node.get("spec", {}).get("podCIDR"),
                meta.get("annotations"),
                vni=self.settings.vni,
            )
        before = self._peers.get(name)
        if peer is None:
            self._peers.pop(name, None)
        else:
            self._peers[name] = peer
        return before != peer

    async def _reconcile(self) -> None:
        assert self._vtep is not None
        peers = list(self._peers.values())
        try:
            ops = await asyncio.to_thread(self._vtep.reconcile, peers)
        except Exception:  # netlink errors of every kind: log; the next Node event retries
            log.exception("overlay reconcile failed for %d peers", len(peers))
            return
        for op in ops:
            log.info("overlay: %s", op)
