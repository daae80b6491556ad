"""nftables rules of the plugins, generated as text (pure) and applied through libnftables.

Every plugin table is declared so that re-applying it is harmless: tables,
chains, sets and maps are `add`-style declarations (existing elements stay),
static rules live in chains that the same transaction flushes and refills, and
per-pod state is set/map *elements* carrying a comment "<network>/<cid>/<ifname>".
Elements are found again by that comment, so DEL needs no stored handles and GC
can drop whatever belongs to attachments that are no longer valid. One
buffer (`nft -f`) is one kernel transaction: concurrent plugins never see half a
table. Rules are applied in the namespace the plugin runs in (the node's).

    ip  kpy_nat_<bridge>   ipMasq of the bridge plugin: postrouting masquerade
                           for pod sources leaving the cluster CIDR
    ip  kpy_portmap        hostPort DNAT maps, hairpin and from-localhost SNAT
    bridge kpy_iso_<net>   isolation: bridged pod-to-pod frames dropped unless allowed
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence

from cni import _json as json
from cni._record import NamedTuple
from cni.errors import CNIError, Code
from cni.types import PortMapping

PORTMAP_TABLE = "kpy_portmap"
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def ident(prefix: str, name: str) -> str:
    """A table/set name from free text (network or bridge names): [A-Za-z0-9_], <= 60 chars."""
    return (prefix + "".join(c if c in _NAME_CHARS else "_" for c in name))[:60]


def quote(comment: str) -> str:
    """An nft string literal (comments are at most 128 bytes)."""
    safe = comment.replace("\\", "").replace('"', "")[:127]
    return f'"{safe}"'


# ---- ipMasq (bridge) --------------------------------------------------------------


def masq_table(bridge: str) -> str:
    return ident("kpy_nat_", bridge)


def masq_script(
    bridge: str, exclude: Sequence[ipaddress.IPv4Network], add: Iterable[tuple[str, str]] = ()
) -> str:
    """Declare the bridge's masquerade table and add (ip, comment) pod elements."""
    t = masq_table(bridge)
    nets = ", ".join(str(n) for n in [*exclude, ipaddress.IPv4Network("224.0.0.0/4")])
    lines = [
        f"table ip {t} {{",
        "  set pods { type ipv4_addr; }",
        "  chain postrouting { type nat hook postrouting priority srcnat; policy accept; }",
        "}",
        f"flush chain ip {t} postrouting",
        f"add rule ip {t} postrouting ip saddr @pods ip daddr != {{ {nets} }} masquerade",
    ]
    lines += [f"add element ip {t} pods {{ {ip} comment {quote(c)} }}" for ip, c in add]
    return "\n".join(lines) + "\n"


# ---- portmap ----------------------------------------------------------------------


class PortMapElements(NamedTuple):
    """The map/set elements one pod's port mappings need."""

    any_ip: tuple[str, ...]
    host_ip: tuple[str, ...]
    hairpin: tuple[str, ...]


def portmap_base() -> str:
    """The portmap table and its static rules (idempotent)."""
    t = PORTMAP_TABLE
    return (
        "\n".join(
            [
                f"table ip {t} {{",
                "  map hostports { type inet_proto . inet_service : ipv4_addr . inet_service; }",
                "  map hostip_ports { type ipv4_addr . inet_proto . inet_service :"
                " ipv4_addr . inet_service; }",
                "  set hairpin { type ipv4_addr . ipv4_addr; flags interval; }",
                "  chain prerouting { type nat hook prerouting priority dstnat; policy accept; }",
                "  chain output { type nat hook output priority -100; policy accept; }",
                "  chain postrouting { type nat hook postrouting priority srcnat; policy accept; }",
                "}",
                f"flush chain ip {t} prerouting",
                f"flush chain ip {t} output",
                f"flush chain ip {t} postrouting",
                f"add rule ip {t} prerouting fib daddr type local"
                " dnat ip to meta l4proto . th dport map @hostports",
                f"add rule ip {t} prerouting dnat ip to ip daddr . meta l4proto . th dport"
                " map @hostip_ports",
                f"add rule ip {t} output fib daddr type local"
                " dnat ip to meta l4proto . th dport map @hostports",
                f"add rule ip {t} output dnat ip to ip daddr . meta l4proto . th dport"
                " map @hostip_ports",
                # From localhost: 127.0.0.1 cannot leave the host as a source address.
                f"add rule ip {t} postrouting ct status dnat ip saddr 127.0.0.0/8 masquerade",
                # Hairpin: a pod (or its neighbour on the bridge) reaching a pod through a
                # host port must see the reply come from the host, not straight from the pod.
                f"add rule ip {t} postrouting ct status dnat"
                " ip saddr . ip daddr @hairpin masquerade",
            ]
        )
        + "\n"
    )


def portmap_elements(
    mappings: Sequence[PortMapping],
    pod_ip: ipaddress.IPv4Interface,
    comment: str,
) -> PortMapElements:
    """The elements for one pod's IPv4 mappings (pure); hostIP "" or 0.0.0.0 means any."""
    c = quote(comment)
    any_ip, host_ip = [], []
    for m in mappings:
        target = f"{pod_ip.ip} . {m.container_port}"
        if m.host_ip and m.host_ip not in ("0.0.0.0", "::"):  # noqa: S104 - "any" address
            if ipaddress.ip_address(m.host_ip).version != 4:
                continue
            host_ip.append(f"{m.host_ip} . {m.protocol} . {m.host_port} comment {c} : {target}")
        else:
            any_ip.append(f"{m.protocol} . {m.host_port} comment {c} : {target}")
    hairpin = (f"{pod_ip.network} . {pod_ip.ip} comment {c}",) if mappings else ()
    return PortMapElements(any_ip=tuple(any_ip), host_ip=tuple(host_ip), hairpin=hairpin)


def portmap_keys(
    mappings: Sequence[PortMapping], pod_ip: ipaddress.IPv4Interface
) -> dict[str, list[str]]:
    """Set/map name -> element keys of one pod's mappings, for a delete (pure)."""
    out: dict[str, list[str]] = {"hostports": [], "hostip_ports": [], "hairpin": []}
    for m in mappings:
        if m.host_ip and m.host_ip not in ("0.0.0.0", "::"):  # noqa: S104 - "any" address
            if ipaddress.ip_address(m.host_ip).version == 4:
                out["hostip_ports"].append(f"{m.host_ip} . {m.protocol} . {m.host_port}")
        else:
            out["hostports"].append(f"{m.protocol} . {m.host_port}")
    if mappings:
        out["hairpin"].append(f"{pod_ip.network} . {pod_ip.ip}")
    return out


def portmap_add_script(elements: PortMapElements) -> str:
    t = PORTMAP_TABLE
    lines = [portmap_base().rstrip("\n")]
    if elements.any_ip:
        lines.append(f"add element ip {t} hostports {{ {', '.join(elements.any_ip)} }}")
    if elements.host_ip:
        lines.append(f"add element ip {t} hostip_ports {{ {', '.join(elements.host_ip)} }}")
    if elements.hairpin:
        lines.append(f"add element ip {t} hairpin {{ {', '.join(elements.hairpin)} }}")
    return "\n".join(lines) + "\n"


# ---- isolation --------------------------------------------------------------------


def isolation_table(network: str) -> str:
    return ident("kpy_iso_", network)


def isolation_script(
    network: str,
    allow: Sequence[tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]],
    add: Iterable[tuple[str, str]] = (),
) -> str:
    """Bridged IPv4 between isolated pods is dropped unless (src, dst) is allowed.

    Allowed pairs are installed both ways: without bridge conntrack, the
    replies of an allowed connection travel the other way.
    """
    t = isolation_table(network)
    lines = [
        f"table bridge {t} {{",
        "  set isolated { type ipv4_addr; }",
        "  set allowed { type ipv4_addr . ipv4_addr; flags interval; }",
        "  chain forward { type filter hook forward priority filter; policy accept; }",
        "}",
        f"flush chain bridge {t} forward",
        f"flush set bridge {t} allowed",
        f"add rule bridge {t} forward ip saddr . ip daddr @allowed accept",
        f"add rule bridge {t} forward ip saddr @isolated drop",
        f"add rule bridge {t} forward ip daddr @isolated drop",
    ]
    pairs = sorted({f"{a} . {b}" for s, d in allow for a, b in ((s, d), (d, s))})
    if pairs:
        lines.append(f"add element bridge {t} allowed {{ {', '.join(pairs)} }}")
    lines += [f"add element bridge {t} isolated {{ {ip} comment {quote(c)} }}" for ip, c in add]
    return "\n".join(lines) + "\n"


# ---- running nft ------------------------------------------------------------------
#
# In-process through libnftables (Debian's libnftables1, the library the nft binary is a
# thin front end to; called through cni._ffi): `nft_run_cmd_from_buffer` takes the same
# text as `nft -f -`, one buffer being one kernel transaction. A plugin thus runs no nft
# process (fork + exec + the dynamic loader, ~3 ms of CPU each, and no `subprocess`
# import, ~14 ms per plugin start). Without the library, the nft binary is run instead.

_NFT_CTX_OUTPUT_JSON = 1 << 4


class _LibNft:
    """One libnftables context with buffered output and errors (one per process)."""

    def __init__(self) -> None:
        from cni import _ffi

        lib = _ffi.Library("libnftables.so.1")
        vp, cp, ci = _ffi.c_void_p, _ffi.c_char_p, _ffi.c_int
        new = lib.function("nft_ctx_new", vp, [_ffi.c_uint])
        buffer_output = lib.function("nft_ctx_buffer_output", ci, [vp])
        buffer_error = lib.function("nft_ctx_buffer_error", ci, [vp])
        self._output = lib.function("nft_ctx_get_output_buffer", cp, [vp])
        self._error = lib.function("nft_ctx_get_error_buffer", cp, [vp])
        self._set_flags = lib.function("nft_ctx_output_set_flags", None, [vp, _ffi.c_uint])
        self._run = lib.function("nft_run_cmd_from_buffer", ci, [vp, cp])
        self._ctx = new(0)  # NFT_CTX_DEFAULT
        if not self._ctx:
            raise OSError("nft_ctx_new failed")
        buffer_output(self._ctx)
        buffer_error(self._ctx)

    def run(self, text: str, *, json_output: bool = False) -> tuple[int, str, str]:
        """(0 on success, output, error text) of one command buffer."""
        ctx = self._ctx
        self._set_flags(ctx, _NFT_CTX_OUTPUT_JSON if json_output else 0)
        rc = self._run(ctx, text.encode())
        out = self._output(ctx) or b""
        err = self._error(ctx) or b""
        return int(rc), out.decode(errors="replace"), err.decode(errors="replace")


_lib: _LibNft | None = None
_lib_tried = False


def _libnft() -> _LibNft | None:
    """The process's libnftables context, or None when the library is not installed."""
    global _lib, _lib_tried
    if not _lib_tried:
        _lib_tried = True
        try:
            _lib = _LibNft()
        except (OSError, AttributeError):
            _lib = None
    return _lib


def _binary() -> str:
    # Not shutil.which: importing shutil costs a short-lived plugin ~10 ms of CPU.
    dirs = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/sbin"]
    found = next(
        (os.path.join(d, "nft") for d in dirs if d and os.access(os.path.join(d, "nft"), os.X_OK)),
        None,
    )
    if found is None:
        raise CNIError(Code.NOT_AVAILABLE, "nft not found", "install the nftables package")
    return found


def run(text: str, *, json_output: bool = False) -> tuple[int, str, str]:
    """Run nft commands (a script, or one `list ...`): (0 on success, output, errors)."""
    lib = _libnft()
    if lib is not None:
        return lib.run(text, json_output=json_output)
    import subprocess

    argv = [_binary(), *(["-j"] if json_output else []), "-f", "-"]
    proc = subprocess.run(argv, input=text.encode(), capture_output=True, check=False)
    return (
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


def apply(script: str) -> None:
    """Run a script as one nft transaction."""
    rc, _out, err = run(script)
    if rc != 0:
        raise CNIError(
            Code.FIREWALL_FAILURE,
            "nft failed",
            err.strip()[:800] + "\n--- script ---\n" + script,
        )


class Element(NamedTuple):
    """A set/map element as listed: its key text (nft syntax) and comment."""

    key: str
    comment: str


def _key_text(value: object) -> str:
    if isinstance(value, dict):
        if "concat" in value:
            return " . ".join(_key_text(v) for v in value["concat"])
        if "prefix" in value:
            p = value["prefix"]
            return f"{p['addr']}/{p['len']}"
        if "range" in value:
            lo, hi = value["range"]
            return f"{lo}-{hi}"
        if "elem" in value:
            return _key_text(value["elem"].get("val"))
    return str(value)


def parse_elements(listing: str) -> list[Element]:
    """Elements with their comments from `nft -j list set|map` output (pure)."""
    try:
        data = json.loads(listing) if listing.strip() else {}
    except ValueError as err:
        raise CNIError(Code.DECODE_FAILURE, "nft printed bad JSON", str(err)) from err
    out = []
    for item in data.get("nftables", []):
        body = item.get("set") or item.get("map")
        if not body:
            continue
        for elem in body.get("elem", []):
            key_obj, comment = elem, ""
            if isinstance(elem, list):  # map element: [key, value]
                key_obj = elem[0]
            if isinstance(key_obj, dict) and "elem" in key_obj:
                comment = str(key_obj["elem"].get("comment", ""))
                key_obj = key_obj["elem"].get("val")
            out.append(Element(key=_key_text(key_obj), comment=comment))
    return out


def parse_table_elements(listing: str) -> dict[str, list[Element]]:
    """Set/map name -> its elements, from `nft -j list table` output (pure)."""
    try:
        data = json.loads(listing) if listing.strip() else {}
    except ValueError as err:
        raise CNIError(Code.DECODE_FAILURE, "nft printed bad JSON", str(err)) from err
    out: dict[str, list[Element]] = {}
    for item in data.get("nftables", []):
        body = item.get("set") or item.get("map")
        if body:
            out[str(body.get("name"))] = parse_elements(json.dumps({"nftables": [item]}))
    return out


def list_table_elements(family: str, table: str) -> dict[str, list[Element]]:
    """Every set's and map's elements of a table in one nft call; {} if there is no table."""
    rc, out, _err = run(f"list table {family} {table}", json_output=True)
    if rc != 0:
        return {}
    return parse_table_elements(out)


def list_elements(family: str, table: str, kind: str, name: str) -> list[Element]:
    """The elements of a set or map; none if the table or set does not exist."""
    rc, out, _err = run(f"list {kind} {family} {table} {name}", json_output=True)
    if rc != 0:
        return []
    return parse_elements(out)


def delete_script(family: str, table: str, name: str, keys: Sequence[str]) -> str:
    if not keys:
        return ""
    return f"delete element {family} {table} {name} {{ {', '.join(keys)} }}\n"


def try_apply(script: str) -> bool:
    """Run a script as one transaction; False (nothing changed) if nft refused it."""
    return run(script)[0] == 0


def table_exists(family: str, table: str) -> bool:
    return run(f"list table {family} {table}")[0] == 0
