"""cgroup layout parsing and paths, state records, rootfs path resolution (no root needed)."""

import os
from pathlib import Path

import pytest

from cri.oci import cgroups, state
from cri.oci.errors import NotFoundError, UsageError
from cri.oci.rootfs import secure_join

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio,io rw,relatime - cgroup cgroup rw,blkio,clone_children
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 23 0:40 / /proc rw - proc proc rw
"""
UNIFIED = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
SELF = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n"


def test_parse_hybrid_mountinfo() -> None:
    """Every v1 hierarchy with its controllers, plus the hybrid cgroup2 mount."""
    hs = {h.mountpoint: h for h in cgroups.parse_mountinfo(HYBRID)}
    assert set(hs) == {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/memory",
                       "/sys/fs/cgroup/blkio,io", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/systemd",
                       "/sys/fs/cgroup/unified"}  # fmt: skip
    assert hs["/sys/fs/cgroup/blkio,io"].controllers == {"blkio"}
    assert hs["/sys/fs/cgroup/systemd"].controllers == {"name=systemd"}
    assert hs["/sys/fs/cgroup/unified"].version == 2
    assert not cgroups.unified_mode(list(hs.values()))


def test_absolute_path_is_used_in_every_hierarchy() -> None:
    """runc's cgroupfs semantics: one absolute path, under each mount."""
    hs = cgroups.parse_mountinfo(HYBRID)
    paths = cgroups.container_paths(hs, "/process_api/abc/kp/c1", "c1", cgroups.own_paths(SELF))
    assert paths["/sys/fs/cgroup/cpu"] == "/sys/fs/cgroup/cpu/process_api/abc/kp/c1"
    assert paths["/sys/fs/cgroup/unified"] == "/sys/fs/cgroup/unified/process_api/abc/kp/c1"
    assert len(paths) == 7


def test_relative_and_empty_paths_sit_beneath_our_own_cgroup() -> None:
    """A relative cgroupsPath (or none: the ID) goes under this process's cgroup per hierarchy."""
    hs = cgroups.parse_mountinfo(HYBRID)
    own = cgroups.own_paths(SELF)
    rel = cgroups.container_paths(hs, "kp/c1", "c1", own)
    assert rel["/sys/fs/cgroup/memory"] == "/sys/fs/cgroup/memory/process_api/abc/kp/c1"
    assert rel["/sys/fs/cgroup/cpu"] == "/sys/fs/cgroup/cpu/kp/c1"
    empty = cgroups.container_paths(hs, "", "c1", own)
    assert empty["/sys/fs/cgroup/memory"] == "/sys/fs/cgroup/memory/process_api/abc/c1"


def test_unified_mode() -> None:
    """On a cgroup2-only machine the one hierarchy is /sys/fs/cgroup itself."""
    hs = cgroups.parse_mountinfo(UNIFIED)
    assert cgroups.unified_mode(hs)
    paths = cgroups.container_paths(hs, "/kubelet.slice/c1", "c1", {})
    assert paths == {"/sys/fs/cgroup": "/sys/fs/cgroup/kubelet.slice/c1"}


def test_cgroup_record_round_trip_and_lookup() -> None:
    """The state.json form of a Cgroup comes back equal; lookups find controllers."""
    hs = cgroups.parse_mountinfo(HYBRID)
    paths = cgroups.container_paths(hs, "/x/c1", "c1", {})
    group = cgroups.Cgroup(hierarchies=hs, paths=paths, created=["/sys/fs/cgroup/cpu/x"])
    back = cgroups.Cgroup.from_json(group.to_json())
    assert back.paths == paths and back.created == group.created
    assert back.path_for("memory") == "/sys/fs/cgroup/memory/x/c1"
    assert back.procs_file() == "/sys/fs/cgroup/memory/x/c1/cgroup.procs"
    assert back.path_for("hugetlb") is None


def test_remove_takes_only_what_was_created(tmp_path: Path) -> None:
    """rmdir deepest first, only the recorded directories; a parent still in use stays."""
    (tmp_path / "pre" / "a" / "b").mkdir(parents=True)
    (tmp_path / "pre" / "a" / "sibling").mkdir()
    (tmp_path / "pre" / "other").mkdir()
    created = [str(tmp_path / "pre" / "a"), str(tmp_path / "pre" / "a" / "b")]
    group = cgroups.Cgroup(hierarchies=[], paths={}, created=created)
    left = cgroups.remove(group, wait_s=0)
    assert left == [str(tmp_path / "pre" / "a")]  # the sibling keeps it
    assert not (tmp_path / "pre" / "a" / "b").exists()
    assert (tmp_path / "pre" / "other").exists()


def test_state_round_trip_and_status(tmp_path: Path) -> None:
    """state.json is written atomically; status comes from /proc and start.sock."""
    root = str(tmp_path)
    os.mkdir(state.container_dir(root, "c1"))
    assert state.status(root, state.load(root, "c1")) == state.CREATING
    st = state.proc_stat(os.getpid())
    assert st is not None
    record = state.State(id="c1", pid=os.getpid(), starttime=st[1], bundle="/b", rootfs="/b/r",
                         created="now", annotations={"a": "b"}, cgroup={}, config={})  # fmt: skip
    from cri.oci import fastjson

    state.write_atomic(f"{root}/c1/state.json", fastjson.dumps(record.to_json()).encode())
    loaded = state.load(root, "c1")
    assert loaded is not None and loaded.to_json() == record.to_json()
    assert state.status(root, loaded) == state.RUNNING  # alive, no start.sock
    Path(root, "c1", "start.sock").touch()
    assert state.status(root, loaded) == state.CREATED
    loaded.starttime += 1  # a reused PID is not our init
    assert state.status(root, loaded) == state.STOPPED
    with pytest.raises(NotFoundError, match="does not exist"):
        state.load(root, "c2")


@pytest.mark.parametrize("bad", ["", "..", "a/b", "a b", "x" * 1025, "é"])
def test_container_ids_are_checked(bad: str) -> None:
    """IDs become directory names: no separators, no dots-only, bounded."""
    with pytest.raises(UsageError):
        state.check_id(bad)


def test_secure_join_stays_inside_the_root(tmp_path: Path) -> None:
    """Absolute and ../ symlinks in the image resolve inside the rootfs, never above it."""
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "usr" / "lib").mkdir(parents=True)
    os.symlink("/usr/lib", root / "lib")
    os.symlink("../../../../../../etc", root / "usr" / "escape")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    r = str(root)
    assert secure_join(r, "/lib/x") == f"{r}/usr/lib/x"
    assert secure_join(r, "/usr/escape/passwd") == f"{r}/etc/passwd"
    assert secure_join(r, "/../../etc/hosts") == f"{r}/etc/hosts"
    assert secure_join(r, "/new/dir") == f"{r}/new/dir"
    with pytest.raises(OSError, match="Too many levels"):
        secure_join(r, "/loop1/x")
