"""`kubelet-py node run --config`: the file's fields reach the agent, flags win over the file,
and an invalid file is refused with every problem named (before anything starts)."""

import argparse
import json
from pathlib import Path

import pytest

from kubelet_py import cli_node
from kubelet_py.agent.kubeletconfig import ConfigError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    cli_node.add_parser(commands)
    return parser.parse_args(["node", "run", "--node-name", "n1", "--node-ip", "10.0.0.1", *argv])


def test_file_fields_reach_the_agent_and_flags_win(tmp_path: Path) -> None:
    """maxPods/clusterDomain/port from the file; --cluster-domain and --port override it."""
    cfg = tmp_path / "kubelet.yaml"
    cfg.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "maxPods": 7, "clusterDomain": "file.local", "port": 11250, "staticPodPath": "/etc/m",
        "authentication": {"anonymous": {"enabled": True}},
    }))  # fmt: skip
    agent = cli_node.config_from_args(_args("--config", str(cfg)))
    assert agent.max_pods == 7 and agent.cluster_domain == "file.local"
    assert agent.kubelet_server.port == 11250 and agent.kubelet_server.anonymous_auth
    assert agent.static_pod_path == Path("/etc/m")
    flagged = cli_node.config_from_args(
        _args("--config", str(cfg), "--cluster-domain", "flag.local", "--port", "12250")
    )
    assert flagged.cluster_domain == "flag.local" and flagged.kubelet_server.port == 12250
    assert flagged.kubelet.to_v1beta1()["clusterDomain"] == "flag.local"  # /configz agrees


def test_invalid_file_is_refused(tmp_path: Path) -> None:
    """A bad value stops the agent with the file named and the rule broken."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: -3\n"
    )
    with pytest.raises(ConfigError, match=r"bad\.yaml: .*maxPods \(--max-pods\) -3 must not"):
        cli_node.config_from_args(_args("--config", str(cfg)))
