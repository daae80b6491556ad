"""A small synchronous rtnetlink client for the plugins, with its own message codec.

Only the messages the plugins send are encoded here (struct, rtnetlink(7) and
<linux/rtnetlink.h>, <linux/if_link.h>, <linux/veth.h>): links (get by name,
create bridge/veth with the peer born in another namespace, set up/master,
hairpin, delete), addresses (add, dump) and routes (add). Answers are decoded
into `Link` records holding the few attributes the plugins read.

Why not pyroute2: a plugin is a process that lives a few tens of milliseconds,
and importing pyroute2's message classes (with `logging`, `typing`, its config
and the class tables) cost each bridge process more CPU than all its netlink
work. Long-lived users (cni.vxlan, tests) keep using pyroute2's IPRoute. The
socket is `_socket`'s: `socket.py` pulls in `enum` and `selectors`.

Errors are OSError with the kernel's errno (EEXIST, ENODEV, ...).
"""

from __future__ import annotations

import _socket
import os
import struct

from cni import netns

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Iterator

# <linux/netlink.h>
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLA_F_NESTED = 0x8000
NLMSG_ERROR, NLMSG_DONE = 2, 3
# <linux/rtnetlink.h>
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE = 24
# <linux/if_link.h>
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_EXT_MASK = 18, 28, 29
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_BRPORT_MODE = 4  # hairpin, u8
VETH_INFO_PEER = 1
RTEXT_FILTER_SKIP_STATS = 1 << 3
# <linux/if_addr.h>, <linux/rtnetlink.h> route attributes
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5

IFF_UP = 0x1
EEXIST, ENODEV = 17, 19
AF_INET, AF_INET6 = _socket.AF_INET, _socket.AF_INET6
_CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
_ACK = NLM_F_REQUEST | NLM_F_ACK

_HDR = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg
_RTA = struct.Struct("=HH")  # rtattr: length, type
_U32 = struct.Struct("=I")


# ---- encoding (pure) ----------------------------------------------------------------


def _pad(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    length = _RTA.size + len(payload)
    return _RTA.pack(length, kind) + payload + b"\0" * (_pad(length) - length)


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def nest(kind: int, *children: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(children))


def ifinfo(index: int = 0, flags: int = 0, change: int = 0, family: int = 0) -> bytes:
    return _IFINFO.pack(family, 0, index, flags, change)


def message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HDR.pack(_HDR.size + len(body), msg_type, flags, seq, 0) + body


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def _ip_bytes(ip: object) -> tuple[int, bytes]:
    text = str(ip)
    family = AF_INET6 if ":" in text else AF_INET
    return family, _socket.inet_pton(family, text)


# ---- decoding (pure) ----------------------------------------------------------------


def attrs(data: bytes, offset: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(type without flags, payload) of each rtattr in data[offset:end]."""
    end = len(data) if end is None else end
    while offset + _RTA.size <= end:
        length, kind = _RTA.unpack_from(data, offset)
        if length < _RTA.size:
            return
        yield kind & 0x3FFF, data[offset + _RTA.size : offset + length]
        offset += _pad(length)


def _cstr(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode(errors="replace")


class Link:
    """The attributes of a link the plugins read (from an RTM_NEWLINK answer)."""

    __slots__ = ("flags", "index", "kind", "mac", "master", "name")

    def __init__(
        self, index: int, flags: int, name: str, mac: str, kind: str | None, master: int | None
    ) -> None:
        self.index = index
        self.flags = flags
        self.name = name
        self.mac = mac
        self.kind = kind
        self.master = master

    def __repr__(self) -> str:
        return f"Link({self.name!r}, index={self.index}, kind={self.kind!r})"

    @classmethod
    def decode(cls, msg: bytes) -> Link:
        """A whole netlink message (header included) of type RTM_NEWLINK."""
        _family, _type, index, flags, _change = _IFINFO.unpack_from(msg, _HDR.size)
        name, mac, kind, master = "", "", None, None
        for kind_id, payload in attrs(msg, _HDR.size + _IFINFO.size):
            if kind_id == IFLA_IFNAME:
                name = _cstr(payload)
            elif kind_id == IFLA_ADDRESS:
                mac = ":".join(f"{b:02x}" for b in payload)
            elif kind_id == IFLA_MASTER:
                master = _U32.unpack(payload[:4])[0]
            elif kind_id == IFLA_LINKINFO:
                for sub, sub_payload in attrs(payload):
                    if sub == IFLA_INFO_KIND:
                        kind = _cstr(sub_payload)
        return cls(index, flags, name, mac, kind, master)


def decode_addr(msg: bytes) -> tuple[int, str, int]:
    """(link index, address, prefix length) of an RTM_NEWADDR message."""
    family, prefixlen, _flags, _scope, index = _IFADDR.unpack_from(msg, _HDR.size)
    address = ""
    local = ""
    for kind, payload in attrs(msg, _HDR.size + _IFADDR.size):
        if kind == IFA_ADDRESS:
            address = _socket.inet_ntop(family, payload)
        elif kind == IFA_LOCAL:
            local = _socket.inet_ntop(family, payload)
    return index, address or local, prefixlen


# ---- the socket -----------------------------------------------------------------------


class Netlink:
    """One NETLINK_ROUTE socket, in the current namespace or in the one at `netns_path`."""

    def __init__(self, netns_path: str | None = None) -> None:
        if netns_path is None:
            self._sock = self._open()
        else:
            with netns.enter(netns_path):
                self._sock = self._open()
        self._seq = 0

    @staticmethod
    def _open() -> _socket.socket:
        sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, 0)  # 0: NETLINK_ROUTE
        sock.bind((0, 0))
        return sock

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msg_type: int, flags: int, body: bytes) -> list[bytes]:
        """Send one message; return the answers (whole messages; none for an acked change)."""
        self._seq += 1
        seq = self._seq
        self._sock.send(message(msg_type, flags, seq, body))
        out: list[bytes] = []
        dump = (flags & NLM_F_DUMP) == NLM_F_DUMP
        while True:
            data = self._sock.recv(1 << 16)
            offset = 0
            finished = False
            while offset + _HDR.size <= len(data):
                length, kind, _flags, got_seq, _pid = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    break
                chunk = data[offset : offset + length]
                offset += _pad(length)
                if got_seq != seq:
                    continue  # an answer to an earlier request; not ours any more
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", chunk, _HDR.size)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    finished = True
                elif kind == NLMSG_DONE:
                    finished = True
                else:
                    out.append(chunk)
            if finished or (not dump and out):
                return out

    # ---- links --------------------------------------------------------------------

    def link(self, name: str) -> Link | None:
        """The link called `name`, or None."""
        body = (
            ifinfo()
            + attr_str(IFLA_IFNAME, name)
            + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
        )
        try:
            found = self.request(RTM_GETLINK, NLM_F_REQUEST, body)
        except OSError as err:
            if err.errno == ENODEV:
                return None
            raise
        return Link.decode(found[0]) if found else None

    def link_index(self, name: str) -> int | None:
        found = self.link(name)
        return found.index if found is not None else None

    def link_add(
        self,
        name: str,
        kind: str,
        *,
        mtu: int,
        address: str | None = None,
        peer_name: str | None = None,
        peer_netns_fd: int | None = None,
    ) -> None:
        """Create a link (EEXIST if the name is taken); a veth's peer may go to another netns."""
        info = attr_str(IFLA_INFO_KIND, kind)
        if peer_name is not None:
            peer = ifinfo() + attr_str(IFLA_IFNAME, peer_name) + attr_u32(IFLA_MTU, mtu)
            if peer_netns_fd is not None:
                peer += attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
            info += nest(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer))
        body = (
            ifinfo()
            + attr_str(IFLA_IFNAME, name)
            + attr_u32(IFLA_MTU, mtu)
            + nest(IFLA_LINKINFO, info)
        )
        if address:
            body += attr(IFLA_ADDRESS, _mac_bytes(address))
        self.request(RTM_NEWLINK, _CREATE, body)

    def link_set(self, index: int, *, up: bool | None = None, master: int | None = None) -> None:
        """Bring a link up or down and/or enslave it to a master."""
        body = ifinfo(index) if up is None else ifinfo(index, IFF_UP if up else 0, IFF_UP)
        if master is not None:
            body += attr_u32(IFLA_MASTER, master)
        self.request(RTM_NEWLINK, _ACK, body)

    def hairpin(self, index: int) -> None:
        """Let a bridge port send frames back out of the port they came in on."""
        # As `ip link set X type bridge_slave hairpin on`: the port's slave data.
        info = attr_str(IFLA_INFO_SLAVE_KIND, "bridge") + nest(
            IFLA_INFO_SLAVE_DATA, attr(IFLA_BRPORT_MODE, b"\x01")
        )
        self.request(RTM_NEWLINK, _ACK, ifinfo(index) + nest(IFLA_LINKINFO, info))

    def link_del(self, name: str) -> bool:
        """Delete a link by name; False if there was none."""
        try:
            self.request(RTM_DELLINK, _ACK, ifinfo() + attr_str(IFLA_IFNAME, name))
        except OSError as err:
            if err.errno == ENODEV:
                return False
            raise
        return True

    # ---- addresses and routes -----------------------------------------------------

    def addr_add(
        self, index: int, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    ) -> None:
        family, raw = _ip_bytes(address.ip)
        body = (
            _IFADDR.pack(family, address.network.prefixlen, 0, 0, index)
            + attr(IFA_LOCAL, raw)
            + attr(IFA_ADDRESS, raw)
        )
        self.request(RTM_NEWADDR, _CREATE, body)

    def addrs(self, index: int) -> set[tuple[str, int]]:
        """(address, prefix length) of every address on the link."""
        dumped = self.request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, _IFADDR.pack(0, 0, 0, 0, 0))
        out = set()
        for msg in dumped:
            got_index, address, prefixlen = decode_addr(msg)
            if got_index == index and address:
                out.add((address, prefixlen))
        return out

    def route_add(
        self,
        dst: ipaddress.IPv4Network | ipaddress.IPv6Network,
        *,
        oif: int,
        gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
    ) -> None:
        family = AF_INET if dst.version == 4 else AF_INET6
        body = _RTMSG.pack(
            family,
            dst.prefixlen,
            0,  # src_len
            0,  # tos
            254,  # table main
            3,  # proto boot, as `ip route add` marks routes
            0 if gateway is not None else 253,  # scope universe / link
            1,  # type unicast
            0,  # flags
        ) + attr_u32(RTA_OIF, oif)
        if dst.prefixlen:
            body += attr(RTA_DST, _ip_bytes(dst.network_address)[1])
        if gateway is not None:
            body += attr(RTA_GATEWAY, _ip_bytes(gateway)[1])
        self.request(RTM_NEWROUTE, _CREATE, body)
