"""The lab network: one namespace with an underlay bridge, and node namespaces on it.

    root netns (untouched: no links, routes or addresses are added here)

    <prefix>-lab netns                      <prefix>-<node> netns
      lo 127.0.0.1  (etcd, component health)   lo
      underlay (bridge) 10.77.0.1/24  ◀──veth──▶ eth0 10.77.0.1x/24, default via .1
         control plane listens here

Namespaces are named files under /run/netns (as `ip netns` makes them), so
`ip netns exec`, `nsenter --net=...` and pyroute2 all work on them. Every link
is created inside a lab or node namespace; removing the namespaces removes them.
"""

import ctypes
import ipaddress
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import NetNS, netns

from kubelet_py.devcluster.errors import NetLabError

NETNS_RUN_DIR = Path("/run/netns")
UNDERLAY_BRIDGE = "underlay"
DEFAULT_SUBNET = ipaddress.IPv4Network("10.77.0.0/24")
_FIRST_NODE_HOST = 10
_CLONE_NEWNET = 0x40000000
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(path: Path) -> None:
    """Move the *calling thread* into the network namespace at `path`.

    A network namespace is a per-thread attribute: sockets made by this thread
    afterwards live in that namespace, while the rest of the process stays put.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetLabError(f"setns into {path} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(path: Path, fn: Callable[[], T]) -> T:
    """Run `fn` on a short-lived thread inside the namespace at `path` and return its result."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            enter_netns(path)
            result.append(fn())
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(err)

    thread = threading.Thread(target=target, name=f"netns:{path.name}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def netns_executor(path: Path, *, workers: int = 1) -> ThreadPoolExecutor:
    """A thread pool whose threads all live in the namespace at `path`."""
    return ThreadPoolExecutor(
        max_workers=workers,
        thread_name_prefix=f"netns:{path.name}",
        initializer=enter_netns,
        initargs=(path,),
    )


@dataclass(frozen=True)
class LabNode:
    """A node's namespace on the lab underlay."""

    name: str
    netns: str
    address: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address

    @property
    def netns_path(self) -> Path:
        return NETNS_RUN_DIR / self.netns

    def nsenter(self) -> list[str]:
        """The argv prefix that runs a command inside this node's namespace."""
        return ["nsenter", f"--net={self.netns_path}", "--"]


def _link_index(ns: Any, ifname: str) -> int:
    found = ns.link_lookup(ifname=ifname)
    if not found:
        raise NetLabError(f"link {ifname} not found")
    return int(found[0])


class NetLab:
    """Creates and removes the lab namespace and its node namespaces."""

    def __init__(self, prefix: str, *, subnet: ipaddress.IPv4Network = DEFAULT_SUBNET) -> None:
        if not _NAME_RE.match(prefix) or len(prefix) > 40:
            raise NetLabError(f"bad lab prefix {prefix!r}: use lowercase letters, digits and -")
        self.prefix = prefix
        self.subnet = subnet
        self._nodes: dict[str, LabNode] = {}
        self._lab_ends: dict[str, str] = {}
        self._created = False

    @property
    def lab_netns(self) -> str:
        return f"{self.prefix}-lab"

    @property
    def lab_netns_path(self) -> Path:
        return NETNS_RUN_DIR / self.lab_netns

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The underlay bridge's address in the lab namespace: where the control plane listens."""
        return self.subnet.network_address + 1

    @property
    def nodes(self) -> dict[str, LabNode]:
        return dict(self._nodes)

    def nsenter(self) -> list[str]:
        """The argv prefix that runs a command inside the lab namespace."""
        return ["nsenter", f"--net={self.lab_netns_path}", "--"]

    def create(self) -> None:
        """Make the lab namespace with loopback up and the underlay bridge addressed."""
        if self.lab_netns in netns.listnetns():
            raise NetLabError(f"network namespace {self.lab_netns} already exists")
        netns.create(self.lab_netns)
        self._created = True
        try:
            with NetNS(self.lab_netns) as ns:
                ns.link("set", index=_link_index(ns, "lo"), state="up")
                ns.link("add", ifname=UNDERLAY_BRIDGE, kind="bridge")
                bridge = _link_index(ns, UNDERLAY_BRIDGE)
                ns.addr(
                    "add",
                    index=bridge,
                    address=str(self.gateway),
                    prefixlen=self.subnet.prefixlen,
                )
                ns.link("set", index=bridge, state="up")
        except Exception as err:
            self.destroy()
            raise NetLabError(f"setting up lab namespace {self.lab_netns} failed: {err}") from err

    def add_node(self, name: str) -> LabNode:
        """Add a node namespace with a veth on the underlay and the next free address."""
        if not _NAME_RE.match(name):
            raise NetLabError(f"bad node name {name!r}: use lowercase letters, digits and -")
        if name in self._nodes:
            raise NetLabError(f"lab node {name} already exists")
        host = _FIRST_NODE_HOST + len(self._nodes)
        taken = {n.address for n in self._nodes.values()}
        address = self.subnet.network_address + host
        while address in taken:
            host += 1
            address = self.subnet.network_address + host
        if address not in self.subnet or address == self.subnet.broadcast_address:
            raise NetLabError(f"lab subnet {self.subnet} has no free address for node {name}")
        node = LabNode(
            name=name, netns=f"{self.prefix}-{name}", address=address, gateway=self.gateway
        )
        # The lab-side veth end is named after the host part of the address: always
        # short enough for IFNAMSIZ, and unique within the lab.
        lab_end = f"veth-n{host}"
        netns.create(node.netns)
        try:
            with NetNS(self.lab_netns) as lab:
                lab.link(
                    "add",
                    ifname=lab_end,
                    kind="veth",
                    peer={"ifname": "eth0", "net_ns_fd": node.netns},
                )
                lab.link(
                    "set",
                    index=_link_index(lab, lab_end),
                    master=_link_index(lab, UNDERLAY_BRIDGE),
                    state="up",
                )
            with NetNS(node.netns) as ns:
                ns.link("set", index=_link_index(ns, "lo"), state="up")
                eth0 = _link_index(ns, "eth0")
                ns.addr("add", index=eth0, address=str(address), prefixlen=self.subnet.prefixlen)
                ns.link("set", index=eth0, state="up")
                ns.route("add", dst="default", gateway=str(self.gateway))
        except Exception as err:
            _remove_netns(node.netns)
            raise NetLabError(f"adding lab node {name} ({node.netns}) failed: {err}") from err
        self._nodes[name] = node
        self._lab_ends[name] = lab_end
        return node

    def remove_node(self, name: str) -> None:
        """Remove a node namespace and its veth pair.

        The lab-side end is deleted explicitly: a process that still sits in the node's
        namespace (a container monitor finishing its exit) keeps that namespace, and with
        it the pair, alive after the name is gone, and a new node would collide with it.
        """
        node = self._nodes.pop(name, None)
        lab_end = self._lab_ends.pop(name, None)
        if node is None:
            return
        if lab_end is not None and self.lab_netns in netns.listnetns():
            with NetNS(self.lab_netns) as lab:
                index = lab.link_lookup(ifname=lab_end)
                if index:
                    lab.link("del", index=index[0])
        _remove_netns(node.netns)

    def destroy(self) -> None:
        """Remove every namespace this lab made. Safe to call twice, and after a failed create."""
        for name in list(self._nodes):
            self.remove_node(name)
        if self._created:
            _remove_netns(self.lab_netns)
            self._created = False


def _remove_netns(name: str) -> None:
    if name in netns.listnetns():
        netns.remove(name)


def stale_lab_namespaces(prefix: str) -> list[str]:
    """Namespaces left by a lab with this prefix (for `cluster down` after a crash)."""
    return sorted(n for n in netns.listnetns() if n.startswith(f"{prefix}-"))


def remove_namespaces(names: list[str]) -> None:
    for name in names:
        _remove_netns(name)
