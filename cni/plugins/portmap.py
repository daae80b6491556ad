"""The `portmap` plugin: hostPort -> pod port for TCP and UDP, with nftables maps.

A chained plugin with the `portMappings` capability (CONVENTIONS.md). ADD puts
one map element per mapping into `ip kpy_portmap` (see `cni.nft`), DNAT for
traffic to any local address (or to the mapping's hostIP) arriving from outside
or sent from the node itself; masquerade makes hairpin (a pod reaching itself
or a neighbour through the host port) and localhost access work, and
route_localnet on the pod's host-side interfaces lets 127.0.0.1 be routed out.
IPv4 pods only; mappings of IPv6 pods are ignored. DEL removes the elements by
their attachment comment; GC removes those of attachments no longer valid.
"""

from __future__ import annotations

from cni import netns, nft
from cni.errors import CNIError, Code
from cni.plugins import skel
from cni.types import PortMapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _mappings(request: skel.Request) -> list[PortMapping]:
    raw = request.runtime_config.get("portMappings") or []
    if not isinstance(raw, list):
        raise CNIError(Code.INVALID_CONFIG, "runtimeConfig.portMappings must be a list")
    return [PortMapping.from_json(m) for m in raw]


def add(request: skel.Request) -> dict[str, Any]:
    prev = request.prev_result
    if prev is None:
        raise CNIError(Code.INVALID_CONFIG, "portmap must be chained after an interface plugin")
    mappings = _mappings(request)
    out: dict[str, Any] = {**dict(request.config["prevResult"]), "cniVersion": request.cni_version}
    if not mappings:
        return out
    v4 = [ip for ip in prev.sandbox_ips(request.netns) if ip.version == 4]
    if not v4:
        return out
    pod_ip = v4[0]
    elements = nft.portmap_elements(mappings, pod_ip, request.attachment_key())
    for iface in prev.interfaces:
        if not iface.sandbox:
            try:
                netns.write_sysctl(f"net/ipv4/conf/{iface.name}/route_localnet", "1")
            except CNIError:
                pass  # host interfaces of other plugins may not exist by that name
    if not nft.try_apply(nft.portmap_add_script(elements)):
        taken = nft.list_table_elements("ip", nft.PORTMAP_TABLE)
        for m in mappings:
            key = f"{m.protocol} . {m.host_port}"
            name = "hostports"
            if m.host_ip and m.host_ip not in ("0.0.0.0", "::"):  # noqa: S104 - "any" address
                key, name = f"{m.host_ip} . {key}", "hostip_ports"
            owner = next((e.comment for e in taken.get(name, []) if e.key == key), None)
            if owner is not None and owner != request.attachment_key():
                raise CNIError(
                    Code.INVALID_CONFIG,
                    f"host port {m.protocol}/{m.host_port} is taken",
                    f"already mapped for {owner}",
                )
        nft.apply(nft.portmap_add_script(elements))  # not a conflict: report nft's own error
    udp_ports = sorted({m.host_port for m in mappings if m.protocol == "udp"})
    try:
        netns.delete_udp_conntrack(udp_ports)
    except Exception as err:
        raise CNIError(
            Code.NETLINK_FAILURE, "portmap: cannot flush stale UDP conntrack entries", str(err)
        ) from err
    return out


def _remove(request: skel.Request, keep: set[str] | None) -> None:
    script = ""
    listing = nft.list_table_elements("ip", nft.PORTMAP_TABLE)
    for name in ("hostports", "hostip_ports", "hairpin"):
        stale = [
            e.key
            for e in listing.get(name, [])
            if (keep is None and e.comment == request.attachment_key())
            or (
                keep is not None
                and e.comment.startswith(request.network + "/")
                and e.comment not in keep
            )
        ]
        script += nft.delete_script("ip", nft.PORTMAP_TABLE, name, stale)
    if script:
        nft.apply(script)


def delete(request: skel.Request) -> None:
    # Fast path: the cached prevResult and mappings name the exact elements, so one
    # nft transaction removes them. If any is already gone nft refuses the whole
    # transaction, and the elements are found again by their comment.
    prev = request.prev_result
    try:
        mappings = _mappings(request)
    except CNIError:
        mappings = []
    v4 = [ip for ip in prev.sandbox_ips(request.netns or None) if ip.version == 4] if prev else []
    if mappings and v4:
        keys = nft.portmap_keys(mappings, v4[0])
        script = "".join(
            nft.delete_script("ip", nft.PORTMAP_TABLE, name, k) for name, k in keys.items()
        )
        if nft.try_apply(script):
            return None
    _remove(request, None)
    return None


def check(request: skel.Request) -> None:
    if request.prev_result is None:
        raise CNIError(Code.INVALID_CONFIG, "portmap CHECK needs prevResult")
    mappings = _mappings(request)
    if not mappings:
        return None
    listing = nft.list_table_elements("ip", nft.PORTMAP_TABLE)
    present = {
        e.key
        for e in listing.get("hostports", []) + listing.get("hostip_ports", [])
        if e.comment == request.attachment_key()
    }
    for m in mappings:
        key = f"{m.protocol} . {m.host_port}"
        if m.host_ip and m.host_ip not in ("0.0.0.0", "::"):  # noqa: S104 - "any" address
            key = f"{m.host_ip} . {key}"
        if key not in present:
            raise CNIError(
                Code.INTERNAL, f"port mapping {key} of {request.container_id} is missing"
            )
    return None


def gc(request: skel.Request) -> None:
    keep = {f"{request.network}/{cid}/{ifn}" for cid, ifn in request.valid_attachments()}
    _remove(request, keep)
    return None


PLUGIN = skel.Plugin(name="portmap", add=add, delete=delete, check=check, gc=gc)


def main() -> int:
    return skel.run(PLUGIN)
