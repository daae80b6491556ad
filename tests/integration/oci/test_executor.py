"""kubelet-py-oci on the real kernel: isolation, privileges, limits, lifecycle, errors."""

import json
import os
import subprocess
from pathlib import Path

from tests.integration.oci.conftest import OCI, hierarchies, pid_alive

SLEEP = ["sleep", "30"]


def _status_field(text: str, name: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.splitlines()
                if line.startswith(name + ":"))  # fmt: skip


def test_lifecycle_pid1_hostname_and_exit_code(oci: OCI) -> None:
    """created → running → stopped; PID 1 of its own namespace; the exit code reaches the reaper."""
    spec = oci.spec("life", ["sh", "-c", "echo pid=$$; hostname; sleep 0.3; exit 42"])
    ctr = oci.create("life", spec)
    assert ctr.pid > 0, ctr.first_line
    st = oci.state("life")
    assert st["status"] == "created" and st["pid"] == ctr.pid
    assert st["ociVersion"] and st["bundle"].endswith("bundle-life")
    oci.run("start", "life")
    assert oci.state("life")["status"] == "running"
    assert ctr.exit_code() == 42
    oci.wait_status("life", "stopped")
    assert oci.state("life")["pid"] == 0
    assert ctr.output().split() == ["pid=1", "ctr-life"]
    oci.run("delete", "life")
    assert "does not exist" in oci.run("state", "life", check=False).stderr


def test_mounts_readonly_root_masked_and_readonly_paths(oci: OCI) -> None:
    """The spec's mounts are there; / is read-only; masked paths read empty; /proc/sys is ro."""
    script = (
        "cat /proc/self/mountinfo; echo ---; touch /x 2>&1; touch /tmp/ok 2>&1 || true; "
        "echo kcore=$(cat /proc/kcore | wc -c); echo acpi=$(ls /proc/acpi | wc -l); "
        "echo 1 > /proc/sys/kernel/ns_last_pid 2>&1; ls /sys/fs/cgroup; ls -l /dev/ptmx /dev/fd"
    )
    spec = oci.spec("mnt", ["sh", "-c", script], root={"path": str(oci.rootfs), "readonly": True})
    spec["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                           "options": ["nosuid", "nodev", "mode=1777"]})  # fmt: skip
    ctr = oci.create("mnt", spec)
    oci.run("start", "mnt")
    assert ctr.exit_code() == 0
    out = ctr.output()
    mountinfo, _, rest = out.partition("---")
    points = {line.split()[4]: line for line in mountinfo.splitlines()}
    wanted = ("/", "/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup",
              "/sys/fs/cgroup/memory", "/dev/shm", "/dev/null", "/proc/sys", "/tmp")  # fmt: skip
    for dest in wanted:
        assert dest in points, f"{dest} not mounted:\n{mountinfo}"
    assert " ro," in points["/"] or " ro " in points["/"]
    assert " ro" in points["/sys"] and " ro" in points["/proc/sys"]
    assert "Read-only file system" in rest  # touch /x
    assert "kcore=0" in rest and "acpi=0" in rest
    assert "memory" in rest and "cpu" in rest  # per-hierarchy cgroup binds
    assert "/dev/ptmx -> pts/ptmx" in rest and "/dev/fd -> /proc/self/fd" in rest
    assert Path("/proc/timer_list").read_text()  # the host's is untouched


def test_dropped_caps_no_new_privs_and_user(oci: OCI) -> None:
    """uid/gid/groups, a bounding set of CAP_KILL only, and NoNewPrivs are what PID 1 has."""
    spec = oci.spec("caps", ["sh", "-c", "cat /proc/1/status; id; chown 0 /tmp 2>&1; true"])
    spec["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [2000, 3000]}
    spec["process"]["capabilities"] = {k: ["CAP_KILL"] for k in ("bounding", "effective",
                                                                  "permitted")}  # fmt: skip
    spec["process"]["noNewPrivileges"] = True
    ctr = oci.create("caps", spec)
    oci.run("start", "caps")
    assert ctr.exit_code() == 0
    out = ctr.output()
    assert int(_status_field(out, "CapBnd"), 16) == 1 << 5  # CAP_KILL only
    assert int(_status_field(out, "CapEff"), 16) == 0  # a non-root uid: no effective caps
    assert _status_field(out, "NoNewPrivs") == "1"
    assert _status_field(out, "Uid").split()[0] == "1000"
    assert _status_field(out, "Gid").split()[0] == "1000"
    assert _status_field(out, "Groups").split() == ["2000", "3000"]
    assert "uid=1000(app) gid=1000(app)" in out
    assert "Operation not permitted" in out


def test_root_keeps_only_its_bounding_set(oci: OCI) -> None:
    """Root with the default set lacks CAP_SYS_ADMIN: mount fails inside."""
    ctr = oci.create("rootcaps", oci.spec("rootcaps", ["sh", "-c",
                     "grep CapEff /proc/1/status; mount -t tmpfs t /tmp 2>&1; true"]))  # fmt: skip
    oci.run("start", "rootcaps")
    assert ctr.exit_code() == 0
    out = ctr.output()
    eff = int(_status_field(out, "CapEff"), 16)
    assert eff & (1 << 0) and not eff & (1 << 21)  # CHOWN yes, SYS_ADMIN no
    assert "permission denied" in out.lower() or "Operation not permitted" in out


def test_seccomp_denies_with_eperm(oci: OCI) -> None:
    """A profile denying mkdir/mkdirat and unshare makes them fail with EPERM; others work."""
    spec = oci.spec("sec", ["sh", "-c", "mkdir /tmp/d 2>&1; unshare -U true 2>&1; "
                                        "grep Seccomp: /proc/1/status; echo done"])  # fmt: skip
    spec["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["mkdir", "mkdirat", "unshare"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 1}],
    }  # fmt: skip
    ctr = oci.create("sec", spec)
    oci.run("start", "sec")
    assert ctr.exit_code() == 0
    out = ctr.output()
    assert out.count("Operation not permitted") == 2, out
    assert "Seccomp:\t2" in out and "done" in out


def test_memory_limit_oom_kills(oci: OCI) -> None:
    """Over its memory.limit_in_bytes the container is OOM-killed (SIGKILL: 137)."""
    spec = oci.spec("oom", ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); sleep 5"])
    spec["linux"]["resources"]["memory"] = {"limit": 24 * 1024 * 1024}
    ctr = oci.create("oom", spec)
    memory = next(h for h in hierarchies() if h.name == "memory")
    cg = memory / oci.cgroups.path("oom").strip("/")
    assert int((cg / "memory.limit_in_bytes").read_text()) == 24 * 1024 * 1024
    oci.run("start", "oom")
    assert ctr.exit_code(timeout_s=60) == 137
    oom_kills = dict(line.split() for line in (cg / "memory.oom_control").read_text().splitlines())
    assert int(oom_kills["oom_kill"]) >= 1


def test_cgroup_membership_and_limits(oci: OCI) -> None:
    """The init is in cgroupsPath in every hierarchy; limits go to the leaf; update changes them."""
    spec = oci.spec("limits", SLEEP)
    spec["linux"]["resources"].update(
        {"cpu": {"shares": 256, "quota": 20000, "period": 100000}, "pids": {"limit": 50}}
    )
    ctr = oci.create("limits", spec)
    path = oci.cgroups.path("limits")
    lines = Path(f"/proc/{ctr.pid}/cgroup").read_text().splitlines()
    assert len(lines) == len(hierarchies())
    assert all(line.split(":", 2)[2] == path for line in lines), lines
    by_name = {h.name: h / path.strip("/") for h in hierarchies()}
    assert (by_name["cpu"] / "cpu.shares").read_text().strip() == "256"
    assert (by_name["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "20000"
    assert (by_name["pids"] / "pids.max").read_text().strip() == "50"
    assert "c 1:3 rwm" in (by_name["devices"] / "devices.list").read_text()
    # update: JSON on stdin (as the runtime service sends it) and runc's flags
    subprocess.run([oci.cli, f"--root={oci.root}", "update", "--resources", "-", "limits"],
                   input=b'{"memory": {"limit": 50331648}, "cpu": {"quota": 30000}}',
                   check=True)  # fmt: skip
    oci.run("update", "--pids-limit", "70", "limits")
    assert (by_name["memory"] / "memory.limit_in_bytes").read_text().strip() == "50331648"
    assert (by_name["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "30000"
    assert (by_name["pids"] / "pids.max").read_text().strip() == "70"
    oci.run("delete", "limits")  # a created container may be deleted: its init is killed
    ctr.exit_code()
    assert not by_name["cpu"].exists()


def test_exec_sync_and_detached(oci: OCI, tmp_path: Path) -> None:
    """exec joins the namespaces, returns output and exit code; --detach writes a pid file."""
    ctr = oci.create("ex", oci.spec("ex", SLEEP))
    oci.run("start", "ex")
    script = "echo $X $(pwd) $(hostname) $$; exit 7"
    res = oci.run("exec", "--env", "X=1", "--cwd", "/tmp", "ex", "sh", "-c", script, check=False)
    assert res.returncode == 7, res.stderr
    first = res.stdout.split()
    assert first[:3] == ["1", "/tmp", "ctr-ex"] and first[3] != "1"
    user = oci.run("exec", "--user", "1000:1000", "ex", "id")
    assert "uid=1000(app)" in user.stdout
    proc_file = tmp_path / "process.json"
    proc_file.write_text(json.dumps({"args": ["sleep", "5"], "cwd": "/", "env": ["PATH=/bin"],
                                     "user": {"uid": 0, "gid": 0}}))  # fmt: skip
    # A detached process keeps its stdio: hand it none we would wait on for EOF.
    subprocess.run([oci.cli, f"--root={oci.root}", "exec", "--pid-file", str(tmp_path / "exec.pid"),
                    "--process", str(proc_file), "--detach", "ex"],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)  # fmt: skip
    exec_pid = int((tmp_path / "exec.pid").read_text())
    assert pid_alive(exec_pid)
    assert os.readlink(f"/proc/{exec_pid}/ns/pid") == os.readlink(f"/proc/{ctr.pid}/ns/pid")
    assert os.readlink(f"/proc/{exec_pid}/ns/mnt") == os.readlink(f"/proc/{ctr.pid}/ns/mnt")
    missing = oci.run("exec", "ex", "no-such-tool", check=False)
    assert missing.returncode != 0 and "executable file not found" in missing.stderr
    oci.run("kill", "--all", "ex", "KILL")
    assert ctr.exit_code() == 137


def test_delete_refuses_running_unless_forced(oci: OCI) -> None:
    """delete of a running container fails; kill and delete --force work."""
    ctr = oci.create("del", oci.spec("del", SLEEP))
    oci.run("start", "del")
    refused = oci.run("delete", "del", check=False)
    assert refused.returncode == 1 and "not stopped: running" in refused.stderr
    assert "cannot start a container that is running" in oci.run("start", "del", check=False).stderr
    oci.run("delete", "--force", "del")
    assert ctr.exit_code() == 137
    assert not pid_alive(ctr.pid)


def test_failed_create_names_step_and_leaves_nothing(oci: OCI) -> None:
    """A failing step (bind source missing; unknown executable) → one line, nothing left."""
    spec = oci.spec("bad", SLEEP)
    spec["mounts"].append({"destination": "/data", "type": "bind", "source": "/no/such/dir",
                           "options": ["rbind", "ro"]})  # fmt: skip
    ctr = oci.create("bad", spec)
    assert ctr.first_line.startswith("failed 1 kubelet-py-oci: container bad: "), ctr.first_line
    assert "bind mount source /no/such/dir for /data: No such file or directory" in ctr.first_line
    assert "\n" not in ctr.first_line
    ctr2 = oci.create("noexe", oci.spec("noexe", ["no-such-binary"]))
    assert 'find executable: exec: "no-such-binary": executable file not found' in ctr2.first_line
    for name in ("bad", "noexe"):
        assert "does not exist" in oci.run("state", name, check=False).stderr
    assert oci.cgroups.leftovers() == []
    oci.ids.clear()


def test_joins_namespaces_by_path(oci: OCI, tmp_path: Path) -> None:
    """network/uts/ipc given by path are joined (pinned with unshare, as sandboxes do)."""
    ns = tmp_path / "ns"
    ns.mkdir()
    for kind in ("net", "uts", "ipc"):
        (ns / kind).touch()
    subprocess.run(["unshare", f"--net={ns}/net", f"--uts={ns}/uts", f"--ipc={ns}/ipc", "true"],
                   check=True)  # fmt: skip
    try:
        spec = oci.spec("join", SLEEP)
        spec["linux"]["namespaces"] = [
            {"type": "mount"}, {"type": "pid"}, {"type": "network", "path": f"{ns}/net"},
            {"type": "uts", "path": f"{ns}/uts"}, {"type": "ipc", "path": f"{ns}/ipc"},
        ]  # fmt: skip
        ctr = oci.create("join", spec)
        assert ctr.pid, ctr.first_line
        for kind in ("net", "uts", "ipc"):
            assert os.stat(f"/proc/{ctr.pid}/ns/{kind}").st_ino == os.stat(ns / kind).st_ino
        oci.run("delete", "join")
        ctr.exit_code()
    finally:
        for kind in ("net", "uts", "ipc"):
            subprocess.run(["umount", str(ns / kind)], check=False)


def test_terminal_goes_to_the_console_socket(oci: OCI, tmp_path: Path) -> None:
    """process.terminal: the pty master arrives on --console-socket; the slave is stdio."""
    import socket

    sock_path = tmp_path / "console.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(1)
    server.settimeout(20)
    spec = oci.spec("tty", ["sh", "-c", "tty; readlink /dev/console; echo hi-from-tty"])
    spec["process"]["terminal"] = True
    ctr = oci.create("tty", spec, "--console-socket", str(sock_path))
    assert ctr.pid, ctr.first_line
    conn, _ = server.accept()
    _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
    conn.close()
    server.close()
    master = fds[0]
    oci.run("start", "tty")
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the slave side is gone
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert ctr.exit_code() == 0
    text = out.decode(errors="replace")
    assert "/dev/pts/0" in text and "hi-from-tty" in text, text
