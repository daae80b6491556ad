"""Shared helpers of the runtime and pod-startup benches (not a test library: bench only).

- `ensure_kubelet`: the upstream kubelet built from the Kubernetes Go modules, the way
  `kubelet_py.devcluster.build` builds the control plane (same wrapper go.mod), in a cache
  directory of its own so the control plane's cache is never touched.
- `CRIClient`: a small synchronous CRI v1 client over gRPC (cri_api stubs), used for both
  our runtime and containerd so both sides pay the same client cost.
- `Containerd`: Debian's containerd with a config of its own (root, state, socket, runc
  root and CNI config in a temp dir; cgroupfs driver), images imported with `ctr`.
- images: busybox (tests.support.images.ImageBuilder) and a pause image made from it.
- process, RSS/PSS, CPU, mount and cgroup helpers; every cleanup acts on PIDs, mount
  points and cgroup directories this bench made, never on names.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python3 bench/x.py` puts only bench/ on the path
    sys.path.insert(0, str(REPO))

from kubelet_py.devcluster.build import (  # noqa: E402
    K8S_VERSION,
    _go_build_with_progress,
    _run_go,
    default_cache_root,
    go_version,
    render_wrapper_go_mod,
    version_ldflags,
)
from kubelet_py.devcluster.fsutil import write_atomic  # noqa: E402

KUBELET_PACKAGE = "k8s.io/kubernetes/cmd/kubelet"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 30 values is the largest but none)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- the upstream kubelet, built from Go modules -------------------------------------------


def ensure_kubelet(version: str = K8S_VERSION, *, progress: Callable[[str], None] = log) -> Path:
    """`<cache>/kubelet/<k8s>-<go>/bin/kubelet`, built once from the Kubernetes Go modules.

    Same wrapper module as the control plane's build (`render_wrapper_go_mod`: require
    k8s.io/kubernetes, replace every staging module with its v0.Y.Z release), but its own
    directory, a tools.go that imports only cmd/kubelet, and its own go.sum, so the
    control plane's cache stays as build.py left it. Temp dir + rename like build.py."""
    key_dir = default_cache_root() / "kubelet" / f"{version}-{go_version()}"
    binary = key_dir / "bin" / "kubelet"
    stamp = key_dir / "STAMP.json"
    if stamp.is_file() and binary.is_file():
        return binary
    started = time.monotonic()
    progress(f"building the upstream kubelet {version} from Go modules (once; cache {key_dir})")
    src = key_dir / "src"
    src.mkdir(parents=True, exist_ok=True)
    info = json.loads(
        _run_go(
            ["mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
            cwd=src,
            what=f"downloading k8s.io/kubernetes@{version}",
        )
    )
    go_mod = render_wrapper_go_mod(
        k8s_version=version, kubernetes_go_mod=Path(info["GoMod"]).read_text()
    )
    write_atomic(src / "go.mod", go_mod.encode())
    write_atomic(
        src / "tools.go",
        f'//go:build tools\n\npackage tools\n\nimport _ "{KUBELET_PACKAGE}"\n'.encode(),
    )
    progress("  resolving modules (go mod tidy)")
    _run_go(["mod", "tidy"], cwd=src, what="resolving the kubelet wrapper module")
    total = len(_run_go(["list", "-deps", KUBELET_PACKAGE], cwd=src, what="listing").split())
    tmp_bin = key_dir / "bin.tmp"
    shutil.rmtree(tmp_bin, ignore_errors=True)
    tmp_bin.mkdir()
    _go_build_with_progress(
        ["build", "-v", "-ldflags", version_ldflags(version), "-o", f"{tmp_bin}/",
         KUBELET_PACKAGE],
        cwd=src,
        total_packages=total,
        progress=progress,
    )  # fmt: skip
    shutil.rmtree(key_dir / "bin", ignore_errors=True)
    tmp_bin.rename(key_dir / "bin")
    write_atomic(stamp, json.dumps({"version": version, "go": go_version()}).encode())
    progress(f"  built in {time.monotonic() - started:.0f} s -> {binary}")
    return binary


# -- processes -------------------------------------------------------------------------------


def pids() -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (index 0 is the state)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def ppid_of(pid: int) -> int:
    st = proc_stat(pid)
    return int(st[1]) if st else 0


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (children not included)."""
    st = proc_stat(pid)
    return int(st[11]) + int(st[12]) if st else 0


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS:")


def anon_kib(pid: int) -> int:
    """RssAnon: the private, anonymous part of RSS (heap, stacks), no shared file pages."""
    return _status_kib(pid, "RssAnon:")


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (binary text, libraries) split among sharers."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"


def find_pids(match: Callable[[list[str]], bool]) -> list[int]:
    out = []
    for pid in pids():
        argv = cmdline(pid)
        if argv and match(argv):
            out.append(pid)
    return out


def children_of(parents: Iterable[int]) -> list[int]:
    wanted = set(parents)
    return [pid for pid in pids() if ppid_of(pid) in wanted]


def kill_pids(victims: Iterable[int], *, grace_s: float = 3.0) -> None:
    """SIGTERM the given PIDs, then SIGKILL what is left after `grace_s`."""
    victims = [p for p in victims if alive(p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(p) for p in victims):
            time.sleep(0.05)
        victims = [p for p in victims if alive(p)]
        if not victims:
            return


def stop_popen(proc: subprocess.Popen[bytes] | None, *, grace_s: float = 15.0) -> None:
    """SIGTERM a child we started (by its PID), wait, SIGKILL; always reaped."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass(frozen=True)
class MemSample:
    rss_kib: int
    pss_kib: int
    anon_kib: int
    processes: int


def memory_of(pid_list: Iterable[int]) -> MemSample:
    found = [p for p in set(pid_list) if p and alive(p)]
    return MemSample(
        sum(rss_kib(p) for p in found),
        sum(pss_kib(p) for p in found),
        sum(anon_kib(p) for p in found),
        len(found),
    )


def settled_memory(sample: Callable[[], MemSample], *, n: int = 5, gap_s: float = 0.4) -> MemSample:
    """The median of `n` samples `gap_s` apart (Go's GC and Python's allocator wobble)."""
    got = []
    for i in range(n):
        if i:
            time.sleep(gap_s)
        got.append(sample())
    return MemSample(
        int(median([s.rss_kib for s in got])),
        int(median([s.pss_kib for s in got])),
        int(median([s.anon_kib for s in got])),
        max(s.processes for s in got),
    )


def code_version() -> str:
    """The commit measured, and how many files outside bench/ differ from it."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    status = subprocess.run(
        ["git", "-C", str(REPO), "status", "--short"], capture_output=True, text=True
    ).stdout.splitlines()
    dirty = [s for s in status if not s[3:].startswith("bench/")]
    return f"{head or '?'}" + (f" + {len(dirty)} uncommitted changes" if dirty else "")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- mounts --------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(prefix: Path) -> list[str]:
    """Mount points at or below `prefix` in this mount namespace, deepest first."""
    top = str(prefix).rstrip("/")
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape(line.split()[4])
        if point == top or point.startswith(top + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: -p.count("/"))


def unmount_under(prefix: Path) -> list[str]:
    """Lazily unmount everything below `prefix` (repeated: stacked mounts); what was left."""
    left: list[str] = []
    for _ in range(5):
        left = mounts_under(prefix)
        if not left:
            return []
        for point in left:
            _libc.umount2(point.encode(), MNT_DETACH)
    return mounts_under(prefix)


# -- cgroups -------------------------------------------------------------------------------


def own_cgroup(controller: str = "memory") -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return path
    return "/"


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy under /sys/fs/cgroup (v1 controllers, name=systemd,
    the hybrid unified tree): runc's cgroupfs driver uses the same path in all of them."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        sep = parts.index("-")
        if parts[sep + 1] in ("cgroup", "cgroup2") and parts[4].startswith(str(CGROUP_ROOT)):
            out.append(Path(_unescape(parts[4])))
    return sorted(set(out))


class CgroupScope:
    """`<own memory cgroup>/<name>`: where a bench puts every pod cgroup of one runtime.

    Which ancestors of it already exist in each hierarchy is recorded at creation, so
    `remove()` deletes the scope and only the ancestors that did not exist before."""

    def __init__(self, name: str) -> None:
        self.path = f"{own_cgroup('memory').rstrip('/')}/{name}"
        self._preexisting: dict[Path, bool] = {}
        for h in cgroup_hierarchies():
            parts = self.path.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                d = h.joinpath(*parts[:i])
                self._preexisting[d] = d.is_dir()

    def dirs(self) -> list[Path]:
        return [h / self.path.lstrip("/") for h in cgroup_hierarchies()]

    def create(self) -> None:
        """mkdir the scope in every hierarchy (cpuset's cpus/mems copied from the parent at
        each new level, as runc does), for runtimes that want it to exist beforehand."""
        parts = self.path.strip("/").split("/")
        for h in cgroup_hierarchies():
            d = h
            for part in parts:
                d = d / part
                if d.is_dir():
                    continue
                d.mkdir()
                if (d / "cpuset.cpus").exists():
                    for f in ("cpuset.cpus", "cpuset.mems"):
                        (d / f).write_text((d.parent / f).read_text())

    def procs(self) -> list[int]:
        """Every PID in the scope, in any hierarchy."""
        found: set[int] = set()
        for top in self.dirs():
            if not top.is_dir():
                continue
            for dirpath, _dirs, _files in os.walk(top):
                with contextlib.suppress(OSError):
                    text = (Path(dirpath) / "cgroup.procs").read_text()
                    found.update(int(x) for x in text.split())
        return sorted(found)

    def leftovers(self) -> list[str]:
        return [str(d) for d in self.dirs() if d.is_dir()]

    def remove(self) -> list[str]:
        """Kill what still runs in the scope (processes our runtimes started), rmdir it."""
        kill_pids(self.procs(), grace_s=1.0)
        for top in self.dirs():
            if not top.is_dir():
                continue
            walk = sorted(os.walk(top), key=lambda t: -t[0].count("/"))
            for dirpath, _d, _f in walk:
                for _ in range(20):
                    try:
                        Path(dirpath).rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.05)
        for d, existed in sorted(self._preexisting.items(), key=lambda kv: -len(kv[0].parts)):
            if not existed:
                with contextlib.suppress(OSError):
                    d.rmdir()
        return self.leftovers()


# -- network namespaces made by containerd's CRI (/run/netns/cni-<uuid>) --------------------

NETNS_DIR = Path("/run/netns")


def netns_names() -> set[str]:
    return {p.name for p in NETNS_DIR.iterdir()} if NETNS_DIR.is_dir() else set()


def remove_netns_files(names: Iterable[str]) -> None:
    for name in names:
        path = NETNS_DIR / name
        _libc.umount2(str(path).encode(), MNT_DETACH)
        path.unlink(missing_ok=True)


# -- a CRI v1 client ------------------------------------------------------------------------


class CRIClient:
    """Synchronous CRI v1 over gRPC on a unix socket (cri_api stubs): the same client, in
    the bench process, for every runtime measured, so client cost is the same on all sides."""

    def __init__(self, socket: Path) -> None:
        import grpc
        from cri_api.v1 import api_pb2, api_pb2_grpc

        self.pb = api_pb2
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.img = api_pb2_grpc.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout_s: float = 60.0, alive_check: Callable[[], bool] | None = None):  # type: ignore[no-untyped-def]
        import grpc

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.rt.Version(self.pb.VersionRequest(version="v1"), timeout=2)
            except grpc.RpcError:
                if time.monotonic() > deadline or (alive_check and not alive_check()):
                    raise
                time.sleep(0.1)

    def run_pod_sandbox(self, config, runtime_handler: str = "") -> str:  # type: ignore[no-untyped-def]
        req = self.pb.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return str(self.rt.RunPodSandbox(req, timeout=120).pod_sandbox_id)

    def create_container(self, sandbox_id: str, config, sandbox_config) -> str:  # type: ignore[no-untyped-def]
        req = self.pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
        )
        return str(self.rt.CreateContainer(req, timeout=120).container_id)

    def start_container(self, container_id: str) -> None:
        self.rt.StartContainer(
            self.pb.StartContainerRequest(container_id=container_id), timeout=120
        )

    def list_pod_sandbox(self) -> list:  # type: ignore[type-arg]
        return list(self.rt.ListPodSandbox(self.pb.ListPodSandboxRequest(), timeout=30).items)

    def list_containers(self) -> list:  # type: ignore[type-arg]
        return list(self.rt.ListContainers(self.pb.ListContainersRequest(), timeout=30).containers)

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self.rt.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self.rt.RemovePodSandbox(
            self.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60
        )

    def status(self):  # type: ignore[no-untyped-def]
        return self.rt.Status(self.pb.StatusRequest(verbose=False), timeout=10)

    def image_present(self, image: str) -> bool:
        resp = self.img.ImageStatus(
            self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=image)), timeout=10
        )
        return resp.HasField("image")

    def remove_all_pods(self) -> list[str]:
        """Stop and remove every sandbox (and with it its containers); errors as text."""
        errors = []
        try:
            items = self.list_pod_sandbox()
        except Exception as err:
            return [f"listing sandboxes: {err}"]
        for sb in items:
            for step in (self.stop_pod_sandbox, self.remove_pod_sandbox):
                try:
                    step(sb.id)
                except Exception as err:
                    errors.append(f"{step.__name__} {sb.id[:12]}: {err}")
        return errors


# -- images -----------------------------------------------------------------------------------

BUSYBOX_IMAGE = "example.com/test/busybox:1"  # the agent tests' name for it
PAUSE_IMAGE = "example.com/test/pause:1"


@dataclass(frozen=True)
class BenchImages:
    layout: Path  # OCI layout with busybox (the one our runtimes import)
    busybox_archive: Path  # docker-archive tars for `ctr images import`
    pause_archive: Path


def prepare_images(work: Path) -> BenchImages:
    """busybox (ImageBuilder, umoci) and a pause image: busybox with `sleep infinity` as
    its entrypoint (skopeo copy into a layout of its own, then umoci config; our importer
    wants one image per layout, or a layout tag that matches the name); both also as
    docker-archive tars (skopeo) for `ctr images import`."""
    from tests.support.images import ImageBuilder, run_tool, skopeo_env, skopeo_global_args

    builder = ImageBuilder(work / "image-build")
    busybox = builder.busybox()
    tool_dir = work / "skopeo"

    def skopeo_copy(src: str, dest: str) -> None:
        run_tool(
            ["skopeo", *skopeo_global_args(tool_dir), "copy", "--quiet", src, dest],
            env=skopeo_env(tool_dir),
        )

    pause_layout = work / "pause-oci"
    if "pause" not in ImageBuilder.tags(pause_layout):
        shutil.rmtree(pause_layout, ignore_errors=True)
        skopeo_copy(busybox.skopeo_ref, f"oci:{pause_layout}:building")
        run_tool(
            ["umoci", "config", "--image", f"{pause_layout}:building",
             "--config.entrypoint", "sleep", "--config.cmd", "infinity"]
        )  # fmt: skip
        run_tool(["umoci", "tag", "--image", f"{pause_layout}:building", "pause"])
        run_tool(["umoci", "rm", "--image", f"{pause_layout}:building"])
    archives = {}
    for src, tag, name in (
        (busybox.skopeo_ref, "busybox", BUSYBOX_IMAGE),
        (f"oci:{pause_layout}:pause", "pause", PAUSE_IMAGE),
    ):
        out = work / f"{tag}.docker.tar"
        out.unlink(missing_ok=True)
        skopeo_copy(src, f"docker-archive:{out}:{name}")
        archives[tag] = out
    return BenchImages(busybox.layout, archives["busybox"], archives["pause"])


def import_into_our_store(images_root: Path, layout: Path, name: str = BUSYBOX_IMAGE) -> None:
    """What tests/integration/*/conftest.py do: ImageService.import_image of the layout."""
    import asyncio

    from cri.images import ImageService

    async def load() -> None:
        svc = ImageService(images_root)
        try:
            await svc.import_image(layout, name=name)
        finally:
            await svc.close()

    asyncio.run(load())


def nsenter_prefix(*, net: Path | None = None, mount: Path | None = None) -> list[str]:
    opts = ([f"--net={net}"] if net else []) + ([f"--mount={mount}"] if mount else [])
    return ["nsenter", *opts, "--"] if opts else []


# -- containerd -------------------------------------------------------------------------------

CNI_BIN_DIR = Path("/usr/lib/cni")
# Made by containerd 1.6 outside its configured root/state, whatever the config says:
# shim sockets (/run/containerd/s/<hash>) and libcni's result cache (/var/lib/cni/results).
CONTAINERD_HOST_DIRS = (Path("/run/containerd"), Path("/var/lib/cni"))


class Containerd:
    """Debian's containerd with its own config, everything under `work`:

        work/config.toml   root=work/root  state=work/state  socket=work/containerd.sock
        runc root work/runc, CNI config dir work/cni, cgroupfs driver (SystemdCgroup=false)

    `netns`: a /run/netns path to run it in (nsenter --net), or None for ours; `mountns`
    likewise a mount namespace (/proc/<pid>/ns/mnt) to join. Only the
    snapshotters and plugins it needs are left on. `cleanup()` removes every pod through
    CRI, stops containerd by PID, ends shims and containers it left (their PIDs found by
    its socket address and by the cgroup scope), unmounts everything under `work`, and
    removes the pod netns files it made.
    """

    def __init__(
        self,
        work: Path,
        *,
        netns: Path | None = None,
        mountns: Path | None = None,
        cni: str = "loopback",
        sandbox_image: str = PAUSE_IMAGE,
    ) -> None:
        self.work = work
        self.netns = netns
        self.mountns = mountns
        self.cni = cni
        self.sandbox_image = sandbox_image
        self.socket = work / "containerd.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = work / "containerd.log"
        self._netns_before = netns_names()
        self._host_dirs = {d: d.exists() for d in CONTAINERD_HOST_DIRS}
        self.client: CRIClient | None = None

    def version(self) -> str:
        out = subprocess.run(
            ["containerd", "--version"], capture_output=True, text=True, check=True
        ).stdout.split()
        return out[2] if len(out) >= 3 else " ".join(out)

    def write_config(self) -> Path:
        w = self.work
        for d in ("root", "state", "runc", "cni"):
            (w / d).mkdir(parents=True, exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""
version = 2
root = "{w / "root"}"
state = "{w / "state"}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  level = "warn"

[{cri}]
  sandbox_image = "{self.sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{os.environ.get("BENCH_RUNC") or shutil.which("runc") or "runc"}"
        Root = "{w / "runc"}"
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{w / "cni"}"
    max_conf_num = 1
"""
        path = w / "config.toml"
        path.write_text(config)
        self._write_cni()
        return path

    def _write_cni(self) -> None:
        """`loopback`: one conflist with Debian's loopback plugin only (the pod gets lo and
        nothing else, as our runtime's pods do today). `ptp`: veth + host-local IPAM (a
        real pod address, inside the node netns containerd runs in). `none`: no config."""
        conf_dir = self.work / "cni"
        if self.cni == "none":
            return
        if self.cni == "loopback":
            doc: dict[str, object] = {
                "cniVersion": "1.0.0",
                "name": "bench-lo",
                "plugins": [{"type": "loopback"}],
            }
        elif self.cni == "ptp":
            doc = {
                "cniVersion": "1.0.0",
                "name": "bench-ptp",
                "plugins": [
                    {
                        "type": "ptp",
                        "ipMasq": False,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": "10.88.0.0/16"}]],
                            "dataDir": str(self.work / "cni-ipam"),
                        },
                    },
                    {"type": "loopback"},
                ],
            }
        else:
            raise ValueError(f"unknown CNI mode {self.cni!r}")
        (conf_dir / "10-bench.conflist").write_text(json.dumps(doc, indent=1))

    def start(self, *, images: Sequence[Path] = ()) -> None:
        config = self.write_config()
        prefix = nsenter_prefix(net=self.netns, mount=self.mountns)
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [*prefix, "containerd", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.client = CRIClient(self.socket)
        try:
            self.client.wait_ready(60, alive_check=lambda: self.proc is not None
                                   and self.proc.poll() is None)  # fmt: skip
        except Exception as err:
            raise RuntimeError(f"containerd did not start: {self.log_tail()}") from err
        for archive in images:  # unpacked into overlayfs, the CRI's snapshotter
            self.ctr("images", "import", "--snapshotter", "overlayfs", str(archive))

    def ctr(self, *args: str) -> str:
        out = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if out.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def shim_pids(self) -> list[int]:
        """containerd-shim-runc-v2 processes serving this containerd (by -address)."""
        sock = str(self.socket)

        def match(argv: list[str]) -> bool:
            return Path(argv[0]).name.startswith("containerd-shim") and sock in argv

        return find_pids(match)

    def pause_pids(self) -> list[int]:
        """The pause containers: children of our shims running the pause command."""
        return [p for p in children_of(self.shim_pids()) if cmdline(p) == ["sleep", "infinity"]]

    def stack(self) -> dict[str, list[int]]:
        shims = self.shim_pids()
        pause = [p for p in children_of(shims) if cmdline(p) == ["sleep", "infinity"]]
        return {"containerd": [self.pid], "shims": shims, "pause": pause}

    def cleanup(self, scope: CgroupScope | None = None) -> list[str]:
        """Everything containerd started goes away; returns what could not be removed."""
        problems: list[str] = []
        if self.client is not None and self.proc is not None and self.proc.poll() is None:
            problems += self.client.remove_all_pods()
        if self.client is not None:
            self.client.close()
            self.client = None
        shims = self.shim_pids()
        stop_popen(self.proc, grace_s=15)
        # shims outlive containerd by design: end ours (and their containers) by PID
        kill_pids(children_of(shims) + shims, grace_s=3)
        if scope is not None:
            kill_pids(scope.procs(), grace_s=1)
        left = unmount_under(self.work)
        if left:
            problems.append(f"mounts left under {self.work}: {left}")
        new_netns = {n for n in netns_names() - self._netns_before if n.startswith("cni-")}
        if new_netns:
            remove_netns_files(new_netns)
        for top, existed in self._host_dirs.items():
            if existed or not top.is_dir():
                continue
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -t[0].count("/")):
                with contextlib.suppress(OSError):
                    Path(dirpath).rmdir()
            if top.exists():
                problems.append(f"{top} (made by containerd) is not empty: {list(top.rglob('*'))}")
        return problems


# -- signals ----------------------------------------------------------------------------------


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP raise KeyboardInterrupt, so every `finally` runs for them too.

    Only in this process: pyroute2 forks helper children (netns.create) and ends them with
    SIGTERM; a forked copy that inherited this handler would otherwise run the bench's
    clean-up code (remove namespaces, delete the work dir) from inside the helper."""
    owner = os.getpid()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- py-spy -------------------------------------------------------------------------------------


# Leaf frames of threads that are parked, not working (py-spy's idle detection misses them
# on this VM): asyncio's default thread pool, grpc's poller, the selector.
IDLE_LEAVES = {
    "_worker (thread.py)",
    "Thread.run (threading.py)",
    "EpollSelector.select (selectors.py)",
    "Condition.wait (threading.py)",
    "ThreadedChildWatcher._do_waitpid (unix_events.py)",
}


# Entry frames every sample of a thread has (runpy, asyncio's loop, thread bootstraps):
# left out of the inclusive table, which is about what the agent's own code does.
PLUMBING = {
    "_run_module_as_main (<frozen runpy>)", "_run_code (<frozen runpy>)", "<module> (__main__.py)",
    "main (cli.py)", "run (cli_node.py)", "run (cli_cri.py)", "run (runners.py)",
    "Runner.run (runners.py)", "BaseEventLoop.run_until_complete (base_events.py)",
    "BaseEventLoop.run_forever (base_events.py)", "BaseEventLoop._run_once (base_events.py)",
    "Handle._run (events.py)", "Thread._bootstrap (threading.py)",
    "Thread._bootstrap_inner (threading.py)", "Thread.run (threading.py)",
    "_worker (thread.py)", "_WorkItem.run (thread.py)",
}  # fmt: skip


def _short_frame(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`."""
    m = re.match(r"(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$", frame)
    return frame if m is None else f"{m['func']} ({Path(m['file']).name})"


def py_spy_summary(raw: Path, *, top: int = 15, title: str = "py-spy") -> str:
    """py-spy's collapsed stacks (`--format raw`) folded into per-thread, leaf and inclusive
    tables. Samples are of threads py-spy saw running (no --idle): CPU in Python."""
    from collections import Counter

    if not raw.is_file():
        return f"{title}: no profile written"
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if _short_frame(frames[-1]) in IDLE_LEAVES:
            idle += count
            continue
        total += count
        threads[frames[0]] += count
        leaf[_short_frame(frames[-1])] += count
        for name in {_short_frame(f) for f in frames[1:]} - PLUMBING:
            inclusive[name] += count
    if not total:
        return f"{title}: no samples"
    return "\n".join(
        [
            f"{title}: {total} samples of busy threads ({idle} more dropped: threads parked "
            "in an idle wait that py-spy still reports, e.g. an empty thread pool)",
            "  per thread:",
            *(f"    {n:7d}  {name}" for name, n in threads.most_common(6)),
            "  top leaf frames:",
            *(f"    {n:7d} {100 * n / total:5.1f}%  {f}" for f, n in leaf.most_common(top)),
            "  top inclusive frames:",
            *(
                f"    {n:7d} {100 * n / total:5.1f}%  {f}"
                for f, n in inclusive.most_common(top * 2)
            ),
        ]
    )


if __name__ == "__main__" and sys.argv[1:] == ["build-kubelet"]:
    print(ensure_kubelet())
