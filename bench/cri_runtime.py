"""Pod start latency and memory per pod through CRI: our runtime vs Debian's containerd.

Run as root from the repository root:

    python3 bench/cri_runtime.py [--pods 30] [--mem-pods 20] [--network host|pod|both]
                                 [--profile]

What is measured, for each network mode, with both runtimes freshly started and running
side by side (this VM is shared: pods alternate between the runtimes, ours first for odd
pods and containerd first for even ones, so background load falls on both alike):

- latency: RunPodSandbox + CreateContainer + StartContainer of one pod with one busybox
  container running `sleep 3600`, for `--pods` pods per runtime one after another (the
  earlier ones keep running). Each call is timed in the bench process around a synchronous gRPC call
  (`_common.CRIClient`, cri_api v1 stubs): the same client for both runtimes, and no
  crictl start-up in the figures. p50 / p99 (nearest rank) of the sum, and p50 per call.
- memory per pod: the runtime stack's summed RSS (and PSS) with `--mem-pods` pods running,
  minus its idle figure, divided by the number of pods. The stack is
    ours:       the `kubelet-py cri serve` Python process + every conmon it started
    ours, node: the same with `--monitor node`: cri serve + its one node-wide monitor
                process (cri/runtime/monitor.py), which holds every container instead
    containerd: containerd + its containerd-shim-runc-v2 processes + the pause containers
  The workload processes (`sleep 3600`) are the same on both sides and not counted.
  "Idle" is measured after one warm-up pod was created and removed again (one-time costs
  such as lazy imports or the shim binary's first start are not charged to the pods);
  the cold figure (right after start) is printed too. Each figure is the median of five
  samples 0.4 s apart.

The two network modes (`--network both` is the default):

- `host`: hostNetwork pods on both sides. Neither runtime sets up a network: the fair,
  like-for-like comparison of the runtimes themselves, and the one the targets are
  judged on.
- `pod`: pods with their own network namespace. Ours makes the netns and brings `lo` up
  (it has no CNI yet: pods get loopback only). containerd 1.6's CRI refuses a
  loopback-only CNI config ("failed to find network info for sandbox": it needs an
  address on eth0), so it gets Debian's reference `ptp` plugin with host-local IPAM
  (plus `loopback`), and runs in a network namespace of its own that this bench
  creates, so the host ends of its veths stay out of the root namespace. containerd
  does more work here (a veth pair, an address, routes): informative, not like-for-like.

The anchor: Debian's containerd (its version is printed) with its own config
(`_common.Containerd`: root, state, socket, runc root and CNI config in a temp dir;
runc through containerd-shim-runc-v2; cgroupfs driver, SystemdCgroup = false;
`sandbox_image` = a pause image built here with umoci from busybox, `sleep infinity`;
both images imported with `ctr -n k8s.io images import`, nothing pulled;
`restrict_oom_score_adj = true`, because this machine's root lacks CAP_SYS_RESOURCE and
runc cannot set the pause container's -998). Pod cgroups of both runtimes go beneath this
process's own memory cgroup: `cgroup_parent` in the sandbox config (an absolute path for
containerd's cgroupfs driver; for ours, relative to the `--cgroup-parent` it was started
with, which it creates beneath its own cgroup, i.e. the same place).

Clean-up, also on an error or Ctrl-C: every pod is stopped and removed through CRI, the
runtime is stopped by its PID, shims, conmons and anything still in the bench's cgroups
are killed by PID, mounts under the temp dir are unmounted, the cgroups and the network
namespaces made here (and containerd's cni-* pod namespaces) are removed, the temp dir is
deleted. What could not be cleaned is printed and makes the exit code non-zero.

`--profile` runs one more pass of our runtime under `py-spy record` (pip install py-spy),
not measured, and prints where the CRI server's time goes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BUSYBOX_IMAGE,
    CLK_TCK,
    CgroupScope,
    Containerd,
    CRIClient,
    MemSample,
    code_version,
    cpu_ticks,
    find_pids,
    import_into_our_store,
    kill_pids,
    loadavg,
    log,
    median,
    memory_of,
    percentile,
    prepare_images,
    py_spy_summary,
    settled_memory,
    stop_popen,
    terminate_as_interrupt,
    unmount_under,
)

RSS_TARGET_KIB = 1024


OCI_RUNTIME = os.environ.get("BENCH_OCI_RUNTIME", "kubelet-py-oci")
"""Our side's executor under conmon (the default, ours); BENCH_OCI_RUNTIME=runc to compare."""


@dataclass
class SideResult:
    label: str
    runp_ms: list[float] = field(default_factory=list)
    create_ms: list[float] = field(default_factory=list)
    start_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    cold: MemSample | None = None
    idle: MemSample | None = None
    loaded: MemSample | None = None
    idle_parts: dict[str, MemSample] = field(default_factory=dict)
    loaded_parts: dict[str, MemSample] = field(default_factory=dict)
    mem_pods: int = 0
    daemon_cpu_ms_per_pod: float = float("nan")
    teardown_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def per_pod_rss_kib(self) -> float:
        assert self.idle is not None and self.loaded is not None
        return (self.loaded.rss_kib - self.idle.rss_kib) / self.mem_pods

    def per_pod_pss_kib(self) -> float:
        assert self.idle is not None and self.loaded is not None
        return (self.loaded.pss_kib - self.idle.pss_kib) / self.mem_pods


# -- the pods -------------------------------------------------------------------------------


def sandbox_config(
    pb: Any, *, n: int, cgroup_parent: str, log_root: Path, host_network: bool
) -> tuple[Any, str]:
    """What the kubelet sends for a BestEffort pod, minus what neither runtime needs."""
    uid = uuid.uuid4().hex
    name = f"bench-{n}"
    mode = pb.NamespaceMode
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace="bench", attempt=0),
        hostname="" if host_network else name,
        log_directory=str(log_root / f"bench_{name}_{uid}"),
        labels={
            "io.kubernetes.pod.name": name,
            "io.kubernetes.pod.namespace": "bench",
            "io.kubernetes.pod.uid": uid,
        },
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent.replace("{uid}", uid),
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(
                    network=mode.NODE if host_network else mode.POD,
                    pid=mode.CONTAINER,
                    ipc=mode.POD,
                )
            ),
        ),
    )
    return cfg, uid


def container_config(pb: Any, uid: str) -> Any:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="sleep", attempt=0),
        image=pb.ImageSpec(image=BUSYBOX_IMAGE),
        command=["sleep", "3600"],
        log_path="sleep/0.log",
        labels={"io.kubernetes.pod.uid": uid, "io.kubernetes.container.name": "sleep"},
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(cpu_shares=2, oom_score_adj=1000)
        ),
    )


def run_pod(
    client: CRIClient, n: int, *, cgroup_parent: str, log_root: Path, host_network: bool
) -> tuple[float, float, float]:
    pb = client.pb
    sb, uid = sandbox_config(
        pb, n=n, cgroup_parent=cgroup_parent, log_root=log_root, host_network=host_network
    )
    t0 = time.perf_counter()
    sid = client.run_pod_sandbox(sb)
    t1 = time.perf_counter()
    cid = client.create_container(sid, container_config(pb, uid), sb)
    t2 = time.perf_counter()
    client.start_container(cid)
    t3 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000


@dataclass
class Side:
    """One running runtime, as the measuring loop sees it."""

    client: CRIClient
    stack: Callable[[], dict[str, list[int]]]
    cgroup_parent: str  # "{uid}" is replaced per pod
    log_root: Path
    result: SideResult

    def pod(self, n: int, host_network: bool) -> tuple[float, float, float]:
        return run_pod(
            self.client, n, cgroup_parent=self.cgroup_parent, log_root=self.log_root,
            host_network=host_network,
        )  # fmt: skip

    def total(self) -> MemSample:
        return memory_of(p for group in self.stack().values() for p in group)

    def parts(self) -> dict[str, MemSample]:
        return {name: memory_of(group) for name, group in self.stack().items()}


def measure(sides: list[Side], *, pods: int, mem_pods: int, host_network: bool) -> None:
    """Both runtimes up at once. Cold memory; one warm-up pod each (removed); idle memory;
    then pod i of every runtime, alternating which runtime goes first, so background load
    on this shared machine hits both sides alike."""
    time.sleep(1.0)
    for s in sides:
        s.result.cold = settled_memory(s.total)
    for s in sides:
        s.pod(0, host_network)
        errors = s.client.remove_all_pods()
        if errors:
            raise RuntimeError(f"{s.result.label}: removing the warm-up pod failed: {errors}")
    time.sleep(1.0)
    for s in sides:
        s.result.idle = settled_memory(s.total)
        s.result.idle_parts = s.parts()
    daemons = [next(iter(s.stack().values()))[0] for s in sides]
    ticks0 = [cpu_ticks(pid) for pid in daemons]
    for i in range(1, max(pods, mem_pods) + 1):
        for s in sides if i % 2 else list(reversed(sides)):
            runp, create, start = s.pod(i, host_network)
            if i <= pods:
                r = s.result
                r.runp_ms.append(runp)
                r.create_ms.append(create)
                r.start_ms.append(start)
                r.total_ms.append(runp + create + start)
        if i == mem_pods:
            time.sleep(2.0)
            for s in sides:
                s.result.loaded = settled_memory(s.total)
                s.result.loaded_parts = s.parts()
                s.result.mem_pods = mem_pods
    for s, pid, t0 in zip(sides, daemons, ticks0, strict=True):
        n = max(pods, mem_pods)
        s.result.daemon_cpu_ms_per_pod = (cpu_ticks(pid) - t0) * 1000 / CLK_TCK / n
    for s in sides:
        running = len(s.client.list_containers())
        if running < max(pods, mem_pods):
            raise RuntimeError(f"{s.result.label}: only {running} containers after {pods}")
        t0 = time.monotonic()
        s.result.problems += s.client.remove_all_pods()
        s.result.teardown_s = time.monotonic() - t0


# -- our runtime ----------------------------------------------------------------------------


def our_conmons(root: Path) -> list[int]:
    exits = str(root / "runtime" / "exits")
    return find_pids(lambda argv: Path(argv[0]).name == "conmon" and exits in argv)


def our_monitor(root: Path) -> list[int]:
    """The node-wide monitor of this root (`--monitor node`), if one runs."""
    directory = str(root / "runtime" / "monitor")
    return find_pids(lambda argv: argv[-1] == directory and "kubelet-py-monitor" in " ".join(argv))


class OurRuntime:
    """`python3 -m kubelet_py cri serve` on its own root, busybox imported beforehand."""

    def __init__(self, work: Path, layout: Path, tag: str, monitor: str = "conmon") -> None:
        self.monitor = monitor
        self.root = work / f"ours-{tag}-{monitor}"
        self.layout = layout
        self.scope = CgroupScope(f"bench-cri-{os.getpid()}-ours-{tag}-{monitor}")
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: CRIClient | None = None

    def start(self) -> Side:
        self.root.mkdir(parents=True)
        import_into_our_store(self.root / "images", self.layout)
        socket = self.root / "cri.sock"
        with (self.root / "cri.log").open("ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kubelet_py", "cri", "serve", "--root", str(self.root),
                 "--socket", str(socket), "--cgroup-parent", self.scope.path.rsplit("/", 1)[1],
                 "--oci-runtime", OCI_RUNTIME, "--monitor", self.monitor],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
        proc = self.proc
        self.client = CRIClient(socket)
        self.client.wait_ready(60, alive_check=lambda: proc.poll() is None)
        if not self.client.image_present(BUSYBOX_IMAGE):
            raise RuntimeError("busybox is not in our image store")
        return Side(
            client=self.client,
            stack=self.stack,
            cgroup_parent="pod{uid}",  # relative: beneath the --cgroup-parent it was given
            log_root=self.root / "logs",
            result=SideResult(
                f"ours ({OCI_RUNTIME})" if self.monitor == "conmon" else "ours, node monitor"
            ),
        )

    def stack(self) -> dict[str, list[int]]:
        assert self.proc is not None
        if self.monitor == "node":
            return {"cri serve": [self.proc.pid], "monitor": our_monitor(self.root)}
        return {"cri serve": [self.proc.pid], "conmon": our_conmons(self.root)}

    def stop(self) -> list[str]:
        problems: list[str] = []
        if self.client is not None:
            if self.proc is not None and self.proc.poll() is None:
                problems += self.client.remove_all_pods()
            self.client.close()
        conmons = our_conmons(self.root) + our_monitor(self.root)
        stop_popen(self.proc)
        deadline = time.monotonic() + 6  # an idle node monitor leaves ~3 s after its runtime
        while our_monitor(self.root) and time.monotonic() < deadline:
            time.sleep(0.2)
        kill_pids(our_conmons(self.root) + our_monitor(self.root) or conmons, grace_s=3)
        left = unmount_under(self.root)
        if left:
            problems.append(f"mounts left under {self.root}: {left}")
        cg_left = self.scope.remove()
        if cg_left:
            problems.append(f"cgroups left: {cg_left}")
        return problems


# -- containerd -----------------------------------------------------------------------------


class ContainerdRuntime:
    """Debian's containerd (`_common.Containerd`); for pod networking in a netns of its own."""

    def __init__(self, work: Path, archives: list[Path], network: str) -> None:
        self.base = work / f"containerd-{network}"
        self.archives = archives
        self.network = network
        self.scope = CgroupScope(f"bench-cri-{os.getpid()}-containerd-{network}")
        self.ns_name = ""
        self.ctd: Containerd | None = None

    def start(self) -> Side:
        from pyroute2 import NetNS, netns

        self.base.mkdir(parents=True)
        if self.network == "pod":
            self.ns_name = f"bench-cri-{os.getpid()}"
            netns.create(self.ns_name)
            with NetNS(self.ns_name) as ns:
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        self.ctd = ctd = Containerd(
            self.base,
            netns=Path(f"/run/netns/{self.ns_name}") if self.ns_name else None,
            cni="ptp" if self.network == "pod" else "loopback",
        )
        try:
            ctd.start(images=self.archives)
        except Exception:
            log(f"containerd log tail:\n{ctd.log_tail()}")
            raise
        assert ctd.client is not None
        if not ctd.client.image_present(BUSYBOX_IMAGE):
            raise RuntimeError("busybox is not in containerd's image store")
        return Side(
            client=ctd.client,
            stack=ctd.stack,
            cgroup_parent=f"{self.scope.path}/pod{{uid}}",  # absolute, for cgroupfs
            log_root=self.base / "logs",
            result=SideResult(f"containerd {ctd.version()} + runc"),
        )

    def stop(self) -> list[str]:
        from pyroute2 import netns

        problems: list[str] = []
        if self.ctd is not None:
            problems += self.ctd.cleanup(self.scope)
        cg_left = self.scope.remove()
        if cg_left:
            problems.append(f"cgroups left: {cg_left}")
        if self.ns_name and self.ns_name in netns.listnetns():
            netns.remove(self.ns_name)
        return problems


def run_mode(
    work: Path, layout: Path, archives: list[Path], *, network: str, pods: int, mem_pods: int
) -> tuple[list[SideResult], SideResult, list[str]]:
    """Ours under conmon, ours under the node monitor, and containerd, side by side."""
    ours = [OurRuntime(work, layout, network, m) for m in ("conmon", "node")]
    anchor = ContainerdRuntime(work, archives, network)
    problems: list[str] = []
    sides: list[Side] = []
    try:
        sides = [o.start() for o in ours] + [anchor.start()]
        measure(sides, pods=pods, mem_pods=mem_pods, host_network=network == "host")
    finally:
        for o in ours:
            problems += o.stop()
        problems += anchor.stop()
    return [s.result for s in sides[:-1]], sides[-1].result, problems


def profile_ours(work: Path, layout: Path, *, network: str, pods: int) -> str:
    """Our runtime alone under `py-spy record` while `pods` pods are created (not measured)."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return "py-spy not found: pip install py-spy"
    ours = OurRuntime(work, layout, f"{network}-profile")
    raw = work / "profile.txt"
    spy: subprocess.Popen[bytes] | None = None
    try:
        side = ours.start()
        assert ours.proc is not None
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(ours.proc.pid), "--rate", "250", "--format", "raw",
             "--threads", "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
        t0 = time.monotonic()
        for i in range(pods):
            side.pod(i, network == "host")
        spent = time.monotonic() - t0
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()
        problems = ours.stop()
    title = f"py-spy, cri serve, {pods} pods ({network} network) in {spent:.1f} s wall"
    text = py_spy_summary(raw, title=title)
    return text + ("\n  clean-up problems: " + "; ".join(problems) if problems else "")


# -- report ---------------------------------------------------------------------------------


def report(
    results: dict[str, tuple[list[SideResult], SideResult]], args: argparse.Namespace
) -> bool:
    print()
    print(
        f"CRI RunPodSandbox + CreateContainer + StartContainer, busybox `sleep 3600`, "
        f"{args.pods} pods one after another (earlier ones keep running); memory with "
        f"{args.mem_pods} pods running; {os.cpu_count()} CPUs, load before: {args.load}; "
        f"code {args.code}"
    )
    ok = True
    for network, (all_ours, anchor) in results.items():
        what = {
            "host": "hostNetwork pods: no network set-up on either side (like-for-like)",
            "pod": "pod netns: ours loopback only; containerd CNI ptp+host-local+loopback",
        }[network]
        print()
        print(f"network: {what}")
        print(
            f"{'':<30}{'p50 ms':>8}{'p99 ms':>8}{'runp':>7}{'create':>8}{'start':>7}"
            f"{'idle MiB':>10}{'RSS/pod KiB':>13}{'PSS/pod KiB':>13}{'rm all s':>9}"
        )
        for r in (*all_ours, anchor):
            assert r.idle is not None
            print(
                f"{r.label:<30}{median(r.total_ms):>8.1f}{percentile(r.total_ms, 99):>8.1f}"
                f"{median(r.runp_ms):>7.1f}{median(r.create_ms):>8.1f}{median(r.start_ms):>7.1f}"
                f"{r.idle.rss_kib / 1024:>10.1f}{r.per_pod_rss_kib():>13.0f}"
                f"{r.per_pod_pss_kib():>13.0f}{r.teardown_s:>9.2f}"
            )
        for r in (*all_ours, anchor):
            print(f"  {r.label}, per pod by process group (RSS / PSS / RssAnon KiB):")
            for name, loaded in r.loaded_parts.items():
                idle = r.idle_parts.get(name, MemSample(0, 0, 0, 0))
                n = r.mem_pods
                print(
                    f"    {name:<10} {(loaded.rss_kib - idle.rss_kib) / n:>7.0f} "
                    f"{(loaded.pss_kib - idle.pss_kib) / n:>7.0f} "
                    f"{(loaded.anon_kib - idle.anon_kib) / n:>7.0f}   "
                    f"({idle.processes} -> {loaded.processes} processes)"
                )
        for r in (*all_ours, anchor):
            assert r.cold is not None and r.idle is not None and r.loaded is not None
            print(
                f"  {r.label}: RSS cold {r.cold.rss_kib / 1024:.1f} MiB, idle after warm-up "
                f"{r.idle.rss_kib / 1024:.1f} MiB ({r.idle.processes} processes), "
                f"{r.mem_pods} pods {r.loaded.rss_kib / 1024:.1f} MiB "
                f"({r.loaded.processes} processes); min/max total ms "
                f"{min(r.total_ms):.1f}/{max(r.total_ms):.1f}; daemon CPU "
                f"{r.daemon_cpu_ms_per_pod:.1f} ms per pod (its own threads, not children)"
            )
            whole = ", ".join(
                f"{name} {m.rss_kib / 1024:.1f} MiB RSS / {m.pss_kib / 1024:.1f} MiB PSS"
                for name, m in r.loaded_parts.items()
            )
            print(f"    with {r.mem_pods} pods, each group whole: {whole}")
        # the targets are judged on the better of our two monitors (by RSS per pod)
        ours = min(all_ours, key=lambda r: r.per_pod_rss_kib())
        print(f"targets ({network}), judged on {ours.label}:")
        faster = median(ours.total_ms) < median(anchor.total_ms) and percentile(
            ours.total_ms, 99
        ) < percentile(anchor.total_ms, 99)
        small = ours.per_pod_rss_kib() < RSS_TARGET_KIB
        pss_small = ours.per_pod_pss_kib() < RSS_TARGET_KIB
        print(
            f"  [{'met' if faster else 'NOT MET'}] faster than containerd (p50 and p99): "
            f"p50 {median(ours.total_ms):.1f} vs {median(anchor.total_ms):.1f} ms, p99 "
            f"{percentile(ours.total_ms, 99):.1f} vs {percentile(anchor.total_ms, 99):.1f} ms"
        )
        print(
            f"  [{'met' if small else 'NOT MET'}] under 1 MiB of extra RSS per pod: "
            f"{ours.per_pod_rss_kib():.0f} KiB (containerd {anchor.per_pod_rss_kib():.0f} KiB)"
        )
        print(
            f"  [{'met' if pss_small else 'NOT MET'}] (same, counted as PSS, i.e. shared "
            f"library pages split among the processes mapping them): "
            f"{ours.per_pod_pss_kib():.0f} KiB (containerd {anchor.per_pod_pss_kib():.0f} KiB)"
        )
        for r in all_ours:
            assert r.cold is not None and r.loaded is not None
            whole = (r.loaded.rss_kib - r.cold.rss_kib) / r.mem_pods
            print(
                f"  ({r.label} counted from cold, i.e. with the whole of any monitor process "
                f"started since: {whole:.0f} KiB RSS per pod)"
            )
        if network == "host":
            ok = ok and faster and small
    print()
    print(
        "columns: p50/p99 of the three calls together (nearest rank); runp/create/start = p50 "
        "of each call; RSS/PSS per pod = (stack with N pods - idle stack) / N; rm all = "
        "StopPodSandbox + RemovePodSandbox of every pod, one after another"
    )
    return ok


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=30, help="pods timed (default 30)")
    parser.add_argument("--mem-pods", type=int, default=20, help="pods for memory (default 20)")
    parser.add_argument("--network", choices=("host", "pod", "both"), default="both")
    parser.add_argument("--profile", action="store_true", help="one more pass under py-spy")
    args = parser.parse_args()
    if args.pods < 1 or args.mem_pods < 1:
        parser.error("--pods and --mem-pods must be >= 1")
    return args


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("run as root: namespaces, mounts and cgroups")
        return 2
    for tool in ("containerd", "ctr", "runc", "conmon", "umoci", "skopeo", "nsenter"):
        if shutil.which(tool) is None:
            print(f"missing tool: {tool} (Debian packages containerd, runc, conmon, umoci, skopeo)")
            return 2
    args.load = loadavg()
    args.code = code_version()
    work = Path(tempfile.mkdtemp(prefix="bench-cri-"))
    networks = ["host", "pod"] if args.network == "both" else [args.network]
    results: dict[str, tuple[list[SideResult], SideResult]] = {}
    problems: list[str] = []
    ok = False
    try:
        with terminate_as_interrupt():
            log("building images (busybox, pause) ...")
            images = prepare_images(work / "images")
            archives = [images.busybox_archive, images.pause_archive]
            for network in networks:
                log(f"[{network}] ours and containerd, pods alternating ...")
                ours, anchor, errs = run_mode(
                    work, images.layout, archives, network=network, pods=args.pods,
                    mem_pods=args.mem_pods,
                )  # fmt: skip
                problems += errs + [p for r in ours for p in r.problems] + anchor.problems
                results[network] = (ours, anchor)
            ok = report(results, args)
            if args.profile:
                log("profiling ours (not measured) ...")
                print()
                print(profile_ours(work, images.layout, network=networks[0], pods=args.pods))
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        left = unmount_under(work)
        if left:
            problems.append(f"mounts left under {work}: {left}")
        shutil.rmtree(work, ignore_errors=True)
    if problems:
        print()
        print("clean-up problems:")
        for p in problems:
            print(f"  {p}")
    return 0 if ok and not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
