"""conmon 2.1.6 driving kubelet-py-oci exactly as the runtime service drives runc."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.oci.conftest import OCI, pid_alive


def _read_sync(fd: int, *, until_eof: bool, timeout_s: float = 30) -> list[dict[str, object]]:
    """conmon's sync pipe: one JSON object per line ({"data": pid or exit code, ...}).

    After create conmon keeps it open (read the first line); in exec mode it closes it.
    """
    import select

    data = b""
    deadline = time.monotonic() + timeout_s
    while until_eof or b"\n" not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"no answer from conmon: {data!r}"
        if not select.select([fd], [], [], left)[0]:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


class Conmon:
    """`conmon ... -r <kubelet-py-oci> --runtime-arg --root=...`, as executor.py builds it."""

    def __init__(self, oci: OCI, name: str) -> None:
        self.oci = oci
        self.dir = oci.work / f"conmon-{name}"
        for d in ("exits", "exec-exits", "persist", "sockets"):
            (self.dir / d).mkdir(parents=True)

    def run(
        self, cid: str, bundle: Path, *, exec_spec: Path | None = None
    ) -> tuple[list[dict[str, object]], str]:
        """Start conmon; return its sync-pipe messages (exec mode: all of them) and stderr."""
        read_fd, write_fd = os.pipe()
        uid = f"{cid}-exec" if exec_spec else cid
        log = self.dir / ("exec.log" if exec_spec else "ctr.log")
        argv = [
            str(shutil.which("conmon")), "--api-version", "1", "-c", cid, "-u", uid, "-n", cid,
            "-r", self.oci.cli, "--runtime-arg", f"--root={self.oci.root}", "-b", str(bundle),
            "-p", str(self.dir / f"{uid}.pid"), "-l", f"k8s-file:{log}",
            # exec mode writes its exit file under the container's ID too: keep them apart
            "--exit-dir", str(self.dir / ("exec-exits" if exec_spec else "exits")),
            "--persist-dir", str(self.dir / "persist"),
            "--socket-dir-path", str(self.dir / "sockets"), "--log-level", "error",
        ]  # fmt: skip
        if exec_spec:
            argv += ["-e", "--exec-process-spec", str(exec_spec)]
        else:
            argv += ["-P", str(self.dir / "conmon.pid")]
        env = {"_OCI_SYNCPIPE": str(write_fd), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env=env, pass_fds=(write_fd,), start_new_session=True, cwd=self.dir,
            )  # fmt: skip
        finally:
            os.close(write_fd)
        try:
            msgs = _read_sync(read_fd, until_eof=exec_spec is not None)
        finally:
            os.close(read_fd)
        _, err = proc.communicate(timeout=30)
        return msgs, err.decode()

    def conmon_pid(self) -> int:
        return int((self.dir / "conmon.pid").read_text())

    def exit_code(self, cid: str, timeout_s: float = 20) -> int:
        path = self.dir / "exits" / cid
        deadline = time.monotonic() + timeout_s
        while not (path.exists() and path.read_text().strip()):
            assert time.monotonic() < deadline, "conmon wrote no exit file"
            time.sleep(0.02)
        return int(path.read_text())


@pytest.fixture
def conmon_ok() -> None:
    if shutil.which("conmon") is None:
        pytest.fail("conmon is needed (Debian: conmon)")


def test_conmon_create_start_exit_code_and_log(oci: OCI, conmon_ok: None) -> None:
    """conmon gets our PID on the sync pipe, logs the output in CRI format, records exit 3."""
    bundle = oci.bundle("cm", oci.spec("cm", ["sh", "-c", "echo hello; echo oops >&2; exit 3"]))
    oci.ids.append("cm")
    mon = Conmon(oci, "cm")
    msgs, err = mon.run("cm", bundle)
    pid = int(str(msgs[0]["data"]))
    assert pid > 0, (msgs, err)
    assert oci.state("cm")["pid"] == pid
    assert oci.state("cm")["status"] == "created"
    oci.run("start", "cm")
    assert mon.exit_code("cm") == 3
    oci.wait_status("cm", "stopped")
    lines = (mon.dir / "ctr.log").read_text().splitlines()
    streams = sorted((line.split(" ", 3)[1], line.split(" ", 3)[3]) for line in lines)
    assert streams == [("stderr", "oops"), ("stdout", "hello")]
    conmon_pid = mon.conmon_pid()
    deadline = time.monotonic() + 10
    while pid_alive(conmon_pid):
        assert time.monotonic() < deadline, "conmon did not exit after its container"
        time.sleep(0.02)
    oci.run("delete", "cm")


def test_conmon_relays_our_create_error(oci: OCI, conmon_ok: None) -> None:
    """A failed create reaches the caller through conmon's sync pipe as our one-line error."""
    bundle = oci.bundle("cmbad", oci.spec("cmbad", ["/no/such/program"]))
    mon = Conmon(oci, "cmbad")
    msgs, _ = mon.run("cmbad", bundle)
    assert int(str(msgs[0]["data"])) < 0
    message = str(msgs[0].get("message"))
    assert "kubelet-py-oci: container cmbad: find executable" in message, msgs
    assert "does not exist" in oci.run("state", "cmbad", check=False).stderr
    assert oci.cgroups.leftovers() == []


def test_conmon_exec_mode(oci: OCI, conmon_ok: None) -> None:
    """conmon -e runs `exec --pid-file P --process F --detach ID` and relays the exit code."""
    bundle = oci.bundle("cmx", oci.spec("cmx", ["sleep", "30"]))
    oci.ids.append("cmx")
    mon = Conmon(oci, "cmx")
    msgs, err = mon.run("cmx", bundle)
    assert int(str(msgs[0]["data"])) > 0, (msgs, err)
    oci.run("start", "cmx")
    spec = mon.dir / "exec.json"
    spec.write_text(json.dumps({"args": ["sh", "-c", "echo from-exec; exit 5"], "cwd": "/",
                                "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}))  # fmt: skip
    msgs, err = mon.run("cmx", bundle, exec_spec=spec)
    assert [int(str(m["data"])) > 0 for m in msgs] == [True, True], (msgs, err)
    assert int(str(msgs[1]["data"])) == 5  # the exec'd process's exit code
    assert "from-exec" in (mon.dir / "exec.log").read_text()
    oci.run("kill", "cmx", "KILL")
    assert mon.exit_code("cmx") == 137
