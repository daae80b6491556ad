"""Two nodes on a lab underlay, a VXLAN overlay between them, pods on each.

    <prefix>-lab   bridge ubr ──veth── <prefix>-n1 eth0 10.99.0.10  (pods 10.244.1.0/24)
                              ──veth── <prefix>-n2 eth0 10.99.0.11  (pods 10.244.2.0/24)

Each node runs our bridge chain (MTU 1450) and a VTEP; peers come from the
annotations each node would publish on its Node object.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cni import PodRef, vxlan
from tests.integration.cni.conftest import Lab, chain, in_netns, manager, sh, tcp_echo, tcp_talk


def _node(lab: Lab, lab_name: str, i: int) -> tuple[str, vxlan.VtepConfig]:
    """Node i: a namespace whose eth0 hangs off the lab's underlay bridge."""
    path = lab.netns(f"n{i}")
    name = Path(path).name
    sh(
        "ip",
        "-n",
        lab_name,
        "link",
        "add",
        f"u{i}",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        name,
    )
    sh("ip", "-n", lab_name, "link", "set", f"u{i}", "master", "ubr", "up")
    sh("ip", "-n", name, "addr", "add", f"10.99.0.{9 + i}/24", "dev", "eth0")
    sh("ip", "-n", name, "link", "set", "eth0", "up")
    cfg = vxlan.VtepConfig(
        node=f"{lab.prefix}-n{i}",
        pod_cidr=ipaddress.IPv4Network(f"10.244.{i}.0/24"),
        underlay_ip=ipaddress.IPv4Address(f"10.99.0.{9 + i}"),
        underlay_dev="eth0",
    )
    return path, cfg


def test_pods_on_two_nodes_reach_each_other_through_the_overlay(
    lab: Lab, our_bin: Path, tmp_path: Path
) -> None:
    """Ping and TCP across nodes; VTEP MTU is underlay - 50; removing a peer cleans up."""
    lab_name = Path(lab.netns("lab")).name
    sh("ip", "-n", lab_name, "link", "add", "ubr", "type", "bridge")
    sh("ip", "-n", lab_name, "link", "set", "ubr", "up")
    nodes = [_node(lab, lab_name, 1), _node(lab, lab_name, 2)]
    # Each node creates its VTEP and publishes MAC + underlay IP (the Node annotations).
    published = {}
    for path, cfg in nodes:
        mac, mtu = vxlan.Vtep(cfg, netns_path=path).ensure()
        assert mtu == 1450
        published[cfg.node] = (
            str(cfg.pod_cidr),
            vxlan.node_annotations(mac, cfg.underlay_ip, cfg.vni),
        )
    peers = [
        p
        for name, (cidr, ann) in published.items()
        if (p := vxlan.peer_from_node(name, cidr, ann, vni=1)) is not None
    ]
    assert len(peers) == 2
    for path, cfg in nodes:
        ops = vxlan.reconcile(cfg, peers, netns_path=path)
        assert [o.kind for o in ops] == ["fdb", "neigh", "route"]
        assert vxlan.reconcile(cfg, peers, netns_path=path) == []  # converged
    pods = []
    for i, (path, cfg) in enumerate(nodes, start=1):
        conf = chain(
            "overlay",
            subnet=str(cfg.pod_cidr),
            data_dir=tmp_path / f"ipam{i}",
            mtu=1450,
            masq_exclude=["10.244.0.0/16"],
        )
        mgr = manager(tmp_path, conf, our_bin, tag=f"n{i}")
        pod = lab.netns(f"n{i}p")
        att = in_netns(
            path, lambda mgr=mgr, pod=pod: mgr.setup(f"p-{lab.prefix}", pod, pod=PodRef("d", "p"))
        )
        assert att.result.interfaces[2].mtu == 1450
        pods.append((pod, str(att.ips[0].ip)))
    (pod1, ip1), (pod2, ip2) = pods
    assert lab.ping(pod1, ip2) and lab.ping(pod2, ip1)
    with tcp_echo(pod2, 7000):
        assert tcp_talk(pod1, ip2, 7000) == b"echo:hi"
    with tcp_echo(pod2, 7001, tell_source=True):  # not masqueraded inside the cluster CIDR
        assert tcp_talk(pod1, ip2, 7001) == ip1.encode()
    # Node 2 leaves: node 1 drops its route, neighbour and FDB entry; traffic stops.
    path1, cfg1 = nodes[0]
    ops = vxlan.reconcile(cfg1, [p for p in peers if p.node == cfg1.node], netns_path=path1)
    assert sorted(o.kind for o in ops) == ["fdb", "neigh", "route"]
    assert all(o.action == "del" for o in ops)
    assert vxlan.Vtep(cfg1, netns_path=path1).observe() == vxlan.Actual()
    assert "10.244.2.0" not in lab.run(path1, "ip", "route").stdout
    assert not lab.ping(pod1, ip2)
