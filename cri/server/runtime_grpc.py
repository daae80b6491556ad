"""`runtime.v1.RuntimeService` over `cri.runtime.RuntimeService`.

Requests become typed model objects here (the edge), replies are built from
records. Calls we do not implement yet answer UNIMPLEMENTED with a sentence,
never a crash. The streaming calls (Exec, Attach, PortForward) check the request
and the container or sandbox, then answer with a single-use URL of the streaming
server (cri.streaming.server), as containerd does; without one they answer
UNIMPLEMENTED.
"""

import asyncio
import json
import time
from typing import Any

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

from cri.runtime import model, usage
from cri.runtime.cgroups import CgroupStats
from cri.runtime.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RuntimeServiceError,
)
from cri.runtime.service import RUNTIME_NAME, RUNTIME_VERSION, RuntimeService
from cri.runtime.state import ContainerRecord, SandboxRecord
from cri.streaming import (
    AttachRequest,
    ExecRequest,
    OptionsError,
    PortForwardRequest,
    StreamingError,
    StreamingServer,
    exec_options,
)


def _code(err: RuntimeServiceError) -> grpc.StatusCode:
    if isinstance(err, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(err, AlreadyExistsError):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(err, InvalidArgumentError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(err, FailedPreconditionError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.UNKNOWN


def _ns_options(opt: Any) -> model.NamespaceOptions:
    return model.NamespaceOptions(
        network=model.NamespaceMode(opt.network),
        pid=model.NamespaceMode(opt.pid),
        ipc=model.NamespaceMode(opt.ipc),
    )


def sandbox_config_from(pb: Any) -> model.SandboxConfig:
    linux = pb.linux
    sec = linux.security_context
    return model.SandboxConfig(
        name=pb.metadata.name,
        uid=pb.metadata.uid,
        namespace=pb.metadata.namespace,
        attempt=pb.metadata.attempt,
        hostname=pb.hostname,
        log_directory=pb.log_directory,
        dns=model.DNSConfig(
            servers=tuple(pb.dns_config.servers),
            searches=tuple(pb.dns_config.searches),
            options=tuple(pb.dns_config.options),
        ),
        port_mappings=tuple(
            model.PortMapping(
                protocol=api_pb2.Protocol.Name(p.protocol),
                container_port=p.container_port,
                host_port=p.host_port,
                host_ip=p.host_ip,
            )
            for p in pb.port_mappings
        ),
        labels=dict(pb.labels),
        annotations=dict(pb.annotations),
        cgroup_parent=linux.cgroup_parent,
        namespace_options=_ns_options(sec.namespace_options),
        sysctls=dict(linux.sysctls),
    )


def _seccomp(sec: Any) -> model.SeccompProfile:
    if sec.HasField("seccomp"):
        kind = {0: "RuntimeDefault", 1: "Unconfined", 2: "Localhost"}[sec.seccomp.profile_type]
        return model.SeccompProfile(kind=kind, localhost_path=sec.seccomp.localhost_ref)
    path = sec.seccomp_profile_path
    if path == "runtime/default" or path == "docker/default":
        return model.SeccompProfile(kind="RuntimeDefault")
    if path.startswith("localhost/"):
        return model.SeccompProfile(kind="Localhost", localhost_path=path[len("localhost/") :])
    return model.SeccompProfile()


def container_config_from(pb: Any) -> model.ContainerConfig:
    res = pb.linux.resources
    sec = pb.linux.security_context
    return model.ContainerConfig(
        name=pb.metadata.name,
        attempt=pb.metadata.attempt,
        image=pb.image.image,
        command=tuple(pb.command),
        args=tuple(pb.args),
        working_dir=pb.working_dir,
        envs=tuple((kv.key, kv.value) for kv in pb.envs),
        mounts=tuple(
            model.Mount(
                container_path=m.container_path,
                host_path=m.host_path,
                readonly=m.readonly,
                propagation=model.MountPropagation(m.propagation),
            )
            for m in pb.mounts
        ),
        labels=dict(pb.labels),
        annotations=dict(pb.annotations),
        log_path=pb.log_path,
        stdin=pb.stdin,
        stdin_once=pb.stdin_once,
        tty=pb.tty,
        resources=model.Resources(
            cpu_period=res.cpu_period,
            cpu_quota=res.cpu_quota,
            cpu_shares=res.cpu_shares,
            memory_limit_bytes=res.memory_limit_in_bytes,
            oom_score_adj=res.oom_score_adj,
            pids_limit=_pids_max(res.unified.get("pids.max", "")),
        ),
        security=model.SecurityContext(
            privileged=sec.privileged,
            run_as_user=sec.run_as_user.value if sec.HasField("run_as_user") else None,
            run_as_username=sec.run_as_username,
            run_as_group=sec.run_as_group.value if sec.HasField("run_as_group") else None,
            supplemental_groups=tuple(sec.supplemental_groups),
            readonly_rootfs=sec.readonly_rootfs,
            no_new_privs=sec.no_new_privs,
            capabilities=model.Capabilities(
                add=tuple(sec.capabilities.add_capabilities),
                drop=tuple(sec.capabilities.drop_capabilities),
            ),
            namespace_options=_ns_options(sec.namespace_options),
            seccomp=_seccomp(sec),
            masked_paths=tuple(sec.masked_paths) or None,
            readonly_paths=tuple(sec.readonly_paths) or None,
        ),
        stop_signal=api_pb2.Signal.Name(pb.stop_signal) if pb.stop_signal else "",
    )


def _pids_max(text: str) -> int:
    """unified["pids.max"] (what a kubelet sends for podPidsLimit) as a pids limit; 0: none."""
    return int(text) if text.strip().isdigit() else 0


def _wanted(r: ContainerRecord, f: Any) -> bool:
    """ContainerFilter / ContainerStatsFilter: ID and sandbox prefixes, state, labels."""
    if f.id and not r.id.startswith(f.id):
        return False
    if f.pod_sandbox_id and not r.sandbox_id.startswith(f.pod_sandbox_id):
        return False
    has_state = "state" in f.DESCRIPTOR.fields_by_name and f.HasField("state")
    if has_state and _container_state(r) != f.state.state:
        return False
    return all(r.labels.get(k) == v for k, v in f.label_selector.items())


def _fill_usage(cpu: Any, memory: Any, s: CgroupStats, now: int) -> None:
    cpu.timestamp = now
    cpu.usage_core_nano_seconds.value = s.cpu_usage_ns
    memory.timestamp = now
    memory.working_set_bytes.value = s.memory_working_set_bytes
    memory.usage_bytes.value = s.memory_usage_bytes
    memory.rss_bytes.value = s.memory_rss_bytes
    memory.page_faults.value = s.memory_page_faults
    memory.major_page_faults.value = s.memory_major_page_faults
    if s.memory_limit_bytes is not None:
        memory.available_bytes.value = max(0, s.memory_limit_bytes - s.memory_working_set_bytes)


def _fill_network(net: Any, interfaces: list[usage.InterfaceUsage], now: int) -> None:
    """Every interface but loopback; eth0 (the CRI convention) or the first one is the default."""
    net.timestamp = now
    ifaces = [i for i in interfaces if i.name != "lo"]
    for i in ifaces:
        pb = net.interfaces.add(name=i.name)
        pb.rx_bytes.value, pb.rx_errors.value = i.rx_bytes, i.rx_errors
        pb.tx_bytes.value, pb.tx_errors.value = i.tx_bytes, i.tx_errors
    default = next((p for p in net.interfaces if p.name == "eth0"), None)
    if default is None and len(net.interfaces):
        default = net.interfaces[0]
    if default is not None:
        net.default_interface.CopyFrom(default)


def _sandbox_meta(r: SandboxRecord) -> Any:
    return api_pb2.PodSandboxMetadata(
        name=r.name, uid=r.uid, namespace=r.namespace, attempt=r.attempt
    )


def _sandbox_state(r: SandboxRecord) -> Any:
    return api_pb2.PodSandboxState.Value(r.state)


def _container_state(r: ContainerRecord) -> Any:
    return api_pb2.ContainerState.Value(r.state)


class RuntimeServiceServicer(api_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, runtime: RuntimeService, streaming: StreamingServer | None = None) -> None:
        self.rt = runtime
        self.streaming = streaming

    async def _guard(self, context: Any, coro: Any) -> Any:
        try:
            return await coro
        except RuntimeServiceError as err:
            await context.abort(_code(err), str(err))

    async def Version(self, request: Any, context: Any) -> Any:
        return api_pb2.VersionResponse(
            version="0.1.0",
            runtime_name=RUNTIME_NAME,
            runtime_version=RUNTIME_VERSION,
            runtime_api_version="v1",
        )

    async def Status(self, request: Any, context: Any) -> Any:
        net_ok, net_msg = self.rt.network_status()
        conditions = [
            api_pb2.RuntimeCondition(type="RuntimeReady", status=True),
            api_pb2.RuntimeCondition(
                type="NetworkReady",
                status=net_ok,
                reason="" if net_ok else "NetworkPluginNotReady",
                message="" if net_ok else net_msg,
            ),
        ]
        info = {"config": json.dumps(self.rt.status_info())} if request.verbose else {}
        return api_pb2.StatusResponse(
            status=api_pb2.RuntimeStatus(conditions=conditions), info=info
        )

    async def RuntimeConfig(self, request: Any, context: Any) -> Any:
        return api_pb2.RuntimeConfigResponse(
            linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=api_pb2.CgroupDriver.CGROUPFS)
        )

    async def UpdateRuntimeConfig(self, request: Any, context: Any) -> Any:
        return api_pb2.UpdateRuntimeConfigResponse()

    # ---- sandboxes ----

    async def RunPodSandbox(self, request: Any, context: Any) -> Any:
        sandbox_id = await self._guard(
            context, self.rt.run_pod_sandbox(sandbox_config_from(request.config))
        )
        return api_pb2.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def StopPodSandbox(self, request: Any, context: Any) -> Any:
        await self._guard(context, self.rt.stop_pod_sandbox(request.pod_sandbox_id))
        return api_pb2.StopPodSandboxResponse()

    async def RemovePodSandbox(self, request: Any, context: Any) -> Any:
        await self._guard(context, self.rt.remove_pod_sandbox(request.pod_sandbox_id))
        return api_pb2.RemovePodSandboxResponse()

    async def PodSandboxStatus(self, request: Any, context: Any) -> Any:
        try:
            r = self.rt.sandbox(request.pod_sandbox_id)
        except RuntimeServiceError as err:
            await context.abort(_code(err), str(err))
        status = api_pb2.PodSandboxStatus(
            id=r.id,
            metadata=_sandbox_meta(r),
            state=_sandbox_state(r),
            created_at=r.created_at_ns,
            network=api_pb2.PodSandboxNetworkStatus(
                ip=r.pod_ip,
                additional_ips=[api_pb2.PodIP(ip=ip) for ip in r.pod_ips[1:]],
            ),
            labels=r.labels,
            annotations=r.annotations,
        )
        ns = status.linux.namespaces.options
        ns.network = api_pb2.NamespaceMode.NODE if r.host_network else api_pb2.NamespaceMode.POD
        ns.pid = api_pb2.NamespaceMode.NODE if r.host_pid else api_pb2.NamespaceMode.CONTAINER
        ns.ipc = api_pb2.NamespaceMode.NODE if r.host_ipc else api_pb2.NamespaceMode.POD
        return api_pb2.PodSandboxStatusResponse(status=status)

    async def ListPodSandbox(self, request: Any, context: Any) -> Any:
        f = request.filter
        items = []
        for r in self.rt.sandboxes():
            if f.id and not r.id.startswith(f.id):
                continue
            if f.HasField("state") and _sandbox_state(r) != f.state.state:
                continue
            if any(r.labels.get(k) != v for k, v in f.label_selector.items()):
                continue
            items.append(
                api_pb2.PodSandbox(
                    id=r.id, metadata=_sandbox_meta(r), state=_sandbox_state(r),
                    created_at=r.created_at_ns, labels=r.labels, annotations=r.annotations,
                )
            )  # fmt: skip
        return api_pb2.ListPodSandboxResponse(items=items)

    # ---- containers ----

    async def CreateContainer(self, request: Any, context: Any) -> Any:
        container_id = await self._guard(
            context,
            self.rt.create_container(request.pod_sandbox_id, container_config_from(request.config)),
        )
        return api_pb2.CreateContainerResponse(container_id=container_id)

    async def StartContainer(self, request: Any, context: Any) -> Any:
        await self._guard(context, self.rt.start_container(request.container_id))
        return api_pb2.StartContainerResponse()

    async def StopContainer(self, request: Any, context: Any) -> Any:
        await self._guard(
            context, self.rt.stop_container(request.container_id, timeout_s=float(request.timeout))
        )
        return api_pb2.StopContainerResponse()

    async def RemoveContainer(self, request: Any, context: Any) -> Any:
        await self._guard(context, self.rt.remove_container(request.container_id))
        return api_pb2.RemoveContainerResponse()

    def _container_pb(self, r: ContainerRecord) -> Any:
        return api_pb2.Container(
            id=r.id,
            pod_sandbox_id=r.sandbox_id,
            metadata=api_pb2.ContainerMetadata(name=r.name, attempt=r.attempt),
            image=api_pb2.ImageSpec(image=r.image),
            image_ref=r.image_ref,
            image_id=r.image_id,
            state=_container_state(r),
            created_at=r.created_at_ns,
            labels=r.labels,
            annotations=r.annotations,
        )

    async def ListContainers(self, request: Any, context: Any) -> Any:
        f = request.filter
        out = [self._container_pb(r) for r in self.rt.containers() if _wanted(r, f)]
        return api_pb2.ListContainersResponse(containers=out)

    async def ContainerStatus(self, request: Any, context: Any) -> Any:
        try:
            r = self.rt.container(request.container_id)
        except RuntimeServiceError as err:
            await context.abort(_code(err), str(err))
        uid = r.user.split(":")[0]
        status = api_pb2.ContainerStatus(
            id=r.id,
            metadata=api_pb2.ContainerMetadata(name=r.name, attempt=r.attempt),
            state=_container_state(r),
            created_at=r.created_at_ns,
            started_at=r.started_at_ns,
            finished_at=r.finished_at_ns,
            exit_code=r.exit_code,
            image=api_pb2.ImageSpec(image=r.image),
            image_ref=r.image_ref,
            image_id=r.image_id,
            reason=r.reason,
            message=r.message,
            labels=r.labels,
            annotations=r.annotations,
            log_path=r.log_path,
            mounts=[
                api_pb2.Mount(
                    container_path=m["container_path"], host_path=m["host_path"],
                    readonly=m["readonly"], propagation=m["propagation"],
                )
                for m in r.mounts
            ],
        )  # fmt: skip
        if uid.isdigit():
            status.user.linux.uid = int(uid)
            status.user.linux.gid = int(r.user.split(":")[1])
        return api_pb2.ContainerStatusResponse(status=status)

    async def UpdateContainerResources(self, request: Any, context: Any) -> Any:
        r = request.linux
        resources = model.Resources(
            cpu_period=r.cpu_period,
            cpu_quota=r.cpu_quota,
            cpu_shares=r.cpu_shares,
            memory_limit_bytes=r.memory_limit_in_bytes,
        )
        await self._guard(context, self.rt.update_resources(request.container_id, resources))
        return api_pb2.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(self, request: Any, context: Any) -> Any:
        try:
            self.rt.reopen_log(request.container_id)
        except RuntimeServiceError as err:
            await context.abort(_code(err), str(err))
        return api_pb2.ReopenContainerLogResponse()

    async def ExecSync(self, request: Any, context: Any) -> Any:
        result = await self._guard(
            context,
            self.rt.exec_sync(
                request.container_id, list(request.cmd), timeout_s=float(request.timeout)
            ),
        )
        if result.timed_out:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"command {list(request.cmd)} timed out after {request.timeout}s",
            )
        return api_pb2.ExecSyncResponse(
            stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code
        )

    # Stats read cgroup files, walk writable layers and enter network namespaces, so they
    # are built in a thread, from record snapshots taken on the loop.

    def _stats_pb(self, r: ContainerRecord) -> Any:
        """One container's stats (blocking)."""
        s = self.rt.stats(r.id)
        now = time.time_ns()
        stats = api_pb2.ContainerStats(
            attributes=api_pb2.ContainerAttributes(
                id=r.id,
                metadata=api_pb2.ContainerMetadata(name=r.name, attempt=r.attempt),
                labels=r.labels,
                annotations=r.annotations,
            )
        )
        if s is not None:
            _fill_usage(stats.cpu, stats.memory, s, now)
        try:
            upper, usage = self.rt.writable_layer(r.id)
        except (OSError, RuntimeServiceError):
            return stats
        layer = stats.writable_layer
        layer.timestamp = now
        layer.fs_id.mountpoint = str(upper)
        layer.used_bytes.value = usage.used_bytes
        layer.inodes_used.value = usage.inodes_used
        return stats

    async def ContainerStats(self, request: Any, context: Any) -> Any:
        try:
            r = self.rt.container(request.container_id)
        except RuntimeServiceError as err:
            await context.abort(_code(err), str(err))
        stats = await asyncio.to_thread(self._stats_pb, r)
        return api_pb2.ContainerStatsResponse(stats=stats)

    async def ListContainerStats(self, request: Any, context: Any) -> Any:
        f = request.filter
        wanted = [r for r in self.rt.containers() if _wanted(r, f)]
        out = await asyncio.to_thread(lambda: [self._stats_pb(r) for r in wanted])
        return api_pb2.ListContainerStatsResponse(stats=out)

    async def PodSandboxStats(self, request: Any, context: Any) -> Any:
        try:
            r = self.rt.sandbox(request.pod_sandbox_id)
        except RuntimeServiceError as err:
            await context.abort(_code(err), str(err))
        members = [c for c in self.rt.containers() if c.sandbox_id == r.id]
        stats = await asyncio.to_thread(self._pod_stats_pb, r, members)
        return api_pb2.PodSandboxStatsResponse(stats=stats)

    def _pod_stats_pb(self, r: SandboxRecord, members: list[ContainerRecord]) -> Any:
        """One sandbox's stats with its containers' (blocking)."""
        stats = api_pb2.PodSandboxStats(
            attributes=api_pb2.PodSandboxAttributes(
                id=r.id, metadata=_sandbox_meta(r), labels=r.labels, annotations=r.annotations
            )
        )
        s = self.rt.pod_stats(r.id)
        now = time.time_ns()
        if s is not None:
            _fill_usage(stats.linux.cpu, stats.linux.memory, s, now)
            stats.linux.process.timestamp = now
            stats.linux.process.process_count.value = s.pids
        try:
            interfaces = self.rt.pod_network(r.id)
        except (OSError, RuntimeServiceError):
            interfaces = None
        if interfaces is not None:
            _fill_network(stats.linux.network, interfaces, now)
        stats.linux.containers.extend(self._stats_pb(c) for c in members)
        return stats

    async def ListPodSandboxStats(self, request: Any, context: Any) -> Any:
        f = request.filter
        sandboxes = [
            r
            for r in self.rt.sandboxes()
            if (not f.id or r.id.startswith(f.id))
            and all(r.labels.get(k) == v for k, v in f.label_selector.items())
        ]
        containers = self.rt.containers()
        work = [(r, [c for c in containers if c.sandbox_id == r.id]) for r in sandboxes]
        out = await asyncio.to_thread(lambda: [self._pod_stats_pb(r, m) for r, m in work])
        return api_pb2.ListPodSandboxStatsResponse(stats=out)

    async def _streaming_server(self, context: Any) -> StreamingServer:
        if self.streaming is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no streaming server is running")
        assert self.streaming is not None
        return self.streaming

    async def _stream_options(
        self, request: Any, context: Any, *, command: list[str], attach: bool
    ) -> Any:
        try:
            return exec_options(
                command=command,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
                tty=request.tty,
                attach=attach,
            )
        except OptionsError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))

    async def _running(self, context: Any, container_id: str) -> ContainerRecord:
        try:
            record = self.rt.container(container_id)
        except RuntimeServiceError as err:
            await context.abort(_code(err), str(err))
        if record.state != model.ContainerState.RUNNING.value:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"container {record.id[:12]} ({record.name}) is not running",
            )
        return record

    async def _url(self, context: Any, issue: Any, req: Any) -> str:
        try:
            return str(issue(req))
        except StreamingError as err:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        raise AssertionError("unreachable")

    async def Exec(self, request: Any, context: Any) -> Any:
        server = await self._streaming_server(context)
        if request.tty and request.stderr:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "tty and stderr cannot both be true"
            )
        opts = await self._stream_options(request, context, command=list(request.cmd), attach=False)
        record = await self._running(context, request.container_id)
        url = await self._url(context, server.get_exec, ExecRequest(record.id, opts))
        return api_pb2.ExecResponse(url=url)

    async def Attach(self, request: Any, context: Any) -> Any:
        server = await self._streaming_server(context)
        if request.tty and request.stderr:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "tty and stderr cannot both be true"
            )
        opts = await self._stream_options(request, context, command=[], attach=True)
        record = await self._running(context, request.container_id)
        url = await self._url(context, server.get_attach, AttachRequest(record.id, opts))
        return api_pb2.AttachResponse(url=url)

    async def PortForward(self, request: Any, context: Any) -> Any:
        server = await self._streaming_server(context)
        try:
            sandbox = self.rt.sandbox(request.pod_sandbox_id)
            self.rt.sandbox_netns_of(sandbox.id)
        except RuntimeServiceError as err:
            await context.abort(_code(err), str(err))
        for port in request.port:
            if not 0 < port < 65536:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid port {port}")
        req = PortForwardRequest(sandbox.id, tuple(request.port))
        url = await self._url(context, server.get_port_forward, req)
        return api_pb2.PortForwardResponse(url=url)
