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
hairpinMode, ipMasq, ipMasqExclude (list of CIDRs; ours), forceAddress is
not needed because the gateway address is only ever added.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cni import netns
from cni.errors import CNIError, Code
from cni.plugins import skel
from cni.types import IPAddress, Result

_EEXIST = 17
_ENODEV = 19
_ESRCH = 3
_ENOENT = 2


@dataclass(frozen=True)
class BridgeConfig:
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
    digest = hashlib.sha256(f"{network}/{container_id}/{ifname}".encode()).hexdigest()
    return "veth" + digest[:11]


def bridge_mac(bridge: str) -> str:
    """A locally administered unicast MAC derived from the bridge name."""
    d = hashlib.sha256(bridge.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0A, 0x58, d[0], d[1], d[2], d[3]))


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _mac(ipr: Any, index: int) -> str:
    link = ipr.get_links(index)[0]
    return str(link.get_attr("IFLA_ADDRESS") or "")


def _ensure_bridge(ipr: Any, cfg: BridgeConfig) -> int:
    index = _index(ipr, cfg.bridge)
    if index is None:
        try:
            ipr.link(
                "add", ifname=cfg.bridge, kind="bridge", mtu=cfg.mtu, address=bridge_mac(cfg.bridge)
            )
        except Exception as err:
            if netns.netlink_error_code(err) != _EEXIST:  # a concurrent ADD made it first
                raise CNIError(
                    Code.NETLINK_FAILURE, f"cannot create bridge {cfg.bridge}", str(err)
                ) from err
        index = _index(ipr, cfg.bridge)
        if index is None:
            raise CNIError(Code.NETLINK_FAILURE, f"bridge {cfg.bridge} vanished after creation")
    link = ipr.get_links(index)[0]
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "bridge":
        raise CNIError(Code.INVALID_CONFIG, f"{cfg.bridge} exists and is not a bridge")
    ipr.link("set", index=index, state="up")
    return index


def _ignore(fn: Any, *codes: int) -> None:
    try:
        fn()
    except Exception as err:
        if netns.netlink_error_code(err) not in codes:
            raise


def add(request: skel.Request) -> dict[str, Any]:
    cfg = parse_config(request.config)
    try:
        ns_fd = os.open(request.netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise CNIError(
            Code.UNKNOWN_CONTAINER, f"network namespace {request.netns} does not exist", str(err)
        ) from err
    ipr = netns.iproute()
    host_name = host_veth_name(request.network, request.container_id, request.ifname)
    ipam_done = veth_made = False
    try:
        br_index = _ensure_bridge(ipr, cfg)
        ipam_raw = skel.delegate(request, cfg.ipam_type, "ADD") or {}
        ipam_done = True
        ipam_result = Result.from_json(ipam_raw)
        if not ipam_result.ips:
            raise CNIError(Code.INVALID_CONFIG, f"IPAM plugin {cfg.ipam_type} returned no IP")
        try:
            ipr.link(
                "add",
                ifname=host_name,
                kind="veth",
                mtu=cfg.mtu,
                peer={"ifname": request.ifname, "net_ns_fd": ns_fd, "mtu": cfg.mtu},
            )
        except Exception as err:
            code = netns.netlink_error_code(err)
            if code == _EEXIST:
                raise CNIError(
                    Code.INVALID_CONFIG,
                    f"interface {request.ifname} (or host end {host_name}) already exists",
                    "an attachment must be DELeted before it is added again",
                ) from err
            raise CNIError(
                Code.NETLINK_FAILURE, f"cannot create veth {host_name}", str(err)
            ) from err
        veth_made = True
        host_index = _index(ipr, host_name)
        if host_index is None:
            raise CNIError(Code.NETLINK_FAILURE, f"veth {host_name} vanished after creation")
        ipr.link("set", index=host_index, master=br_index, state="up")
        if cfg.hairpin:
            ipr.brport("set", index=host_index, mode=1)

        # Gateway addresses on the bridge (idempotent), forwarding on.
        for ipc in ipam_result.ips:
            if cfg.is_gateway and ipc.gateway is not None:
                gateway = ipc.gateway
                _ignore(
                    lambda gateway=gateway, ipc=ipc: ipr.addr(
                        "add",
                        index=br_index,
                        address=str(gateway),
                        prefixlen=ipc.address.network.prefixlen,
                    ),
                    _EEXIST,
                )
        if cfg.is_gateway:
            netns.write_sysctl("net/ipv4/ip_forward", "1")
            if any(i.address.version == 6 for i in ipam_result.ips):
                netns.write_sysctl("net/ipv6/conf/all/forwarding", "1")

        ns_ipr = netns.iproute(request.netns)
        try:
            pod_index = _index(ns_ipr, request.ifname)
            if pod_index is None:
                raise CNIError(Code.NETLINK_FAILURE, f"{request.ifname} missing in {request.netns}")
            for ipc in ipam_result.ips:
                ns_ipr.addr(
                    "add",
                    index=pod_index,
                    address=str(ipc.address.ip),
                    prefixlen=ipc.address.network.prefixlen,
                )
            ns_ipr.link("set", index=pod_index, state="up")
            routes = list(ipam_result.routes)
            for ipc in ipam_result.ips:
                if cfg.is_default_gateway and ipc.gateway is not None:
                    dst = "0.0.0.0/0" if ipc.address.version == 4 else "::/0"
                    ns_ipr.route("add", dst=dst, gateway=str(ipc.gateway), oif=pod_index)
            for route in routes:
                if cfg.is_default_gateway and route.dst.prefixlen == 0:
                    continue  # the default route was just added
                gw: IPAddress | None = route.gw or next(
                    (i.gateway for i in ipam_result.ips if i.address.version == route.dst.version),
                    None,
                )
                kw: dict[str, Any] = {"dst": str(route.dst), "oif": pod_index}
                if gw is not None:
                    kw["gateway"] = str(gw)
                _ignore(lambda kw=kw: ns_ipr.route("add", **kw), _EEXIST)
            pod_mac = _mac(ns_ipr, pod_index)
        finally:
            ns_ipr.close()

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
                {"name": cfg.bridge, "mac": _mac(ipr, br_index)},
                {"name": host_name, "mac": _mac(ipr, host_index)},
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
            _ignore(lambda: ipr.link("del", ifname=host_name), _ENODEV, _ENOENT)
        if ipam_done:
            try:
                skel.delegate(request, cfg.ipam_type, "DEL")
            except CNIError:
                pass
        raise
    else:
        return result
    finally:
        ipr.close()
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
    ipr = netns.iproute()
    try:
        host_name = host_veth_name(request.network, request.container_id, request.ifname)
        _ignore(lambda: ipr.link("del", ifname=host_name), _ENODEV, _ENOENT)
    finally:
        ipr.close()
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
    ipr = netns.iproute()
    try:
        br = _index(ipr, cfg.bridge)
        if br is None:
            raise CNIError(Code.INTERNAL, f"bridge {cfg.bridge} is missing")
        host = _index(ipr, host_veth_name(request.network, request.container_id, request.ifname))
        if host is None:
            raise CNIError(Code.INTERNAL, f"host veth of {request.container_id} is missing")
        if ipr.get_links(host)[0].get_attr("IFLA_MASTER") != br:
            raise CNIError(
                Code.INTERNAL, f"host veth of {request.container_id} is not on {cfg.bridge}"
            )
    finally:
        ipr.close()
    ns_ipr = netns.iproute(request.netns)
    try:
        idx = _index(ns_ipr, request.ifname)
        if idx is None:
            raise CNIError(Code.INTERNAL, f"{request.ifname} is missing in {request.netns}")
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ns_ipr.get_addr(index=idx)}
        for ip in prev.sandbox_ips(request.netns):
            if (str(ip.ip), ip.network.prefixlen) not in have:
                raise CNIError(
                    Code.INTERNAL, f"{ip} is missing on {request.ifname} in {request.netns}"
                )
    finally:
        ns_ipr.close()
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
