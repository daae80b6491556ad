"""The `bridge` plugin: one Linux bridge per node, a veth per pod, the gateway on the bridge.

ADD: make the bridge (fixed MAC, so pods' ARP entries for the gateway never go
stale as ports come and go), run the IPAM plugin, create a veth pair whose pod
end is born inside CNI_NETNS under CNI_IFNAME, enslave the host end (hairpin
if asked), address the pod end, add its routes, put the gateway address on
the bridge, turn on forwarding and, with `ipMasq`, masquerade pod traffic that
leaves `ipMasqExclude` (default: the pod subnet). On failure everything made
so far is undone, IPAM included.

DEL is best effort and idempotent: IPAM release first, then the host veth
(found by a name derived from network, container ID and ifname, so neither
the netns nor prevResult is needed), then the masquerade elements.

Config keys: bridge (cni0), mtu (1500), isGateway, isDefaultGateway,
hairpinMode, ipMasq, and ours: ipMasqExclude (CIDRs not to masquerade toward,
e.g. the cluster CIDR on an overlay). The gateway address is only ever added,
never replaced, so the reference plugin's forceAddress has no use here.
Netlink goes through `cni.nl` (its own small rtnetlink codec).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from cni import netns, nl
from cni._record import NamedTuple
from cni.errors import CNIError, Code
from cni.plugins import skel
from cni.types import Result

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hashlib import sha256
    from typing import Any

    from cni.types import IPAddress
else:
    try:  # the interpreter's own SHA-256: hashlib would load OpenSSL (~3 ms per process)
        from _sha256 import sha256
    except ImportError:  # other builds or versions
        from hashlib import sha256


class BridgeConfig(NamedTuple):
    """The bridge plugin's validated keys."""

    bridge: str
    mtu: int
    is_gateway: bool
    is_default_gateway: bool
    hairpin: bool
    ip_masq: bool
    masq_exclude: tuple[ipaddress.IPv4Network, ...]
    ipam_type: str


def parse_config(raw: Mapping[str, Any]) -> BridgeConfig:
    """Validate the bridge plugin's keys (pure)."""
    name = str(raw.get("bridge") or "cni0")
    if not skel.valid_ifname(name):
        raise CNIError(Code.INVALID_CONFIG, f"invalid bridge name {name!r}")
    try:
        mtu = int(raw.get("mtu") or 1500)
    except (TypeError, ValueError) as err:
        raise CNIError(Code.INVALID_CONFIG, f"invalid mtu {raw.get('mtu')!r}") from err
    if not 576 <= mtu <= 65535:
        raise CNIError(Code.INVALID_CONFIG, f"mtu {mtu} is out of range 576..65535")
    ipam = raw.get("ipam")
    if not isinstance(ipam, dict) or not ipam.get("type"):
        raise CNIError(Code.INVALID_CONFIG, "bridge needs an ipam object with a type")
    try:
        exclude = tuple(
            ipaddress.IPv4Network(str(n), strict=False) for n in raw.get("ipMasqExclude") or ()
        )
    except ValueError as err:
        raise CNIError(Code.INVALID_CONFIG, "invalid ipMasqExclude", str(err)) from err
    default_gw = bool(raw.get("isDefaultGateway", False))
    return BridgeConfig(
        bridge=name,
        mtu=mtu,
        is_gateway=bool(raw.get("isGateway", False)) or default_gw,
        is_default_gateway=default_gw,
        hairpin=bool(raw.get("hairpinMode", False)),
        ip_masq=bool(raw.get("ipMasq", False)),
        masq_exclude=exclude,
        ipam_type=str(ipam["type"]),
    )


def host_veth_name(network: str, container_id: str, ifname: str) -> str:
    """A stable 15-byte host-side name, so DEL finds the veth without the netns."""
    digest = sha256(f"{network}/{container_id}/{ifname}".encode()).hexdigest()
    return "veth" + digest[:11]


def bridge_mac(bridge: str) -> str:
    """A locally administered unicast MAC derived from the bridge name."""
    d = sha256(bridge.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0A, 0x58, d[0], d[1], d[2], d[3]))


def _ensure_bridge(link: nl.Netlink, cfg: BridgeConfig) -> nl.Link:
    """The bridge (created when missing, up); returns its link message."""
    found = link.link(cfg.bridge)
    if found is None:
        try:
            link.link_add(cfg.bridge, "bridge", mtu=cfg.mtu, address=bridge_mac(cfg.bridge))
        except OSError as err:
            if err.errno != nl.EEXIST:  # a concurrent ADD made it first
                raise CNIError(
                    Code.NETLINK_FAILURE, f"cannot create bridge {cfg.bridge}", str(err)
                ) from err
        found = link.link(cfg.bridge)
        if found is None:
            raise CNIError(Code.NETLINK_FAILURE, f"bridge {cfg.bridge} vanished after creation")
    if found.kind != "bridge":
        raise CNIError(Code.INVALID_CONFIG, f"{cfg.bridge} exists and is not a bridge")
    link.link_set(found.index, up=True)
    return found


def _ignore_exists(fn: Any) -> None:
    try:
        fn()
    except OSError as err:
        if err.errno != nl.EEXIST:
            raise


def add(request: skel.Request) -> dict[str, Any]:
    cfg = parse_config(request.config)
    try:
        ns_fd = os.open(request.netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise CNIError(
            Code.UNKNOWN_CONTAINER, f"network namespace {request.netns} does not exist", str(err)
        ) from err
    host = nl.Netlink()
    host_name = host_veth_name(request.network, request.container_id, request.ifname)
    ipam_done = veth_made = False
    try:
        bridge = _ensure_bridge(host, cfg)
        br_index = bridge.index
        ipam_raw = skel.delegate(request, cfg.ipam_type, "ADD") or {}
        ipam_done = True
        ipam_result = Result.from_json(ipam_raw)
        if not ipam_result.ips:
            raise CNIError(Code.INVALID_CONFIG, f"IPAM plugin {cfg.ipam_type} returned no IP")
        try:
            host.link_add(
                host_name,
                "veth",
                mtu=cfg.mtu,
                peer_name=request.ifname,
                peer_netns_fd=ns_fd,
            )
        except OSError as err:
            if err.errno == nl.EEXIST:
                raise CNIError(
                    Code.INVALID_CONFIG,
                    f"interface {request.ifname} (or host end {host_name}) already exists",
                    "an attachment must be DELeted before it is added again",
                ) from err
            raise CNIError(
                Code.NETLINK_FAILURE, f"cannot create veth {host_name}", str(err)
            ) from err
        veth_made = True
        host_link = host.link(host_name)
        if host_link is None:
            raise CNIError(Code.NETLINK_FAILURE, f"veth {host_name} vanished after creation")
        host_index = host_link.index
        host.link_set(host_index, up=True, master=br_index)
        if cfg.hairpin:
            host.hairpin(host_index)

        # Gateway addresses on the bridge (idempotent), forwarding on.
        if cfg.is_gateway:
            for ipc in ipam_result.ips:
                if ipc.gateway is not None:
                    gw_if = ipaddress.ip_interface(f"{ipc.gateway}/{ipc.address.network.prefixlen}")
                    _ignore_exists(lambda gw_if=gw_if: host.addr_add(br_index, gw_if))
            netns.write_sysctl("net/ipv4/ip_forward", "1")
            if any(i.address.version == 6 for i in ipam_result.ips):
                netns.write_sysctl("net/ipv6/conf/all/forwarding", "1")

        with nl.Netlink(request.netns) as pod:
            pod_link = pod.link(request.ifname)
            if pod_link is None:
                raise CNIError(Code.NETLINK_FAILURE, f"{request.ifname} missing in {request.netns}")
            pod_index = pod_link.index
            for ipc in ipam_result.ips:
                pod.addr_add(pod_index, ipc.address)
            pod.link_set(pod_index, up=True)
            for ipc in ipam_result.ips:
                if cfg.is_default_gateway and ipc.gateway is not None:
                    default = ipaddress.ip_network(
                        "0.0.0.0/0" if ipc.address.version == 4 else "::/0"
                    )
                    pod.route_add(default, oif=pod_index, gateway=ipc.gateway)
            for route in ipam_result.routes:
                if cfg.is_default_gateway and route.dst.prefixlen == 0:
                    continue  # the default route was just added
                gw: IPAddress | None = route.gw or next(
                    (i.gateway for i in ipam_result.ips if i.address.version == route.dst.version),
                    None,
                )
                _ignore_exists(
                    lambda route=route, gw=gw: pod.route_add(route.dst, oif=pod_index, gateway=gw)
                )
            pod_mac = pod_link.mac

        if cfg.ip_masq:
            from cni import nft

            exclude = list(cfg.masq_exclude) or [
                i.address.network for i in ipam_result.ips if i.address.version == 4
            ]
            elements = [
                (str(i.address.ip), request.attachment_key())
                for i in ipam_result.ips
                if i.address.version == 4
            ]
            nft.apply(nft.masq_script(cfg.bridge, exclude, elements))

        result: dict[str, Any] = {
            "cniVersion": request.cni_version,
            "interfaces": [
                {"name": cfg.bridge, "mac": bridge.mac},
                {"name": host_name, "mac": host_link.mac},
                {"name": request.ifname, "mac": pod_mac, "sandbox": request.netns, "mtu": cfg.mtu},
            ],
            "ips": [{**i.to_json(), "interface": 2} for i in ipam_result.ips],
        }
        if ipam_result.routes:
            result["routes"] = [r.to_json() for r in ipam_result.routes]
        dns = ipam_result.dns.to_json() or request.config.get("dns")
        if dns:
            result["dns"] = dns
    except BaseException:
        if veth_made:
            try:
                host.link_del(host_name)
            except OSError:
                pass
        if ipam_done:
            try:
                skel.delegate(request, cfg.ipam_type, "DEL")
            except CNIError:
                pass
        raise
    else:
        return result
    finally:
        host.close()
        os.close(ns_fd)


def _masq_cleanup(cfg: BridgeConfig, network: str, keep: set[str] | None, key: str | None) -> None:
    """Remove masquerade elements of one attachment (`key`), or those of `network` not in `keep`."""
    from cni import nft

    table = nft.masq_table(cfg.bridge)
    stale = [
        e.key
        for e in nft.list_elements("ip", table, "set", "pods")
        if (key is not None and e.comment == key)
        or (keep is not None and e.comment.startswith(network + "/") and e.comment not in keep)
    ]
    script = nft.delete_script("ip", table, "pods", stale)
    if script:
        nft.apply(script)


def delete(request: skel.Request) -> None:
    cfg = parse_config(request.config)
    errors: list[str] = []
    try:
        skel.delegate(request, cfg.ipam_type, "DEL")
    except CNIError as err:
        errors.append(str(err))
    with nl.Netlink() as host:
        host.link_del(host_veth_name(request.network, request.container_id, request.ifname))
    if cfg.ip_masq:
        from cni import nft

        prev = request.prev_result
        ips = [str(i.ip) for i in prev.sandbox_ips() if i.version == 4] if prev else []
        fast = nft.delete_script("ip", nft.masq_table(cfg.bridge), "pods", ips)
        if not (fast and nft.try_apply(fast)):  # fall back to finding them by comment
            _masq_cleanup(cfg, request.network, None, request.attachment_key())
    if errors:
        raise CNIError(Code.INTERNAL, "bridge DEL: IPAM release failed", "; ".join(errors))
    return None


def check(request: skel.Request) -> None:
    cfg = parse_config(request.config)
    prev = request.prev_result
    if prev is None:
        raise CNIError(Code.INVALID_CONFIG, "bridge CHECK needs prevResult")
    skel.delegate(request, cfg.ipam_type, "CHECK")
    with nl.Netlink() as host:
        bridge = host.link(cfg.bridge)
        if bridge is None:
            raise CNIError(Code.INTERNAL, f"bridge {cfg.bridge} is missing")
        veth = host.link(host_veth_name(request.network, request.container_id, request.ifname))
        if veth is None:
            raise CNIError(Code.INTERNAL, f"host veth of {request.container_id} is missing")
        if veth.master != bridge.index:
            raise CNIError(
                Code.INTERNAL, f"host veth of {request.container_id} is not on {cfg.bridge}"
            )
    with nl.Netlink(request.netns) as pod:
        link = pod.link(request.ifname)
        if link is None:
            raise CNIError(Code.INTERNAL, f"{request.ifname} is missing in {request.netns}")
        have = pod.addrs(link.index)
        for ip in prev.sandbox_ips(request.netns):
            if (str(ip.ip), ip.network.prefixlen) not in have:
                raise CNIError(
                    Code.INTERNAL, f"{ip} is missing on {request.ifname} in {request.netns}"
                )
    return None


def status(request: skel.Request) -> None:
    cfg = parse_config(request.config)
    skel.delegate(request, cfg.ipam_type, "STATUS")
    return None


def gc(request: skel.Request) -> None:
    cfg = parse_config(request.config)
    errors: list[str] = []
    try:
        skel.delegate(request, cfg.ipam_type, "GC")
    except CNIError as err:
        errors.append(str(err))
    if cfg.ip_masq:
        keep = {f"{request.network}/{cid}/{ifn}" for cid, ifn in request.valid_attachments()}
        _masq_cleanup(cfg, request.network, keep, None)
    if errors:
        raise CNIError(Code.INTERNAL, "bridge GC: IPAM GC failed", "; ".join(errors))
    return None


PLUGIN = skel.Plugin(name="bridge", add=add, delete=delete, check=check, status=status, gc=gc)


def main() -> int:
    return skel.run(PLUGIN)
