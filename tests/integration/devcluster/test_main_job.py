"""The README's main job works: a cluster, a kubelet-py node, and the examples running."""

import subprocess


def test_cluster_up_with_a_node_runs_the_examples(require_root: None) -> None:
    """`kubelet-py cluster up --node --check` shows node1 Ready and every example pod Running."""
    out = subprocess.run(
        ["python3", "-m", "kubelet_py", "cluster", "up", "--node", "--check"],
        capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    node = next(line for line in lines if line.startswith("node1 "))
    assert " Ready " in node and "kubelet-py://" in node
    pods = [line for line in lines if line.startswith("default ")]
    assert any("web-node1" in p for p in pods)
    assert sum("hello-" in p for p in pods) == 2
    assert all("Running" in p and " 1/1 " in p for p in pods), "\n".join(pods)
