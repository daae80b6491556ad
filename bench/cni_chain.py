"""Pod network set-up and tear-down: our CNI chain against Debian's reference plugins.

Run as root from the repository root:

    python3 bench/cni_chain.py [--pods 50] [--iperf-s 5]

Both chains are bridge + host-local + portmap (one hostPort per pod, ipMasq on), each
driven by the same caller (`cni.NetworkManager`) from a node namespace of its own,
with a pod namespace of its own: ours as CNI 1.1.0 from shims that
`python3 -m cni install` writes, Debian's containernetworking-plugins (Go, 1.1.1) from
/usr/lib/cni as CNI 1.0.0. Pods alternate ours / Debian's, so load from other work on
this shared machine falls on both. Timed: setup() (ADD of the chain) and teardown()
(DEL), wall clock around the blocking calls. Floors: what merely starting each kind of
plugin costs (`python -IS -c pass`, Debian's `bridge` VERSION).

With --iperf-s > 0: two node namespaces on a lab underlay bridge, one pod on each
(our chain, MTU 1450), iperf3 TCP from pod to pod, first routed over the underlay
("host-gw": one route per node, plain veth path, no encapsulation), then through our
VXLAN overlay (cni.vxlan.reconcile). The issue's target: overlay >= 80 % of plain.

Everything lives in namespaces named kpycni-bench-<hex>-*, removed at the end, also
on failure or Ctrl-C; the root namespace gets nothing. iperf3 processes are stopped
by PID.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import percentile, stop_popen
from cni import NetworkManager, PodRef, PortMapping, vxlan
from cni.install import install
from kubelet_py.devcluster.netlab import run_in_netns

T = TypeVar("T")
DEBIAN = Path("/usr/lib/cni")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


class Namespaces:
    def __init__(self) -> None:
        self.prefix = f"kpycni-bench-{uuid.uuid4().hex[:6]}"
        self.names: list[str] = []

    def add(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        sh("ip", "netns", "add", name)
        self.names.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return f"/run/netns/{name}"

    def close(self) -> None:
        for name in reversed(self.names):
            sh("ip", "netns", "del", name, check=False)


def conflist(
    version: str, subnet: str, data_dir: Path, mtu: int = 1500, **extra: Any
) -> dict[str, Any]:
    bridge = {
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "isDefaultGateway": True,
        "ipMasq": True,
        "hairpinMode": True,
        "mtu": mtu,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(data_dir)},
        **extra,
    }
    return {
        "cniVersion": version,
        "name": "bench",
        "plugins": [bridge, {"type": "portmap", "capabilities": {"portMappings": True}}],
    }


def manager(work: Path, tag: str, conf: dict[str, Any], bin_dir: Path) -> NetworkManager:
    conf_dir = work / f"conf-{tag}"
    conf_dir.mkdir()
    (conf_dir / "10-bench.conflist").write_text(json.dumps(conf))
    return NetworkManager(conf_dir, [bin_dir], work / f"cache-{tag}")


def _children_cpu_ms() -> float:
    """user+sys of all waited-for child processes so far (plugins and what they ran)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * 1000


def floor_ms(
    argv: list[str], stdin: bytes = b"", env: dict[str, str] | None = None, n: int = 20
) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False)
        times.append((time.perf_counter() - t) * 1000)
    return percentile(times, 50)


def latency(pods: int, work: Path, ns: Namespaces, our_bin: Path) -> None:
    sides = {
        "ours (Python, CNI 1.1.0)": manager(
            work, "ours", conflist("1.1.0", "10.244.1.0/24", work / "ipam-ours"), our_bin
        ),
        "Debian plugins 1.1.1 (Go, 1.0.0)": manager(
            work, "deb", conflist("1.0.0", "10.244.2.0/24", work / "ipam-deb"), DEBIAN
        ),
    }
    places = {name: (ns.add(f"node{i}"), ns.add(f"pod{i}")) for i, name in enumerate(sides)}
    results: dict[str, dict[str, list[float]]] = {
        n: {"add": [], "del": [], "total": [], "cpu": []} for n in sides
    }

    def one(name: str, i: int) -> None:
        node, pod = places[name]
        mgr = sides[name]
        cpu: list[float] = []

        def run() -> tuple[float, float]:
            cpu0 = _children_cpu_ms()
            t0 = time.perf_counter()
            mgr.setup(
                f"bench{i}",
                pod,
                pod=PodRef("bench", f"p{i}"),
                port_mappings=[PortMapping(8080, 80)],
            )
            t1 = time.perf_counter()
            mgr.teardown(f"bench{i}", pod)
            cpu.append(_children_cpu_ms() - cpu0)
            return (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000

        add_ms, del_ms = run_in_netns(Path(node), run)
        if i >= 0:
            r = results[name]
            r["add"].append(add_ms)
            r["del"].append(del_ms)
            r["total"].append(add_ms + del_ms)
            r["cpu"].append(cpu[0])

    names = list(sides)
    for name in names:  # warm-up: bridge, tables and page cache
        one(name, -1)
    for i in range(pods):
        order = names if i % 2 == 0 else list(reversed(names))
        for name in order:
            one(name, i)
        if (i + 1) % 10 == 0:
            print(f"[cni bench] {i + 1}/{pods} pods per side", file=sys.stderr, flush=True)

    py = str(Path(sys.executable).resolve())
    floors = {
        "ours (Python, CNI 1.1.0)": floor_ms([py, "-IS", "-c", "pass"]),
        "Debian plugins 1.1.1 (Go, 1.0.0)": floor_ms(
            [str(DEBIAN / "bridge")], b'{"cniVersion":"1.0.0"}', {"CNI_COMMAND": "VERSION"}
        ),
    }
    print(f"\nCNI chain bridge+host-local+portmap, ADD+DEL per pod, {pods} pods per side (ms)\n")
    cols = ("ADD p50", "ADD p99", "DEL p50", "DEL p99", "total p50", "total p99", "CPU p50")
    cols = (*cols, "floor/exec")
    head = f"{'chain':34} " + " ".join(f"{c:>10}" for c in cols)
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        values = [percentile(r[k], q) for k in ("add", "del", "total") for q in (50, 99)]
        values.append(percentile(r["cpu"], 50))
        print(f"{name:34} " + " ".join(f"{v:10.1f}" for v in [*values, floors[name]]))
    ours, deb = (percentile(r["total"], 50) for r in results.values())
    ours_cpu, deb_cpu = (percentile(r["cpu"], 50) for r in results.values())
    print(f"\nours / Debian: wall (total p50) {ours / deb:.2f}x, CPU {ours_cpu / deb_cpu:.2f}x")
    print("CPU = user+sys of the plugin processes (and the nft/iptables they run) per pod")


def iperf(seconds: int, work: Path, ns: Namespaces, our_bin: Path) -> None:
    lab = Path(ns.add("lab")).name
    sh("ip", "-n", lab, "link", "add", "ubr", "type", "bridge")
    sh("ip", "-n", lab, "link", "set", "ubr", "up")
    nodes, pods = [], []
    for i in (1, 2):
        path = ns.add(f"vx{i}")
        name = Path(path).name
        sh(
            "ip",
            "-n",
            lab,
            "link",
            "add",
            f"u{i}",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            name,
        )
        sh("ip", "-n", lab, "link", "set", f"u{i}", "master", "ubr", "up")
        sh("ip", "-n", name, "addr", "add", f"10.99.0.{9 + i}/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        cfg = vxlan.VtepConfig(
            node=f"vx{i}",
            pod_cidr=ipaddress.IPv4Network(f"10.245.{i}.0/24"),
            underlay_ip=ipaddress.IPv4Address(f"10.99.0.{9 + i}"),
            underlay_dev="eth0",
        )
        conf = conflist(
            "1.1.0",
            str(cfg.pod_cidr),
            work / f"ipam-vx{i}",
            mtu=1450,
            ipMasqExclude=["10.245.0.0/16"],
        )
        mgr = manager(work, f"vx{i}", conf, our_bin)
        pod = ns.add(f"vx{i}pod")
        att = run_in_netns(Path(path), lambda mgr=mgr, pod=pod: mgr.setup("iperf", pod))
        nodes.append((path, cfg))
        pods.append((pod, str(att.ips[0].ip)))

    def measure() -> float:
        (server_ns, server_ip), (client_ns, _) = pods
        server = subprocess.Popen(
            ["nsenter", f"--net={server_ns}", "--", "iperf3", "-s", "-1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            out = sh(
                "nsenter",
                f"--net={client_ns}",
                "--",
                "iperf3",
                "-c",
                server_ip,
                "-t",
                str(seconds),
                "-J",
            ).stdout
            return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
        finally:
            stop_popen(server, grace_s=3)

    # Plain: each node routes the other's pod CIDR via its underlay address (no encapsulation).
    for (path, _cfg), (_, other) in zip(nodes, reversed(nodes), strict=True):
        sh(
            "nsenter",
            f"--net={path}",
            "--",
            "ip",
            "route",
            "add",
            str(other.pod_cidr),
            "via",
            str(other.underlay_ip),
        )
    plain = measure()
    for (path, _), (_, other) in zip(nodes, reversed(nodes), strict=True):
        sh("nsenter", f"--net={path}", "--", "ip", "route", "del", str(other.pod_cidr))
    macs = {cfg.node: vxlan.Vtep(cfg, netns_path=path).ensure()[0] for path, cfg in nodes}
    peers = [
        vxlan.Peer(cfg.node, cfg.pod_cidr, macs[cfg.node], cfg.underlay_ip) for _, cfg in nodes
    ]
    for path, cfg in nodes:
        vxlan.reconcile(cfg, peers, netns_path=path)
    overlay = measure()
    print(f"\niperf3 TCP pod -> pod across two nodes, {seconds} s each (Gbit/s)\n")
    print(f"{'path':40} {'Gbit/s':>8}")
    print(f"{'routed underlay, plain veth (host-gw)':40} {plain:8.2f}")
    print(f"{'VXLAN overlay (cni.vxlan)':40} {overlay:8.2f}")
    print(f"\noverlay / plain: {overlay / plain:.0%} (target >= 80 %)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--iperf-s", type=int, default=5)
    args = parser.parse_args()
    if not (DEBIAN / "bridge").exists():
        print("Debian's containernetworking-plugins are missing (/usr/lib/cni)", file=sys.stderr)
        return 1
    ns = Namespaces()
    with tempfile.TemporaryDirectory(prefix="kpycni-bench-") as tmp:
        work = Path(tmp)
        our_bin = work / "bin"
        install(our_bin)
        try:
            latency(args.pods, work, ns, our_bin)
            if args.iperf_s > 0:
                iperf(args.iperf_s, work, ns, our_bin)
        finally:
            ns.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
