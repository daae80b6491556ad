"""Many pod ADD/DEL cycles leave no veth, IP allocation, nft element, route or cache entry."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cni import PodRef, PortMapping
from tests.integration.cni.conftest import (
    Lab,
    allocations,
    flavour_setup,
    host_links,
    in_netns,
)

CYCLES = int(os.environ.get("KPY_CNI_CYCLES", "200"))


def test_200_add_del_cycles_leave_nothing_behind(lab: Lab, our_bin: Path, tmp_path: Path) -> None:
    """ADD then DEL 200 times (hostPort and masquerade on): the node ends as it started."""
    node, _ = lab.node_with_underlay()
    mgr = flavour_setup("ours", our_bin, tmp_path, subnet="10.244.10.0/24")
    warm = lab.netns("warm")  # makes the bridge and the nft tables once
    in_netns(node, lambda: mgr.setup("warm", warm, port_mappings=[PortMapping(8080, 80)]))
    in_netns(node, lambda: mgr.teardown("warm", warm))
    links = sorted(host_links(node))

    def routes_now() -> str:
        # "linkdown" only says whether the bridge has a port with carrier at this instant.
        return lab.run(node, "ip", "route").stdout.replace(" linkdown", "")

    routes = routes_now()
    ruleset = lab.run(node, "nft", "list", "ruleset").stdout
    pod = lab.netns("pod")

    def cycles() -> None:
        for i in range(CYCLES):
            mgr.setup(f"c{i}", pod, pod=PodRef("d", f"p{i}"), port_mappings=[PortMapping(8080, 80)])
            mgr.teardown(f"c{i}", pod)
            if i % 50 == 49:
                print(f"cni cycles: {i + 1}/{CYCLES}", file=sys.stderr, flush=True)

    in_netns(node, cycles)
    assert sorted(host_links(node)) == links
    assert host_links(pod) == ["lo"]
    assert routes_now() == routes
    assert lab.run(node, "nft", "list", "ruleset").stdout == ruleset
    assert allocations(tmp_path / "ipam") == []
    assert os.listdir(tmp_path / "cache-net" / "results") == []
