"""The plugin processes' lean helpers: rtnetlink codec, JSON, records, C calls, lean imports."""

import ipaddress
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cni import _ffi, _json, nl
from cni._record import NamedTuple
from cni.plugins import skel

ROOT = Path(__file__).resolve().parents[3]


def test_attr_is_padded_and_nest_flagged() -> None:
    """An rtattr carries its unpadded length and is padded to 4 bytes; nests set NLA_F_NESTED."""
    a = nl.attr_str(nl.IFLA_IFNAME, "eth0")  # 4 header + 5 bytes, padded to 12
    assert struct.unpack_from("=HH", a) == (9, nl.IFLA_IFNAME)
    assert len(a) == 12 and a[4:9] == b"eth0\0"
    n = nl.nest(nl.IFLA_LINKINFO, nl.attr_str(nl.IFLA_INFO_KIND, "veth"))
    length, kind = struct.unpack_from("=HH", n)
    assert kind == nl.IFLA_LINKINFO | nl.NLA_F_NESTED and length == len(n) == 4 + 12
    assert list(nl.attrs(n)) == [(nl.IFLA_LINKINFO, n[4:])]


def test_link_decodes_from_a_newlink_message() -> None:
    """Link.decode reads index, flags, name, MAC, kind and master of an RTM_NEWLINK message."""
    body = (
        nl.ifinfo(7, nl.IFF_UP, 0)
        + nl.attr_str(nl.IFLA_IFNAME, "veth0")
        + nl.attr(nl.IFLA_ADDRESS, bytes([0x0A, 0x58, 1, 2, 3, 0xFF]))
        + nl.attr_u32(nl.IFLA_MASTER, 3)
        + nl.nest(nl.IFLA_LINKINFO, nl.attr_str(nl.IFLA_INFO_KIND, "veth"))
    )
    link = nl.Link.decode(nl.message(nl.RTM_NEWLINK, 0, 1, body))
    assert (link.index, link.flags, link.name) == (7, nl.IFF_UP, "veth0")
    assert (link.mac, link.kind, link.master) == ("0a:58:01:02:03:ff", "veth", 3)


def test_addr_decodes_both_families() -> None:
    """decode_addr gives (index, address, prefix length), IPv4 and IPv6."""
    for text, family, plen in (("10.1.2.3", nl.AF_INET, 24), ("fd00::5", nl.AF_INET6, 64)):
        packed = ipaddress.ip_address(text).packed
        body = struct.pack("=BBBBI", family, plen, 0, 0, 9) + nl.attr(nl.IFA_ADDRESS, packed)
        assert nl.decode_addr(nl.message(nl.RTM_NEWADDR, 0, 1, body)) == (9, text, plen)


@pytest.mark.parametrize(
    "doc",
    [
        {"a": [1, 2.5, None, True, False, 'é\n"x'], "b": {"c": {}}},
        [],
        "text",
        -3,
        {"big": 2**70, "inf": float("inf")},
    ],
)
def test_json_matches_the_stdlib(doc: object) -> None:
    """cni._json writes what json.dumps writes and reads it back, bytes or text."""
    assert _json.dumps(doc) == json.dumps(doc)
    assert _json.loads(json.dumps(doc)) == doc
    assert _json.loads(f"  {json.dumps(doc)}\n ".encode()) == doc


@pytest.mark.parametrize("bad", ["", "   ", "{", "[1] x", "{'a': 1}", b"\xff"])
def test_json_rejects_bad_documents(bad: str | bytes) -> None:
    """Malformed documents raise ValueError, as json.loads does."""
    with pytest.raises(ValueError):
        _json.loads(bad)


def test_json_refuses_unknown_objects() -> None:
    """Objects JSON has no form for raise TypeError."""
    with pytest.raises(TypeError, match="not JSON serializable"):
        _json.dumps({"x": object()})


class _Point(NamedTuple):
    """A record with a default, a property and a classmethod."""

    x: int
    y: int = 0

    @property
    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)

    @classmethod
    def origin(cls) -> "_Point":
        return cls(0)


def test_record_behaves_like_a_typing_namedtuple() -> None:
    """Fields in order, defaults, methods, _replace and tuple equality."""
    p = _Point(3, -4)
    assert _Point._fields == ("x", "y")
    assert _Point(1) == (1, 0) and _Point.origin() == (0, 0)
    assert p.norm1 == 7 and p._replace(y=1) == _Point(3, 1)
    assert repr(p) == "_Point(x=3, y=-4)"
    assert "default" in (_Point.__doc__ or "")


@pytest.mark.parametrize(
    ("cid", "ok"),
    [("abc", True), ("a.b_c-1", True), ("", False), ("-a", False), ("a b", False), ("a\n", False)],
)
def test_container_id_rule(cid: str, ok: bool) -> None:
    """CNI_CONTAINERID follows ^[A-Za-z0-9][A-Za-z0-9_.\\-]*$ over the whole string."""
    assert skel.valid_container_id(cid) is ok


def test_ffi_calls_libc() -> None:
    """A C function through cni._ffi: getpid() of this process."""
    getpid = _ffi.Library(None).function("getpid", _ffi.c_int, [])
    assert getpid() == os.getpid()
    with pytest.raises(AttributeError):
        _ffi.Library(None).function("no_such_symbol_kpy", _ffi.c_int, [])


def test_plugin_modules_import_no_heavy_stdlib() -> None:
    """A plugin process (python -IS) imports none of typing, json, re, enum, subprocess, ctypes."""
    code = (
        f"import sys; sys.path[:0] = [{str(ROOT)!r}]\n"
        "import cni.plugins.bridge, cni.plugins.portmap, cni.plugins.hostlocal\n"
        "import cni.plugins.loopback, cni.plugins.isolation\n"
        "heavy = ('typing', 'json', 're', 'enum', 'subprocess', 'ctypes', 'socket', 'hashlib',"
        " 'pyroute2', 'contextlib', 'importlib', 'logging')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-IS", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
