"""Bad input gets the right CNI error code and a message, and leaves nothing half-configured."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cni import CNIError, Code, ConfigError, NetworkManager, PluginNotFoundError
from tests.integration.cni.conftest import (
    FLAVOURS,
    Lab,
    allocations,
    chain,
    flavour_setup,
    host_links,
    in_netns,
    manager,
)


def test_invalid_conflist_is_a_config_error(lab: Lab, our_bin: Path, tmp_path: Path) -> None:
    """A conflist without plugins fails setup with code 7 naming the file; nothing runs."""
    node, _ = lab.node_with_underlay()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10-bad.conflist").write_text(json.dumps({"cniVersion": "1.1.0", "name": "x"}))
    mgr = NetworkManager(conf, [our_bin], tmp_path / "cache")
    pod = lab.netns("p0")
    with pytest.raises(ConfigError) as err:
        in_netns(node, lambda: mgr.setup("c1", pod))
    assert err.value.code == Code.INVALID_CONFIG and "10-bad.conflist" in str(err.value)
    with pytest.raises(ConfigError):
        mgr.status()


def test_missing_plugin_binary_is_code_50_before_anything_is_made(
    lab: Lab, our_bin: Path, tmp_path: Path
) -> None:
    """A chain naming a plugin that is not installed fails with code 50; no veth or IP is left."""
    node, _ = lab.node_with_underlay()
    conf = chain("kpynet", subnet="10.244.8.0/24", data_dir=tmp_path / "ipam")
    conf["plugins"].append({"type": "no-such-plugin"})
    mgr = manager(tmp_path, conf, our_bin)
    pod = lab.netns("p0")
    with pytest.raises(PluginNotFoundError) as err:
        in_netns(node, lambda: mgr.setup("c1", pod))
    assert err.value.code == Code.NOT_AVAILABLE and "no-such-plugin" in str(err.value)
    assert host_links(pod) == ["lo"] and allocations(tmp_path / "ipam") == []
    with pytest.raises(PluginNotFoundError):
        mgr.status()


def test_missing_delegated_ipam_plugin_rolls_back(lab: Lab, our_bin: Path, tmp_path: Path) -> None:
    """bridge whose IPAM plugin is missing reports code 50; the bridge plugin made no veth."""
    node, _ = lab.node_with_underlay()
    conf = chain("kpynet", subnet="10.244.8.0/24", data_dir=tmp_path / "ipam")
    conf["plugins"][0]["ipam"]["type"] = "no-such-ipam"
    mgr = manager(tmp_path, conf, our_bin)
    pod = lab.netns("p0")
    with pytest.raises(CNIError) as err:
        in_netns(node, lambda: mgr.setup("c1", pod))
    assert err.value.code == Code.NOT_AVAILABLE and "no-such-ipam" in str(err.value)
    assert host_links(pod) == ["lo"]
    assert [n for n in host_links(node) if n.startswith("veth")] == []


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_exhausted_range(flavour: str, lab: Lab, our_bin: Path, tmp_path: Path) -> None:
    """A /30 holds one pod; the second fails with a clear error and leaves no veth or allocation."""
    node, _ = lab.node_with_underlay()
    mgr = flavour_setup(flavour, our_bin, tmp_path, subnet="10.244.9.0/30")
    p0, p1 = lab.netns("p0"), lab.netns("p1")
    in_netns(node, lambda: mgr.setup("c0", p0))
    with pytest.raises(CNIError) as err:
        in_netns(node, lambda: mgr.setup("c1", p1))
    assert "no IP addresses available" in str(err.value)
    if flavour == "ours":
        assert err.value.code == Code.RANGE_EXHAUSTED
        with pytest.raises(CNIError) as status:
            mgr.status()
        assert status.value.code == Code.NOT_AVAILABLE
    assert host_links(p1) == ["lo"]
    assert allocations(tmp_path / "ipam") == ["10.244.9.2"]
    assert len([n for n in host_links(node) if n.startswith("veth")]) == 1


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_nonexistent_netns(flavour: str, lab: Lab, our_bin: Path, tmp_path: Path) -> None:
    """ADD into a namespace path that does not exist fails (ours: code 3) and leaks nothing."""
    node, _ = lab.node_with_underlay()
    mgr = flavour_setup(flavour, our_bin, tmp_path, subnet="10.244.9.0/24")
    missing = f"/run/netns/{lab.prefix}-does-not-exist"
    with pytest.raises(CNIError) as err:
        in_netns(node, lambda: mgr.setup("c0", missing))
    if flavour == "ours":
        assert err.value.code == Code.UNKNOWN_CONTAINER and missing in str(err.value)
    assert allocations(tmp_path / "ipam") == []
    assert [n for n in host_links(node) if n.startswith("veth")] == []
    # DEL of that attachment still succeeds (best effort).
    in_netns(node, lambda: mgr.teardown("c0", missing))


def test_plugin_protocol_errors_on_stdout(our_bin: Path) -> None:
    """Run directly, a plugin prints the spec's error JSON: missing variables are code 4."""
    env = {"CNI_COMMAND": "ADD", "CNI_PATH": str(our_bin), "PATH": os.environ["PATH"]}
    proc = subprocess.run(
        [str(our_bin / "bridge")],
        input=b'{"cniVersion": "1.1.0", "name": "n"}',
        env=env,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 1
    err = json.loads(proc.stdout)
    assert err["code"] == Code.INVALID_ENVIRONMENT and "CNI_CONTAINERID" in err["msg"]
    version = subprocess.run(
        [str(our_bin / "host-local")],
        input=b'{"cniVersion": "1.1.0"}',
        env={**env, "CNI_COMMAND": "VERSION"},
        capture_output=True,
        check=True,
    )
    assert json.loads(version.stdout)["supportedVersions"] == [
        "0.3.0",
        "0.3.1",
        "0.4.0",
        "1.0.0",
        "1.1.0",
    ]
