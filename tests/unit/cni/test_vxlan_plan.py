"""The VXLAN reconciler's pure plan: one route, neighbour and FDB entry per remote node."""

import ipaddress

from cni import vxlan

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address


def peer(i: int, mac: str | None = None) -> vxlan.Peer:
    return vxlan.Peer(
        f"n{i}", N(f"10.244.{i}.0/24"), mac or f"0e:00:00:00:00:0{i}", A(f"10.0.0.{i}")
    )


def test_plan_from_empty_adds_fdb_then_neigh_then_route_for_remote_nodes_only() -> None:
    """The local node gets nothing; each remote node gets three entries in a safe order."""
    ops = vxlan.plan([peer(1), peer(2), peer(3)], vxlan.Actual(), local_node="n1")
    assert [str(o) for o in ops] == [
        "add fdb 0e:00:00:00:00:02 dst 10.0.0.2",
        "add fdb 0e:00:00:00:00:03 dst 10.0.0.3",
        "add neigh 10.244.2.0 lladdr 0e:00:00:00:00:02",
        "add neigh 10.244.3.0 lladdr 0e:00:00:00:00:03",
        "add route 10.244.2.0/24 via 10.244.2.0",
        "add route 10.244.3.0/24 via 10.244.3.0",
    ]


def test_plan_is_empty_when_converged() -> None:
    """Applying the desired state again plans nothing."""
    peers = [peer(1), peer(2)]
    assert vxlan.plan(peers, vxlan.desired_state(peers, local_node="n1"), local_node="n1") == []


def test_node_leaving_removes_its_entries_route_first() -> None:
    """A peer that disappears loses route, neighbour and FDB entry, in that order."""
    actual = vxlan.desired_state([peer(2), peer(3)], local_node="n1")
    ops = vxlan.plan([peer(2)], actual, local_node="n1")
    assert [str(o) for o in ops] == [
        "del route 10.244.3.0/24 via 10.244.3.0",
        "del neigh 10.244.3.0 lladdr 0e:00:00:00:00:03",
        "del fdb 0e:00:00:00:00:03 dst 10.0.0.3",
    ]


def test_changed_mac_replaces_neigh_and_fdb_but_keeps_route() -> None:
    """A re-created VTEP (new MAC) swaps neighbour and FDB entries; the route stays."""
    actual = vxlan.desired_state([peer(2)], local_node="n1")
    ops = vxlan.plan([peer(2, "0e:00:00:00:00:99")], actual, local_node="n1")
    kinds = [(o.action, o.kind) for o in ops]
    assert kinds == [("del", "neigh"), ("del", "fdb"), ("add", "fdb"), ("add", "neigh")]


def test_peer_from_node_annotations() -> None:
    """Nodes publish MAC, underlay IP and VNI; incomplete or foreign-VNI nodes are skipped."""
    ann = vxlan.node_annotations("0E:00:00:00:00:02", A("10.0.0.2"), 1)
    assert vxlan.peer_from_node("n2", "10.244.2.0/24", ann, vni=1) == peer(2)
    assert vxlan.peer_from_node("n2", None, ann, vni=1) is None
    assert vxlan.peer_from_node("n2", "10.244.2.0/24", ann, vni=7) is None
    assert vxlan.peer_from_node("n2", "10.244.2.0/24", {}, vni=1) is None


def test_vtep_mac_is_stable_and_locally_administered() -> None:
    """The same node always gets the same unicast, locally administered MAC."""
    mac = vxlan.vtep_mac_for("node-a")
    assert mac == vxlan.vtep_mac_for("node-a") != vxlan.vtep_mac_for("node-b")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


def test_peers_from_node_objects() -> None:
    """Node JSON (name, spec.podCIDR, annotations) becomes peers; unready nodes are skipped."""
    ann = vxlan.node_annotations("0e:00:00:00:00:02", A("10.0.0.2"), 1)
    nodes = [
        {"metadata": {"name": "n2", "annotations": ann}, "spec": {"podCIDR": "10.244.2.0/24"}},
        {"metadata": {"name": "n3"}, "spec": {"podCIDR": "10.244.3.0/24"}},
        {"metadata": {"name": "n4", "annotations": ann}, "spec": {}},
    ]
    assert vxlan.peers_from_nodes(nodes, vni=1) == [peer(2)]
