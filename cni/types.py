"""CNI 1.x result types as typed immutable records, parsed from and written to JSON.

Pure: no I/O. Records are NamedTuples rather than frozen dataclasses because every
plugin process imports this module: `dataclasses` pulls in `inspect` and `ast`,
about 10 ms of CPU per plugin start on the test machine. Plugins and the caller both
speak these shapes (SPEC.md, Section 5, "ADD Success"); unknown keys in a result are
ignored on parse.
"""

from __future__ import annotations

import ipaddress

from cni._record import NamedTuple
from cni.errors import CNIError, Code

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"


def version_tuple(version: str) -> tuple[int, ...]:
    """'1.1.0' -> (1, 1, 0); a malformed version is a decode error (code 6)."""
    try:
        parts = tuple(int(p) for p in version.split("."))
    except ValueError as err:
        raise CNIError(Code.DECODE_FAILURE, f"bad CNI version {version!r}") from err
    if len(parts) != 3:
        raise CNIError(Code.DECODE_FAILURE, f"bad CNI version {version!r}")
    return parts


def result_for_version(result: dict[str, Any], version: str) -> dict[str, Any]:
    """An ADD result in the shape of `version` (pure): before 1.0.0 each IP says its family."""
    out = {**result, "cniVersion": version}
    if version_tuple(version) < (1, 0, 0):
        out["ips"] = [
            {**ip, "version": "6" if ":" in str(ip.get("address", "")) else "4"}
            for ip in result.get("ips") or ()
        ]
    return out


def _decode_error(what: str, value: object) -> CNIError:
    return CNIError(Code.DECODE_FAILURE, f"failed to decode {what}", f"got {value!r}")


class Interface(NamedTuple):
    """An interface an attachment created; `sandbox` is empty for host-side ones."""

    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        if self.mtu:
            out["mtu"] = self.mtu
        if self.sandbox:
            out["sandbox"] = self.sandbox
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Interface:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise _decode_error("interface", raw)
        return cls(
            name=raw["name"],
            mac=str(raw.get("mac", "")),
            mtu=int(raw.get("mtu", 0) or 0),
            sandbox=str(raw.get("sandbox", "")),
        )


class IPConfig(NamedTuple):
    """An address in CIDR form, its gateway, and the index of its interface."""

    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": str(self.address)}
        if self.gateway is not None:
            out["gateway"] = str(self.gateway)
        if self.interface is not None:
            out["interface"] = self.interface
        return out

    @classmethod
    def from_json(cls, raw: Any) -> IPConfig:
        try:
            gw = raw.get("gateway")
            idx = raw.get("interface")
            return cls(
                address=ipaddress.ip_interface(raw["address"]),
                gateway=ipaddress.ip_address(gw) if gw else None,
                interface=int(idx) if idx is not None else None,
            )
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise _decode_error("ips entry", raw) from err


class Route(NamedTuple):
    """A route an attachment created (dst, optional next hop and attributes)."""

    dst: IPNetwork
    gw: IPAddress | None = None
    mtu: int = 0
    priority: int = 0
    table: int = 0
    scope: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dst": str(self.dst)}
        if self.gw is not None:
            out["gw"] = str(self.gw)
        for key in ("mtu", "priority", "table"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.scope is not None:
            out["scope"] = self.scope
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Route:
        try:
            gw = raw.get("gw")
            scope = raw.get("scope")
            return cls(
                dst=ipaddress.ip_network(raw["dst"], strict=False),
                gw=ipaddress.ip_address(gw) if gw else None,
                mtu=int(raw.get("mtu", 0) or 0),
                priority=int(raw.get("priority", 0) or 0),
                table=int(raw.get("table", 0) or 0),
                scope=int(scope) if scope is not None else None,
            )
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise _decode_error("route", raw) from err


class DNS(NamedTuple):
    """DNS settings a network knows about."""

    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out

    @classmethod
    def from_json(cls, raw: Any) -> DNS:
        if not isinstance(raw, dict):
            raise _decode_error("dns", raw)
        return cls(
            nameservers=tuple(str(x) for x in raw.get("nameservers") or ()),
            domain=str(raw.get("domain") or ""),
            search=tuple(str(x) for x in raw.get("search") or ()),
            options=tuple(str(x) for x in raw.get("options") or ()),
        )


class Result(NamedTuple):
    """A CNI ADD result: interfaces, IPs, routes and DNS."""

    cni_version: str = LATEST_VERSION
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = DNS()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": self.cni_version}
        if self.interfaces:
            out["interfaces"] = [i.to_json() for i in self.interfaces]
        out["ips"] = [i.to_json() for i in self.ips]
        if self.routes:
            out["routes"] = [r.to_json() for r in self.routes]
        dns = self.dns.to_json()
        if dns:
            out["dns"] = dns
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Result:
        if not isinstance(raw, dict):
            raise _decode_error("result", raw)
        return cls(
            cni_version=str(raw.get("cniVersion") or LATEST_VERSION),
            interfaces=tuple(Interface.from_json(i) for i in raw.get("interfaces") or ()),
            ips=tuple(IPConfig.from_json(i) for i in raw.get("ips") or ()),
            routes=tuple(Route.from_json(r) for r in raw.get("routes") or ()),
            dns=DNS.from_json(raw.get("dns") or {}),
        )

    def sandbox_ips(self, sandbox: str | None = None) -> tuple[IPInterface, ...]:
        """The addresses on interfaces inside a sandbox (or with no interface index)."""
        out = []
        for ip in self.ips:
            if ip.interface is None or ip.interface >= len(self.interfaces):
                out.append(ip.address)
                continue
            iface = self.interfaces[ip.interface]
            if iface.sandbox and (sandbox is None or iface.sandbox == sandbox):
                out.append(ip.address)
        return tuple(out)


class PortMapping(NamedTuple):
    """One `portMappings` capability entry (CONVENTIONS.md): hostPort -> containerPort."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def validated(self) -> PortMapping:
        """Itself, if protocol and ports are valid; code 7 otherwise."""
        if self.protocol not in ("tcp", "udp", "sctp"):
            raise CNIError(Code.INVALID_CONFIG, f"bad port mapping protocol {self.protocol!r}")
        for port in (self.host_port, self.container_port):
            if not 0 < port < 65536:
                raise CNIError(Code.INVALID_CONFIG, f"bad port {port} in a port mapping")
        return self

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol,
        }
        if self.host_ip:
            out["hostIP"] = self.host_ip
        return out

    @classmethod
    def from_json(cls, raw: Any) -> PortMapping:
        try:
            return cls(
                host_port=int(raw["hostPort"]),
                container_port=int(raw["containerPort"]),
                protocol=str(raw.get("protocol") or "tcp").lower(),
                host_ip=str(raw.get("hostIP") or ""),
            ).validated()
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise CNIError(Code.INVALID_CONFIG, "bad port mapping", repr(raw)) from err
