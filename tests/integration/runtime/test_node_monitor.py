"""The node-wide monitor (`--monitor node`): one process for every container of a runtime root.

The whole CRI suite runs under it too (the `cri` fixture's `*-node` parameters); these
tests check what is particular to it: it is one process, not the runtime's child, the
subreaper of the container inits, it survives a SIGKILL of the runtime and serves the
restarted one, and what its own death costs (said plainly in cri/runtime/monitor.py).
"""

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.integration.runtime.conftest import CRI, start_server

NODE = pytest.mark.parametrize(
    "cri",
    [("kubelet-py-oci", "node"), ("runc", "node")],
    ids=["kubelet-py-oci-node", "runc-node"],
    indirect=True,
)

TICKER = ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]


def _monitor_pid(cri: CRI) -> int:
    return int((cri.root / "runtime" / "monitor" / "monitor.pid").read_text())


def _init_pid(cri: CRI, ctr_id: str) -> int:
    """The container init's host PID, from the pid file the OCI executor wrote."""
    return int((cri.root / "runtime" / "containers" / ctr_id / "pidfile").read_text())


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def _conmons_of(cri: CRI) -> list[int]:
    exits = str(cri.root / "runtime" / "exits")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"conmon") and exits.encode() in argv:
                found.append(int(entry.name))
    return found


def _ticks(cri: CRI, ctr_id: str) -> list[int]:
    return [
        int(line.rsplit(" ", 1)[1])
        for line in cri.crictl("logs", ctr_id).splitlines()
        if line.startswith("tick")
    ]


@NODE
def test_one_monitor_reaps_every_container_and_outlives_the_runtime(cri: CRI) -> None:
    """Three pods, one monitor (no conmon), parent of each init; SIGKILL of the runtime
    leaves it and the containers running, the restarted runtime uses the same monitor."""
    ids = [cri.run_container(f"mon{i}", "main", TICKER)[1] for i in range(3)]
    _, ends = cri.run_container("monend", "main", ["sh", "-c", "sleep 1.5; echo bye; exit 7"])
    monitor = _monitor_pid(cri)
    assert _conmons_of(cri) == []
    assert int(_status_field(monitor, "PPid")) != cri.proc.pid  # detached, not our child
    for ctr_id in ids:
        pid = _init_pid(cri, ctr_id)
        assert int(_status_field(pid, "PPid")) == monitor  # the subreaper took the init

    os.kill(cri.proc.pid, signal.SIGKILL)
    cri.proc.wait()
    time.sleep(2.5)  # `ends` exits and the tickers keep writing while no runtime is up
    assert _monitor_pid(cri) == monitor and Path(f"/proc/{monitor}").exists()
    cri.socket.unlink(missing_ok=True)
    cri.proc = start_server(cri.root, cri.socket, cri.log_path, cri.oci_runtime, cri.monitor)

    listed = [c["id"] for c in json.loads(cri.crictl("ps", "-a", "-o", "json"))["containers"]]
    assert sorted(listed) == sorted([*ids, ends])
    ended = cri.wait_state(ends, "CONTAINER_EXITED")
    assert ended["exitCode"] == 7 and ended["reason"] == "Error"
    assert "bye" in cri.crictl("logs", ends)
    before = _ticks(cri, ids[0])
    time.sleep(1.0)
    after = _ticks(cri, ids[0])
    assert after == list(range(len(after))) and len(after) > len(before) >= 12  # no gap, flowing
    _, later = cri.run_container("monlater", "main", TICKER)
    later_pid = _init_pid(cri, later)
    assert int(_status_field(later_pid, "PPid")) == monitor  # the same monitor serves the new one


@NODE
def test_monitor_killed_breaks_stdio_and_exits_are_unknown(cri: CRI) -> None:
    """What a SIGKILL of the monitor costs: the containers lose their stdout (a writer dies
    of SIGPIPE), their exits are reported as Unknown/255, and the next create starts a new
    monitor that serves new containers normally."""
    _, ticker = cri.run_container("monkill", "main", TICKER)
    time.sleep(0.5)
    monitor = _monitor_pid(cri)
    os.kill(monitor, signal.SIGKILL)
    status = cri.wait_state(ticker, "CONTAINER_EXITED", timeout_s=30)
    assert status["exitCode"] == 255 and status["reason"] == "Unknown"
    assert "monitor is gone" in str(status["message"])
    _, fresh = cri.run_container("monfresh", "main", ["sh", "-c", "echo hello; exit 3"])
    done = cri.wait_state(fresh, "CONTAINER_EXITED")
    assert done["exitCode"] == 3
    assert "hello" in cri.crictl("logs", fresh)
    assert _monitor_pid(cri) != monitor


def _ask_monitor(cri: CRI, request: dict[str, object]) -> dict[str, object]:
    directory = cri.root / "runtime" / "monitor"
    dir_fd = os.open(directory, os.O_PATH)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(f"/proc/self/fd/{dir_fd}/monitor.sock")
            sock.sendall(json.dumps(request).encode() + b"\n")
            answer: dict[str, object] = json.loads(sock.makefile("rb").readline())
            return answer
    finally:
        os.close(dir_fd)


@NODE
def test_monitor_reexec_hands_over_every_container(cri: CRI) -> None:
    """A re-exec (how a new monitor version takes over) keeps the PID and every descriptor:
    logs go on without a gap, exits are still reaped with their real code, attach works."""
    _, ticker = cri.run_container("reex", "main", TICKER)
    _, ender = cri.run_container("reexend", "main", ["sh", "-c", "sleep 2; exit 5"])
    time.sleep(0.6)
    monitor = _monitor_pid(cri)
    assert _ask_monitor(cri, {"op": "reexec"})["pid"] == monitor
    deadline = time.monotonic() + 10
    while "re-executed" not in (cri.root / "runtime" / "monitor" / "monitor.log").read_text():
        assert time.monotonic() < deadline, "the monitor did not come back from its re-exec"
        time.sleep(0.1)
    status = _ask_monitor(cri, {"op": "status"})
    assert status["pid"] == monitor and ticker in status["containers"]  # type: ignore[operator]
    assert cri.wait_state(ender, "CONTAINER_EXITED")["exitCode"] == 5
    time.sleep(1.0)
    ticks = _ticks(cri, ticker)
    assert ticks == list(range(len(ticks))) and len(ticks) >= 10
    dir_fd = os.open(cri.root / "runtime" / "sockets" / ticker, os.O_PATH)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(5)
            sock.connect(f"/proc/self/fd/{dir_fd}/attach")  # served by the re-executed monitor
            packet = sock.recv(8193)
    finally:
        os.close(dir_fd)
    assert packet[0] == 2 and b"tick" in packet  # a stdout packet, as conmon frames it
    cri.crictl("stop", "--timeout", "5", ticker)
    assert cri.wait_state(ticker, "CONTAINER_EXITED")["exitCode"] == 143  # SIGTERM, reaped by us


@NODE
def test_attach_stdin_beyond_the_pipe_is_queued_not_dropped(cri: CRI) -> None:
    """200 kB sent through the attach socket to a container not reading yet (a pipe holds
    64 KiB) all arrive: the monitor queues what does not fit."""
    _, ctr_id = cri.run_container(
        "monstdin", "main", ["sh", "-c", "sleep 2; head -c 200000 | wc -c"], stdin=True
    )
    dir_fd = os.open(cri.root / "runtime" / "sockets" / ctr_id, os.O_PATH)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(10)
            sock.connect(f"/proc/self/fd/{dir_fd}/attach")
            payload = b"x" * 200000
            for off in range(0, len(payload), 8192):
                sock.sendall(payload[off : off + 8192])
            status = cri.wait_state(ctr_id, "CONTAINER_EXITED", timeout_s=30)
    finally:
        os.close(dir_fd)
    assert status["exitCode"] == 0
    assert "200000" in cri.crictl("logs", ctr_id)
