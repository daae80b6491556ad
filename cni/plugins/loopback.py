"""The `loopback` plugin: bring `lo` up inside the pod's network namespace.

ADD reports lo with 127.0.0.1/8 and ::1/128 (or passes a prevResult through);
DEL sets it down when the namespace still exists and succeeds when it does not.
"""

from __future__ import annotations

import os
from typing import Any

from cni import netns
from cni.errors import CNIError, Code
from cni.plugins import skel


def _set_lo(path: str, state: str) -> None:
    ipr = netns.iproute(path)
    try:
        index = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=index, state=state)
    finally:
        ipr.close()


def add(request: skel.Request) -> dict[str, Any]:
    _set_lo(request.netns, "up")
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
    if not request.netns or not os.path.exists(request.netns):  # noqa: PTH110
        return None
    try:
        _set_lo(request.netns, "down")
    except CNIError as err:
        if err.code != Code.UNKNOWN_CONTAINER:
            raise
    return None


def check(request: skel.Request) -> None:
    ipr = netns.iproute(request.netns)
    try:
        link = ipr.get_links(ipr.link_lookup(ifname="lo")[0])[0]
        if link.get_attr("IFLA_OPERSTATE") not in ("UNKNOWN", "UP"):
            raise CNIError(Code.INTERNAL, f"lo is down in {request.netns}")
    finally:
        ipr.close()
    return None


PLUGIN = skel.Plugin(name="loopback", add=add, delete=delete, check=check)


def main() -> int:
    return skel.run(PLUGIN)
