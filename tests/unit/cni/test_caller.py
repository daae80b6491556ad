"""NetworkManager's chaining, caching, rollback and GC against a fake plugin executor."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cni import CNIError, NetworkManager, PodRef, PortMapping
from cni.errors import Code, PluginFailedError, PluginNotFoundError

CONF = {
    "cniVersion": "1.1.0",
    "name": "net",
    "plugins": [
        {"type": "a"},
        {"type": "b", "capabilities": {"portMappings": True}},
    ],
}
RESULT = {
    "cniVersion": "1.1.0",
    "interfaces": [{"name": "eth0", "sandbox": "/ns"}],
    "ips": [{"address": "10.0.0.2/24", "interface": 0}],
}


class FakeExec:
    """Records invocations; plugin `fail` (type -> command) makes that call fail."""

    def __init__(self, fail: Mapping[str, str] | None = None) -> None:
        self.calls: list[tuple[str, str, dict[str, Any], dict[str, str]]] = []
        self.fail = dict(fail or {})

    def __call__(
        self, binary: Path, env: Mapping[str, str], stdin: bytes, timeout_s: float
    ) -> tuple[int, bytes, bytes]:
        cmd = env["CNI_COMMAND"]
        conf = json.loads(stdin)
        self.calls.append((binary.name, cmd, conf, dict(env)))
        if self.fail.get(binary.name) == cmd:
            err = {"cniVersion": "1.1.0", "code": 7, "msg": "boom", "details": binary.name}
            return 1, json.dumps(err).encode(), b""
        if cmd == "ADD":
            return 0, json.dumps(conf.get("prevResult") or RESULT).encode(), b""
        return 0, b"", b""


def _mgr(tmp_path: Path, fake: FakeExec, conf: dict[str, Any] = CONF) -> NetworkManager:
    bins = tmp_path / "bin"
    bins.mkdir(exist_ok=True)
    for p in conf["plugins"]:
        (bins / p["type"]).write_text("#!/bin/false\n")
        (bins / p["type"]).chmod(0o755)
    confd = tmp_path / "conf"
    confd.mkdir(exist_ok=True)
    (confd / "10.conflist").write_text(json.dumps(conf))
    return NetworkManager(confd, [bins], tmp_path / "cache", executor=fake)


def test_add_chains_in_order_and_del_in_reverse_with_the_cached_result(tmp_path: Path) -> None:
    """ADD a then b (b gets prevResult and runtimeConfig); DEL b then a with the cached result."""
    fake = FakeExec()
    mgr = _mgr(tmp_path, fake)
    att = mgr.setup(
        "pod1", "/ns", pod=PodRef("ns", "p", "u"), port_mappings=[PortMapping(80, 8080)]
    )
    assert [str(ip) for ip in att.ips] == ["10.0.0.2/24"]
    (_, _, conf_a, env_a), (_, _, conf_b, _) = fake.calls
    assert "prevResult" not in conf_a and "runtimeConfig" not in conf_a
    assert conf_b["prevResult"] == RESULT
    assert conf_b["runtimeConfig"]["portMappings"][0]["hostPort"] == 80
    assert "K8S_POD_NAME=p" in env_a["CNI_ARGS"] and env_a["CNI_IFNAME"] == "eth0"
    assert mgr.result("pod1") is not None
    fake.calls.clear()
    mgr.teardown("pod1")
    assert [(c[0], c[1]) for c in fake.calls] == [("b", "DEL"), ("a", "DEL")]
    assert all(c[2]["prevResult"] == RESULT for c in fake.calls)
    assert "CNI_NETNS" not in fake.calls[0][3]  # /ns does not exist: DEL runs without it
    assert "K8S_POD_NAME=p" in fake.calls[0][3]["CNI_ARGS"]  # same args as the ADD
    assert mgr.result("pod1") is None


def test_failed_add_is_rolled_back_and_reported(tmp_path: Path) -> None:
    """When b fails on ADD, the chain is DELeted (b, a) and the plugin's error is raised."""
    fake = FakeExec({"b": "ADD"})
    mgr = _mgr(tmp_path, fake)
    with pytest.raises(PluginFailedError) as err:
        mgr.setup("pod1", "/ns")
    assert err.value.code == Code.INVALID_CONFIG and "plugin b ADD failed: boom" in str(err.value)
    assert [(c[0], c[1]) for c in fake.calls] == [
        ("a", "ADD"),
        ("b", "ADD"),
        ("b", "DEL"),
        ("a", "DEL"),
    ]
    assert mgr.result("pod1") is None


def test_missing_plugin_fails_before_any_call(tmp_path: Path) -> None:
    """A chain with an uninstalled type raises code 50 and runs nothing."""
    fake = FakeExec()
    mgr = _mgr(tmp_path, fake)
    (tmp_path / "bin" / "b").unlink()
    with pytest.raises(PluginNotFoundError) as err:
        mgr.setup("pod1", "/ns")
    assert err.value.code == Code.NOT_AVAILABLE and fake.calls == []


def test_gc_dels_stale_cached_attachments_then_gcs_with_valid_ones(tmp_path: Path) -> None:
    """gc(valid) DELs what is cached but not valid, then sends GC with the valid list."""
    fake = FakeExec()
    mgr = _mgr(tmp_path, fake)
    mgr.setup("keep", "/ns")
    mgr.setup("stale", "/ns")
    fake.calls.clear()
    assert mgr.gc([("keep", "eth0")]) == []
    assert [(c[0], c[1], c[3].get("CNI_CONTAINERID")) for c in fake.calls] == [
        ("b", "DEL", "stale"),
        ("a", "DEL", "stale"),
        ("a", "GC", None),
        ("b", "GC", None),
    ]
    assert fake.calls[2][2]["cni.dev/valid-attachments"] == [
        {"containerID": "keep", "ifname": "eth0"}
    ]
    assert mgr.result("stale") is None and mgr.result("keep") is not None


def test_status_and_check(tmp_path: Path) -> None:
    """STATUS runs per plugin (1.1); CHECK needs a cached ADD and passes prevResult."""
    fake = FakeExec()
    mgr = _mgr(tmp_path, fake)
    mgr.status()
    assert [(c[0], c[1]) for c in fake.calls] == [("a", "STATUS"), ("b", "STATUS")]
    with pytest.raises(CNIError) as err:
        mgr.check("nope", "/ns")
    assert err.value.code == Code.UNKNOWN_CONTAINER
    mgr.setup("pod1", "/ns")
    fake.calls.clear()
    mgr.check("pod1", "/ns")
    assert [c[1] for c in fake.calls] == ["CHECK", "CHECK"] and fake.calls[0][2][
        "prevResult"
    ] == RESULT


def test_version_1_0_skips_status_and_gc_commands(tmp_path: Path) -> None:
    """A 1.0.0 network never receives STATUS or GC (they are CNI 1.1 commands)."""
    fake = FakeExec()
    mgr = _mgr(tmp_path, fake, {**CONF, "cniVersion": "1.0.0"})
    mgr.status()
    assert mgr.gc([]) == []
    assert fake.calls == []


def test_version_0_3_1_network_dels_without_prev_result_and_skips_check(tmp_path: Path) -> None:
    """Before 0.4.0 there was no prevResult on DEL and no CHECK: the caller honours that."""
    fake = FakeExec()
    mgr = _mgr(tmp_path, fake, {**CONF, "cniVersion": "0.3.1"})
    mgr.setup("pod1", "/ns")
    assert fake.calls[0][2]["cniVersion"] == "0.3.1"
    fake.calls.clear()
    mgr.check("pod1", "/ns")
    mgr.teardown("pod1")
    assert [(c[0], c[1]) for c in fake.calls] == [("b", "DEL"), ("a", "DEL")]
    assert all("prevResult" not in c[2] for c in fake.calls)


def test_calls_for_one_pod_are_serialized_and_locks_do_not_accumulate(tmp_path: Path) -> None:
    """Two threads on one pod never overlap; no per-pod lock remains afterwards."""
    import threading
    import time

    active: list[int] = []
    overlap: list[bool] = []

    class Slow(FakeExec):
        def __call__(self, binary, env, stdin, timeout_s):  # type: ignore[no-untyped-def]
            active.append(1)
            overlap.append(len(active) > 1)
            time.sleep(0.02)
            active.pop()
            return super().__call__(binary, env, stdin, timeout_s)

    mgr = _mgr(tmp_path, Slow())
    threads = [threading.Thread(target=mgr.setup, args=("same", "/ns")) for _ in range(1)]
    threads.append(threading.Thread(target=mgr.teardown, args=("same",)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not any(overlap)
    assert mgr._pod_locks == {}
