"""host-local IPAM: configuration and the allocation decision, both pure.

A range set is a list of ranges the allocator may pick one address from; a
configuration has one range set per address family wanted (SPEC's `ranges`,
as the reference host-local reads it; `subnet` is shorthand for one range).
`allocate` is round-robin from the last reserved address, skipping the
network, broadcast and gateway addresses: an address just released is not
handed out again at once. The store (files under a locked directory) lives
in `cni.plugins.hostlocal`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence

from cni._record import NamedTuple
from cni.errors import CNIError, Code, ConfigError
from cni.types import IPAddress, IPNetwork, Route

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Range(NamedTuple):
    """Addresses `start`..`end` of `subnet` (inclusive), with the gateway left out."""

    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress | None

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) and (
            ip.version == self.subnet.version and int(self.start) <= int(ip) <= int(self.end)
        )

    def addresses(self, after: IPAddress | None = None) -> Iterator[IPAddress]:
        """Candidates in order, starting after `after` (when inside) and wrapping round."""
        first, last = int(self.start), int(self.end)
        begin = first
        if after is not None and after in self and int(after) < last:
            begin = int(after) + 1
        size = last - first + 1
        cls = type(self.start)
        for step in range(size):
            value = first + (begin - first + step) % size
            ip = cls(value)
            if ip != self.gateway:
                yield ip

    @property
    def size(self) -> int:
        n = int(self.end) - int(self.start) + 1
        return n - (1 if self.gateway is not None and self.gateway in self else 0)


def _ip(raw: object, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(str(raw))
    except ValueError as err:
        raise ConfigError(f"invalid {what} {raw!r}") from err


def parse_range(raw: Mapping[str, Any]) -> Range:
    """One `{"subnet", "rangeStart", "rangeEnd", "gateway"}` object -> Range (validated)."""
    if not isinstance(raw, Mapping) or "subnet" not in raw:
        raise ConfigError("an IPAM range needs a subnet", repr(raw))
    try:
        subnet = ipaddress.ip_network(str(raw["subnet"]), strict=False)
    except ValueError as err:
        raise ConfigError(f"invalid subnet {raw['subnet']!r}") from err
    point_to_point = subnet.prefixlen >= subnet.max_prefixlen - 1  # /31, /32, /127, /128
    reserved_top = 0 if subnet.version == 6 or point_to_point else 1
    low = int(subnet.network_address) + (0 if point_to_point else 1)
    high = int(subnet.broadcast_address) - reserved_top
    if high < low:
        raise ConfigError(f"subnet {subnet} is too small to allocate from")
    cls = type(subnet.network_address)
    gateway = _ip(raw["gateway"], "gateway") if raw.get("gateway") else cls(low)
    start = _ip(raw["rangeStart"], "rangeStart") if raw.get("rangeStart") else cls(low)
    end = _ip(raw["rangeEnd"], "rangeEnd") if raw.get("rangeEnd") else cls(high)
    for name, ip in (("rangeStart", start), ("rangeEnd", end), ("gateway", gateway)):
        if ip not in subnet:
            raise ConfigError(f"{name} {ip} is outside subnet {subnet}")
    if not low <= int(start) <= int(end) <= high:
        raise ConfigError(f"range {start}-{end} is not a usable part of {subnet}")
    rng = Range(subnet=subnet, start=start, end=end, gateway=gateway)
    if rng.size <= 0:
        raise ConfigError(f"range {start}-{end} of {subnet} has no address to allocate")
    return rng


class IPAMConfig(NamedTuple):
    """The `ipam` section of host-local: range sets, routes and the data directory."""

    range_sets: tuple[tuple[Range, ...], ...]
    routes: tuple[Route, ...]
    data_dir: str


DEFAULT_DATA_DIR = "/var/lib/cni/networks"


def parse_config(ipam: Mapping[str, Any], runtime_config: Mapping[str, Any]) -> IPAMConfig:
    """Validate an `ipam` object; `runtimeConfig.ipRanges` overrides the ranges."""
    if not isinstance(ipam, Mapping):
        raise ConfigError("ipam must be an object")
    raw_sets: list[Any]
    if runtime_config.get("ipRanges"):
        raw_sets = list(runtime_config["ipRanges"])
    elif ipam.get("ranges"):
        raw_sets = list(ipam["ranges"])
    elif ipam.get("subnet"):
        raw_sets = [
            [{k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}]
        ]
    else:
        raise ConfigError("host-local needs ipam.ranges or ipam.subnet")
    range_sets: list[tuple[Range, ...]] = []
    for raw_set in raw_sets:
        if not isinstance(raw_set, list) or not raw_set:
            raise ConfigError("each ipam.ranges entry must be a non-empty list of ranges")
        ranges = tuple(parse_range(r) for r in raw_set)
        if len({r.subnet.version for r in ranges}) != 1:
            raise ConfigError("a range set mixes IPv4 and IPv6")
        for i, a in enumerate(ranges):
            for b in ranges[i + 1 :]:
                if a.subnet.version == b.subnet.version and a.subnet.overlaps(b.subnet):  # type: ignore[arg-type, unused-ignore]
                    raise ConfigError(f"ranges {a.subnet} and {b.subnet} overlap")
        range_sets.append(ranges)
    routes = tuple(Route.from_json(r) for r in ipam.get("routes") or ())
    data_dir = str(ipam.get("dataDir") or DEFAULT_DATA_DIR)
    return IPAMConfig(range_sets=tuple(range_sets), routes=routes, data_dir=data_dir)


def allocate(
    ranges: Sequence[Range],
    taken: Iterable[IPAddress],
    last_reserved: IPAddress | None,
    *,
    requested: IPAddress | None = None,
) -> tuple[Range, IPAddress]:
    """Pick an address from one range set (pure); code 101 when every range is full."""
    used = set(taken)
    if requested is not None:
        for rng in ranges:
            if requested in rng and requested != rng.gateway:
                if requested in used:
                    raise CNIError(
                        Code.INVALID_CONFIG, f"requested address {requested} is already allocated"
                    )
                return rng, requested
        raise CNIError(Code.INVALID_CONFIG, f"requested address {requested} is in no range")
    # Start in the range holding the last reservation, so allocation keeps going round.
    order = list(ranges)
    for i, rng in enumerate(ranges):
        if last_reserved is not None and last_reserved in rng:
            order = list(ranges[i:]) + list(ranges[:i])
            break
    for rng in order:
        for ip in rng.addresses(after=last_reserved):
            if ip not in used:
                return rng, ip
    raise CNIError(
        Code.RANGE_EXHAUSTED,
        "no IP addresses available",
        "every address of " + ", ".join(f"{r.start}-{r.end}" for r in ranges) + " is allocated",
    )


def free_count(ranges: Sequence[Range], taken: Iterable[IPAddress]) -> int:
    """How many addresses of the range set are still free."""
    used = set(taken)
    return sum(
        rng.size - sum(1 for ip in used if ip in rng and ip != rng.gateway) for rng in ranges
    )
