"""The `kpy-isolation` plugin: Docker's --icc=false for a bridge network.

A chained plugin: after `bridge`, it puts the pod's IPv4 address into the
network's `isolated` set in a `bridge`-family nftables table, whose forward
chain drops frames bridged between pods of that network. Only bridged
(pod-to-pod on one node) traffic passes that hook, so traffic to and from the
node, other nodes and the outside still flows. `allow` lists CIDR pairs that
may talk anyway: [{"src": "10.244.1.0/28", "dst": "10.244.1.16/28"}] (both ways).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from cni import nft
from cni.errors import CNIError, Code
from cni.plugins import skel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

AllowPair = tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]


def parse_allow(config: Mapping[str, Any]) -> list[AllowPair]:
    """The `allow` list as network pairs (pure); a bad entry is code 7."""
    out = []
    for item in config.get("allow") or ():
        try:
            out.append(
                (
                    ipaddress.IPv4Network(str(item["src"]), strict=False),
                    ipaddress.IPv4Network(str(item["dst"]), strict=False),
                )
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CNIError(Code.INVALID_CONFIG, "invalid allow entry", repr(item)) from err
    return out


def add(request: skel.Request) -> dict[str, Any]:
    prev = request.prev_result
    if prev is None:
        raise CNIError(
            Code.INVALID_CONFIG, "kpy-isolation must be chained after an interface plugin"
        )
    allow = parse_allow(request.config)
    ips = [str(ip.ip) for ip in prev.sandbox_ips(request.netns) if ip.version == 4]
    nft.apply(
        nft.isolation_script(request.network, allow, [(ip, request.attachment_key()) for ip in ips])
    )
    return {**dict(request.config["prevResult"]), "cniVersion": request.cni_version}


def _remove(request: skel.Request, keep: set[str] | None) -> None:
    table = nft.isolation_table(request.network)
    stale = [
        e.key
        for e in nft.list_elements("bridge", table, "set", "isolated")
        if (keep is None and e.comment == request.attachment_key())
        or (keep is not None and e.comment not in keep)
    ]
    script = nft.delete_script("bridge", table, "isolated", stale)
    if script:
        nft.apply(script)


def delete(request: skel.Request) -> None:
    parse_allow(request.config)
    _remove(request, None)
    return None


def check(request: skel.Request) -> None:
    table = nft.isolation_table(request.network)
    mine = [
        e
        for e in nft.list_elements("bridge", table, "set", "isolated")
        if e.comment == request.attachment_key()
    ]
    if not mine:
        raise CNIError(Code.INTERNAL, f"isolation rule of {request.container_id} is missing")
    return None


def gc(request: skel.Request) -> None:
    keep = {f"{request.network}/{cid}/{ifn}" for cid, ifn in request.valid_attachments()}
    _remove(request, keep)
    return None


PLUGIN = skel.Plugin(name="kpy-isolation", add=add, delete=delete, check=check, gc=gc)


def main() -> int:
    return skel.run(PLUGIN)
