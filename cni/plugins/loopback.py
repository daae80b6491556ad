"""The `loopback` plugin: bring `lo` up inside the pod's network namespace.

ADD reports lo with 127.0.0.1/8 and ::1/128 (or passes a prevResult through);
DEL sets it down when the namespace still exists and succeeds when it does not.
"""

from __future__ import annotations

import os

from cni import nl
from cni.errors import CNIError, Code
from cni.plugins import skel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _set_lo(path: str, up: bool) -> None:
    with nl.Netlink(path) as link:
        lo = link.link("lo")
        if lo is None:
            raise CNIError(Code.INTERNAL, f"no lo in {path}")
        link.link_set(lo.index, up=up)


def add(request: skel.Request) -> dict[str, Any]:
    _set_lo(request.netns, True)
    prev = request.config.get("prevResult")
    if prev:
        return {**prev, "cniVersion": request.cni_version}
    return {
        "cniVersion": request.cni_version,
        "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": request.netns}],
        "ips": [
            {"interface": 0, "address": "127.0.0.1/8"},
            {"interface": 0, "address": "::1/128"},
        ],
    }


def delete(request: skel.Request) -> None:
    if not request.netns or not os.path.exists(request.netns):
        return None
    try:
        _set_lo(request.netns, False)
    except CNIError as err:
        if err.code != Code.UNKNOWN_CONTAINER:
            raise
    return None


def check(request: skel.Request) -> None:
    with nl.Netlink(request.netns) as link:
        lo = link.link("lo")
        if lo is None or not lo.flags & nl.IFF_UP:
            raise CNIError(Code.INTERNAL, f"lo is down in {request.netns}")
    return None


PLUGIN = skel.Plugin(name="loopback", add=add, delete=delete, check=check)


def main() -> int:
    return skel.run(PLUGIN)
