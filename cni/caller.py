"""The runtime side of CNI: `NetworkManager` runs a network's plugin chain for pods.

    setup(pod)    ADD each plugin in order, prevResult threaded through; the final
                  result is cached (libcni's format); on failure the chain is DELeted
                  again so nothing half-configured stays, then the error is raised
    teardown(pod) DEL in reverse order with the cached result as prevResult, the
                  cached CNI_ARGS and capability args; the cache entry goes last
    check(pod)    CHECK in order with the cached result (unless disableCheck)
    status()      STATUS of every plugin (CNI >= 1.1); a missing plugin is code 50
    gc(valid)     DEL every cached attachment not in `valid`, then GC (>= 1.1)

Every call blocks (fork/exec of plugins, file I/O): the runtime runs them in
threads (`asyncio.to_thread`). Calls for different pods may run in parallel;
calls for the same pod are serialized, and GC excludes ADD/DEL as the spec
requires. The network configuration is re-read when its file changes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cni import conflist
from cni.cache import CachedAttachment, ResultCache
from cni.conflist import NetworkConfigList, PluginConf
from cni.errors import CNIError, Code, PluginFailedError, PluginNotFoundError
from cni.types import Interface, IPInterface, PortMapping, Result

log = logging.getLogger("cni.caller")


@dataclass(frozen=True)
class PodRef:
    """Kubernetes identity of a pod, passed as CNI_ARGS the way the kubelet does."""

    namespace: str
    name: str
    uid: str = ""

    def cni_args(self, pod_id: str) -> tuple[tuple[str, str], ...]:
        args = [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", self.namespace),
            ("K8S_POD_NAME", self.name),
            ("K8S_POD_INFRA_CONTAINER_ID", pod_id),
        ]
        if self.uid:
            args.append(("K8S_POD_UID", self.uid))
        return tuple(args)


@dataclass(frozen=True)
class Attachment:
    """What `setup` returns: the network, the pod's addresses and the full result."""

    network: str
    pod_id: str
    ifname: str
    result: Result

    @property
    def ips(self) -> tuple[IPInterface, ...]:
        """The pod's addresses (on interfaces inside the sandbox), IPv4 first."""
        return tuple(sorted(self.result.sandbox_ips(), key=lambda ip: ip.version))

    @property
    def interfaces(self) -> tuple[Interface, ...]:
        """Every interface the chain reported (host side ones have no sandbox)."""
        return self.result.interfaces


class Executor(Protocol):
    """Runs one plugin binary: returns (exit code, stdout, stderr)."""

    def __call__(
        self, binary: Path, env: Mapping[str, str], stdin: bytes, timeout_s: float
    ) -> tuple[int, bytes, bytes]: ...


def exec_plugin(
    binary: Path, env: Mapping[str, str], stdin: bytes, timeout_s: float
) -> tuple[int, bytes, bytes]:
    """The default Executor: fork/exec with a clean environment."""
    try:
        proc = subprocess.run(
            [str(binary)],
            input=stdin,
            env=dict(env),
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise CNIError(
            Code.TRY_AGAIN, f"plugin {binary.name} timed out after {timeout_s:.0f} s"
        ) from err
    except OSError as err:
        raise CNIError(Code.NOT_AVAILABLE, f"cannot execute plugin {binary}", str(err)) from err
    return proc.returncode, proc.stdout, proc.stderr


class _GCLock:
    """Many ADD/DEL at once, or one GC alone (SPEC.md Section 3, Lifecycle)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._gc = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._gc)
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._gc and self._active == 0)
            self._gc = True
        try:
            yield
        finally:
            with self._cond:
                self._gc = False
                self._cond.notify_all()


class NetworkManager:
    """Pod networking through one CNI network configuration (blocking calls)."""

    def __init__(
        self,
        conf_dir: Path,
        bin_dirs: Sequence[Path],
        cache_dir: Path,
        *,
        network: str | None = None,
        timeout_s: float = 60.0,
        executor: Executor = exec_plugin,
    ) -> None:
        self.conf_dir = Path(conf_dir)
        self.bin_dirs = tuple(Path(d) for d in bin_dirs)
        self.cache = ResultCache(Path(cache_dir))
        self.network_name = network
        self.timeout_s = timeout_s
        self._exec = executor
        self._gc_lock = _GCLock()
        # pod_id -> [lock, number of callers holding or waiting for it]; an entry goes
        # away with its last user, so a long-lived agent does not keep one per pod ever seen.
        self._pod_locks: dict[str, list[Any]] = {}
        self._locks_guard = threading.Lock()
        self._loaded: tuple[tuple[str, float], NetworkConfigList] | None = None

    # ---- configuration ---------------------------------------------------------------

    def network(self) -> NetworkConfigList:
        """The network in use (re-read when the chosen file or the directory changes)."""
        files = conflist.conf_files(self.conf_dir)
        stamp = (
            "|".join(str(f) for f in files),
            max((f.stat().st_mtime for f in files), default=0.0),
        )
        if self._loaded is not None and self._loaded[0] == stamp:
            return self._loaded[1]
        net = conflist.load_dir(self.conf_dir, self.network_name)
        self._loaded = (stamp, net)
        return net

    def find_plugin(self, plugin_type: str) -> Path:
        for directory in self.bin_dirs:
            candidate = directory / plugin_type
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        raise PluginNotFoundError(plugin_type, [str(d) for d in self.bin_dirs])

    # ---- running one plugin ----------------------------------------------------------

    def _run(
        self,
        plugin: PluginConf,
        command: str,
        config: Mapping[str, Any],
        *,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        cni_args: Sequence[tuple[str, str]] = (),
    ) -> dict[str, Any] | None:
        binary = self.find_plugin(plugin.type)
        env = {
            "CNI_COMMAND": command,
            "CNI_PATH": os.pathsep.join(str(d) for d in self.bin_dirs),
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        }
        if container_id:
            env["CNI_CONTAINERID"] = container_id
        if netns:
            env["CNI_NETNS"] = netns
        if ifname:
            env["CNI_IFNAME"] = ifname
        if cni_args:
            env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in cni_args)
        started = time.monotonic()
        rc, out, err = self._exec(binary, env, json.dumps(config).encode(), self.timeout_s)
        log.debug(
            "cni plugin ran",
            extra={
                "plugin": plugin.type,
                "command": command,
                "container_id": container_id,
                "rc": rc,
                "ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        text = out.strip()
        if rc != 0:
            try:
                parsed = json.loads(text)
                code = int(parsed.get("code", Code.INTERNAL))
                msg = str(parsed.get("msg") or "failed")
                details = str(parsed.get("details") or "")
            except (ValueError, AttributeError, TypeError):
                code, msg = Code.INTERNAL, f"exit code {rc}"
                details = (text or err).decode(errors="replace").strip()[:1000]
            raise PluginFailedError(plugin.type, command, code, msg, details)
        if not text:
            return None
        try:
            parsed = json.loads(text)
        except ValueError as e:
            raise PluginFailedError(
                plugin.type, command, Code.DECODE_FAILURE, "printed invalid JSON", str(e)
            ) from e
        if not isinstance(parsed, dict):
            raise PluginFailedError(
                plugin.type, command, Code.DECODE_FAILURE, "printed a non-object", ""
            )
        return parsed

    @contextmanager
    def _pod(self, pod_id: str) -> Iterator[None]:
        with self._locks_guard:
            entry = self._pod_locks.setdefault(pod_id, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with self._gc_lock.shared(), entry[0]:
                yield
        finally:
            with self._locks_guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._pod_locks[pod_id]

    # ---- the operations --------------------------------------------------------------

    def setup(
        self,
        pod_id: str,
        netns_path: str,
        *,
        ifname: str = "eth0",
        pod: PodRef | None = None,
        port_mappings: Sequence[PortMapping] = (),
    ) -> Attachment:
        """ADD the pod to the network; returns its addresses. Raises CNIError."""
        net = self.network()
        for plugin in net.plugins:  # fail before touching anything when one is missing
            self.find_plugin(plugin.type)
        cni_args = pod.cni_args(pod_id) if pod is not None else ()
        caps: dict[str, Any] = {}
        if port_mappings:
            caps["portMappings"] = [m.validated().to_json() for m in port_mappings]
        with self._pod(pod_id):
            prev: dict[str, Any] | None = None
            try:
                for plugin in net.plugins:
                    cfg = conflist.request_config(
                        net, plugin, prev_result=prev, capability_args=caps
                    )
                    prev = (
                        self._run(
                            plugin,
                            "ADD",
                            cfg,
                            container_id=pod_id,
                            netns=netns_path,
                            ifname=ifname,
                            cni_args=cni_args,
                        )
                        or prev
                    )
                    if prev is None:
                        raise PluginFailedError(
                            plugin.type, "ADD", Code.DECODE_FAILURE, "printed no result", ""
                        )
            except CNIError as err:
                log.warning("cni add failed, deleting", extra={"pod_id": pod_id, "error": str(err)})
                self._delete_chain(net, pod_id, netns_path, ifname, cni_args, caps, prev)
                raise
            assert prev is not None
            result = Result.from_json(prev)
            self.cache.put(
                CachedAttachment(
                    network=net.name,
                    container_id=pod_id,
                    ifname=ifname,
                    netns=netns_path,
                    cni_args=cni_args,
                    capability_args=caps,
                    result=prev,
                    config=json.dumps({"name": net.name, "source": net.source}).encode(),
                )
            )
        return Attachment(network=net.name, pod_id=pod_id, ifname=ifname, result=result)

    def _delete_chain(
        self,
        net: NetworkConfigList,
        pod_id: str,
        netns_path: str,
        ifname: str,
        cni_args: Sequence[tuple[str, str]],
        caps: Mapping[str, Any],
        prev: Mapping[str, Any] | None,
        *,
        stop_on_error: bool = False,
    ) -> None:
        first: CNIError | None = None
        if not net.supports("0.4.0"):
            prev = None  # prevResult on DEL arrived with CNI 0.4.0
        for plugin in reversed(net.plugins):
            cfg = conflist.request_config(net, plugin, prev_result=prev, capability_args=caps)
            try:
                self._run(
                    plugin,
                    "DEL",
                    cfg,
                    container_id=pod_id,
                    netns=netns_path,
                    ifname=ifname,
                    cni_args=cni_args,
                )
            except CNIError as err:
                first = first or err
                if stop_on_error:
                    raise
        if first is not None and not stop_on_error:
            log.warning("cni rollback left errors", extra={"pod_id": pod_id, "error": str(first)})

    def teardown(self, pod_id: str, netns_path: str | None = None, *, ifname: str = "eth0") -> None:
        """DEL the pod from the network (idempotent). Raises CNIError if a plugin fails."""
        net = self.network()
        with self._pod(pod_id):
            cached = self.cache.get(net.name, pod_id, ifname)
            netns = netns_path if netns_path is not None else (cached.netns if cached else "")
            if netns and not Path(netns).exists():
                netns = ""  # gone already: plugins clean up what they can without it
            self._delete_chain(
                net,
                pod_id,
                netns,
                ifname,
                cached.cni_args if cached else (),
                cached.capability_args if cached else {},
                cached.result if cached else None,
                stop_on_error=True,
            )
            self.cache.remove(net.name, pod_id, ifname)

    def check(self, pod_id: str, netns_path: str, *, ifname: str = "eth0") -> None:
        """CHECK the attachment against its cached result. Raises CNIError."""
        net = self.network()
        if net.disable_check or not net.supports("0.4.0"):
            return  # CHECK exists from CNI 0.4.0 on
        with self._pod(pod_id):
            cached = self.cache.get(net.name, pod_id, ifname)
            if cached is None:
                raise CNIError(
                    Code.UNKNOWN_CONTAINER, f"no cached result for {pod_id}/{ifname} on {net.name}"
                )
            for plugin in net.plugins:
                cfg = conflist.request_config(
                    net, plugin, prev_result=cached.result, capability_args=cached.capability_args
                )
                self._run(
                    plugin,
                    "CHECK",
                    cfg,
                    container_id=pod_id,
                    netns=netns_path,
                    ifname=ifname,
                    cni_args=cached.cni_args,
                )

    def result(self, pod_id: str, *, ifname: str = "eth0") -> Attachment | None:
        """The cached attachment of a pod, if it was set up (after a restart too)."""
        net = self.network()
        cached = self.cache.get(net.name, pod_id, ifname)
        if cached is None:
            return None
        return Attachment(net.name, pod_id, ifname, Result.from_json(cached.result))

    def status(self) -> None:
        """Raise CNIError unless the network can take pods (the runtime's NetworkReady)."""
        net = self.network()
        for plugin in net.plugins:
            self.find_plugin(plugin.type)
        if not net.supports("1.1.0"):
            return  # STATUS exists from CNI 1.1 on; older plugins are ready when present
        for plugin in net.plugins:
            self._run(plugin, "STATUS", conflist.plain_config(net, plugin))

    def gc(self, valid: Iterable[tuple[str, str]]) -> list[CNIError]:
        """DEL stale cached attachments, then GC every plugin (CNI >= 1.1).

        `valid` holds (pod_id, ifname) of every attachment that must stay.
        Returns the errors (GC goes on after one, as the spec says).
        """
        keep = set(valid)
        net = self.network()
        errors: list[CNIError] = []
        if net.disable_gc:
            return errors
        with self._gc_lock.exclusive():
            for item in self.cache.attachments(net.name):
                if (item.container_id, item.ifname) in keep:
                    continue
                netns = item.netns if item.netns and Path(item.netns).exists() else ""
                try:
                    self._delete_chain(
                        net,
                        item.container_id,
                        netns,
                        item.ifname,
                        item.cni_args,
                        item.capability_args,
                        item.result,
                        stop_on_error=True,
                    )
                    self.cache.remove(net.name, item.container_id, item.ifname)
                except CNIError as err:
                    errors.append(err)
            if net.supports("1.1.0"):
                for plugin in net.plugins:
                    try:
                        self._run(plugin, "GC", conflist.gc_config(net, plugin, keep))
                    except CNIError as err:
                        errors.append(err)
        return errors
