"""host-local's allocation decision: ranges, round-robin, gateway and exhaustion."""

import ipaddress

import pytest

from cni import ipam
from cni.errors import CNIError, Code, ConfigError

ip = ipaddress.ip_address


def test_subnet_shorthand_defaults() -> None:
    """`subnet` alone: start .1, end .254, gateway .1 (not allocatable)."""
    cfg = ipam.parse_config({"type": "host-local", "subnet": "10.0.0.0/24"}, {})
    (rng,) = cfg.range_sets[0]
    assert (rng.start, rng.end, rng.gateway) == (ip("10.0.0.1"), ip("10.0.0.254"), ip("10.0.0.1"))
    assert rng.size == 253
    assert cfg.data_dir == ipam.DEFAULT_DATA_DIR


def test_runtime_ip_ranges_override_config() -> None:
    """runtimeConfig.ipRanges (the ipRanges capability) replaces the configured ranges."""
    cfg = ipam.parse_config({"subnet": "10.0.0.0/24"}, {"ipRanges": [[{"subnet": "10.9.0.0/28"}]]})
    assert cfg.range_sets[0][0].subnet == ipaddress.ip_network("10.9.0.0/28")


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"subnet": "nonsense"},
        {"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]]},
        {"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]]},
        {"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]},
        {"ranges": [[]]},
    ],
)
def test_bad_ranges_are_invalid_config(raw: dict[str, object]) -> None:
    """Missing, malformed, out-of-subnet, overlapping or mixed-family ranges are code 7."""
    with pytest.raises(ConfigError) as err:
        ipam.parse_config(raw, {})
    assert err.value.code == Code.INVALID_CONFIG


def test_round_robin_skips_gateway_and_taken() -> None:
    """Allocation goes on after the last reserved address, skipping the gateway and taken ones."""
    rng = ipam.parse_range({"subnet": "10.0.0.0/29"})  # .1 gateway, .2-.6 usable
    assert ipam.allocate([rng], [], None)[1] == ip("10.0.0.2")
    assert ipam.allocate([rng], [ip("10.0.0.2")], ip("10.0.0.2"))[1] == ip("10.0.0.3")
    # Released .2 is not reused at once: we continue after the last reservation.
    assert ipam.allocate([rng], [ip("10.0.0.3")], ip("10.0.0.3"))[1] == ip("10.0.0.4")
    # Wraps round past the end.
    assert ipam.allocate([rng], [ip("10.0.0.6")], ip("10.0.0.6"))[1] == ip("10.0.0.2")


def test_exhausted_range_is_code_101_and_free_count_zero() -> None:
    """When every address is taken, allocate fails with RANGE_EXHAUSTED."""
    rng = ipam.parse_range({"subnet": "10.0.0.0/30"})  # .1 gateway, .2 only
    taken = [ip("10.0.0.2")]
    assert ipam.free_count([rng], taken) == 0
    with pytest.raises(CNIError) as err:
        ipam.allocate([rng], taken, None)
    assert err.value.code == Code.RANGE_EXHAUSTED


def test_second_range_used_when_first_is_full() -> None:
    """A range set spills over to its next range."""
    a = ipam.parse_range({"subnet": "10.0.0.0/30"})
    b = ipam.parse_range({"subnet": "10.0.1.0/30"})
    assert ipam.allocate([a, b], [ip("10.0.0.2")], None) == (b, ip("10.0.1.2"))


def test_requested_address() -> None:
    """A requested address is given if free and inside a range, refused otherwise."""
    rng = ipam.parse_range({"subnet": "10.0.0.0/24"})
    assert ipam.allocate([rng], [], None, requested=ip("10.0.0.9"))[1] == ip("10.0.0.9")
    with pytest.raises(CNIError):
        ipam.allocate([rng], [ip("10.0.0.9")], None, requested=ip("10.0.0.9"))
    with pytest.raises(CNIError):
        ipam.allocate([rng], [], None, requested=ip("10.0.0.1"))  # the gateway


def test_ipv6_range() -> None:
    """IPv6 ranges allocate too (no broadcast address to skip)."""
    rng = ipam.parse_range({"subnet": "fd00::/126"})
    assert ipam.allocate([rng], [], None)[1] == ip("fd00::2")
