"""The CRI runtime on the real kernel, driven by crictl: lifecycle, isolation, limits, restarts."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.runtime.conftest import CGROUP_PARENT, CRI, NONROOT_IMAGE, start_server

SLEEPER = ["sh", "-c", "echo started; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done"]


def _mounts_under(path: Path) -> list[str]:
    return [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(str(path))
    ]


def _cgroup_dirs(name: str = CGROUP_PARENT) -> list[str]:
    return [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/**/{name}")]


def test_crictl_lifecycle_leaves_nothing_behind(cri: CRI) -> None:
    """runp, create, start, ps, logs, exec, stats, stop, rm, stopp, rmp; nothing is left."""
    pod_id, ctr_id = cri.run_container("life", "main", SLEEPER)
    status = cri.wait_state(ctr_id, "CONTAINER_RUNNING")
    assert status["startedAt"]
    assert [c["id"] for c in json.loads(cri.crictl("ps", "-o", "json"))["containers"]] == [ctr_id]
    time.sleep(0.3)
    assert "started" in cri.crictl("logs", ctr_id)
    log_file = Path(str(status["logPath"]))
    first = log_file.read_text().splitlines()[0].split(" ", 3)
    assert first[1] == "stdout" and first[2] == "F" and first[3] == "started"  # CRI log format
    out = cri.crictl(
        "exec", "--sync", ctr_id, "sh", "-c", "echo out; echo err >&2; exit 3", check=False
    )
    assert "out" in out and "err" in out
    stats = json.loads(cri.crictl("stats", "-o", "json", ctr_id))["stats"][0]
    assert int(stats["memory"]["workingSetBytes"]["value"]) > 0
    cri.crictl("stop", "--timeout", "10", ctr_id)
    stopped = cri.wait_state(ctr_id, "CONTAINER_EXITED")
    assert stopped["exitCode"] == 0 and stopped["reason"] == "Completed"  # our trap ran
    assert "bye" in log_file.read_text()
    cri.crictl("rm", ctr_id)
    cri.crictl("stopp", pod_id)
    cri.crictl("rmp", pod_id)
    assert cri.crictl("pods", "-q").strip() == ""
    assert _mounts_under(cri.root) == []
    assert list((cri.root / "runtime" / "containers").iterdir()) == []
    assert list((cri.root / "runtime" / "sandboxes").iterdir()) == []


def test_exec_sync_exit_code_and_output(cri: CRI) -> None:
    """ExecSync returns the command's exit code and both streams."""
    _, ctr_id = cri.run_container("execs", "main", SLEEPER)
    out = cri.crictl("exec", "--sync", ctr_id, "sh", "-c", "exit 7", check=False)
    assert "exit status 7" in out or "code 7" in out or "7" in out


def test_container_sees_only_its_own_world(cri: CRI) -> None:
    """Own PID namespace, the pod's hostname, its own rootfs, and the default masked paths."""
    _, ctr_id = cri.run_container("isolated", "main", SLEEPER)
    ps = cri.crictl("exec", "--sync", ctr_id, "busybox", "ps", "-o", "pid,comm")
    pids = [line.split()[0] for line in ps.splitlines()[1:] if line.strip()]
    assert pids[0] == "1" and len(pids) <= 4, ps  # sh, sleep, ps: nothing of the host
    assert cri.crictl("exec", "--sync", ctr_id, "busybox", "hostname").strip() == "isolated"
    missing = cri.crictl("exec", "--sync", ctr_id, "ls", "/work", check=False)
    assert "No such file" in missing
    # /proc/timer_list is masked (bind-mounted /dev/null): it reads as empty.
    masked = cri.crictl("exec", "--sync", ctr_id, "sh", "-c", "busybox wc -c < /proc/timer_list")
    assert masked.strip().splitlines()[0] == "0"
    assert Path("/proc/timer_list").read_text()  # while the host's is not


def test_readonly_rootfs_and_dropped_capability(cri: CRI) -> None:
    """A read-only rootfs refuses writes; a dropped CAP_CHOWN makes chown fail."""
    _, ctr_id = cri.run_container(
        "locked", "main", SLEEPER,
        linux={"security_context": {"readonly_rootfs": True,
                                    "capabilities": {"drop_capabilities": ["CHOWN"]}}},
    )  # fmt: skip
    out = cri.crictl("exec", "--sync", ctr_id, "sh", "-c", "busybox touch /x", check=False)
    assert "Read-only file system" in out
    out = cri.crictl(
        "exec", "--sync", ctr_id, "sh", "-c", "busybox chown 1000 /dev/shm", check=False
    )
    assert "Operation not permitted" in out
    # the container's own process (PID 1 may be the pod init: crictl pods share a PID namespace)
    caps = cri.crictl("exec", "--sync", ctr_id, "busybox", "grep", "CapBnd", "/proc/self/status")
    assert int(caps.split()[1], 16) & (1 << 0) == 0  # CAP_CHOWN is bit 0


def test_image_user_is_used(cri: CRI) -> None:
    """USER app from the image runs the process as uid 1000 with the image's groups."""
    pod_cfg = cri.pod_config("users")
    pod_id = cri.crictl("runp", str(pod_cfg)).strip()
    cfg = cri.container_config("main", ["sh", "-c", "id; sleep 30"])
    doc = json.loads(cfg.read_text())
    doc["image"] = {"image": NONROOT_IMAGE}
    doc["linux"] = {"security_context": {"run_as_username": "app"}}
    cfg.write_text(json.dumps(doc))
    ctr_id = cri.crictl("create", pod_id, str(cfg), str(pod_cfg)).strip()
    cri.crictl("start", ctr_id)
    assert "uid=1000(app) gid=1000(app)" in cri.crictl("exec", "--sync", ctr_id, "id")


def test_seccomp_runtime_default_and_localhost(cri: CRI, tmp_path: Path) -> None:
    """RuntimeDefault denies unshare with EPERM; a Localhost profile denying mkdir applies."""
    _, ctr_id = cri.run_container(
        "secdef", "main", SLEEPER,
        linux={"security_context": {"seccomp": {"profile_type": 0},
                                    "capabilities": {"add_capabilities": ["SYS_ADMIN"]}}},
    )  # fmt: skip
    out = cri.crictl("exec", "--sync", ctr_id, "busybox", "unshare", "-U", "true", check=False)
    assert "Operation not permitted" in out
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }))  # fmt: skip
    _, ctr2 = cri.run_container(
        "seclocal",
        "main",
        SLEEPER,
        linux={"security_context": {"seccomp": {"profile_type": 2, "localhost_ref": str(profile)}}},
    )
    out = cri.crictl("exec", "--sync", ctr2, "busybox", "mkdir", "/d", check=False)
    assert "Operation not permitted" in out


def test_oom_kill_is_reported(cri: CRI) -> None:
    """A container over its memory limit is killed: exit 137, reason OOMKilled."""
    _, ctr_id = cri.run_container(
        "oom",
        "main",
        ["sh", "-c", "x=$(busybox head -c 200000000 /dev/zero | busybox tr '\\0' a); sleep 5"],
        linux={"resources": {"memory_limit_in_bytes": 32 * 1024 * 1024}},
    )
    status = cri.wait_state(ctr_id, "CONTAINER_EXITED", timeout_s=60)
    assert status["reason"] == "OOMKilled", status
    assert status["exitCode"] == 137


def test_cpu_quota_throttles(cri: CRI) -> None:
    """With a 10% CPU quota a busy loop is throttled and uses about a tenth of a core."""
    _, ctr_id = cri.run_container(
        "cpu",
        "main",
        ["sh", "-c", "while :; do :; done"],
        linux={"resources": {"cpu_quota": 10000, "cpu_period": 100000}},
    )
    first = json.loads(cri.crictl("stats", "-o", "json", ctr_id))["stats"][0]
    time.sleep(2.0)
    second = json.loads(cri.crictl("stats", "-o", "json", ctr_id))["stats"][0]
    used_ns = int(second["cpu"]["usageCoreNanoSeconds"]["value"]) - int(
        first["cpu"]["usageCoreNanoSeconds"]["value"]
    )
    wall_ns = int(second["cpu"]["timestamp"]) - int(first["cpu"]["timestamp"])
    share = used_ns / wall_ns
    assert 0.05 < share < 0.15, f"used {share:.2f} of a core"
    cgroup = next(Path("/sys/fs/cgroup/cpu").glob(f"**/{ctr_id}"))
    assert (
        int(
            dict(line.split() for line in (cgroup / "cpu.stat").read_text().splitlines())[
                "nr_throttled"
            ]
        )
        > 0
    )


def test_runtime_killed_and_restarted(cri: CRI) -> None:
    """After SIGKILL of the runtime, containers run on, are listed once, and exits are reported."""
    _, keeps = cri.run_container(
        "survive",
        "main",
        ["sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"],
    )
    _, ends = cri.run_container("ender", "main", ["sh", "-c", "sleep 1.5; exit 42"])
    os.kill(cri.proc.pid, signal.SIGKILL)
    cri.proc.wait()
    time.sleep(2.5)  # `ends` exits while no runtime is up
    cri.socket.unlink(missing_ok=True)
    cri.proc = start_server(cri.root, cri.socket, cri.log_path, cri.oci_runtime, cri.monitor)
    listed = [c["id"] for c in json.loads(cri.crictl("ps", "-a", "-o", "json"))["containers"]]
    assert sorted(listed) == sorted([keeps, ends])
    assert cri.inspect(keeps)["status"]["state"] == "CONTAINER_RUNNING"  # type: ignore[index]
    ended = cri.wait_state(ends, "CONTAINER_EXITED")
    assert ended["exitCode"] == 42 and ended["reason"] == "Error"
    lines = [
        int(line.rsplit(" ", 1)[1])
        for line in cri.crictl("logs", keeps).splitlines()
        if line.startswith("line")
    ]
    assert lines == list(range(len(lines))) and len(lines) >= 12  # no gap while we were down


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"image": {"image": "example.com/nope:missing"}}, "not present"),
        (
            {"mounts": [{"container_path": "/data", "host_path": "/nonexistent/kpy"}]},
            "does not exist",
        ),
        (
            {
                "linux": {
                    "security_context": {
                        "seccomp": {"profile_type": 2, "localhost_ref": "/nonexistent.json"}
                    }
                }
            },
            "seccomp profile",
        ),
    ],
    ids=["unknown-image", "missing-mount-source", "missing-seccomp-profile"],
)
def test_bad_create_requests_fail_clearly_and_leave_nothing(
    cri: CRI, change: dict[str, object], expect: str
) -> None:
    """A bad CreateContainer is a gRPC error that says what is wrong; nothing is half-made."""
    pod_cfg = cri.pod_config("bad")
    pod_id = cri.crictl("runp", str(pod_cfg)).strip()
    cfg = cri.container_config("main", ["true"], **change)
    out = cri.crictl("create", pod_id, str(cfg), str(pod_cfg), check=False)
    assert expect in out
    assert list((cri.root / "runtime" / "containers").iterdir()) == []
    assert not [m for m in _mounts_under(cri.root / "runtime" / "containers")]


def test_name_conflict_is_already_exists(cri: CRI) -> None:
    """A second sandbox or container with the same name/attempt is refused."""
    pod_cfg = cri.pod_config("dup")
    pod_id = cri.crictl("runp", str(pod_cfg)).strip()
    assert "already exists" in cri.crictl("runp", str(pod_cfg), check=False)
    cfg = cri.container_config("main", SLEEPER)
    cri.crictl("create", pod_id, str(cfg), str(pod_cfg))
    assert "AlreadyExists" in cri.crictl("create", pod_id, str(cfg), str(pod_cfg), check=False)


def test_unimplemented_calls_say_so(cri: CRI) -> None:
    """An optional call we lack (CheckpointContainer) answers UNIMPLEMENTED; the server lives on."""
    _, ctr_id = cri.run_container("unimpl", "main", SLEEPER)
    out = cri.crictl("checkpoint", "--export", str(cri.work / "ckpt.tar"), ctr_id, check=False)
    assert "Unimplemented" in out or "UNIMPLEMENTED" in out.upper(), out
    assert cri.crictl("version")  # still serving


def test_update_container_resources(cri: CRI) -> None:
    """`crictl update` changes a running container's memory limit and CPU quota in its cgroup."""
    _, ctr_id = cri.run_container(
        "upd", "main", SLEEPER, linux={"resources": {"memory_limit_in_bytes": 64 * 1024 * 1024}}
    )
    cri.crictl(
        "update",
        "--memory",
        str(96 * 1024 * 1024),
        "--cpu-quota",
        "20000",
        "--cpu-period",
        "100000",
        ctr_id,
    )
    mem = next(Path("/sys/fs/cgroup/memory").glob(f"**/{ctr_id}"))
    cpu = next(Path("/sys/fs/cgroup/cpu").glob(f"**/{ctr_id}"))
    assert int((mem / "memory.limit_in_bytes").read_text()) == 96 * 1024 * 1024
    assert int((cpu / "cpu.cfs_quota_us").read_text()) == 20000


def test_reopen_container_log_after_rotation(cri: CRI) -> None:
    """ReopenContainerLog makes conmon write to a fresh file after the old one was moved away."""
    _, ctr_id = cri.run_container(
        "rotate", "main", ["sh", "-c", "i=0; while true; do echo n $i; i=$((i+1)); sleep 0.1; done"]
    )
    log = Path(str(cri.wait_state(ctr_id, "CONTAINER_RUNNING")["logPath"]))
    time.sleep(0.5)
    rotated = log.with_suffix(".log.1")
    log.rename(rotated)
    cri.crictl("logs", "--reopen", ctr_id, check=False)
    time.sleep(0.5)
    assert log.exists() and "stdout F n " in log.read_text()
    assert "stdout F n " in rotated.read_text()
