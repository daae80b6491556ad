"""Pod start-up through the API, end to end: our node agent vs the upstream kubelet.

Run as root from the repository root:

    python3 bench/pod_startup.py [--single 30] [--batches 30,100] [--idle-s 90]
                                 [--network host|pod] [--no-upstream] [--profile]

Set-up (all torn down at the end, also on an error or Ctrl-C):

- a `LocalCluster` (etcd + apiserver, controller-manager, scheduler v1.37.2 in a lab netns)
  and a namespace `bench` (pods wait for its `default` service account);
- node `kpy`: a node netns on the lab underlay running our agent, started as
  tests/integration/agent/conftest.py starts it (`nsenter --net=<node netns> python3 -m
  kubelet_py node run --kubeconfig … --node-name … --node-ip … --root-dir …
  --cgroup-parent …`, our CRI runtime embedded), with busybox imported into its image
  store beforehand;
- node `kubelet` (the anchor, unless --no-upstream): a second node netns running the
  upstream kubelet v1.37.2 (built from the Kubernetes Go modules, cached under
  ~/.cache/kubelet-py/kubelet, see `_common.ensure_kubelet`) against Debian's containerd
  (the set-up of bench/cri_runtime.py: own root/state/socket, cgroupfs, runc, a local
  pause image) with the same busybox imported by `ctr`. The kubelet runs with
  `failCgroupV1: false` (v1.37 refuses cgroup v1 otherwise), cgroupfs driver, cgroupRoot
  beneath this process's memory cgroup, webhook authn/authz off (AlwaysAllow),
  `oomScoreAdj: 0` (this machine's root lacks CAP_SYS_RESOURCE). containerd and the
  kubelet share a private mount namespace in which the kernel tunables the kubelet
  insists on (vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1, …) are
  read-only files bind-mounted over /proc/sys, so the kubelet finds them "set" and never
  writes the machine's real, global sysctls.

Pods: one busybox container, `sleep 3600`, imagePullPolicy IfNotPresent,
terminationGracePeriodSeconds 1, `spec.nodeName` set (no scheduler in the path), a
toleration for every taint, the namespace's default service account token projected (both
node agents do the TokenRequest). `--network host` (default): hostNetwork pods, so neither
side sets up pod networking (like-for-like: our runtime has no CNI yet). `--network pod`:
pods get their own netns; ours brings up loopback only, containerd's CRI needs a real CNI
result (it rejects a loopback-only config), so it gets Debian's `ptp` + host-local, inside
the node netns: the anchor does more work in that mode.

Measured per node (ours first, then the anchor; the other node is idle meanwhile):

- single: `--single` pods one after another (each waits for the previous to be Ready;
  earlier pods keep running): latency from just before the create call to the moment a
  watch on the namespace (raw JSON lines, one thread of this process) delivers the pod with
  condition Ready=True. p50 / p99 (nearest rank).
- batch N (for each N in --batches, after the previous pods were deleted and the runtime
  has nothing running): N creates issued at once (16 client threads); time from the first
  create call to the last pod seen Ready, each pod's own p50/p99, and the CPU the agent
  process used meanwhile (ms per pod).
- for our single pods, where the time goes: median ms between milestones, from the
  agent's own log (sandbox ready, then the Pulled / Created / Started events).
- with the last batch still running: the agent's RSS (median of 5 samples) and its CPU over
  `--idle-s` seconds (utime+stime from /proc/<pid>/stat, % of one core; the default 90 s
  window covers one syncFrequency (60 s) resync of every pod, which a 30 s window misses),
  after 10 s of settling. For context also the rest of each stack: our conmons; containerd + shims +
  pause containers.

`--profile` runs py-spy on our agent during the single and batch phases of a second pass
(not measured) and on the idle phase, and prints where its time goes.
Exit code 0 only if every target of the issue was met by our agent.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
    ensure_kubelet,
    find_pids,
    import_into_our_store,
    kill_pids,
    loadavg,
    log,
    median,
    memory_of,
    nsenter_prefix,
    percentile,
    prepare_images,
    py_spy_summary,
    settled_memory,
    stop_popen,
    terminate_as_interrupt,
    unmount_under,
)

NAMESPACE = "bench"
TARGET_SINGLE_P50_MS = 300
TARGET_SINGLE_P99_MS = 1000
TARGET_BATCH100_S = 20
TARGET_RSS_MIB = 100
TARGET_IDLE_CPU_PCT = 2.0

# What the kubelet's container manager wants these to be (setupKernelTunables); it writes
# them unless they already match, and with protectKernelDefaults it refuses to start.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}
# Made by the kubelet outside its --root-dir whatever it is told (container log symlinks;
# the device-plugin socket dir is hard-coded); removed again if they did not exist before.
KUBELET_HOST_DIRS = (
    Path("/var/log/containers"),
    Path("/var/log/pods"),
    Path("/var/lib/kubelet"),
)


# -- watching pods -----------------------------------------------------------------------------


class ReadyWatch:
    """One watch on the namespace; the monotonic time each pod was first seen Ready, and
    which pods the API still has. Raw JSON lines (no model deserialisation)."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.ready_at: dict[str, float] = {}
        self.present: set[str] = set()
        self.cond = threading.Condition()
        self._stop = False
        self._resp: Any = None
        self._thread = threading.Thread(target=self._run, name="ready-watch", daemon=True)
        self.error: str = ""

    def start(self) -> None:
        listing = self.core.list_namespaced_pod(NAMESPACE)
        with self.cond:
            self.present = {p.metadata.name for p in listing.items}
        self._rv = listing.metadata.resource_version
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()
            except Exception:
                try:
                    resp.close()
                except Exception:
                    pass
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        while not self._stop:
            try:
                self._resp = self.core.list_namespaced_pod(
                    NAMESPACE, watch=True, resource_version=self._rv, timeout_seconds=120,
                    allow_watch_bookmarks=True, _preload_content=False,
                )  # fmt: skip
                for line in iter_resp_lines(self._resp):
                    now = time.monotonic()
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:  # relist
                            listing = self.core.list_namespaced_pod(NAMESPACE)
                            self._rv = listing.metadata.resource_version
                        break
                    self._rv = obj.get("metadata", {}).get("resourceVersion", self._rv)
                    if event.get("type") == "BOOKMARK":
                        continue
                    self._note(event["type"], obj, now)
            except Exception as err:
                if self._stop:
                    return
                self.error = str(err)
                time.sleep(0.2)

    def _note(self, kind: str, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        with self.cond:
            if kind == "DELETED":
                self.present.discard(name)
            else:
                self.present.add(name)
                conds = (obj.get("status") or {}).get("conditions") or []
                ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
                if ready and name not in self.ready_at:
                    self.ready_at[name] = now
            self.cond.notify_all()

    def wait(self, pred: Callable[[], bool], timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout=timeout_s)


# -- pods ----------------------------------------------------------------------------------------


def pod_manifest(name: str, node: str, *, host_network: bool) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench.kubelet-py/node": node}},
        "spec": {
            "nodeName": node,
            "hostNetwork": host_network,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            "containers": [
                {
                    "name": "sleep",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sleep", "3600"],
                }
            ],
        },
    }


@dataclass
class NodeResult:
    label: str
    single_ms: list[float] = field(default_factory=list)
    single_names: list[str] = field(default_factory=list)
    single_ready_wall: dict[str, float] = field(default_factory=dict)
    single_created_wall: dict[str, float] = field(default_factory=dict)
    timeline: list[tuple[str, float]] = field(default_factory=list)
    batches: dict[int, tuple[float, list[float], int]] = field(default_factory=dict)
    batch_cpu_s: dict[int, float] = field(default_factory=dict)
    agent_mem: MemSample | None = None
    rest_mem: dict[str, MemSample] = field(default_factory=dict)
    agent_cpu_pct: float = float("nan")
    stack_cpu_pct: float = float("nan")
    pods_running: int = 0
    failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class Node:
    """What the measuring code needs from either side."""

    label: str
    name: str
    agent_pid: int
    cri: CRIClient
    stack: Callable[[], dict[str, list[int]]]  # first group: the agent itself
    alive: Callable[[], bool]
    log_tail: Callable[[], str]


class Bench:
    def __init__(self, core: Any, watch: ReadyWatch, args: argparse.Namespace) -> None:
        self.core = core
        self.watch = watch
        self.args = args
        self.host_network = args.network == "host"
        self.created_wall: dict[str, float] = {}

    def create(self, name: str, node: str) -> float:
        self.created_wall[name] = time.time()
        t0 = time.monotonic()
        self.core.create_namespaced_pod(
            NAMESPACE, pod_manifest(name, node, host_network=self.host_network)
        )
        return t0

    def single(self, node: Node, result: NodeResult, n: int, tag: str) -> None:
        for i in range(n):
            name = f"{node.name}-{tag}-{i}"
            t0 = self.create(name, node.name)
            if not self.watch.wait(lambda name=name: name in self.watch.ready_at, 60):
                result.failures.append(f"{name} not Ready after 60 s")
                self._check_alive(node)
                continue
            result.single_ms.append((self.watch.ready_at[name] - t0) * 1000)
            result.single_names.append(name)
            result.single_created_wall[name] = self.created_wall[name]
            seen_ago = time.monotonic() - self.watch.ready_at[name]
            result.single_ready_wall[name] = time.time() - seen_ago

    def batch(self, node: Node, result: NodeResult, n: int, tag: str) -> None:
        names = [f"{node.name}-{tag}-{i}" for i in range(n)]
        starts: dict[str, float] = {}
        groups = node.stack()
        agent_pids = groups[next(iter(groups))]
        agent0 = sum(map(cpu_ticks, agent_pids))
        t_first = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            for name, t0 in zip(
                names, pool.map(lambda nm: self.create(nm, node.name), names), strict=True
            ):
                starts[name] = t0
        deadline_s = max(120.0, n * 3.0)
        ok = self.watch.wait(lambda: all(nm in self.watch.ready_at for nm in names), deadline_s)
        ready = [nm for nm in names if nm in self.watch.ready_at]
        if not ok:
            result.failures.append(
                f"batch {n}: {n - len(ready)} pods not Ready after {deadline_s:.0f} s"
            )
            self._check_alive(node)
        # CPU the agent process spent from the first create until now (all Ready)
        result.batch_cpu_s[n] = (sum(map(cpu_ticks, agent_pids)) - agent0) / CLK_TCK
        last = max((self.watch.ready_at[nm] for nm in ready), default=float("nan"))
        each = [(self.watch.ready_at[nm] - starts[nm]) * 1000 for nm in ready]
        result.batches[n] = (last - t_first if ok else float("inf"), each, len(ready))

    def _check_alive(self, node: Node) -> None:
        if not node.alive():
            raise RuntimeError(f"{node.label} died; log tail:\n{node.log_tail()}")

    def delete_all(self, node: Node, timeout_s: float = 300) -> None:
        """Delete this node's pods; wait until the API has none and nothing runs."""
        self.core.delete_collection_namespaced_pod(
            NAMESPACE, label_selector=f"bench.kubelet-py/node={node.name}", grace_period_seconds=1
        )
        prefix = f"{node.name}-"
        deadline = time.monotonic() + timeout_s
        gone = self.watch.wait(
            lambda: not any(p.startswith(prefix) for p in self.watch.present), timeout_s
        )
        if not gone:
            raise RuntimeError(f"{node.label}: pods still in the API after {timeout_s:.0f} s")
        pb = node.cri.pb
        while time.monotonic() < deadline:
            running = [
                c
                for c in node.cri.list_containers()
                if c.state == pb.ContainerState.CONTAINER_RUNNING
            ]
            ready = [
                s
                for s in node.cri.list_pod_sandbox()
                if s.state == pb.PodSandboxState.SANDBOX_READY
            ]
            if not running and not ready:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{node.label}: containers still running after {timeout_s:.0f} s")

    def idle(self, node: Node, result: NodeResult, seconds: float) -> None:
        time.sleep(10)  # status updates of the last batch, GC, lease: let them pass
        groups = node.stack()
        agent = groups[next(iter(groups))]
        everything = [p for g in groups.values() for p in g]
        result.agent_mem = settled_memory(lambda: memory_of(agent))
        result.rest_mem = {k: memory_of(v) for k, v in list(groups.items())[1:]}
        a0, s0, t0 = sum(map(cpu_ticks, agent)), sum(map(cpu_ticks, everything)), time.monotonic()
        time.sleep(seconds)
        a1, s1, t1 = sum(map(cpu_ticks, agent)), sum(map(cpu_ticks, everything)), time.monotonic()
        result.agent_cpu_pct = 100 * (a1 - a0) / CLK_TCK / (t1 - t0)
        result.stack_cpu_pct = 100 * (s1 - s0) / CLK_TCK / (t1 - t0)
        pb = node.cri.pb
        result.pods_running = sum(
            1 for c in node.cri.list_containers() if c.state == pb.ContainerState.CONTAINER_RUNNING
        )

    def run(self, node: Node, result: NodeResult, *, tag: str = "") -> None:
        log(f"[{node.label}] {self.args.single} single pods ...")
        self.single(node, result, self.args.single, f"s{tag}")
        self.delete_all(node)
        for n in self.args.batches:
            log(f"[{node.label}] batch of {n} ...")
            self.batch(node, result, n, f"b{n}{tag}")
            if n != self.args.batches[-1]:
                self.delete_all(node)
        log(f"[{node.label}] idle with {self.args.batches[-1]} pods, {self.args.idle_s} s ...")
        self.idle(node, result, self.args.idle_s)
        self.delete_all(node)


# -- where a single pod's time goes (our agent's log) -------------------------------------

# "2026-11-28 03:12:01,234 INFO kubelet_py.cri.runtime: sandbox 0123456789ab (pod sandbox
#  bench/kpy-s-3) ready" and "... kubelet_py.events: pod bench/kpy-s-3: Normal Created: ..."
_LOG_LINE = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ (?P<rest>.*)$")
_MILESTONES = (
    ("sandbox ready", re.compile(r"sandbox \S+ \(pod sandbox bench/(?P<pod>\S+)\) ready")),
    ("image checked", re.compile(r"pod bench/(?P<pod>\S+): Normal Pulled:")),
    ("container created", re.compile(r"pod bench/(?P<pod>\S+): Normal Created:")),
    ("container started", re.compile(r"pod bench/(?P<pod>\S+): Normal Started:")),
)


def single_pod_timeline(log_text: str, result: NodeResult) -> list[tuple[str, float]]:
    """Median ms between consecutive milestones of the single pods: API create (bench) ->
    sandbox ready -> image checked (Pulled event) -> container created -> started (agent
    log, ms timestamps) -> Ready seen by the bench's watch. Same clock (this machine)."""
    seen: dict[str, dict[str, float]] = {}
    wanted = set(result.single_names)
    for line in log_text.splitlines():
        m = _LOG_LINE.match(line)
        if m is None:
            continue
        for label, pattern in _MILESTONES:
            hit = pattern.search(m["rest"])
            if hit and hit["pod"] in wanted:
                ts = datetime.datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                seen.setdefault(hit["pod"], {}).setdefault(label, ts)
    steps = ["API create", *(label for label, _ in _MILESTONES), "Ready seen by the watch"]
    gaps: dict[str, list[float]] = {f"{a} -> {b}": [] for a, b in itertools.pairwise(steps)}
    for name in result.single_names:
        marks = seen.get(name, {})
        times = [result.single_created_wall.get(name), *(marks.get(lbl) for lbl, _ in
                 _MILESTONES), result.single_ready_wall.get(name)]  # fmt: skip
        if any(x is None for x in times):
            continue
        for (a, b), key in zip(itertools.pairwise(times), gaps, strict=True):
            gaps[key].append((b - a) * 1000)  # type: ignore[operator]
    return [(k, median(v)) for k, v in gaps.items() if v]


# -- our node -----------------------------------------------------------------------------------


class OurNode:
    def __init__(self, cluster: Any, work: Path, layout: Path) -> None:
        self.cluster = cluster
        self.name = "kpy"
        self.root = work / "kpy"
        self.layout = layout
        self.scope = CgroupScope(f"bench-pods-{os.getpid()}-kpy")
        self.proc: subprocess.Popen[bytes] | None = None
        self.cri: CRIClient | None = None
        self.lab: Any = None

    def conmons(self) -> list[int]:
        """The agent's container monitors: its conmons, or its one node monitor (the default)."""
        exits = str(self.root / "runtime" / "exits")
        monitor_dir = str(self.root / "runtime" / "monitor")
        return find_pids(
            lambda argv: (
                (Path(argv[0]).name == "conmon" and exits in argv)
                or (argv[-1] == monitor_dir and "kubelet-py-monitor" in " ".join(argv))
            )
        )

    def start(self) -> Node:
        self.lab = self.cluster.add_node(self.name)
        self.root.mkdir(parents=True)
        import_into_our_store(self.root / "images", self.layout)
        kubeconfig = self.root / "kubeconfig"
        kubeconfig.write_bytes(self.cluster.node_kubeconfig(self.name))
        with (self.root / "agent.log").open("ab") as logf:
            self.proc = subprocess.Popen(
                [*self.lab.nsenter(), sys.executable, "-m", "kubelet_py", "node", "run",
                 "--kubeconfig", str(kubeconfig), "--node-name", self.name,
                 "--node-ip", str(self.lab.address), "--root-dir", str(self.root),
                 "--cgroup-parent", self.scope.path.rsplit("/", 1)[1]],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
        proc = self.proc
        self.cri = CRIClient(self.root / "cri.sock")
        self.cri.wait_ready(60, alive_check=lambda: proc.poll() is None)
        return Node(
            label="ours (kubelet-py)",
            name=self.name,
            agent_pid=proc.pid,
            cri=self.cri,
            stack=lambda: {"agent": [proc.pid], "monitors": self.conmons()},
            alive=lambda: proc.poll() is None,
            log_tail=self.log_tail,
        )

    def log_text(self) -> str:
        path = self.root / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self) -> list[str]:
        problems: list[str] = []
        if self.cri is not None:
            if self.proc is not None and self.proc.poll() is None:
                problems += self.cri.remove_all_pods()
            self.cri.close()
        conmons = self.conmons()
        stop_popen(self.proc, grace_s=20)
        deadline = time.monotonic() + 5  # an idle node monitor leaves with its agent
        while self.conmons() and time.monotonic() < deadline:
            time.sleep(0.2)
        kill_pids(self.conmons() or conmons, grace_s=3)
        left = unmount_under(self.root)
        if left:
            problems.append(f"mounts left under {self.root}: {left}")
        cg = self.scope.remove()
        if cg:
            problems.append(f"cgroups left: {cg}")
        if self.lab is not None:
            self.cluster.netlab.remove_node(self.name)
        return problems


# -- the upstream kubelet + containerd -----------------------------------------------------------


class UpstreamNode:
    def __init__(self, cluster: Any, work: Path, archives: list[Path], kubelet: Path, *,
                 network: str) -> None:  # fmt: skip
        self.cluster = cluster
        self.name = "kubelet"
        self.base = work / "kubelet-node"
        self.archives = archives
        self.kubelet_bin = kubelet
        self.network = network
        self.scope = CgroupScope(f"bench-pods-{os.getpid()}-kubelet")
        self.holder: subprocess.Popen[bytes] | None = None
        self.containerd: Containerd | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.lab: Any = None
        self._host_dirs = {d: d.exists() for d in KUBELET_HOST_DIRS}

    def _start_mount_ns(self) -> Path:
        """A process holding a private mount namespace (in the node netns) in which the
        kubelet's kernel tunables are read-only files bind-mounted over /proc/sys."""
        fake = self.base / "sysctl"
        fake.mkdir(parents=True)
        binds = []
        for key, value in KUBELET_SYSCTLS.items():
            current = Path("/proc/sys", key).read_text().strip()
            if current != str(value):
                f = fake / key.replace("/", ".")
                f.write_text(f"{value}\n")
                f.chmod(0o444)
                binds.append(f"mount --bind -o ro {f} /proc/sys/{key}")
        script = "set -e; mount --make-rprivate /; " + "; ".join(binds) + "; exec sleep infinity"
        self.holder = subprocess.Popen(
            [*self.lab.nsenter(), "unshare", "--mount", "--propagation", "private",
             "sh", "-c", script],
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        mnt = Path(f"/proc/{self.holder.pid}/ns/mnt")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.holder.poll() is not None:
                raise RuntimeError("the kubelet's mount namespace holder exited")
            if Path(f"/proc/{self.holder.pid}/cmdline").read_bytes().startswith(b"sleep"):
                return mnt
            time.sleep(0.05)
        raise RuntimeError("the kubelet's mount namespace holder did not come up")

    def start(self) -> Node:
        self.lab = self.cluster.add_node(self.name)
        self.base.mkdir(parents=True)
        mnt = self._start_mount_ns()
        self.scope.create()
        self.containerd = Containerd(
            self.base / "containerd", netns=self.lab.netns_path, mountns=mnt,
            cni="ptp" if self.network == "pod" else "loopback",
        )  # fmt: skip
        self.containerd.start(images=self.archives)
        root = self.base / "root"
        root.mkdir()
        kubeconfig = self.base / "kubeconfig"
        kubeconfig.write_bytes(self.cluster.node_kubeconfig(self.name))
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.scope.path,
            "cgroupsPerQOS": True,
            "containerRuntimeEndpoint": f"unix://{self.containerd.socket}",
            "imageServiceEndpoint": f"unix://{self.containerd.socket}",
            "address": str(self.lab.address),
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.cluster.pki.ca_cert)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "podLogsDir": str(self.base / "pod-logs"),
            "failSwapOn": False,
            "oomScoreAdj": 0,
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "maxPods": 110,
        }
        config_path = self.base / "kubelet.yaml"
        config_path.write_text(json.dumps(config, indent=1))
        with (self.base / "kubelet.log").open("ab") as logf:
            self.proc = subprocess.Popen(
                [*nsenter_prefix(net=self.lab.netns_path, mount=mnt), str(self.kubelet_bin),
                 f"--config={config_path}", f"--kubeconfig={kubeconfig}",
                 f"--hostname-override={self.name}", f"--node-ip={self.lab.address}",
                 f"--root-dir={root}", f"--cert-dir={self.base / 'pki'}"],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        proc, ctd = self.proc, self.containerd
        assert ctd.client is not None
        return Node(
            label=f"upstream kubelet + containerd {ctd.version()}",
            name=self.name,
            agent_pid=proc.pid,
            cri=ctd.client,
            stack=lambda: {"kubelet": [proc.pid], **ctd.stack()},
            alive=lambda: proc.poll() is None and ctd.proc is not None and ctd.proc.poll() is None,
            log_tail=self.log_tail,
        )

    def log_tail(self, n: int = 40) -> str:
        path = self.base / "kubelet.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        ctd = self.containerd.log_tail(10) if self.containerd else ""
        return "\n".join(text.splitlines()[-n:]) + "\n--- containerd:\n" + ctd

    def stop(self) -> list[str]:
        problems: list[str] = []
        stop_popen(self.proc, grace_s=20)
        if self.containerd is not None:
            problems += self.containerd.cleanup(self.scope)
        kill_pids(self.scope.procs(), grace_s=1)
        if self.holder is not None:
            kill_pids([self.holder.pid], grace_s=2)
            self.holder.wait(timeout=10)
        left = unmount_under(self.base)
        if left:
            problems.append(f"mounts left under {self.base}: {left}")
        cg = self.scope.remove()
        if cg:
            problems.append(f"cgroups left: {cg}")
        for d, existed in self._host_dirs.items():
            if existed or not d.is_dir():
                continue
            for dirpath, _dirs, files in sorted(os.walk(d), key=lambda x: -x[0].count("/")):
                for f in files:  # its sockets, and log symlinks pointing into our dir
                    path = Path(dirpath, f)
                    if path.is_socket() or (
                        path.is_symlink() and str(self.base) in str(path.readlink())
                    ):
                        path.unlink()
                try:
                    Path(dirpath).rmdir()
                except OSError:
                    problems.append(f"{dirpath} (made by the kubelet) is not empty")
        if self.lab is not None:
            self.cluster.netlab.remove_node(self.name)
        return problems


# -- report ----------------------------------------------------------------------------------


def report(results: list[NodeResult], args: argparse.Namespace, upstream_note: str) -> bool:
    ours = next((r for r in results if r.label.startswith("ours")), None)
    print()
    print(
        f"pod start-up, create (API) -> Ready (watch); busybox `sleep 3600`, "
        f"{'hostNetwork pods' if args.network == 'host' else 'pods with their own netns'}, "
        f"nodeName set; {os.cpu_count()} CPUs, load before: {args.load}; code {args.code}"
    )
    last = args.batches[-1]
    head = f"{'':<44}{'single p50':>11}{'p99 ms':>8}"
    for n in args.batches:
        head += f"{f'{n} at once s':>14}{'p50/p99 s':>12}"
    head += f"{'agent RSS MiB':>14}{'idle CPU %':>11}{'stack CPU %':>12}"
    print()
    print(head)
    for r in results:
        line = f"{r.label:<44}{median(r.single_ms):>11.0f}{percentile(r.single_ms, 99):>8.0f}"
        for n in args.batches:
            total, each, _ = r.batches.get(n, (float("nan"), [], 0))
            line += (
                f"{total:>14.2f}"
                f"{f'{median(each) / 1000:.1f}/{percentile(each, 99) / 1000:.1f}':>12}"
            )
        rss = r.agent_mem.rss_kib / 1024 if r.agent_mem else float("nan")
        line += f"{rss:>14.1f}{r.agent_cpu_pct:>11.2f}{r.stack_cpu_pct:>12.2f}"
        print(line)
    if upstream_note:
        print(f"{'upstream kubelet + containerd':<44}{upstream_note}")
    print()
    for r in results:
        rest = ", ".join(
            f"{k} {v.rss_kib / 1024:.1f} MiB RSS / {v.pss_kib / 1024:.1f} MiB PSS "
            f"({v.processes} proc)"
            for k, v in r.rest_mem.items()
        )
        pss = r.agent_mem.pss_kib / 1024 if r.agent_mem else float("nan")
        print(
            f"  {r.label}: {r.pods_running} containers running while idle; agent PSS "
            f"{pss:.1f} MiB; rest of the stack: {rest}"
        )
        cpu = ", ".join(
            f"{n} pods {s:.2f} s ({1000 * s / n:.0f} ms per pod)" for n, s in r.batch_cpu_s.items()
        )
        print(f"  {r.label}: agent CPU from first create to all Ready: {cpu}")
        if r.failures:
            print(f"  {r.label} failures: {'; '.join(r.failures)}")
    print(
        "  idle CPU % = the agent process alone (ours: agent with its embedded runtime; "
        "upstream: kubelet), % of one core over "
        f"{args.idle_s:.0f} s; stack CPU % adds our monitors or containerd + shims (upstream)"
    )
    for r in results:
        if r.timeline:
            print(f"  {r.label}, single pods, median ms between milestones (agent log):")
            for step, ms in r.timeline:
                print(f"    {ms:7.1f}  {step}")
    print(
        "  single: one pod at a time (earlier ones keep running); N at once: first create "
        "call -> last pod seen Ready; p50/p99 s: each pod's own create -> Ready in the batch"
    )
    if ours is None:
        return False
    single_p50, single_p99 = median(ours.single_ms), percentile(ours.single_ms, 99)
    batch_last = ours.batches.get(last, (float("inf"), [], 0))[0]
    rss = ours.agent_mem.rss_kib / 1024 if ours.agent_mem else float("inf")
    targets = [
        (f"single pod p50 <= {TARGET_SINGLE_P50_MS} ms", single_p50 <= TARGET_SINGLE_P50_MS,
         f"{single_p50:.0f} ms"),
        (f"single pod p99 <= {TARGET_SINGLE_P99_MS} ms", single_p99 <= TARGET_SINGLE_P99_MS,
         f"{single_p99:.0f} ms"),
        (f"{last} pods all Ready within {TARGET_BATCH100_S} s", batch_last <= TARGET_BATCH100_S,
         f"{batch_last:.2f} s"),
        (f"agent RSS <= {TARGET_RSS_MIB} MiB with {last} pods", rss <= TARGET_RSS_MIB,
         f"{rss:.1f} MiB"),
        (f"idle CPU <= {TARGET_IDLE_CPU_PCT:g} % of a core with {last} pods",
         ours.agent_cpu_pct <= TARGET_IDLE_CPU_PCT, f"{ours.agent_cpu_pct:.2f} %"),
    ]  # fmt: skip
    print()
    print("targets (from the issue), for our agent:")
    for text, met, detail in targets:
        print(f"  [{'met' if met else 'NOT MET'}] {text}: {detail}")
    return all(met for _, met, _ in targets) and not ours.failures


# -- main ------------------------------------------------------------------------------------------


def wait_service_account(core: Any, timeout_s: float = 60) -> None:
    from kubernetes.client import ApiException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            core.read_namespaced_service_account("default", NAMESPACE)
            return
        except ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_node_ready(core: Any, node: Node, timeout_s: float = 120) -> float:
    from kubernetes.client import ApiException

    t0 = time.monotonic()
    while True:
        try:
            n = core.read_node(node.name)
            conds = n.status.conditions or []
            if any(c.type == "Ready" and c.status == "True" for c in conds):
                return time.monotonic() - t0
        except ApiException:
            pass
        if not node.alive():
            raise RuntimeError(f"{node.label} exited; log:\n{node.log_tail()}")
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"{node.label} not Ready in {timeout_s:.0f} s:\n{node.log_tail()}")
        time.sleep(0.3)


def profile_pass(bench: Bench, node: Node, work: Path, args: argparse.Namespace) -> str:
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return "py-spy not found: pip install py-spy"
    out = []
    for phase in ("startup", "idle"):
        raw = work / f"profile-{phase}.txt"
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(node.agent_pid), "--rate", "200", "--format", "raw",
             "--threads", "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
        scratch = NodeResult("profile")
        t0 = time.monotonic()
        if phase == "startup":
            bench.single(node, scratch, min(10, args.single), "ps")
            bench.batch(node, scratch, args.batches[-1], "pb")
        else:
            time.sleep(args.idle_s)
        spent = time.monotonic() - t0
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
        if phase == "startup":
            what = f"{len(scratch.single_ms)} single pods + a batch of {args.batches[-1]}"
        else:
            what = f"{args.batches[-1]} pods running"
        title = f"py-spy, our agent, {phase} ({spent:.1f} s wall; {what})"
        out.append(py_spy_summary(raw, title=title))
    bench.delete_all(node)
    return "\n\n".join(out)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--single", type=int, default=30, help="pods one by one (default 30)")
    parser.add_argument("--batches", default="30,100", help="pods at once (default 30,100)")
    parser.add_argument(
        "--idle-s", type=float, default=90.0, help="idle CPU window (90 s: one 60 s pod resync)"
    )
    parser.add_argument("--network", choices=("host", "pod"), default="host")
    parser.add_argument("--no-upstream", action="store_true", help="only our agent")
    parser.add_argument("--no-ours", action="store_true", help="only the upstream kubelet")
    parser.add_argument("--profile", action="store_true", help="py-spy our agent afterwards")
    args = parser.parse_args()
    args.batches = [int(x) for x in args.batches.split(",") if x]
    if args.single < 1 or not args.batches or min(args.batches) < 1:
        parser.error("--single and --batches must be >= 1")
    return args


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("run as root: namespaces, mounts and cgroups")
        return 2
    for tool in ("containerd", "ctr", "runc", "conmon", "umoci", "skopeo", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            print(f"missing tool: {tool}")
            return 2
    from kubernetes import client, config

    from kubelet_py.devcluster import LocalCluster, ensure_binaries

    args.load = loadavg()
    args.code = code_version()
    binaries = ensure_binaries(progress=log)
    kubelet_bin: Path | None = None
    upstream_note = ""
    if not args.no_upstream:
        try:
            kubelet_bin = ensure_kubelet()
        except Exception as err:
            upstream_note = f"not run: building the kubelet failed: {str(err)[-300:]}"
    work = Path(tempfile.mkdtemp(prefix="bench-pods-"))
    cluster = LocalCluster(
        binaries=binaries,
        work_dir=work / "cluster",
        prefix=f"bpods-{secrets.token_hex(3)}",
        progress=lambda _m: None,
    )
    results: list[NodeResult] = []
    problems: list[str] = []
    ok = False
    watch: ReadyWatch | None = None
    ours_node: OurNode | None = None
    upstream: UpstreamNode | None = None
    profile_text = ""
    try:
        with terminate_as_interrupt():
            log("building images ...")
            images = prepare_images(work / "images")
            log("starting the control plane ...")
            cluster.start()
            api = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
            core = client.CoreV1Api(api)
            core.create_namespace({"metadata": {"name": NAMESPACE}})
            wait_service_account(core)
            watch = ReadyWatch(core)
            watch.start()
            bench = Bench(core, watch, args)

            if not args.no_ours:
                ours_node = OurNode(cluster, work, images.layout)
                node = ours_node.start()
                log(f"[{node.label}] Ready after {wait_node_ready(core, node):.1f} s")
                result = NodeResult(node.label)
                try:
                    bench.run(node, result)
                    if args.profile:
                        profile_text = profile_pass(bench, node, work, args)
                finally:
                    result.timeline = single_pod_timeline(ours_node.log_text(), result)
                    results.append(result)
                    problems += ours_node.stop()
                    ours_node = None

            if kubelet_bin is not None:
                upstream = UpstreamNode(
                    cluster, work, [images.busybox_archive, images.pause_archive], kubelet_bin,
                    network=args.network,
                )  # fmt: skip
                try:
                    node = upstream.start()
                    log(f"[{node.label}] Ready after {wait_node_ready(core, node):.1f} s")
                except Exception as err:
                    upstream_note = f"not run: {str(err)[-1500:]}"
                    log(upstream_note)
                else:
                    result = NodeResult(node.label)
                    try:
                        bench.run(node, result)
                    finally:
                        results.append(result)
                finally:
                    problems += upstream.stop()
                    upstream = None
            ok = report(results, args, upstream_note)
            if profile_text:
                print()
                print(profile_text)
    except KeyboardInterrupt as err:
        print(f"\ninterrupted ({err}); cleaning up", file=sys.stderr)
        return 130
    finally:
        if watch is not None:
            watch.stop()
        for side in (ours_node, upstream):
            if side is not None:
                problems += side.stop()
        cluster.stop()
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
