"""CRI Exec / Attach / PortForward: crictl (SPDY and WebSocket) and a raw WebSocket client.

Each call returns a URL of the runtime's streaming server; crictl then speaks SPDY/3.1 or
WebSocket v5 to it (`--transport`), port-forward over WebSockets tunnels SPDY. Every test
runs with runc and with our executor beneath conmon (the `cri` fixture).
"""

import fcntl
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import termios
import time
import urllib.parse
import urllib.request

import grpc
import pytest
from cri_api.v1 import api_pb2, api_pb2_grpc

from tests.integration.runtime.conftest import CRI
from tests.support.wsclient import WsClient, WsError, remotecommand

TRANSPORTS = pytest.mark.parametrize("transport", ["spdy", "websocket"])


def crictl_argv(cri: CRI, *args: str) -> list[str]:
    endpoint = f"unix://{cri.socket}"
    return [str(cri.crictl_bin), "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
            "--timeout", "60s", *args]  # fmt: skip


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _read_until(fd: int, needle: bytes, timeout_s: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout_s
    while needle not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def _on_terminal(argv: list[str], rows: int, cols: int) -> tuple[subprocess.Popen[bytes], int]:
    """Run argv with a fresh pseudo-terminal of the given size as its controlling terminal."""
    master, slave = pty.openpty()
    _set_winsize(slave, rows, cols)
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        env={**os.environ, "TERM": "dumb"},
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )  # fmt: skip
    os.close(slave)
    return proc, master


def _ask_size(master: int, want: bytes, timeout_s: float = 15) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout_s
    while want not in out and time.monotonic() < deadline:
        os.write(master, b"stty size\n")
        out += _read_until(master, want, 1.0)
    return out


def _stop(proc: subprocess.Popen[bytes], master: int) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    os.close(master)


@TRANSPORTS
def test_exec_streams_and_exit_code(cri: CRI, transport: str) -> None:
    """`crictl exec` (no TTY): stdout and stderr apart, stdin through, the exit code reported."""
    _, cid = cri.run_container("ex", "c", ["sleep", "3600"])
    res = subprocess.run(
        crictl_argv(cri, "exec", "-r", transport, cid, "sh", "-c", "echo o; echo err >&2; exit 7"),
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.stdout == b"o\n", res
    assert b"err\n" in res.stderr and b"exit code 7" in res.stderr, res
    ok = subprocess.run(
        crictl_argv(cri, "exec", "-i", "-r", transport, cid, "sh", "-c", "cat; echo done"),
        input=b"through stdin\n", capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert ok.returncode == 0 and ok.stdout == b"through stdin\ndone\n", ok


@TRANSPORTS
def test_exec_tty_with_resize(cri: CRI, transport: str) -> None:
    """`crictl exec -it` on a real terminal: the shell sees its size, a resize, and exits 5."""
    _, cid = cri.run_container("extty", "c", ["sleep", "3600"])
    proc, master = _on_terminal(crictl_argv(cri, "exec", "-it", "-r", transport, cid, "sh"), 31, 97)
    try:
        out = _ask_size(master, b"31 97")
        assert b"31 97" in out, (out, cri.log_path.read_text()[-2000:])
        _set_winsize(master, 40, 120)
        proc.send_signal(signal.SIGWINCH)
        out = _ask_size(master, b"40 120")
        assert b"40 120" in out, out
        os.write(master, b"exit 5\n")
        said = _read_until(master, b"exit code 5", 20)
        assert b"exit code 5" in said, said  # crictl reports the code, then exits non-zero
        assert proc.wait(timeout=20) != 0
    finally:
        _stop(proc, master)
    assert cri.inspect(cid)["status"]["state"] == "CONTAINER_RUNNING"  # type: ignore[index]


@TRANSPORTS
def test_attach_tty_container(cri: CRI, transport: str) -> None:
    """A TTY container (tty + stdin in its CRI config) runs sh; `crictl attach -it` drives it."""
    _, cid = cri.run_container("atty", "c", ["sh"], tty=True, stdin=True)
    proc, master = _on_terminal(crictl_argv(cri, "attach", "-it", "-r", transport, cid), 33, 88)
    try:
        out = _ask_size(master, b"33 88", 20)
        assert b"33 88" in out, (out, cri.log_path.read_text()[-2000:])
        _set_winsize(master, 44, 111)
        proc.send_signal(signal.SIGWINCH)
        out = _ask_size(master, b"44 111")
        assert b"44 111" in out, out
        os.write(master, b"echo marker-$((6*7))\n")
        assert b"marker-42" in _read_until(master, b"marker-42", 10)
    finally:
        _stop(proc, master)
    logs = cri.crictl("logs", cid)
    assert "marker-42" in logs  # a TTY container's output is logged too


def test_attach_output_and_stdin(cri: CRI) -> None:
    """`crictl attach -i` (no TTY) to a container reading stdin: input in, output streamed."""
    _, cid = cri.run_container(
        "ain", "c", ["sh", "-c", "echo ready; while read l; do echo got-$l; done"], stdin=True
    )
    proc = subprocess.Popen(
        crictl_argv(cri, "attach", "-i", cid), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdin is not None and proc.stdout is not None
        time.sleep(0.5)  # attach has no handshake telling us it is in place
        proc.stdin.write(b"one\n")
        proc.stdin.flush()
        fd = proc.stdout.fileno()
        out = _read_until(fd, b"got-one", 15)
        assert b"got-one" in out, (out, cri.log_path.read_text()[-2000:])
    finally:
        proc.kill()
        proc.wait()


WEB_SCRIPT = (
    "mkdir -p /www && echo hello-from-the-pod > /www/index.html && "
    "exec busybox httpd -f -p 8080 -h /www"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@TRANSPORTS
def test_port_forward(cri: CRI, transport: str) -> None:
    """`crictl port-forward POD LOCAL:8080` reaches the pod's loopback-only network."""
    pod_id, _ = cri.run_container("pf", "web", ["sh", "-c", WEB_SCRIPT])
    local = _free_port()
    proc = subprocess.Popen(
        crictl_argv(cri, "port-forward", "-r", transport, pod_id, f"{local}:8080"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        body = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=5) as resp:
                    body = resp.read()
                break
            except OSError:
                time.sleep(0.3)
        assert body == b"hello-from-the-pod\n", (proc.poll(), cri.log_path.read_text()[-2000:])
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _exec_url(cri: CRI, cid: str, cmd: list[str], **flags: bool) -> str:
    with grpc.insecure_channel(f"unix://{cri.socket}") as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)  # type: ignore[no-untyped-call]
        resp = stub.Exec(api_pb2.ExecRequest(container_id=cid, cmd=cmd, **flags), timeout=30)
    return str(resp.url)


def _connect(url: str, protocols: list[str]) -> WsClient:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname == "127.0.0.1", url  # loopback by default
    return WsClient.connect(parts.hostname, int(parts.port or 80), parts.path, protocols)


def test_websocket_v5_direct(cri: CRI) -> None:
    """Raw v5.channel.k8s.io: stdin, CLOSE(0), stdout/stderr apart, exit code; single-use token."""
    _, cid = cri.run_container("ws", "c", ["sleep", "3600"])
    url = _exec_url(
        cri, cid, ["sh", "-c", "cat; echo e >&2; exit 3"], stdin=True, stdout=True, stderr=True
    )
    ws = _connect(url, ["v5.channel.k8s.io", "v4.channel.k8s.io"])
    try:
        assert ws.protocol == "v5.channel.k8s.io"
        out = remotecommand(ws, stdin=b"piped\n")
    finally:
        ws.close()
    assert out.frames[0] == (1, b"")  # the readiness message on the lowest writable channel
    assert out.stdout == b"piped\n" and out.stderr == b"e\n"
    assert out.exit_code == 3 and out.status["reason"] == "NonZeroExitCode"
    with pytest.raises(WsError, match="404"):
        _connect(url, ["v5.channel.k8s.io"]).close()


def test_websocket_v4_base64_and_tty_resize(cri: CRI) -> None:
    """v4.base64.channel.k8s.io with a TTY: text frames, the resize channel sets the size."""
    _, cid = cri.run_container("wsb", "c", ["sleep", "3600"])
    url = _exec_url(cri, cid, ["sh", "-c", "sleep 0.5; stty size"], stdout=True, tty=True)
    ws = _connect(url, ["v4.base64.channel.k8s.io"])
    try:
        assert ws.protocol == "v4.base64.channel.k8s.io"
        out = remotecommand(ws, resize=(77, 21))
    finally:
        ws.close()
    assert b"21 77" in out.stdout, out
    assert out.status == {"metadata": {}, "status": "Success"}


def test_streaming_calls_check_their_requests(cri: CRI) -> None:
    """Exec on an unknown container, tty with stderr, no streams at all: gRPC errors, no URL."""
    _, cid = cri.run_container("bad", "c", ["sleep", "3600"])
    with grpc.insecure_channel(f"unix://{cri.socket}") as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)  # type: ignore[no-untyped-call]
        cases = [
            (api_pb2.ExecRequest(container_id="nope", cmd=["true"], stdout=True), "NOT_FOUND"),
            (
                api_pb2.ExecRequest(container_id=cid, cmd=["true"], tty=True, stderr=True),
                "INVALID_ARGUMENT",
            ),
            (api_pb2.ExecRequest(container_id=cid, cmd=["true"]), "INVALID_ARGUMENT"),
        ]
        for req, code in cases:
            with pytest.raises(grpc.RpcError) as err:
                stub.Exec(req, timeout=30)
            assert err.value.code().name == code, (req, err.value)
        with pytest.raises(grpc.RpcError) as err:
            stub.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id="nope"), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
