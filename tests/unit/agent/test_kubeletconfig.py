"""KubeletConfiguration files: defaults from upstream, fields read, unknown fields warned,
invalid values rejected with every error named, and the effective config for /configz."""

from pathlib import Path

import pytest

from kubelet_py.agent.kubeletconfig import (
    ConfigError,
    KubeletConfiguration,
    load,
    parse,
    parse_duration,
)
from kubelet_py.agent.pressure import PressureTracker, Signal

HEAD = {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration"}


def test_defaults_are_upstreams() -> None:
    """An empty file gives defaults.go's values and the Linux hard eviction defaults."""
    cfg, warnings = parse(HEAD)
    assert warnings == []
    assert (cfg.port, cfg.read_only_port, cfg.healthz_port) == (10250, 0, 10248)
    assert (cfg.sync_frequency_s, cfg.file_check_frequency_s) == (60.0, 20.0)
    assert (cfg.node_status_update_frequency_s, cfg.node_status_report_frequency_s) == (10, 300)
    assert (cfg.node_lease_duration_s, cfg.lease_renew_s, cfg.max_pods) == (40, 10.0, 110)
    assert cfg.pod_pids_limit == -1 and cfg.serialize_image_pulls
    assert (cfg.image_gc_high_threshold_percent, cfg.image_gc_low_threshold_percent) == (85, 80)
    assert (cfg.container_log_max_size, cfg.container_log_max_files) == ("10Mi", 5)
    assert cfg.cgroup_driver == "cgroupfs" and cfg.enforce_node_allocatable == ("pods",)
    assert {t.signal: t.text for t in cfg.eviction_hard} == {
        "memory.available": "100Mi", "nodefs.available": "10%", "nodefs.inodesFree": "5%",
        "imagefs.available": "15%", "imagefs.inodesFree": "5%",
    }  # fmt: skip


def test_fields_are_read() -> None:
    """Durations, quantities, taints, reservations, eviction thresholds, auth blocks."""
    cfg, _ = parse({
        **HEAD, "syncFrequency": "30s", "fileCheckFrequency": "1m30s",
        "nodeStatusUpdateFrequency": "4s", "nodeLeaseDurationSeconds": 20, "maxPods": 42,
        "podPidsLimit": 512, "evictionHard": {"nodefs.available": "1Gi"},
        "systemReserved": {"cpu": "250m", "memory": "128Mi"}, "kubeReserved": {"memory": "64Mi"},
        "registerWithTaints": [{"key": "a", "value": "b", "effect": "NoSchedule"}],
        "registerNode": False, "serializeImagePulls": False, "maxParallelImagePulls": 3,
        "clusterDNS": ["10.96.0.10"], "clusterDomain": "example.local",
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"cacheTTL": "10s"},
                           "x509": {"clientCAFile": "/ca.crt"}},
        "authorization": {"mode": "Webhook", "webhook": {"cacheAuthorizedTTL": "1m"}},
    })  # fmt: skip
    assert (cfg.sync_frequency_s, cfg.file_check_frequency_s) == (30.0, 90.0)
    assert cfg.node_status_report_frequency_s == 4.0  # defaults to the update frequency
    assert (cfg.lease_renew_s, cfg.max_pods, cfg.pod_pids_limit) == (5.0, 42, 512)
    assert [t.signal for t in cfg.eviction_hard] == ["nodefs.available"]  # no merge by default
    assert cfg.reserved("cpu") == 0.25 and cfg.reserved("memory") == 192 * 1024 * 1024
    assert cfg.register_with_taints == ({"key": "a", "value": "b", "effect": "NoSchedule"},)
    assert not cfg.register_node and cfg.max_parallel_image_pulls == 3
    assert cfg.cluster_dns == ("10.96.0.10",) and cfg.cluster_domain == "example.local"
    assert cfg.anonymous_auth and cfg.client_ca_file == "/ca.crt"
    assert (cfg.webhook_authn_cache_ttl_s, cfg.authz_allowed_ttl_s) == (10.0, 60.0)
    shown = cfg.to_v1beta1()
    assert shown["syncFrequency"] == "30s" and shown["fileCheckFrequency"] == "1m30s"
    assert shown["evictionHard"] == {"nodefs.available": "1Gi"} and shown["maxPods"] == 42


def test_unknown_and_inert_fields_are_warned() -> None:
    """A typo is an unknown field; a real field kubelet-py ignores says so."""
    _, warnings = parse({**HEAD, "maxPod": 3, "cpuManagerPolicy": "static", "readOnlyPort": 10255})
    assert 'unknown field "maxPod" (not part of kubelet.config.k8s.io/v1beta1 ' \
        "KubeletConfiguration)" in warnings  # fmt: skip
    assert "cpuManagerPolicy is accepted but has no effect in kubelet-py" in warnings
    assert any(w.startswith("readOnlyPort 10255") for w in warnings)


def test_invalid_values_are_rejected_all_at_once() -> None:
    """Each broken field is named in one error, with upstream's wording where it has one."""
    with pytest.raises(ConfigError) as err:
        parse({
            **HEAD, "port": 70000, "nodeLeaseDurationSeconds": 0, "maxPods": -1,
            "imageGCHighThresholdPercent": 50, "imageGCLowThresholdPercent": 60,
            "evictionHard": {"memory.avail": "1Mi", "nodefs.available": "120%"},
            "containerLogMaxFiles": 1, "cgroupDriver": "systemd", "syncFrequency": "soon",
            "podPidsLimit": 0, "registerWithTaints": [{"key": "k", "effect": "Sometimes"}],
        })  # fmt: skip
    text = str(err.value)
    for expected in (
        "port (--port) 70000 must be between 1 and 65535, inclusive",
        "nodeLeaseDurationSeconds must be greater than 0",
        "maxPods (--max-pods) -1 must not be a negative number",
        "imageGCLowThresholdPercent (--image-gc-low-threshold) 60 must be less than "
        "imageGCHighThresholdPercent (--image-gc-high-threshold) 50",
        "unsupported eviction signal 'memory.avail'",
        "eviction percentage threshold must be >= 0% and <= 100%: 120%",
        "containerLogMaxFiles must be greater than 1",
        "cgroupDriver 'systemd' is not supported by kubelet-py",
        "syncFrequency: invalid value 'soon'",
        "podPidsLimit (--pod-max-pids) 0 must be -1 (unlimited) or greater than 0",
        "invalid taint",
    ):
        assert expected in text, (expected, text)


def test_wrong_kind_and_unsupported_auth_modes(tmp_path: Path) -> None:
    """Another kind is refused; AlwaysAllow is refused rather than silently ignored."""
    path = tmp_path / "k.yaml"
    path.write_text("apiVersion: v1\nkind: Pod\n")
    with pytest.raises(ConfigError, match=r"k\.yaml: not a KubeletConfiguration"):
        load(path)
    with pytest.raises(ConfigError, match="AlwaysAllow is not supported"):
        parse({**HEAD, "authorization": {"mode": "AlwaysAllow"}})


def test_go_durations() -> None:
    """Go's duration syntax, in seconds."""
    assert parse_duration("1h2m3.5s") == 3723.5
    assert parse_duration("250ms") == 0.25 and parse_duration("0") == 0.0
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("5 minutes")


def test_pressure_is_held_for_the_transition_period() -> None:
    """A crossed threshold raises its condition; it falls only after the transition period."""
    cfg, _ = parse({**HEAD, "evictionHard": {"nodefs.available": "50%", "pid.available": "10"},
                    "evictionPressureTransitionPeriod": "30s"})  # fmt: skip
    now = [0.0]
    tracker = PressureTracker(cfg.eviction_hard, transition_s=30, clock=lambda: now[0])
    low = {"nodefs.available": Signal(10, 100), "pid.available": Signal(1000, 4096)}
    high = {"nodefs.available": Signal(90, 100), "pid.available": Signal(1000, 4096)}
    state = tracker.update(low)
    assert state["DiskPressure"] == (True, "nodefs.available below 50%")
    assert not state["PIDPressure"][0] and not state["MemoryPressure"][0]
    now[0] = 20.0
    assert tracker.update(high)["DiskPressure"][0]  # still within the transition period
    now[0] = 31.0
    assert tracker.update(high)["DiskPressure"] == (False, "")


def test_default_configuration_object_is_consistent() -> None:
    """The dataclass defaults match what parsing an empty file gives (but thresholds)."""
    parsed, _ = parse(HEAD)
    assert KubeletConfiguration(eviction_hard=parsed.eviction_hard) == parsed
