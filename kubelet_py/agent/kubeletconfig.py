"""KubeletConfiguration (kubelet.config.k8s.io/v1beta1): the upstream kubelet's config file.

`load(path)` reads the YAML/JSON file, applies the defaults of upstream's defaults.go (and
the eviction defaults of pkg/kubelet/eviction), validates the way validation.go does (all
errors at once, upstream's wording where the rule is the same) and returns the typed
configuration plus warnings: fields that are not part of v1beta1 ("unknown field"), and
v1beta1 fields kubelet-py accepts but does not act on. `to_v1beta1()` gives the effective
configuration back in the file's shape, for /configz. Pure: no I/O besides reading the file.

Fields that apply (and where they act): address, port, readOnlyPort (0 only), healthzPort,
healthzBindAddress, tlsCertFile/tlsPrivateKeyFile, authentication, authorization (server);
staticPodPath, fileCheckFrequency (static source); syncFrequency (pod workers);
nodeStatusUpdateFrequency, nodeStatusReportFrequency, nodeLeaseDurationSeconds, maxPods,
systemReserved, kubeReserved, registerNode, registerWithTaints (node; enforceNodeAllocatable
is validated but no cgroup limit is set for all pods together); evictionHard,
evictionPressureTransitionPeriod (pressure conditions); podPidsLimit (containers' pids.max);
clusterDNS, clusterDomain (resolv.conf); serializeImagePulls, maxParallelImagePulls (pulls);
imageGC*ThresholdPercent, imageMinimumGCAge, containerLogMaxSize/Files (housekeeping.py);
cgroupDriver (cgroupfs only); rotateCertificates, serverTLSBootstrap (certificates renewed
through CSRs).
"""

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubelet_py.agent.quantity import parse_quantity

API_VERSION = "kubelet.config.k8s.io/v1beta1"
KIND = "KubeletConfiguration"

EVICTION_SIGNALS = (
    "memory.available",
    "nodefs.available",
    "nodefs.inodesFree",
    "imagefs.available",
    "imagefs.inodesFree",
    "containerfs.available",
    "containerfs.inodesFree",
    "pid.available",
    "allocatableMemory.available",
)
DEFAULT_EVICTION_HARD = {
    "memory.available": "100Mi",
    "nodefs.available": "10%",
    "nodefs.inodesFree": "5%",
    "imagefs.available": "15%",
    "imagefs.inodesFree": "5%",
}
ENFORCEMENTS = (
    "pods",
    "system-reserved",
    "system-reserved-compressible",
    "kube-reserved",
    "kube-reserved-compressible",
    "none",
)
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

# Every top-level field of v1beta1 KubeletConfiguration (staging/src/k8s.io/kubelet/config/
# v1beta1/types.go). Those kubelet-py acts on are read below; the rest are accepted with a
# warning that they have no effect here. Anything else is an unknown field.
HONOURED = frozenset(
    {
        "apiVersion", "kind", "address", "port", "readOnlyPort", "healthzPort",
        "healthzBindAddress", "tlsCertFile", "tlsPrivateKeyFile", "authentication",
        "authorization", "staticPodPath", "fileCheckFrequency", "syncFrequency",
        "nodeStatusUpdateFrequency", "nodeStatusReportFrequency", "nodeLeaseDurationSeconds",
        "maxPods", "podPidsLimit", "evictionHard", "evictionPressureTransitionPeriod",
        "mergeDefaultEvictionSettings", "systemReserved", "kubeReserved",
        "enforceNodeAllocatable", "registerWithTaints", "registerNode", "serializeImagePulls",
        "maxParallelImagePulls", "imageGCHighThresholdPercent", "imageGCLowThresholdPercent",
        "imageMinimumGCAge", "containerLogMaxSize", "containerLogMaxFiles", "cgroupDriver",
        "cgroupsPerQOS", "clusterDNS", "clusterDomain", "rotateCertificates",
        "serverTLSBootstrap", "containerRuntimeEndpoint", "runtimeRequestTimeout",
        "nodeStatusMaxImages", "failSwapOn", "failCgroupV1", "resolvConf",
    }
)  # fmt: skip
ACCEPTED_WITHOUT_EFFECT = frozenset(
    {
        "enableServer", "httpCheckFrequency", "staticPodURL", "staticPodURLHeader",
        "tlsCipherSuites", "tlsMinVersion", "registryPullQPS", "registryBurst",
        "imagePullCredentialsVerificationPolicy", "preloadedImagesVerificationAllowlist",
        "eventRecordQPS", "eventBurst", "enableDebuggingHandlers", "enableContentionProfiling",
        "oomScoreAdj", "streamingConnectionIdleTimeout", "imageMaximumGCAge",
        "volumePluginDir", "providerID", "kubeletCgroups", "systemCgroups", "cgroupRoot",
        "singleProcessOOMKill", "cpuManagerPolicy", "cpuManagerPolicyOptions",
        "cpuManagerReconcilePeriod", "memoryManagerPolicy", "topologyManagerPolicy",
        "topologyManagerScope", "topologyManagerPolicyOptions", "qosReserved", "hairpinMode",
        "podsPerCore", "podCIDR", "cpuCFSQuota", "cpuCFSQuotaPeriod", "maxOpenFiles",
        "contentType", "kubeAPIQPS", "kubeAPIBurst", "evictionSoft", "evictionSoftGracePeriod",
        "evictionMaxPodGracePeriod", "evictionMinimumReclaim", "podDisruptionBudget",
        "enableControllerAttachDetach", "protectKernelDefaults", "makeIPTablesUtilChains",
        "iptablesMasqueradeBit", "iptablesDropBit", "featureGates", "memorySwap",
        "containerLogMaxWorkers", "containerLogMonitorInterval",
        "configMapAndSecretChangeDetectionStrategy", "systemReservedCgroup",
        "kubeReservedCgroup", "reservedSystemCPUs", "showHiddenMetricsForVersion",
        "allowedUnsafeSysctls", "logging",
        "enableSystemLogHandler", "enableSystemLogQuery", "shutdownGracePeriod",
        "shutdownGracePeriodCriticalPods", "shutdownGracePeriodByPodPriority",
        "crashLoopBackOff", "reservedMemory", "enableProfilingHandler",
        "enableDebugFlagsHandler", "seccompDefault", "memoryThrottlingFactor",
        "memoryReservationPolicy", "localStorageCapacityIsolation", "podLogsDir",
        "imageServiceEndpoint", "userNamespaces", "defaultPodSysctls", "tracing",
    }
)  # fmt: skip


class ConfigError(ValueError):
    """The file is not a valid KubeletConfiguration; the message lists every problem."""


@dataclass(frozen=True)
class Threshold:
    """A hard eviction threshold: `signal` below `quantity` (absolute) or `percent` of capacity."""

    signal: str
    quantity: float | None = None
    percent: float | None = None
    text: str = ""

    def limit(self, capacity: float) -> float:
        """The threshold in the signal's unit (bytes, inodes, PIDs) for this capacity."""
        if self.percent is not None:
            return capacity * self.percent / 100.0
        return float(self.quantity or 0)


@dataclass(frozen=True)
class KubeletConfiguration:
    """The effective configuration (defaults applied). Durations in seconds."""

    address: str = "0.0.0.0"  # noqa: S104 - the apiserver reaches the kubelet on the node IP
    port: int = 10250
    read_only_port: int = 0
    healthz_port: int = 10248
    healthz_bind_address: str = "127.0.0.1"
    tls_cert_file: str = ""
    tls_private_key_file: str = ""
    anonymous_auth: bool = False
    webhook_authn_enabled: bool = True
    webhook_authn_cache_ttl_s: float = 120.0
    client_ca_file: str = ""
    authorization_mode: str = "Webhook"
    authz_allowed_ttl_s: float = 300.0
    authz_denied_ttl_s: float = 30.0
    static_pod_path: str = ""
    sync_frequency_s: float = 60.0
    file_check_frequency_s: float = 20.0
    node_status_update_frequency_s: float = 10.0
    node_status_report_frequency_s: float = 300.0
    node_lease_duration_s: int = 40
    max_pods: int = 110
    pod_pids_limit: int = -1
    eviction_hard: tuple[Threshold, ...] = ()
    eviction_pressure_transition_period_s: float = 300.0
    system_reserved: Mapping[str, str] = field(default_factory=dict)
    kube_reserved: Mapping[str, str] = field(default_factory=dict)
    enforce_node_allocatable: tuple[str, ...] = ("pods",)
    register_with_taints: tuple[Mapping[str, str], ...] = ()
    register_node: bool = True
    serialize_image_pulls: bool = True
    max_parallel_image_pulls: int | None = None
    image_gc_high_threshold_percent: int = 85
    image_gc_low_threshold_percent: int = 80
    image_minimum_gc_age_s: float = 120.0
    container_log_max_size: str = "10Mi"
    container_log_max_files: int = 5
    cgroup_driver: str = "cgroupfs"
    cgroups_per_qos: bool = True
    cluster_dns: tuple[str, ...] = ()
    cluster_domain: str = ""
    rotate_certificates: bool = False
    server_tls_bootstrap: bool = False
    runtime_request_timeout_s: float = 120.0
    node_status_max_images: int = 50

    @property
    def lease_renew_s(self) -> float:
        """The Lease is renewed every quarter of its duration (upstream's renewIntervalFraction)."""
        return self.node_lease_duration_s * 0.25

    def reserved(self, resource: str) -> float:
        """systemReserved + kubeReserved of one resource (cpu in cores, memory in bytes)."""
        total = 0.0
        for source in (self.system_reserved, self.kube_reserved):
            if resource in source:
                total += float(parse_quantity(source[resource]))
        return total

    def to_v1beta1(self) -> dict[str, Any]:
        """The effective configuration in the file's own shape (what /configz serves)."""
        out: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "address": self.address,
            "port": self.port,
            "readOnlyPort": self.read_only_port,
            "healthzPort": self.healthz_port,
            "healthzBindAddress": self.healthz_bind_address,
            "authentication": {
                "anonymous": {"enabled": self.anonymous_auth},
                "webhook": {
                    "enabled": self.webhook_authn_enabled,
                    "cacheTTL": _go_duration(self.webhook_authn_cache_ttl_s),
                },
                "x509": {"clientCAFile": self.client_ca_file} if self.client_ca_file else {},
            },
            "authorization": {
                "mode": self.authorization_mode,
                "webhook": {
                    "cacheAuthorizedTTL": _go_duration(self.authz_allowed_ttl_s),
                    "cacheUnauthorizedTTL": _go_duration(self.authz_denied_ttl_s),
                },
            },
            "syncFrequency": _go_duration(self.sync_frequency_s),
            "fileCheckFrequency": _go_duration(self.file_check_frequency_s),
            "nodeStatusUpdateFrequency": _go_duration(self.node_status_update_frequency_s),
            "nodeStatusReportFrequency": _go_duration(self.node_status_report_frequency_s),
            "nodeLeaseDurationSeconds": self.node_lease_duration_s,
            "maxPods": self.max_pods,
            "podPidsLimit": self.pod_pids_limit,
            "evictionHard": {t.signal: t.text for t in self.eviction_hard},
            "evictionPressureTransitionPeriod": _go_duration(
                self.eviction_pressure_transition_period_s
            ),
            "enforceNodeAllocatable": list(self.enforce_node_allocatable),
            "registerNode": self.register_node,
            "serializeImagePulls": self.serialize_image_pulls,
            "imageGCHighThresholdPercent": self.image_gc_high_threshold_percent,
            "imageGCLowThresholdPercent": self.image_gc_low_threshold_percent,
            "imageMinimumGCAge": _go_duration(self.image_minimum_gc_age_s),
            "containerLogMaxSize": self.container_log_max_size,
            "containerLogMaxFiles": self.container_log_max_files,
            "cgroupDriver": self.cgroup_driver,
            "cgroupsPerQOS": self.cgroups_per_qos,
            "rotateCertificates": self.rotate_certificates,
            "serverTLSBootstrap": self.server_tls_bootstrap,
            "runtimeRequestTimeout": _go_duration(self.runtime_request_timeout_s),
            "nodeStatusMaxImages": self.node_status_max_images,
        }
        optional: dict[str, Any] = {
            "tlsCertFile": self.tls_cert_file,
            "tlsPrivateKeyFile": self.tls_private_key_file,
            "staticPodPath": self.static_pod_path,
            "systemReserved": dict(self.system_reserved),
            "kubeReserved": dict(self.kube_reserved),
            "registerWithTaints": [dict(t) for t in self.register_with_taints],
            "maxParallelImagePulls": self.max_parallel_image_pulls,
            "clusterDNS": list(self.cluster_dns),
            "clusterDomain": self.cluster_domain,
        }
        out.update({k: v for k, v in optional.items() if v})
        return out


# ---- parsing helpers ---------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration ("1m30s", "500ms", "0") in seconds."""
    raw = text.strip()
    sign = -1.0 if raw.startswith("-") else 1.0
    body = raw.lstrip("+-")
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


def _go_duration(seconds: float) -> str:
    """Seconds as Go prints a time.Duration (1m0s, 10s, 500ms)."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    out = f"{int(h)}h" if h else ""
    if h or m:
        out += f"{int(m)}m"
    return out + f"{s:g}s"


def parse_threshold(signal: str, value: str) -> Threshold:
    """One evictionHard entry ("memory.available": "100Mi" or "10%")."""
    if signal not in EVICTION_SIGNALS:
        raise ValueError(f"evictionHard: unsupported eviction signal {signal!r}")
    text = str(value).strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError as err:
            raise ValueError(f"evictionHard[{signal}]: invalid percentage {text!r}") from err
        if not 0 <= pct <= 100:
            raise ValueError(
                f"evictionHard[{signal}]: eviction percentage threshold must be >= 0% and "
                f"<= 100%: {text}"
            )
        return Threshold(signal, percent=pct, text=text)
    try:
        qty = float(parse_quantity(text))
    except (ValueError, ArithmeticError) as err:
        raise ValueError(f"evictionHard[{signal}]: invalid quantity {text!r}") from err
    if qty < 0:
        raise ValueError(f"evictionHard[{signal}]: eviction threshold must be positive: {text}")
    return Threshold(signal, quantity=qty, text=text)


# ---- load -----------------------------------------------------------------------------------


def default_eviction_hard() -> tuple[Threshold, ...]:
    """Upstream's hard eviction defaults (pkg/kubelet/eviction/defaults_linux.go)."""
    return tuple(parse_threshold(k, v) for k, v in DEFAULT_EVICTION_HARD.items())


def parse(doc: Mapping[str, Any]) -> tuple[KubeletConfiguration, list[str]]:
    """A decoded file -> (configuration, warnings). Raises ConfigError listing every error."""
    errors: list[str] = []
    warnings: list[str] = []
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise ConfigError(
            f"not a {KIND} of {API_VERSION}: apiVersion {doc.get('apiVersion')!r}, "
            f"kind {doc.get('kind')!r}"
        )
    for key in doc:
        if key in HONOURED:
            continue
        if key in ACCEPTED_WITHOUT_EFFECT:
            warnings.append(f"{key} is accepted but has no effect in kubelet-py")
        else:
            warnings.append(f'unknown field "{key}" (not part of {API_VERSION} {KIND})')
    values: dict[str, Any] = {}

    def take(key: str, name: str, convert: Any, check: Any = None, message: str = "") -> None:
        if key not in doc or doc[key] is None:
            return
        try:
            value = convert(doc[key])
        except (TypeError, ValueError, ArithmeticError) as err:
            errors.append(f"{key}: invalid value {doc[key]!r}: {err}")
            return
        if check is not None and not check(value):
            errors.append(f"invalid configuration: {message.format(value)}")
            return
        values[name] = value

    def duration(key: str, name: str, *, positive: bool = True) -> None:
        take(key, name, _duration_field, (lambda v: v > 0) if positive else (lambda v: v >= 0),
             f"{key} {{}} must be {'greater than 0' if positive else 'non-negative'}")  # fmt: skip

    take("address", "address", str, _is_ip, "address (--address) {} is not a valid IP address")
    take("port", "port", int, lambda v: 1 <= v <= 65535,
         "port (--port) {} must be between 1 and 65535, inclusive")  # fmt: skip
    take("readOnlyPort", "read_only_port", int, lambda v: 0 <= v <= 65535,
         "readOnlyPort (--read-only-port) {} must be between 0 and 65535, inclusive")  # fmt: skip
    take("healthzPort", "healthz_port", int, lambda v: 0 <= v <= 65535,
         "healthzPort (--healthz-port) {} must be between 1 and 65535, inclusive")  # fmt: skip
    take("healthzBindAddress", "healthz_bind_address", str, _is_ip,
         "healthzBindAddress {} is not a valid IP address")  # fmt: skip
    take("tlsCertFile", "tls_cert_file", str)
    take("tlsPrivateKeyFile", "tls_private_key_file", str)
    take("staticPodPath", "static_pod_path", str)
    duration("syncFrequency", "sync_frequency_s")
    duration("fileCheckFrequency", "file_check_frequency_s")
    duration("nodeStatusUpdateFrequency", "node_status_update_frequency_s")
    duration("nodeStatusReportFrequency", "node_status_report_frequency_s")
    duration("evictionPressureTransitionPeriod", "eviction_pressure_transition_period_s",
             positive=False)  # fmt: skip
    duration("imageMinimumGCAge", "image_minimum_gc_age_s", positive=False)
    duration("runtimeRequestTimeout", "runtime_request_timeout_s")
    take("nodeLeaseDurationSeconds", "node_lease_duration_s", int, lambda v: v > 0,
         "nodeLeaseDurationSeconds must be greater than 0")  # fmt: skip
    take("maxPods", "max_pods", int, lambda v: v >= 0,
         "maxPods (--max-pods) {} must not be a negative number")  # fmt: skip
    take("podPidsLimit", "pod_pids_limit", int, lambda v: v == -1 or v > 0,
         "podPidsLimit (--pod-max-pids) {} must be -1 (unlimited) or greater than 0")  # fmt: skip
    take("nodeStatusMaxImages", "node_status_max_images", int, lambda v: v >= -1,
         "nodeStatusMaxImages (--node-status-max-images) {} must be -1 or greater")  # fmt: skip
    take("registerNode", "register_node", _bool)
    take("serializeImagePulls", "serialize_image_pulls", _bool)
    take("maxParallelImagePulls", "max_parallel_image_pulls", int, lambda v: v > 0,
         "maxParallelImagePulls {} must be a positive number")  # fmt: skip
    take("imageGCHighThresholdPercent", "image_gc_high_threshold_percent", int,
         lambda v: 0 <= v <= 100, "imageGCHighThresholdPercent (--image-gc-high-threshold) {} "
         "must be between 0 and 100, inclusive")  # fmt: skip
    take("imageGCLowThresholdPercent", "image_gc_low_threshold_percent", int,
         lambda v: 0 <= v <= 100, "imageGCLowThresholdPercent (--image-gc-low-threshold) {} "
         "must be between 0 and 100, inclusive")  # fmt: skip
    take("containerLogMaxSize", "container_log_max_size", _positive_quantity)
    take("containerLogMaxFiles", "container_log_max_files", int, lambda v: v > 1,
         "containerLogMaxFiles must be greater than 1")  # fmt: skip
    take("cgroupDriver", "cgroup_driver", str, lambda v: v == "cgroupfs",
         "cgroupDriver {!r} is not supported by kubelet-py (its runtime manages cgroupfs "
         "cgroups beneath its own cgroup): use cgroupfs")  # fmt: skip
    take("cgroupsPerQOS", "cgroups_per_qos", _bool)
    take("clusterDNS", "cluster_dns", _ip_list)
    take("clusterDomain", "cluster_domain", str)
    take("rotateCertificates", "rotate_certificates", _bool)
    take("serverTLSBootstrap", "server_tls_bootstrap", _bool)
    take("systemReserved", "system_reserved", _reservation)
    take("kubeReserved", "kube_reserved", _reservation)
    take("registerWithTaints", "register_with_taints", _taints)
    take("enforceNodeAllocatable", "enforce_node_allocatable", _enforcements)

    evictions = doc.get("evictionHard")
    merge = bool(doc.get("mergeDefaultEvictionSettings"))
    if evictions is None:
        chosen = dict(DEFAULT_EVICTION_HARD)
    else:
        chosen = {**(DEFAULT_EVICTION_HARD if merge else {}), **dict(evictions)}
    thresholds = []
    for signal, value in chosen.items():
        try:
            thresholds.append(parse_threshold(signal, value))
        except ValueError as err:
            errors.append(f"invalid configuration: {err}")
    values["eviction_hard"] = tuple(thresholds)

    authn = doc.get("authentication") or {}
    anonymous = (authn.get("anonymous") or {}).get("enabled")
    if anonymous is not None:
        values["anonymous_auth"] = _bool(anonymous)
    webhook = authn.get("webhook") or {}
    if webhook.get("enabled") is not None:
        values["webhook_authn_enabled"] = _bool(webhook["enabled"])
    if webhook.get("cacheTTL"):
        values["webhook_authn_cache_ttl_s"] = _duration_field(webhook["cacheTTL"])
    ca = (authn.get("x509") or {}).get("clientCAFile")
    if ca:
        values["client_ca_file"] = str(ca)
    authz = doc.get("authorization") or {}
    if authz.get("mode"):
        values["authorization_mode"] = str(authz["mode"])
    authz_webhook = authz.get("webhook") or {}
    if authz_webhook.get("cacheAuthorizedTTL"):
        values["authz_allowed_ttl_s"] = _duration_field(authz_webhook["cacheAuthorizedTTL"])
    if authz_webhook.get("cacheUnauthorizedTTL"):
        values["authz_denied_ttl_s"] = _duration_field(authz_webhook["cacheUnauthorizedTTL"])

    # defaults that depend on other fields (defaults.go)
    if "node_status_report_frequency_s" not in values and "nodeStatusUpdateFrequency" in doc:
        values.setdefault(
            "node_status_report_frequency_s", values.get("node_status_update_frequency_s", 300.0)
        )
    if "serialize_image_pulls" not in values:
        values["serialize_image_pulls"] = (values.get("max_parallel_image_pulls") or 1) < 2
    cfg = KubeletConfiguration(**values)

    # cross-field rules (validation.go)
    if cfg.image_gc_low_threshold_percent >= cfg.image_gc_high_threshold_percent:
        errors.append(
            "invalid configuration: imageGCLowThresholdPercent (--image-gc-low-threshold) "
            f"{cfg.image_gc_low_threshold_percent} must be less than imageGCHighThresholdPercent"
            f" (--image-gc-high-threshold) {cfg.image_gc_high_threshold_percent}"
        )
    if (cfg.max_parallel_image_pulls or 1) > 1 and cfg.serialize_image_pulls:
        errors.append(
            "invalid configuration: maxParallelImagePulls cannot be larger than 1 unless "
            "SerializeImagePulls (--serialize-image-pulls) is set to false"
        )
    if bool(cfg.tls_cert_file) != bool(cfg.tls_private_key_file):
        errors.append(
            "invalid configuration: tlsCertFile and tlsPrivateKeyFile must be given together"
        )
    if cfg.authorization_mode not in ("Webhook", "AlwaysAllow"):
        errors.append(
            f"invalid configuration: authorization.mode {cfg.authorization_mode!r} must be "
            "Webhook or AlwaysAllow"
        )
    elif cfg.authorization_mode == "AlwaysAllow":
        errors.append(
            "authorization.mode AlwaysAllow is not supported by kubelet-py: every request to "
            "its API is authorized with a SubjectAccessReview (mode Webhook)"
        )
    if not cfg.webhook_authn_enabled:
        errors.append(
            "authentication.webhook.enabled false is not supported by kubelet-py: bearer "
            "tokens are always checked with a TokenReview"
        )
    if "none" in cfg.enforce_node_allocatable and len(cfg.enforce_node_allocatable) > 1:
        errors.append(
            "invalid configuration: enforceNodeAllocatable (--enforce-node-allocatable) may not "
            'contain additional enforcements when "none" is specified'
        )
    if "enforceNodeAllocatable" in doc and cfg.enforce_node_allocatable != ("none",):
        warnings.append(
            "enforceNodeAllocatable: allocatable is reported to the API (capacity minus "
            "reserved and hard-eviction amounts), but no cgroup limit is put on all pods together"
        )
    if cfg.read_only_port:
        warnings.append(
            f"readOnlyPort {cfg.read_only_port}: kubelet-py serves no unauthenticated "
            "read-only port; only the authenticated one (port) is served"
        )
    if errors:
        raise ConfigError("; ".join(errors))
    return cfg, warnings


def load(path: Path) -> tuple[KubeletConfiguration, list[str]]:
    """Read and parse a KubeletConfiguration file (YAML or JSON)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"reading kubelet config file {path} failed: {err}") from err
    try:
        doc = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        raise ConfigError(f"kubelet config file {path} is not YAML/JSON: {err}") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"kubelet config file {path}: expected an object, got {doc!r}")
    try:
        return parse(doc)
    except ConfigError as err:
        raise ConfigError(f"kubelet config file {path}: {err}") from err


def _duration_field(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1e9  # a bare number is nanoseconds, as Go's JSON decoding
    return parse_duration(str(value))


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("expected true or false")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _ip_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError("expected a list of IP addresses")
    for item in value:
        if not _is_ip(str(item)):
            raise ValueError(f"{item!r} is not a valid IP address")
    return tuple(str(v) for v in value)


def _positive_quantity(value: Any) -> str:
    if parse_quantity(str(value)) <= 0:
        raise ValueError("must be a positive quantity")
    return str(value)


def _reservation(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError("expected a map of resource name to quantity")
    for name, qty in value.items():
        if name not in ("cpu", "memory", "ephemeral-storage", "pid"):
            raise ValueError(f"unsupported resource {name!r}")
        if parse_quantity(str(qty)) < 0:
            raise ValueError(f"{name}: quantity {qty!r} must not be negative")
    return {str(k): str(v) for k, v in value.items()}


def _taints(value: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list):
        raise TypeError("expected a list of taints")
    out = []
    for t in value:
        if not isinstance(t, dict) or not t.get("key") or t.get("effect") not in TAINT_EFFECTS:
            effects = ", ".join(TAINT_EFFECTS)
            raise ValueError(f"invalid taint: {json.dumps(t)} (needs a key and one of {effects})")
        out.append({k: str(v) for k, v in t.items() if k in ("key", "value", "effect")})
    return tuple(out)


def _enforcements(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    for v in value:
        if v not in ENFORCEMENTS:
            raise ValueError(f"option {v!r}: valid options are {', '.join(ENFORCEMENTS)}")
    if len(set(value)) != len(value):
        raise ValueError("duplicated enforcements")
    return tuple(str(v) for v in value)
