"""Pod and container → CRI request messages (PodSandboxConfig, ContainerConfig). Pure.

Labels follow the kubelet's so crictl and other tools recognise our objects:
io.kubernetes.pod.{name,namespace,uid} and io.kubernetes.container.name.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from cri_api.v1 import api_pb2

from kubelet_py.agent.model import Container, Pod
from kubelet_py.agent.quantity import bytes_of, cpu_quota, cpu_shares, milli_cpu
from kubelet_py.agent.status import qos_class

POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"


def pod_labels(pod: Pod) -> dict[str, str]:
    return {**pod.labels, POD_NAME: pod.name, POD_NAMESPACE: pod.namespace, POD_UID: pod.uid}


def _pid_mode(pod: Pod) -> Any:
    """hostPID: the node's; shareProcessNamespace: one for the pod; else one per container."""
    if pod.host_pid:
        return api_pb2.NamespaceMode.NODE
    if pod.share_process_namespace:
        return api_pb2.NamespaceMode.POD
    return api_pb2.NamespaceMode.CONTAINER


def cgroup_parent(pod: Pod) -> str:
    qos = qos_class(pod).lower()
    mid = "" if qos == "guaranteed" else f"/{qos}"
    return f"kubepods{mid}/pod{pod.uid}"


def sandbox_config(
    pod: Pod,
    *,
    attempt: int,
    log_dir: str,
    cluster_dns: Sequence[str],
    cluster_domain: str,
    host_resolv: tuple[Sequence[str], Sequence[str], Sequence[str]],
) -> Any:
    ns = api_pb2.NamespaceOption(
        network=api_pb2.NamespaceMode.NODE if pod.host_network else api_pb2.NamespaceMode.POD,
        pid=_pid_mode(pod),
        ipc=api_pb2.NamespaceMode.NODE if pod.host_ipc else api_pb2.NamespaceMode.POD,
    )
    servers, searches, options = dns_settings(pod, cluster_dns, cluster_domain, host_resolv)
    hostname = pod.hostname or pod.name
    cfg = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=pod.name, uid=pod.uid, namespace=pod.namespace, attempt=attempt
        ),
        hostname="" if pod.host_network else hostname[:63],
        log_directory=log_dir,
        dns_config=api_pb2.DNSConfig(servers=servers, searches=searches, options=options),
        labels=pod_labels(pod),
        annotations=dict(pod.annotations),
        linux=api_pb2.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent(pod),
            security_context=api_pb2.LinuxSandboxSecurityContext(namespace_options=ns),
        ),
    )
    for c in pod.containers:
        for container_port, host_port, proto in c.ports:
            if host_port:
                cfg.port_mappings.append(
                    api_pb2.PortMapping(
                        protocol=api_pb2.Protocol.Value(proto.upper()),
                        container_port=container_port,
                        host_port=host_port,
                    )
                )
    return cfg


def dns_settings(
    pod: Pod,
    cluster_dns: Sequence[str],
    cluster_domain: str,
    host_resolv: tuple[Sequence[str], Sequence[str], Sequence[str]],
) -> tuple[list[str], list[str], list[str]]:
    """resolv.conf content by dnsPolicy (ClusterFirst, ClusterFirstWithHostNet, Default, None)."""
    policy = pod.dns_policy
    if policy == "ClusterFirst" and pod.host_network:
        policy = "Default"
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet") and not cluster_dns:
        policy = "Default"  # no cluster DNS configured: the kubelet falls back likewise
    if policy == "None":
        servers, searches, options = [], [], []
    elif policy == "Default":
        servers, searches, options = (
            list(host_resolv[0]),
            list(host_resolv[1]),
            list(host_resolv[2]),
        )
    else:
        servers = list(cluster_dns)
        searches = [
            f"{pod.namespace}.svc.{cluster_domain}",
            f"svc.{cluster_domain}",
            cluster_domain,
            *host_resolv[1],
        ]
        options = ["ndots:5"]
    servers += [s for s in pod.dns_nameservers if s not in servers]
    searches += [s for s in pod.dns_searches if s not in searches]
    options += [o for o in pod.dns_options if o not in options]
    return servers[:3], searches[:32], options


def container_config(
    pod: Pod,
    c: Container,
    *,
    attempt: int,
    image_ref: str,
    envs: Sequence[tuple[str, str]],
    mounts: Sequence[Any],
    log_path: str,
) -> Any:
    res = api_pb2.LinuxContainerResources()
    if "cpu" in c.requests or "cpu" in c.limits:
        res.cpu_shares = cpu_shares(milli_cpu(c.requests.get("cpu", c.limits.get("cpu", "0"))))
    else:
        res.cpu_shares = 2
    if "cpu" in c.limits:
        res.cpu_period = 100000
        res.cpu_quota = cpu_quota(milli_cpu(c.limits["cpu"]))
    if "memory" in c.limits:
        res.memory_limit_in_bytes = bytes_of(c.limits["memory"])
    sec = api_pb2.LinuxContainerSecurityContext(
        privileged=c.privileged,
        readonly_rootfs=c.read_only_root,
        no_new_privs=c.allow_privilege_escalation is False,
        capabilities=api_pb2.Capability(add_capabilities=c.caps_add, drop_capabilities=c.caps_drop),
        namespace_options=api_pb2.NamespaceOption(
            network=api_pb2.NamespaceMode.NODE if pod.host_network else api_pb2.NamespaceMode.POD,
            pid=_pid_mode(pod),
            ipc=api_pb2.NamespaceMode.NODE if pod.host_ipc else api_pb2.NamespaceMode.POD,
        ),
        supplemental_groups=list(pod.supplemental_groups)
        + ([pod.fs_group] if pod.fs_group is not None else []),
    )
    uid = c.run_as_user if c.run_as_user is not None else pod.run_as_user
    gid = c.run_as_group if c.run_as_group is not None else pod.run_as_group
    if uid is not None:
        sec.run_as_user.value = uid
    if gid is not None:
        sec.run_as_group.value = gid
    if c.seccomp == "RuntimeDefault":
        sec.seccomp.profile_type = api_pb2.SecurityProfile.ProfileType.RuntimeDefault
    labels = {
        POD_NAME: pod.name,
        POD_NAMESPACE: pod.namespace,
        POD_UID: pod.uid,
        CONTAINER_NAME: c.name,
    }
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=c.name, attempt=attempt),
        image=api_pb2.ImageSpec(image=image_ref, user_specified_image=c.image),
        command=list(c.command),
        args=list(c.args),
        working_dir=c.working_dir,
        envs=[api_pb2.KeyValue(key=k, value=v) for k, v in envs],
        mounts=list(mounts),
        labels=labels,
        annotations={"io.kubernetes.container.restartCount": str(attempt)},
        log_path=log_path,
        stdin=c.stdin,
        tty=c.tty,
        linux=api_pb2.LinuxContainerConfig(resources=res, security_context=sec),
    )


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: `$$` escapes, unknown references stay as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and (end := text.find(")", i + 2)) != -1:
            name = text[i + 2 : end]
            out.append(env[name] if name in env else text[i : end + 1])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
