"""Pure rules of volumes: the tmpfs size of a Memory emptyDir, fsGroup's OnRootMismatch check,
the emptyDir sizeLimit eviction message, and `du`-like usage."""

import os
import stat
from pathlib import Path

from kubelet_py.agent.eviction import over_limit
from kubelet_py.agent.model import Container, Pod
from kubelet_py.agent.volumes import (
    disk_usage_bytes,
    memory_volume_size,
    needs_ownership_change,
    set_volume_ownership,
)

MI = 1024 * 1024


def _pod(*limits: str | None) -> Pod:
    return Pod(
        uid="u", name="p", namespace="ns", node_name="n",
        containers=tuple(
            Container(name=f"c{i}", image="i", limits={"memory": m} if m else {})
            for i, m in enumerate(limits)
        ),
    )  # fmt: skip


def test_memory_volume_size_is_the_smallest_of_node_pod_and_volume() -> None:
    """node allocatable, lowered by the pod's memory limit, lowered by sizeLimit."""
    assert memory_volume_size(_pod(None), None, 1000 * MI) == 1000 * MI
    assert memory_volume_size(_pod("64Mi", "32Mi"), None, 1000 * MI) == 96 * MI
    assert memory_volume_size(_pod("64Mi", None), None, 1000 * MI) == 1000 * MI  # no pod limit
    assert memory_volume_size(_pod("64Mi"), "2Mi", 1000 * MI) == 2 * MI
    assert memory_volume_size(_pod("64Mi"), "2Gi", 1000 * MI) == 64 * MI  # sizeLimit too big


def test_on_root_mismatch_looks_at_the_root_only(tmp_path: Path) -> None:
    """A root with the group, its bits and setgid needs no change; otherwise it does."""
    gid = os.getgid()
    root = tmp_path / "vol"
    root.mkdir()
    root.chmod(0o777)
    assert needs_ownership_change(root, gid, read_only=False)  # no setgid yet
    assert set_volume_ownership(root, gid, read_only=False, policy="OnRootMismatch")
    assert root.stat().st_mode & stat.S_ISGID
    assert not needs_ownership_change(root, gid, read_only=False)
    (root / "f").write_text("x")
    (root / "f").chmod(0o600)
    assert not set_volume_ownership(root, gid, read_only=False, policy="OnRootMismatch")
    assert stat.S_IMODE((root / "f").stat().st_mode) == 0o600  # left alone
    assert set_volume_ownership(root, gid, read_only=False, policy="Always")
    assert stat.S_IMODE((root / "f").stat().st_mode) == 0o660  # group rw added
    assert needs_ownership_change(root, gid + 1, read_only=False)  # another group


def test_empty_dir_over_its_limit_gets_upstreams_message(tmp_path: Path) -> None:
    """Usage above sizeLimit names the volume and the limit as written; at or below, nothing."""
    dirs = [("a", tmp_path / "a", "1Mi"), ("b", tmp_path / "b", "1Ki")]
    usage = {tmp_path / "a": MI, tmp_path / "b": 2048}
    assert (
        over_limit(dirs, usage.__getitem__)
        == 'Usage of EmptyDir volume "b" exceeds the limit "1Ki". '
    )
    usage[tmp_path / "b"] = 1024
    assert over_limit(dirs, usage.__getitem__) is None


def test_disk_usage_counts_blocks_and_hard_links_once(tmp_path: Path) -> None:
    """Allocated blocks, like du: a hard link adds nothing, a sparse file little."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_bytes(b"x" * 100_000)
    os.link(tmp_path / "sub" / "f", tmp_path / "g")
    with (tmp_path / "sparse").open("wb") as f:
        f.truncate(50 * MI)
    used = disk_usage_bytes(tmp_path)
    assert 100_000 <= used < 200_000
