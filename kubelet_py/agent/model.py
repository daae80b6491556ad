"""Pods as typed objects: the API's JSON becomes these at the edge (`pod_from_api`).

Only the fields the agent acts on are modelled; the raw object is kept for the
few places that need to echo it back (mirror pods).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str | None = None
    field_path: str | None = None
    resource: str | None = None  # resourceFieldRef.resource, e.g. limits.memory
    resource_container: str | None = None
    config_map_key: tuple[str, str, bool] | None = None  # (name, key, optional)
    secret_key: tuple[str, str, bool] | None = None


@dataclass(frozen=True)
class EnvFrom:
    kind: str  # "configMap" or "secret"
    name: str
    prefix: str = ""
    optional: bool = False


@dataclass(frozen=True)
class VolumeMount:
    name: str
    mount_path: str
    read_only: bool = False
    sub_path: str = ""


@dataclass(frozen=True)
class Probe:
    kind: str  # "exec", "httpGet", "tcpSocket", "grpc"
    command: tuple[str, ...] = ()
    port: int | str = 0
    path: str = "/"
    host: str = ""
    scheme: str = "HTTP"
    initial_delay_s: int = 0
    period_s: int = 10
    timeout_s: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    service: str = ""
    """gRPC probes: the service name sent in grpc.health.v1 HealthCheckRequest."""
    termination_grace_s: int | None = None
    """Probe-level terminationGracePeriodSeconds: the grace of a kill this probe causes."""


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    env: tuple[EnvVar, ...] = ()
    env_from: tuple[EnvFrom, ...] = ()
    volume_mounts: tuple[VolumeMount, ...] = ()
    image_pull_policy: str = "IfNotPresent"
    limits: Mapping[str, str] = field(default_factory=dict)
    requests: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[tuple[int, int, str], ...] = ()  # (containerPort, hostPort, protocol)
    privileged: bool = False
    run_as_user: int | None = None
    run_as_group: int | None = None
    read_only_root: bool = False
    caps_add: tuple[str, ...] = ()
    caps_drop: tuple[str, ...] = ()
    allow_privilege_escalation: bool | None = None
    seccomp: str = ""
    restart_policy: str = ""  # "Always" on an init container makes it a sidecar
    liveness: Probe | None = None
    readiness: Probe | None = None
    startup: Probe | None = None
    tty: bool = False
    stdin: bool = False
    post_start: Probe | None = None
    pre_stop: Probe | None = None
    """Lifecycle hooks reuse the probe handler shape (exec, httpGet, tcpSocket, sleep)."""


@dataclass(frozen=True)
class Volume:
    name: str
    kind: str  # emptyDir, hostPath, configMap, secret, downwardAPI, projected, unsupported
    source: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pod:
    uid: str
    name: str
    namespace: str
    node_name: str
    containers: tuple[Container, ...]
    init_containers: tuple[Container, ...] = ()
    volumes: tuple[Volume, ...] = ()
    restart_policy: str = "Always"
    host_network: bool = False
    host_pid: bool = False
    share_process_namespace: bool = False
    host_ipc: bool = False
    hostname: str = ""
    subdomain: str = ""
    dns_policy: str = "ClusterFirst"
    dns_nameservers: tuple[str, ...] = ()
    dns_searches: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    host_aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()
    service_account: str = ""
    termination_grace_s: int = 30
    active_deadline_s: int | None = None
    deletion_timestamp: str | None = None
    deletion_grace_s: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    image_pull_secrets: tuple[str, ...] = ()
    run_as_user: int | None = None
    run_as_group: int | None = None
    fs_group: int | None = None
    fs_group_change_policy: str = ""
    """"OnRootMismatch" skips the recursive ownership change when the volume root is right."""
    supplemental_groups: tuple[int, ...] = ()
    resource_version: str = ""
    phase: str = ""
    """status.phase as the API has it (a restarted agent must not revive an evicted pod)."""
    status_reason: str = ""
    static: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def terminating(self) -> bool:
        return self.deletion_timestamp is not None


def _probe(raw: Mapping[str, Any] | None) -> Probe | None:
    if not raw:
        return None
    common: dict[str, Any] = {
        "initial_delay_s": int(raw.get("initialDelaySeconds", 0)),
        "period_s": int(raw.get("periodSeconds", 10)),
        "timeout_s": int(raw.get("timeoutSeconds", 1)),
        "success_threshold": int(raw.get("successThreshold", 1)),
        "failure_threshold": int(raw.get("failureThreshold", 3)),
        "termination_grace_s": (
            int(raw["terminationGracePeriodSeconds"])
            if raw.get("terminationGracePeriodSeconds") is not None
            else None
        ),
    }
    if "exec" in raw:
        return Probe(kind="exec", command=tuple(raw["exec"].get("command") or ()), **common)
    if "httpGet" in raw:
        h = raw["httpGet"]
        return Probe(
            kind="httpGet",
            port=h.get("port", 80),
            path=h.get("path", "/"),
            host=h.get("host", ""),
            scheme=h.get("scheme", "HTTP"),
            **common,
        )
    if "tcpSocket" in raw:
        return Probe(
            kind="tcpSocket",
            port=raw["tcpSocket"].get("port", 0),
            host=raw["tcpSocket"].get("host", ""),
            **common,
        )
    if "grpc" in raw:
        return Probe(
            kind="grpc",
            port=int(raw["grpc"].get("port", 0)),
            service=str(raw["grpc"].get("service") or ""),
            **common,
        )
    if "sleep" in raw:
        return Probe(
            kind="sleep",
            period_s=int(raw["sleep"].get("seconds", 0)),
            **{k: v for k, v in common.items() if k != "period_s"},
        )
    return None


def _env(raw: Mapping[str, Any]) -> EnvVar:
    vf = raw.get("valueFrom") or {}
    cm = vf.get("configMapKeyRef")
    sec = vf.get("secretKeyRef")
    res = vf.get("resourceFieldRef")
    return EnvVar(
        name=raw["name"],
        value=raw.get("value") if not vf else None,
        field_path=(vf.get("fieldRef") or {}).get("fieldPath"),
        resource=res.get("resource") if res else None,
        resource_container=res.get("containerName") if res else None,
        config_map_key=(cm["name"], cm["key"], bool(cm.get("optional"))) if cm else None,
        secret_key=(sec["name"], sec["key"], bool(sec.get("optional"))) if sec else None,
    )


def _container(raw: Mapping[str, Any]) -> Container:
    sc = raw.get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    res = raw.get("resources") or {}
    env_from = []
    for ef in raw.get("envFrom") or []:
        if "configMapRef" in ef:
            ref = ef["configMapRef"]
            env_from.append(
                EnvFrom("configMap", ref["name"], ef.get("prefix", ""), bool(ref.get("optional")))
            )
        elif "secretRef" in ef:
            ref = ef["secretRef"]
            env_from.append(
                EnvFrom("secret", ref["name"], ef.get("prefix", ""), bool(ref.get("optional")))
            )
    return Container(
        name=raw["name"],
        image=raw.get("image", ""),
        command=tuple(raw.get("command") or ()),
        args=tuple(raw.get("args") or ()),
        working_dir=raw.get("workingDir", ""),
        env=tuple(_env(e) for e in raw.get("env") or []),
        env_from=tuple(env_from),
        volume_mounts=tuple(
            VolumeMount(m["name"], m["mountPath"], bool(m.get("readOnly")), m.get("subPath", ""))
            for m in raw.get("volumeMounts") or []
        ),
        image_pull_policy=raw.get("imagePullPolicy")
        or (
            "Always"
            if raw.get("image", "").endswith(":latest")
            or ":" not in raw.get("image", "").split("/")[-1]
            else "IfNotPresent"
        ),
        limits=dict(res.get("limits") or {}),
        requests=dict(res.get("requests") or {}),
        ports=tuple(
            (int(p["containerPort"]), int(p.get("hostPort", 0)), p.get("protocol", "TCP"))
            for p in raw.get("ports") or []
        ),
        privileged=bool(sc.get("privileged")),
        run_as_user=sc.get("runAsUser"),
        run_as_group=sc.get("runAsGroup"),
        read_only_root=bool(sc.get("readOnlyRootFilesystem")),
        caps_add=tuple(caps.get("add") or ()),
        caps_drop=tuple(caps.get("drop") or ()),
        allow_privilege_escalation=sc.get("allowPrivilegeEscalation"),
        seccomp=((sc.get("seccompProfile") or {}).get("type") or ""),
        restart_policy=raw.get("restartPolicy", ""),
        liveness=_probe(raw.get("livenessProbe")),
        readiness=_probe(raw.get("readinessProbe")),
        startup=_probe(raw.get("startupProbe")),
        tty=bool(raw.get("tty")),
        stdin=bool(raw.get("stdin")),
        post_start=_probe((raw.get("lifecycle") or {}).get("postStart")),
        pre_stop=_probe((raw.get("lifecycle") or {}).get("preStop")),
    )


_VOLUME_KINDS = (
    "emptyDir",
    "hostPath",
    "configMap",
    "secret",
    "downwardAPI",
    "projected",
    "persistentVolumeClaim",
    "csi",
)


def _volume(raw: Mapping[str, Any]) -> Volume:
    for kind in _VOLUME_KINDS:
        if kind in raw:
            return Volume(raw["name"], kind, dict(raw[kind] or {}))
    other = next((k for k in raw if k != "name"), "unknown")
    return Volume(raw["name"], "unsupported", {"type": other})


def pod_from_api(obj: Mapping[str, Any], *, static: bool = False) -> Pod:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    sc = spec.get("securityContext") or {}
    dns = spec.get("dnsConfig") or {}
    return Pod(
        uid=meta.get("uid", ""),
        name=meta.get("name", ""),
        namespace=meta.get("namespace", "default"),
        node_name=spec.get("nodeName", ""),
        containers=tuple(_container(c) for c in spec.get("containers") or []),
        init_containers=tuple(_container(c) for c in spec.get("initContainers") or []),
        volumes=tuple(_volume(v) for v in spec.get("volumes") or []),
        restart_policy=spec.get("restartPolicy", "Always"),
        host_network=bool(spec.get("hostNetwork")),
        host_pid=bool(spec.get("hostPID")),
        share_process_namespace=bool(spec.get("shareProcessNamespace")),
        host_ipc=bool(spec.get("hostIPC")),
        hostname=spec.get("hostname", ""),
        subdomain=spec.get("subdomain", ""),
        dns_policy=spec.get("dnsPolicy", "ClusterFirst"),
        dns_nameservers=tuple(dns.get("nameservers") or ()),
        dns_searches=tuple(dns.get("searches") or ()),
        dns_options=tuple(
            f"{o['name']}:{o['value']}" if o.get("value") else o["name"]
            for o in dns.get("options") or []
        ),
        host_aliases=tuple(
            (a["ip"], tuple(a.get("hostnames") or ())) for a in spec.get("hostAliases") or []
        ),
        service_account=spec.get("serviceAccountName", ""),
        termination_grace_s=int(spec.get("terminationGracePeriodSeconds", 30)),
        active_deadline_s=spec.get("activeDeadlineSeconds"),
        deletion_timestamp=meta.get("deletionTimestamp"),
        deletion_grace_s=meta.get("deletionGracePeriodSeconds"),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        image_pull_secrets=tuple(s["name"] for s in spec.get("imagePullSecrets") or []),
        run_as_user=sc.get("runAsUser"),
        run_as_group=sc.get("runAsGroup"),
        fs_group=sc.get("fsGroup"),
        fs_group_change_policy=sc.get("fsGroupChangePolicy") or "",
        supplemental_groups=tuple(sc.get("supplementalGroups") or ()),
        resource_version=meta.get("resourceVersion", ""),
        phase=(obj.get("status") or {}).get("phase") or "",
        status_reason=(obj.get("status") or {}).get("reason") or "",
        static=static,
        raw=obj,
    )
