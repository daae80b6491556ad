"""A flannel-like VXLAN overlay between nodes: one VTEP per node, reconciled from Nodes.

Each node owns a pod CIDR and a VXLAN device (the VTEP) addressed with the
CIDR's network address (/32). It publishes the VTEP's MAC and its underlay IP
in two Node annotations. For every *remote* node, the local node programs

    route  <remote pod CIDR> via <remote VTEP IP> dev <vtep> onlink
    neigh  <remote VTEP IP> lladdr <remote VTEP MAC> dev <vtep> nud permanent
    fdb    <remote VTEP MAC> dst <remote underlay IP> dev <vtep> self permanent

and nothing else (learning is off), exactly as flannel's vxlan backend does.
The MTU of the VTEP (and of pods on the overlay) is the underlay's minus 50
bytes of VXLAN/UDP/IP/Ethernet headers.

`plan(desired, actual)` is pure: it compares sets and returns the operations
that close the gap (deletes first: routes, neighbours, FDB; then adds: FDB,
neighbours, routes, so a route never points at an unresolved next hop).
`Vtep.reconcile(peers)` observes the kernel, plans, applies; the node agent
calls it (in a thread, it blocks on netlink) whenever Nodes change.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cni import netns
from cni.errors import CNIError, Code

ANNOTATION_VTEP_MAC = "vxlan.kubelet-py.io/vtep-mac"
ANNOTATION_PUBLIC_IP = "vxlan.kubelet-py.io/public-ip"
ANNOTATION_VNI = "vxlan.kubelet-py.io/vni"
VXLAN_OVERHEAD = 50
DEFAULT_PORT = 8472  # the Linux kernel's historical VXLAN port, as flannel uses
_NUD_PERMANENT = 0x80
_NTF_SELF = 0x02
_RTNH_F_ONLINK = 0x04
_AF_INET = 2
_AF_BRIDGE = 7
_EEXIST = 17


@dataclass(frozen=True, order=True)
class Peer:
    """A remote node as its Node object describes it."""

    node: str
    pod_cidr: ipaddress.IPv4Network
    vtep_mac: str
    underlay_ip: ipaddress.IPv4Address

    @property
    def vtep_ip(self) -> ipaddress.IPv4Address:
        return self.pod_cidr.network_address


def node_annotations(vtep_mac: str, underlay_ip: ipaddress.IPv4Address, vni: int) -> dict[str, str]:
    """What a node publishes on its own Node object."""
    return {
        ANNOTATION_VTEP_MAC: vtep_mac,
        ANNOTATION_PUBLIC_IP: str(underlay_ip),
        ANNOTATION_VNI: str(vni),
    }


def peer_from_node(
    name: str, pod_cidr: str | None, annotations: Mapping[str, str] | None, *, vni: int
) -> Peer | None:
    """A Peer from a Node's name, spec.podCIDR and annotations; None if it is not ready."""
    ann = annotations or {}
    mac, ip = ann.get(ANNOTATION_VTEP_MAC), ann.get(ANNOTATION_PUBLIC_IP)
    if not pod_cidr or not mac or not ip or ann.get(ANNOTATION_VNI, str(vni)) != str(vni):
        return None
    try:
        return Peer(
            node=name,
            pod_cidr=ipaddress.IPv4Network(pod_cidr),
            vtep_mac=mac.lower(),
            underlay_ip=ipaddress.IPv4Address(ip),
        )
    except ValueError:
        return None


def peers_from_nodes(nodes: Iterable[Mapping[str, Any]], *, vni: int) -> list[Peer]:
    """Peers from Node objects as the API returns them (JSON dicts); unready nodes skipped."""
    out = []
    for node in nodes:
        meta = node.get("metadata") or {}
        spec = node.get("spec") or {}
        peer = peer_from_node(
            str(meta.get("name") or ""), spec.get("podCIDR"), meta.get("annotations"), vni=vni
        )
        if peer is not None:
            out.append(peer)
    return out


@dataclass(frozen=True)
class Actual:
    """What the kernel has on the VTEP now."""

    routes: frozenset[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address]] = frozenset()
    neighbours: frozenset[tuple[ipaddress.IPv4Address, str]] = frozenset()
    fdb: frozenset[tuple[str, ipaddress.IPv4Address]] = frozenset()


@dataclass(frozen=True)
class Op:
    """One change: add or delete a route, a neighbour or an FDB entry."""

    action: Literal["add", "del"]
    kind: Literal["route", "neigh", "fdb"]
    key: tuple[Any, Any]

    def __str__(self) -> str:
        a, b = self.key
        text = {
            "route": f"route {a} via {b}",
            "neigh": f"neigh {a} lladdr {b}",
            "fdb": f"fdb {a} dst {b}",
        }[self.kind]
        return f"{self.action} {text}"


def desired_state(peers: Iterable[Peer], *, local_node: str) -> Actual:
    """The entries the remote peers need (pure); a later duplicate CIDR is ignored."""
    routes, neighs, fdb = set(), set(), set()
    seen_cidrs: set[ipaddress.IPv4Network] = set()
    for p in sorted(peers):
        if p.node == local_node or p.pod_cidr in seen_cidrs:
            continue
        seen_cidrs.add(p.pod_cidr)
        routes.add((p.pod_cidr, p.vtep_ip))
        neighs.add((p.vtep_ip, p.vtep_mac))
        fdb.add((p.vtep_mac, p.underlay_ip))
    return Actual(frozenset(routes), frozenset(neighs), frozenset(fdb))


def plan(peers: Iterable[Peer], actual: Actual, *, local_node: str) -> list[Op]:
    """Operations that turn `actual` into what `peers` need (pure)."""
    want = desired_state(peers, local_node=local_node)
    ops: list[Op] = []
    ops += [Op("del", "route", k) for k in sorted(actual.routes - want.routes, key=str)]
    ops += [Op("del", "neigh", k) for k in sorted(actual.neighbours - want.neighbours, key=str)]
    ops += [Op("del", "fdb", k) for k in sorted(actual.fdb - want.fdb, key=str)]
    ops += [Op("add", "fdb", k) for k in sorted(want.fdb - actual.fdb, key=str)]
    ops += [Op("add", "neigh", k) for k in sorted(want.neighbours - actual.neighbours, key=str)]
    ops += [Op("add", "route", k) for k in sorted(want.routes - actual.routes, key=str)]
    return ops


def vtep_mac_for(node: str) -> str:
    """A stable, locally administered MAC for a node's VTEP (survives re-creation)."""
    d = hashlib.sha256(f"vtep/{node}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0E, d[0], d[1], d[2], d[3], d[4]))


@dataclass(frozen=True)
class VtepConfig:
    """The local VTEP: device name, VNI, UDP port, underlay device and address, pod CIDR."""

    node: str
    pod_cidr: ipaddress.IPv4Network
    underlay_ip: ipaddress.IPv4Address
    underlay_dev: str
    device: str = "kpy.1"
    vni: int = 1
    port: int = DEFAULT_PORT


class Vtep:
    """The VXLAN device of one node, in the current or a given network namespace.

    Blocking (netlink); one instance may be reused for many reconciles.
    """

    def __init__(self, config: VtepConfig, *, netns_path: str | None = None) -> None:
        self.config = config
        self.netns_path = netns_path

    def _ipr(self) -> Any:
        return netns.iproute(self.netns_path)

    def ensure(self) -> tuple[str, int]:
        """Create the VTEP if missing; returns (its MAC, its MTU)."""
        c = self.config
        ipr = self._ipr()
        try:
            under = ipr.link_lookup(ifname=c.underlay_dev)
            if not under:
                raise CNIError(Code.INVALID_CONFIG, f"underlay device {c.underlay_dev} not found")
            under_mtu = int(ipr.get_links(under[0])[0].get_attr("IFLA_MTU"))
            mtu = under_mtu - VXLAN_OVERHEAD
            if not ipr.link_lookup(ifname=c.device):
                try:
                    ipr.link(
                        "add",
                        ifname=c.device,
                        kind="vxlan",
                        vxlan_id=c.vni,
                        vxlan_local=str(c.underlay_ip),
                        vxlan_port=c.port,
                        vxlan_link=under[0],
                        vxlan_learning=0,
                        mtu=mtu,
                        address=vtep_mac_for(c.node),
                    )
                except Exception as err:
                    if netns.netlink_error_code(err) != _EEXIST:
                        raise CNIError(
                            Code.NETLINK_FAILURE, f"cannot create VTEP {c.device}", str(err)
                        ) from err
            idx = ipr.link_lookup(ifname=c.device)[0]
            have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx)}
            vtep_ip = str(c.pod_cidr.network_address)
            if vtep_ip not in have:
                ipr.addr("add", index=idx, address=vtep_ip, prefixlen=32)
            ipr.link("set", index=idx, state="up")
            link = ipr.get_links(idx)[0]
            return str(link.get_attr("IFLA_ADDRESS")), int(link.get_attr("IFLA_MTU"))
        finally:
            ipr.close()

    def remove(self) -> None:
        """Delete the VTEP (its routes, neighbours and FDB entries go with it)."""
        ipr = self._ipr()
        try:
            found = ipr.link_lookup(ifname=self.config.device)
            if found:
                ipr.link("del", index=found[0])
        finally:
            ipr.close()

    def observe(self) -> Actual:
        ipr = self._ipr()
        try:
            return self._observe(ipr, self._index(ipr))
        finally:
            ipr.close()

    def _index(self, ipr: Any) -> int:
        found = ipr.link_lookup(ifname=self.config.device)
        if not found:
            raise CNIError(Code.NOT_AVAILABLE, f"VTEP {self.config.device} does not exist")
        return int(found[0])

    @staticmethod
    def _observe(ipr: Any, idx: int) -> Actual:
        routes = set()
        for r in ipr.get_routes(family=_AF_INET, oif=idx):
            dst, gw = r.get_attr("RTA_DST"), r.get_attr("RTA_GATEWAY")
            if dst is None or gw is None or r.get_attr("RTA_TABLE") != 254:
                continue
            routes.add((ipaddress.IPv4Network(f"{dst}/{r['dst_len']}"), ipaddress.IPv4Address(gw)))
        neighs = set()
        for n in ipr.get_neighbours(family=_AF_INET, ifindex=idx):
            if n["state"] & _NUD_PERMANENT and n.get_attr("NDA_LLADDR"):
                neighs.add(
                    (ipaddress.IPv4Address(n.get_attr("NDA_DST")), str(n.get_attr("NDA_LLADDR")))
                )
        fdb = set()
        for f in ipr.fdb("dump", ifindex=idx):
            dst, mac = f.get_attr("NDA_DST"), f.get_attr("NDA_LLADDR")
            if f["ifindex"] != idx or not dst or not mac or mac == "00:00:00:00:00:00":
                continue
            fdb.add((str(mac), ipaddress.IPv4Address(dst)))
        return Actual(frozenset(routes), frozenset(neighs), frozenset(fdb))

    def apply(self, ops: Iterable[Op]) -> None:
        ipr = self._ipr()
        try:
            idx = self._index(ipr)
            for op in ops:
                self._apply_one(ipr, idx, op)
        finally:
            ipr.close()

    @staticmethod
    def _apply_one(ipr: Any, idx: int, op: Op) -> None:
        a, b = op.key
        try:
            if op.kind == "route":
                ipr.route(op.action, dst=str(a), gateway=str(b), oif=idx, flags=_RTNH_F_ONLINK)
            elif op.kind == "neigh":
                ipr.neigh(op.action, dst=str(a), lladdr=b, ifindex=idx, state=_NUD_PERMANENT)
            else:
                ipr.fdb(
                    "append" if op.action == "add" else "del",
                    ifindex=idx,
                    lladdr=a,
                    dst=str(b),
                    state=_NUD_PERMANENT,
                )
        except Exception as err:
            code = netns.netlink_error_code(err)
            if (op.action == "add" and code == _EEXIST) or (op.action == "del" and code in (2, 3)):
                return
            raise CNIError(Code.NETLINK_FAILURE, f"vxlan: {op} failed", str(err)) from err

    def reconcile(self, peers: Iterable[Peer]) -> list[Op]:
        """Make the kernel match `peers` (remote nodes); returns the operations done."""
        ipr = self._ipr()
        try:
            idx = self._index(ipr)
            ops = plan(peers, self._observe(ipr, idx), local_node=self.config.node)
            for op in ops:
                self._apply_one(ipr, idx, op)
            return ops
        finally:
            ipr.close()


def reconcile(
    config: VtepConfig, peers: Iterable[Peer], *, netns_path: str | None = None
) -> list[Op]:
    """One call for the node agent: ensure the VTEP, then reconcile it with `peers`."""
    vtep = Vtep(config, netns_path=netns_path)
    vtep.ensure()
    return vtep.reconcile(peers)
