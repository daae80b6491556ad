"""A CNI lab: namespaces of our own (unique names, always removed), plugin dirs, chains.

    <prefix>-node   the "node": plugins run here (bridge, nft rules, veth host ends)
       eth0 10.98.0.1/24 ──veth── <prefix>-peer  eth0 10.98.0.2/24 (the underlay: a client host)
    <prefix>-pN     pod namespaces

Nothing is created in the root namespace: plugins and nft run from threads that
setns()'d into the node namespace, and the caller forks the plugins from there.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cni import NetworkManager
from cni.install import install
from kubelet_py.devcluster.netlab import run_in_netns

T = TypeVar("T")
DEBIAN_BIN = Path("/usr/lib/cni")
NODE_IP = "10.98.0.1"
PEER_IP = "10.98.0.2"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run fn on a thread inside the namespace at path; return its value or raise its error."""
    return run_in_netns(Path(path), fn)


class Lab:
    """Namespaces named <prefix>-*, removed by close() whatever happened."""

    def __init__(self, tmp: Path) -> None:
        self.prefix = f"kpycni-{uuid.uuid4().hex[:6]}"
        self.tmp = tmp
        self.names: list[str] = []

    def netns(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        sh("ip", "netns", "add", name)
        self.names.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return f"/run/netns/{name}"

    def close(self) -> None:
        for name in reversed(self.names):
            sh("ip", "netns", "del", name, check=False)

    def run(self, path: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("nsenter", f"--net={path}", "--", *argv, check=check)

    def ping(self, path: str, ip: str) -> bool:
        return (
            self.run(path, "busybox", "ping", "-c", "1", "-W", "2", ip, check=False).returncode == 0
        )

    def node_with_underlay(self) -> tuple[str, str]:
        """A node namespace with eth0 NODE_IP, and a peer namespace on the other end."""
        node, peer = self.netns("node"), self.netns("peer")
        n, p = Path(node).name, Path(peer).name
        sh("ip", "-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", p)
        for ns, ip in ((n, NODE_IP), (p, PEER_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        return node, peer


@pytest.fixture
def lab(require_root: None, tmp_path: Path) -> Iterator[Lab]:
    """A Lab whose namespaces are removed after the test, pass or fail."""
    the_lab = Lab(tmp_path)
    try:
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture(scope="session")
def our_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our plugins installed as shims into a private plugin directory."""
    directory = tmp_path_factory.mktemp("cni-bin")
    install(directory)
    return directory


def chain(
    name: str,
    *,
    subnet: str,
    data_dir: Path,
    bridge: str = "kpy0",
    mtu: int = 1500,
    version: str = "1.1.0",
    isolation: dict[str, Any] | None = None,
    masq_exclude: list[str] | None = None,
) -> dict[str, Any]:
    """bridge + host-local + portmap (+ kpy-isolation): the same keys work for Debian's plugins."""
    bridge_conf: dict[str, Any] = {
        "type": "bridge",
        "bridge": bridge,
        "isGateway": True,
        "isDefaultGateway": True,
        "ipMasq": True,
        "hairpinMode": True,
        "mtu": mtu,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(data_dir)},
    }
    if masq_exclude:
        bridge_conf["ipMasqExclude"] = masq_exclude
    plugins: list[dict[str, Any]] = [
        bridge_conf,
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]
    if isolation is not None:
        plugins.append({"type": "kpy-isolation", **isolation})
    return {"cniVersion": version, "name": name, "plugins": plugins}


def manager(tmp: Path, conf: dict[str, Any], bin_dir: Path, tag: str = "net") -> NetworkManager:
    conf_dir = tmp / f"conf-{tag}"
    conf_dir.mkdir(exist_ok=True)
    (conf_dir / "10-net.conflist").write_text(json.dumps(conf))
    return NetworkManager(conf_dir, [bin_dir], tmp / f"cache-{tag}")


FLAVOURS = ["ours", "debian"]


def flavour_setup(flavour: str, our_bin: Path, tmp: Path, **kw: Any) -> NetworkManager:
    """A NetworkManager for our chain (CNI 1.1.0) or Debian's (1.0.0, /usr/lib/cni)."""
    tmp.mkdir(parents=True, exist_ok=True)
    if flavour == "ours":
        return manager(tmp, chain("kpynet", data_dir=tmp / "ipam", **kw), our_bin)
    if not (DEBIAN_BIN / "bridge").exists():
        pytest.fail("Debian's containernetworking-plugins are not installed (/usr/lib/cni)")
    conf = chain("kpynet", data_dir=tmp / "ipam", version="1.0.0", **kw)
    return manager(tmp, conf, DEBIAN_BIN)


@contextlib.contextmanager
def tcp_echo(
    path: str, port: int, host: str = "0.0.0.0", *, tell_source: bool = False
) -> Iterator[None]:
    """A TCP server inside a namespace that answers b'echo:' + what it got, until exit.

    With tell_source it answers with the client address it sees instead (masquerade checks).
    """
    srv = in_netns(path, lambda: socket.create_server((host, port)))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    data = conn.recv(100)
                    source = conn.getpeername()[0].encode()
                    conn.sendall(source if tell_source else b"echo:" + data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        srv.close()


@contextlib.contextmanager
def udp_echo(path: str, port: int, prefix: bytes = b"echo:") -> Iterator[None]:
    """A UDP server inside a namespace that answers prefix + each datagram."""
    sock = in_netns(path, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(100)
            except TimeoutError:
                continue
            sock.sendto(prefix + data, addr)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        sock.close()


def tcp_talk(path: str, ip: str, port: int, timeout_s: float = 3.0) -> bytes:
    """Connect from inside a namespace, send b'hi', return the answer (b'' on failure)."""

    def talk() -> bytes:
        try:
            with socket.create_connection((ip, port), timeout=timeout_s) as c:
                c.sendall(b"hi")
                return c.recv(100)
        except OSError:
            return b""

    return in_netns(path, talk)


def udp_talk(path: str, ip: str, port: int, *, source_port: int = 0) -> bytes:
    """Send b'hi' from inside a namespace (from source_port if given); the answer or b''."""

    def talk() -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            if source_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", source_port))
            s.sendto(b"hi", (ip, port))
            try:
                return s.recv(100)
            except OSError:
                return b""

    return in_netns(path, talk)


def host_links(path: str) -> list[str]:
    """Link names in a namespace."""
    out = sh("ip", "-n", Path(path).name, "-o", "link", "show").stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def allocations(data_dir: Path, network: str = "kpynet") -> list[str]:
    d = data_dir / network
    if not d.exists():
        return []
    return sorted(n for n in os.listdir(d) if n[0].isdigit() or ":" in n)
