"""One chain, two implementations: our plugins and Debian's reference plugins, same assertions.

The caller (NetworkManager) runs bridge + host-local + portmap from inside a node
namespace; pods are namespaces of their own; a peer namespace on the node's
underlay plays the outside host.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from pathlib import Path

import pytest

from cni import CNIError, NetworkManager, PodRef, PortMapping
from tests.integration.cni.conftest import (
    FLAVOURS,
    NODE_IP,
    PEER_IP,
    Lab,
    allocations,
    chain,
    flavour_setup,
    host_links,
    in_netns,
    manager,
    tcp_echo,
    tcp_talk,
    udp_echo,
    udp_talk,
)

SUBNET = "10.244.7.0/24"
GATEWAY = "10.244.7.1"


def _pods(lab: Lab, mgr: NetworkManager, node: str, n: int, **kw: object) -> list[tuple[str, str]]:
    """n pods set up through the manager: [(netns path, IPv4 address)]."""
    out = []
    for i in range(n):
        path = lab.netns(f"p{i}")
        att = in_netns(
            node,
            lambda i=i, path=path: mgr.setup(
                f"pod{i}-{lab.prefix}", path, pod=PodRef("default", f"p{i}", f"uid{i}"), **kw
            ),
        )
        out.append((path, str(att.ips[0].ip)))
    return out


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_pods_get_ips_and_reach_each_other_and_the_gateway(
    flavour: str, lab: Lab, our_bin: Path, tmp_path: Path
) -> None:
    """Two pods on one bridge: addresses from the range, ping and TCP both ways, gateway too."""
    node, peer = lab.node_with_underlay()
    mgr = flavour_setup(flavour, our_bin, tmp_path, subnet=SUBNET)
    (p0, ip0), (p1, ip1) = _pods(lab, mgr, node, 2)
    for ip in (ip0, ip1):
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET) and ip != GATEWAY
    assert ip0 != ip1
    assert lab.ping(p0, ip1) and lab.ping(p1, ip0)
    assert lab.ping(p0, GATEWAY)
    with tcp_echo(p1, 7000):
        assert tcp_talk(p0, ip1, 7000) == b"echo:hi"
    # The pod's default route goes through the node: it reaches the underlay peer, which
    # sees the node's address (ipMasq), while pod-to-pod traffic keeps the pod's address.
    assert lab.ping(p0, PEER_IP)
    with tcp_echo(peer, 7001, tell_source=True):
        assert tcp_talk(p0, PEER_IP, 7001) == NODE_IP.encode()
    with tcp_echo(p1, 7002, tell_source=True):
        assert tcp_talk(p0, ip1, 7002) == ip0.encode()
    att = mgr.result(f"pod0-{lab.prefix}")
    assert att is not None and str(att.ips[0].ip) == ip0


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_host_ports_from_underlay_localhost_and_hairpin(
    flavour: str, lab: Lab, our_bin: Path, tmp_path: Path
) -> None:
    """hostPort TCP/UDP reach the pod from the underlay, the node's localhost and the pod."""
    node, peer = lab.node_with_underlay()
    mgr = flavour_setup(flavour, our_bin, tmp_path, subnet=SUBNET)
    mappings = [PortMapping(8080, 80, "tcp"), PortMapping(5353, 53, "udp")]
    ((pod, _ip),) = _pods(lab, mgr, node, 1, port_mappings=mappings)
    with tcp_echo(pod, 80), udp_echo(pod, 53):
        assert tcp_talk(peer, NODE_IP, 8080) == b"echo:hi"
        assert udp_talk(peer, NODE_IP, 5353) == b"echo:hi"
        assert tcp_talk(node, "127.0.0.1", 8080) == b"echo:hi"
        assert tcp_talk(pod, NODE_IP, 8080) == b"echo:hi"  # hairpin
        assert tcp_talk(peer, NODE_IP, 8081, timeout_s=1) == b""  # unmapped port


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_del_leaves_no_veth_allocation_rule_or_cache(
    flavour: str, lab: Lab, our_bin: Path, tmp_path: Path
) -> None:
    """After teardown (twice: DEL is idempotent) nothing of the pod is left on the node."""
    node, _ = lab.node_with_underlay()
    mgr = flavour_setup(flavour, our_bin, tmp_path, subnet=SUBNET)
    before_links = set(host_links(node))
    ((pod, ip),) = _pods(lab, mgr, node, 1, port_mappings=[PortMapping(8080, 80)])
    assert allocations(tmp_path / "ipam") == [ip]
    assert len(set(host_links(node)) - before_links) >= 2  # bridge + veth
    ruleset = lab.run(node, "nft", "list", "ruleset").stdout
    assert ip in ruleset
    pod_id = f"pod0-{lab.prefix}"
    in_netns(node, lambda: mgr.teardown(pod_id, pod))
    in_netns(node, lambda: mgr.teardown(pod_id, pod))
    assert allocations(tmp_path / "ipam") == []
    assert [link for link in host_links(node) if link.startswith("veth")] == []
    assert ip not in lab.run(node, "nft", "list", "ruleset").stdout
    assert host_links(pod) == ["lo"]
    assert not os.listdir(tmp_path / "cache-net" / "results")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_gc_deletes_attachments_that_are_not_valid(
    flavour: str, lab: Lab, our_bin: Path, tmp_path: Path
) -> None:
    """gc(valid) DELs every cached attachment not in valid; the valid pod keeps working."""
    node, _ = lab.node_with_underlay()
    mgr = flavour_setup(flavour, our_bin, tmp_path, subnet=SUBNET)
    (p0, ip0), (p1, _ip1) = _pods(lab, mgr, node, 2)
    keep = [(f"pod0-{lab.prefix}", "eth0")]
    errors = in_netns(node, lambda: mgr.gc(keep))
    assert errors == []
    assert allocations(tmp_path / "ipam") == [ip0]
    assert host_links(p1) == ["lo"]
    assert mgr.result(f"pod1-{lab.prefix}") is None
    assert lab.ping(p0, GATEWAY)


def test_gc_releases_allocations_the_cache_does_not_know(
    lab: Lab, our_bin: Path, tmp_path: Path
) -> None:
    """CNI 1.1 GC reaches the plugins: an IPAM reservation without a cache entry is released."""
    node, _ = lab.node_with_underlay()
    mgr = flavour_setup("ours", our_bin, tmp_path, subnet=SUBNET)
    (_p0, ip0), (_p1, ip1) = _pods(lab, mgr, node, 2)
    (tmp_path / "cache-net" / "results" / f"kpynet-pod1-{lab.prefix}-eth0").unlink()
    assert in_netns(node, lambda: mgr.gc([(f"pod0-{lab.prefix}", "eth0")])) == []
    assert allocations(tmp_path / "ipam") == [ip0]
    assert ip1 not in lab.run(node, "nft", "list", "ruleset").stdout


def test_check_and_status(lab: Lab, our_bin: Path, tmp_path: Path) -> None:
    """CHECK passes on a healthy pod and fails once its address is gone; STATUS is ready."""
    node, _ = lab.node_with_underlay()
    mgr = flavour_setup("ours", our_bin, tmp_path, subnet=SUBNET)
    ((pod, ip),) = _pods(lab, mgr, node, 1, port_mappings=[PortMapping(8080, 80)])
    pod_id = f"pod0-{lab.prefix}"
    in_netns(node, lambda: mgr.check(pod_id, pod))
    in_netns(node, mgr.status)
    lab.run(pod, "ip", "addr", "del", f"{ip}/24", "dev", "eth0")
    with pytest.raises(Exception, match="missing"):
        in_netns(node, lambda: mgr.check(pod_id, pod))


def test_isolation_blocks_pod_to_pod_but_not_outside(
    lab: Lab, our_bin: Path, tmp_path: Path
) -> None:
    """kpy-isolation: pods on a bridge cannot talk unless allowed; node and outside still work."""
    node, _ = lab.node_with_underlay()
    allow = {"allow": [{"src": "10.244.7.4/32", "dst": "10.244.7.2/32"}]}
    mgr = flavour_setup("ours", our_bin, tmp_path, subnet=SUBNET, isolation=allow)
    (p0, ip0), (p1, ip1), (p2, ip2) = _pods(lab, mgr, node, 3)
    assert (ip0, ip1, ip2) == ("10.244.7.2", "10.244.7.3", "10.244.7.4")
    assert not lab.ping(p0, ip1) and not lab.ping(p1, ip0)
    with tcp_echo(p1, 7000):
        assert tcp_talk(p0, ip1, 7000, timeout_s=1) == b""
    assert lab.ping(p2, ip0) and lab.ping(p0, ip2)  # the allowed pair, both ways
    assert lab.ping(p0, GATEWAY) and lab.ping(p0, PEER_IP)
    assert lab.ping(node, ip1)
    # Isolation off: the same pods, after their DEL, re-added on a network without the plugin.
    for i, path in enumerate((p0, p1, p2)):
        in_netns(node, lambda i=i, path=path: mgr.teardown(f"pod{i}-{lab.prefix}", path))
    listing = lab.run(node, "nft", "list", "set", "bridge", "kpy_iso_kpynet", "isolated").stdout
    assert "10.244.7" not in listing
    open_mgr = flavour_setup("ours", our_bin, tmp_path / "open", subnet=SUBNET)
    for i, path in enumerate((p0, p1)):
        in_netns(node, lambda i=i, path=path: open_mgr.setup(f"q{i}-{lab.prefix}", path))
    assert lab.ping(p0, "10.244.7.3")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_concurrent_adds_get_distinct_addresses(
    flavour: str, lab: Lab, our_bin: Path, tmp_path: Path
) -> None:
    """Eight pods set up at once (host-local under its file lock) get eight distinct working IPs."""
    node, _ = lab.node_with_underlay()
    mgr = flavour_setup(flavour, our_bin, tmp_path, subnet=SUBNET)
    paths = [lab.netns(f"c{i}") for i in range(8)]
    ips: dict[int, str] = {}

    def one(i: int) -> None:
        att = in_netns(node, lambda: mgr.setup(f"cc{i}-{lab.prefix}", paths[i]))
        ips[i] = str(att.ips[0].ip)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ips.values())) == 8
    assert sorted(allocations(tmp_path / "ipam")) == sorted(ips.values())
    assert all(lab.ping(paths[i], GATEWAY) for i in (0, 7))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_udp_host_port_follows_a_recreated_pod(
    flavour: str, lab: Lab, our_bin: Path, tmp_path: Path
) -> None:
    """A UDP flow to a hostPort reaches the new pod after the old one is replaced (no stale NAT)."""
    node, peer = lab.node_with_underlay()
    mgr = flavour_setup(flavour, our_bin, tmp_path, subnet=SUBNET)
    mapping = [PortMapping(5353, 53, "udp")]
    old, new = lab.netns("old"), lab.netns("new")
    in_netns(node, lambda: mgr.setup(f"old-{lab.prefix}", old, port_mappings=mapping))
    with udp_echo(old, 53, b"old:"):
        assert udp_talk(peer, NODE_IP, 5353, source_port=40000) == b"old:hi"
    in_netns(node, lambda: mgr.teardown(f"old-{lab.prefix}", old))
    in_netns(node, lambda: mgr.setup(f"new-{lab.prefix}", new, port_mappings=mapping))
    with udp_echo(new, 53, b"new:"):
        assert udp_talk(peer, NODE_IP, 5353, source_port=40000) == b"new:hi"


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_our_chain_speaks_older_cni_versions(
    version: str, lab: Lab, our_bin: Path, tmp_path: Path
) -> None:
    """Networks written for CNI 0.3.1, 0.4.0 and 1.0.0 work with our plugins end to end."""
    node, _ = lab.node_with_underlay()
    conf = chain("kpynet", subnet=SUBNET, data_dir=tmp_path / "ipam", version=version)
    mgr = manager(tmp_path, conf, our_bin)
    (p0, ip0), (_p1, ip1) = _pods(lab, mgr, node, 2)
    assert lab.ping(p0, ip1)
    p2 = lab.netns("p2")
    in_netns(
        node, lambda: mgr.setup(f"pod2-{lab.prefix}", p2, port_mappings=[PortMapping(8080, 80)])
    )
    with pytest.raises(CNIError, match="host port tcp/8080 is taken"):
        in_netns(
            node,
            lambda: mgr.setup(
                f"pod3-{lab.prefix}", lab.netns("p3"), port_mappings=[PortMapping(8080, 80)]
            ),
        )
    att = mgr.result(f"pod0-{lab.prefix}")
    assert att is not None and att.result.cni_version == version
    in_netns(node, lambda: mgr.check(f"pod0-{lab.prefix}", p0))
    for i in range(3):
        in_netns(node, lambda i=i: mgr.teardown(f"pod{i}-{lab.prefix}"))
    assert allocations(tmp_path / "ipam") == []
    assert ip0 not in lab.run(node, "nft", "list", "ruleset").stdout


def test_dual_stack_pods(lab: Lab, our_bin: Path, tmp_path: Path) -> None:
    """Two range sets give each pod IPv4 + IPv6; both families reach the other pod and gateway."""
    node, _ = lab.node_with_underlay()
    conf = chain("kpynet", subnet=SUBNET, data_dir=tmp_path / "ipam")
    conf["plugins"][0]["ipam"]["ranges"].append([{"subnet": "fd00:244:7::/64"}])
    mgr = manager(tmp_path, conf, our_bin)
    paths = [lab.netns("p0"), lab.netns("p1")]
    atts = [
        in_netns(node, lambda i=i, p=p: mgr.setup(f"pod{i}-{lab.prefix}", p))
        for i, p in enumerate(paths)
    ]
    assert [ip.version for ip in atts[0].ips] == [4, 6]
    v6_peer = str(atts[1].ips[1].ip)
    # New IPv6 addresses are tentative until duplicate address detection is over (~1-2 s).
    deadline = time.monotonic() + 8
    while not lab.ping(paths[0], v6_peer) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert lab.ping(paths[0], v6_peer)
    assert lab.ping(paths[0], "fd00:244:7::1")
    assert lab.ping(paths[0], str(atts[1].ips[0].ip))
    for i, p in enumerate(paths):
        in_netns(node, lambda i=i, p=p: mgr.teardown(f"pod{i}-{lab.prefix}", p))
    assert allocations(tmp_path / "ipam") == []
