"""nftables rule text for portmap, ipMasq and isolation, and parsing of nft's JSON listing."""

import ipaddress
import json

from cni import nft
from cni.types import PortMapping


def test_portmap_elements_for_tcp_udp_and_host_ip() -> None:
    """Any-address mappings go to `hostports`, hostIP ones to `hostip_ports`; one hairpin pair."""
    els = nft.portmap_elements(
        [
            PortMapping(8080, 80),
            PortMapping(5353, 53, "udp"),
            PortMapping(9090, 90, "tcp", "10.0.0.5"),
        ],
        ipaddress.IPv4Interface("10.244.1.5/24"),
        "net/c1/eth0",
    )
    assert els.any_ip == (
        'tcp . 8080 comment "net/c1/eth0" : 10.244.1.5 . 80',
        'udp . 5353 comment "net/c1/eth0" : 10.244.1.5 . 53',
    )
    assert els.host_ip == ('10.0.0.5 . tcp . 9090 comment "net/c1/eth0" : 10.244.1.5 . 90',)
    assert els.hairpin == ('10.244.1.0/24 . 10.244.1.5 comment "net/c1/eth0"',)
    script = nft.portmap_add_script(els)
    assert "fib daddr type local dnat ip to meta l4proto . th dport map @hostports" in script
    assert "ct status dnat ip saddr 127.0.0.0/8 masquerade" in script
    assert script.count("flush chain") == 3  # static rules are rewritten, never duplicated


def test_masq_script_excludes_cluster_cidr() -> None:
    """Pod sources are masqueraded unless the destination is in the excluded CIDRs."""
    s = nft.masq_script(
        "cni0", [ipaddress.IPv4Network("10.244.0.0/16")], [("10.244.1.5", "n/c/eth0")]
    )
    assert "ip saddr @pods ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade" in s
    assert 'add element ip kpy_nat_cni0 pods { 10.244.1.5 comment "n/c/eth0" }' in s


def test_isolation_script_allows_pairs_both_ways() -> None:
    """Allowed CIDR pairs are installed in both directions before the drop rules."""
    a, b = ipaddress.IPv4Network("10.0.0.0/28"), ipaddress.IPv4Network("10.0.0.16/28")
    s = nft.isolation_script("my-net", [(a, b)])
    assert "table bridge kpy_iso_my_net" in s
    assert "10.0.0.0/28 . 10.0.0.16/28" in s and "10.0.0.16/28 . 10.0.0.0/28" in s
    assert s.index("@allowed accept") < s.index("ip saddr @isolated drop")


def test_quote_strips_quotes_and_limits_length() -> None:
    """Comments cannot break out of the string literal."""
    assert nft.quote('a"b\\c' + "x" * 200) == '"abc' + "x" * 124 + '"'


def test_parse_elements_of_sets_and_maps() -> None:
    """Keys (concatenations, prefixes) and comments come back from nft -j listings."""
    listing = {
        "nftables": [
            {"metainfo": {}},
            {
                "map": {
                    "elem": [
                        [{"elem": {"val": {"concat": ["tcp", 8080]}, "comment": "n/c/eth0"}}, {}],
                    ]
                }
            },
            {
                "set": {
                    "elem": [
                        {
                            "elem": {
                                "val": {
                                    "concat": [
                                        {"prefix": {"addr": "10.0.0.0", "len": 24}},
                                        "10.0.0.5",
                                    ]
                                },
                                "comment": "x",
                            }
                        },
                        "10.1.1.1",
                    ]
                }
            },
        ]
    }
    assert nft.parse_elements(json.dumps(listing)) == [
        nft.Element("tcp . 8080", "n/c/eth0"),
        nft.Element("10.0.0.0/24 . 10.0.0.5", "x"),
        nft.Element("10.1.1.1", ""),
    ]
    assert nft.parse_elements("") == []


def test_portmap_keys_match_the_added_elements() -> None:
    """DEL's fast path deletes exactly the keys ADD inserted (without comments and values)."""
    mappings = [PortMapping(8080, 80), PortMapping(9090, 90, "udp", "10.0.0.5")]
    pod = ipaddress.IPv4Interface("10.244.1.5/24")
    els = nft.portmap_elements(mappings, pod, "n/c/eth0")
    keys = nft.portmap_keys(mappings, pod)
    assert keys == {
        "hostports": ["tcp . 8080"],
        "hostip_ports": ["10.0.0.5 . udp . 9090"],
        "hairpin": ["10.244.1.0/24 . 10.244.1.5"],
    }
    added = [e.split(" comment ")[0] for e in els.any_ip + els.host_ip + els.hairpin]
    assert added == keys["hostports"] + keys["hostip_ports"] + keys["hairpin"]
