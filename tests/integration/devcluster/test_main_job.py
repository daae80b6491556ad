"""The README's main job works: a cluster, two nodes joined by token, every example doing its job.

`kubelet-py cluster up --node --check` is the demo with `wait` replaced by checks made
from the lab underlay: the static pod and the webapp answer over HTTP on the nodes'
addresses (hostNetwork and hostPort through CNI's portmap), the Job completes with the
right output, the S3-volume pod's file lands in a bucket of the real S3 server. The
standalone mode serves the static pod with no API server at all.
"""

import subprocess


def _run(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["python3", "-m", "kubelet_py", *args],
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip


def test_cluster_up_with_nodes_runs_every_example(require_root: None) -> None:
    """Both nodes join and are Ready; web, webapp (each node), the Job and the S3 pod work."""
    out = _run("cluster", "up", "--node", "--check", timeout_s=500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    checks = [line for line in out.stdout.splitlines() if line.startswith(("ok: ", "FAILED: "))]
    assert not [c for c in checks if c.startswith("FAILED")], "\n".join(checks)
    wanted = [
        "node1 Ready", "node2 Ready", "static pod web answers on node1:18080",
        "webapp answers on node1:30080", "webapp answers on node2:30080", "job sum completed",
        "s3-writer's file is in the bucket",
    ]  # fmt: skip
    for what in wanted:
        assert any(c.startswith(f"ok: {what}") for c in checks), f"{what}: {checks}"
    assert "sum of 1..1000 = 500500" in out.stdout
    nodes = [line for line in out.stdout.splitlines() if line.startswith("node")]
    assert all(" Ready " in n and "kubelet-py://" in n for n in nodes[:2]), nodes


def test_standalone_node_serves_the_static_pod(require_root: None) -> None:
    """With no cluster at all, a node runs manifests/static and its page answers."""
    out = _run("demo-standalone", "--check", timeout_s=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "hello from a kubelet-py static pod" in out.stdout
