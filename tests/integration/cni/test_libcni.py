"""Our plugins under the reference caller: libcni, through its cnitool (built from Go modules).

cnitool v1.3.1 is built once with `go install` into ~/.cache/kubelet-py (from the
Go module proxy) and runs in the node namespace. libcni keeps its result cache
in /var/lib/cni whatever we say, so each cnitool runs in a private mount
namespace whose /var/lib is a tmpfs with the test's own cache directory bound at
/var/lib/cni: the machine's /var/lib is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cni.cache import ResultCache
from tests.integration.cni.conftest import (
    NODE_IP,
    Lab,
    allocations,
    chain,
    host_links,
    tcp_echo,
    tcp_talk,
)

CNITOOL_VERSION = "v1.3.1"
CNITOOL = Path.home() / ".cache" / "kubelet-py" / f"cnitool-{CNITOOL_VERSION}" / "cnitool"


@pytest.fixture(scope="session")
def cnitool() -> Path:
    """libcni's cnitool, built from github.com/containernetworking/cni at a pinned version."""
    if not CNITOOL.exists():
        env = {**os.environ, "GOBIN": str(CNITOOL.parent), "GOFLAGS": "-mod=mod"}
        CNITOOL.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["go", "install", f"github.com/containernetworking/cni/cnitool@{CNITOOL_VERSION}"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        if proc.returncode != 0 or not CNITOOL.exists():
            pytest.fail(f"cannot build cnitool {CNITOOL_VERSION}: {proc.stderr[-2000:]}")
    return CNITOOL


class Tool:
    """cnitool in the node namespace with a private /var/lib/cni."""

    def __init__(self, tool: Path, node: str, conf_dir: Path, bin_dir: Path, cache: Path) -> None:
        self.tool, self.node, self.conf_dir, self.bin_dir, self.cache = (
            tool,
            node,
            conf_dir,
            bin_dir,
            cache,
        )
        cache.mkdir(parents=True, exist_ok=True)

    def __call__(
        self, *args: str, cap_args: dict[str, object] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        script = (
            'mount -t tmpfs kpycni /var/lib && mkdir /var/lib/cni && mount --bind "$KPY_CACHE" '
            '/var/lib/cni && exec nsenter --net="$KPY_NODE" -- "$@"'
        )
        env = {
            "PATH": os.environ["PATH"],
            "KPY_CACHE": str(self.cache),
            "KPY_NODE": self.node,
            "NETCONFPATH": str(self.conf_dir),
            "CNI_PATH": str(self.bin_dir),
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
        }
        if cap_args is not None:
            env["CAP_ARGS"] = json.dumps(cap_args)
        proc = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
                str(self.tool),
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"cnitool {' '.join(args)} failed: {proc.stdout} {proc.stderr}")
        return proc


def test_our_plugins_under_libcni(lab: Lab, our_bin: Path, tmp_path: Path, cnitool: Path) -> None:
    """libcni drives our chain: ADD with a hostPort, CHECK, STATUS, DEL; nothing is left."""
    node, peer = lab.node_with_underlay()
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    conf = chain("kpynet", subnet="10.244.11.0/24", data_dir=tmp_path / "ipam")
    (conf_dir / "10-kpynet.conflist").write_text(json.dumps(conf))
    tool = Tool(cnitool, node, conf_dir, our_bin, tmp_path / "libcni-cache")
    pods = [lab.netns("p0"), lab.netns("p1")]
    caps = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    results = [
        json.loads(tool("add", "kpynet", p, cap_args=caps if i == 0 else None).stdout)
        for i, p in enumerate(pods)
    ]
    ips = [r["ips"][0]["address"].split("/")[0] for r in results]
    assert results[0]["cniVersion"] == "1.1.0" and results[0]["interfaces"][2]["sandbox"] == pods[0]
    assert lab.ping(pods[0], ips[1])
    with tcp_echo(pods[0], 80):
        assert tcp_talk(peer, NODE_IP, 8080) == b"echo:hi"
    for i, p in enumerate(pods):
        tool("check", "kpynet", p, cap_args=caps if i == 0 else None)
    tool("status", "kpynet", pods[0])
    # libcni cached the results where we put its cache, in the format our caller keeps too.
    cached = ResultCache(tmp_path / "libcni-cache").attachments("kpynet")
    assert sorted(c.netns for c in cached) == sorted(pods)
    assert sorted(c.result["ips"][0]["address"].split("/")[0] for c in cached) == sorted(ips)
    assert all(c.ifname == "eth0" and c.container_id.startswith("cnitool-") for c in cached)
    for i, p in enumerate(pods):
        tool("del", "kpynet", p, cap_args=caps if i == 0 else None)
        tool("del", "kpynet", p)  # DEL again, without a cached result: idempotent
    assert allocations(tmp_path / "ipam") == []
    assert [n for n in host_links(node) if n.startswith("veth")] == []
    ruleset = lab.run(node, "nft", "list", "ruleset").stdout
    assert all(f"{ip} " not in ruleset for ip in ips)


def test_libcni_gc_releases_leftovers(
    lab: Lab, our_bin: Path, tmp_path: Path, cnitool: Path
) -> None:
    """cnitool gc (no valid attachments) DELs cached attachments and GCs our plugins."""
    node, _ = lab.node_with_underlay()
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    conf = chain("kpynet", subnet="10.244.12.0/24", data_dir=tmp_path / "ipam")
    (conf_dir / "10-kpynet.conflist").write_text(json.dumps(conf))
    tool = Tool(cnitool, node, conf_dir, our_bin, tmp_path / "libcni-cache")
    pod = lab.netns("p0")
    tool("add", "kpynet", pod)
    assert len(allocations(tmp_path / "ipam")) == 1
    tool("gc", "kpynet", pod)
    assert allocations(tmp_path / "ipam") == []
    assert host_links(pod) == ["lo"]
