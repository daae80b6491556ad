"""kubectl exec / attach / port-forward through the real kube-apiserver to our kubelet (SPDY/3.1),
and WebSocket clients straight to the kubelet's port.

kubectl talks WebSockets to the apiserver by default (the apiserver translates to SPDY toward the
kubelet); with KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false / KUBECTL_PORT_FORWARD_WEBSOCKETS=false it
speaks SPDY itself and the apiserver only proxies the upgraded connection. Both are tested.
"""

import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import http.client
import os
import pty
import select
import signal
import ssl
import struct
import subprocess
import termios
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from cri.streaming import spdy
from kubelet_py.devcluster import LocalCluster
from kubelet_py.devcluster.netlab import run_in_netns
from tests.integration.agent.conftest import IMAGE, AgentNode, fresh_namespace, wait_for
from tests.support.wsclient import Outcome, WsClient, remotecommand

SPDY_ENV = {
    "KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false",
    "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false",
}
WS_ENV = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "true", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "true"}
TRANSPORTS = pytest.mark.parametrize("env", [WS_ENV, SPDY_ENV], ids=["websocket", "spdy"])


def kubectl_argv(cluster: LocalCluster, *args: str) -> list[str]:
    return [str(cluster.binaries.kubectl), f"--kubeconfig={cluster.admin_kubeconfig}", *args]


def kubectl(
    cluster: LocalCluster,
    *args: str,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        kubectl_argv(cluster, *args),
        input=input,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture(scope="module")
def ns(agent_node: AgentNode, admin_api: client.ApiClient) -> Iterator[str]:
    with fresh_namespace(admin_api, "s") as name:
        yield name


def _run(
    core: client.CoreV1Api, ns: str, name: str, script: str, node: AgentNode, **container: object
) -> str:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            node_name="agent1", termination_grace_period_seconds=1,
            containers=[client.V1Container(name="main", image=IMAGE, image_pull_policy="IfNotPresent",
                                           command=["sh", "-c", script], **container)],
        ),
    )  # fmt: skip
    core.create_namespaced_pod(ns, pod)
    wait_for(
        f"pod {name} to run",
        lambda: core.read_namespaced_pod(name, ns).status.phase == "Running",
        60,
        node,
    )
    return name


@pytest.fixture(scope="module")
def sleeper(agent_node: AgentNode, admin_api: client.ApiClient, ns: str) -> str:
    return _run(client.CoreV1Api(admin_api), ns, "sleeper", "sleep 3600", agent_node)


WEB_SCRIPT = (
    "mkdir -p /www && echo hello > /www/index.html && "
    "dd if=/dev/urandom of=/www/big bs=1024 count=4096 2>/dev/null && "
    "touch /www/ready && exec busybox httpd -f -p 8080 -h /www"
)


@pytest.fixture(scope="module")
def web(agent_node: AgentNode, admin_api: client.ApiClient, ns: str, cluster: LocalCluster) -> str:
    name = _run(client.CoreV1Api(admin_api), ns, "web", WEB_SCRIPT, agent_node)
    wait_for(
        "the web root",
        lambda: (
            kubectl(
                cluster, "exec", "-n", ns, name, "--", "sh", "-c", "test -f /www/ready"
            ).returncode
            == 0
        ),
        30,
    )
    return name


# ---- exec -------------------------------------------------------------------------------------


@TRANSPORTS
def test_exec_prints_output_and_returns_the_exit_code(
    cluster: LocalCluster, ns: str, sleeper: str, env: dict[str, str]
) -> None:
    """`kubectl exec POD -- sh -c 'echo hi; exit 3'` prints hi (stderr apart) and exits 3."""
    res = kubectl(
        cluster,
        "exec",
        "-n",
        ns,
        sleeper,
        "--",
        "sh",
        "-c",
        "echo hi; echo err >&2; exit 3",
        env=env,
    )
    assert res.stdout == b"hi\n", res.stderr
    assert b"err\n" in res.stderr
    assert res.returncode == 3, res.stderr
    ok = kubectl(cluster, "exec", "-n", ns, sleeper, "--", "echo", "fine", env=env)
    assert (ok.returncode, ok.stdout) == (0, b"fine\n"), ok.stderr


@TRANSPORTS
def test_exec_stdin(cluster: LocalCluster, ns: str, sleeper: str, env: dict[str, str]) -> None:
    """`echo data | kubectl exec -i POD -- cat` echoes it; a MiB-sized input arrives intact."""
    res = kubectl(cluster, "exec", "-i", "-n", ns, sleeper, "--", "cat", input=b"data\n", env=env)
    assert (res.returncode, res.stdout) == (0, b"data\n"), res.stderr
    blob = os.urandom(3 * 1024 * 1024)
    res = kubectl(
        cluster, "exec", "-i", "-n", ns, sleeper, "--", "busybox", "sha256sum", input=blob, env=env
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0].decode() == hashlib.sha256(blob).hexdigest()


def test_exec_large_output(cluster: LocalCluster, ns: str, sleeper: str) -> None:
    """Several MiB of output arrive in full."""
    res = kubectl(cluster, "exec", "-n", ns, sleeper, "--", "sh", "-c", "head -c 5000000 /dev/zero")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"\0" * 5000000


def test_exec_unknown_command_fails(cluster: LocalCluster, ns: str, sleeper: str) -> None:
    """A command that does not exist makes kubectl fail (non-zero), without hanging."""
    res = kubectl(cluster, "exec", "-n", ns, sleeper, "--", "/no/such/thing", timeout=30)
    assert res.returncode != 0


def test_exec_unknown_container_is_an_error(cluster: LocalCluster, ns: str, sleeper: str) -> None:
    res = kubectl(cluster, "exec", "-n", ns, sleeper, "-c", "nope", "--", "true", timeout=30)
    assert res.returncode != 0
    assert b"nope" in res.stderr


@TRANSPORTS
def test_exec_process_is_killed_when_the_client_goes_away(
    cluster: LocalCluster, ns: str, sleeper: str, env: dict[str, str]
) -> None:
    """Killing kubectl mid-exec ends the session and the process it started in the container."""
    marker = "301" if env is WS_ENV else "302"
    proc = subprocess.Popen(
        kubectl_argv(
            cluster,
            "exec",
            "-n",
            ns,
            sleeper,
            "--",
            "sh",
            "-c",
            f"echo started; exec sleep {marker}",
        ),
        stdout=subprocess.PIPE,
        env={**os.environ, **env},
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"

        def running() -> bool:
            ps = kubectl(cluster, "exec", "-n", ns, sleeper, "--", "sh", "-c", "ps")
            return f"sleep {marker}".encode() in ps.stdout

        assert running()
    finally:
        proc.kill()
        proc.wait()
    wait_for("the exec'd process to be killed", lambda: not running(), 20)


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


@TRANSPORTS
def test_exec_tty_with_resize(
    cluster: LocalCluster, ns: str, sleeper: str, env: dict[str, str], agent_node: AgentNode
) -> None:
    """`kubectl exec -it` on a real terminal: the shell sees its size, then a resize, and its exit code."""
    master, slave = pty.openpty()
    _set_winsize(slave, 31, 97)
    proc = subprocess.Popen(
        kubectl_argv(cluster, "exec", "-it", "-n", ns, sleeper, "--", "sh"),
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        env={**os.environ, **env, "TERM": "dumb"},
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )  # fmt: skip
    os.close(slave)
    try:
        _read_until(master, b"#", 20)
        os.write(master, b"stty size\n")
        out = _read_until(master, b"31 97", 15)
        assert b"31 97" in out, (out, agent_node.log_tail())
        _set_winsize(master, 40, 120)
        proc.send_signal(signal.SIGWINCH)  # kubectl watches its terminal for size changes
        out = b""
        deadline = time.monotonic() + 15
        while b"40 120" not in out and time.monotonic() < deadline:
            os.write(master, b"stty size\n")
            out += _read_until(master, b"40 120", 1.0)
        assert b"40 120" in out, out
        os.write(master, b"exit 5\n")
        assert proc.wait(timeout=20) == 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_exec_needs_nodes_proxy_create(
    cluster: LocalCluster, agent_node: AgentNode, ns: str, sleeper: str, tmp_path: Path
) -> None:
    """Straight to the kubelet: a user without RBAC gets 403 (create nodes/proxy), no upgrade."""
    cert, key = cluster.pki.ca.issue("carol", client=True).write(tmp_path, "carol")

    def call() -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(agent_node.root / "pki" / "kubelet.crt"))
        ctx.load_cert_chain(str(cert), str(key))
        conn = http.client.HTTPSConnection(str(agent_node.lab.address), 10250, context=ctx)
        try:
            conn.request(
                "POST",
                f"/exec/{ns}/{sleeper}/main?command=true&output=1",
                headers={
                    "Connection": "Upgrade",
                    "Upgrade": "SPDY/3.1",
                    "X-Stream-Protocol-Version": "v4.channel.k8s.io",
                },
            )
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    status, body = run_in_netns(agent_node.lab.netns_path, call)
    assert status == 403, body
    assert "verb=create" in body and "proxy" in body


def _kubelet_websocket(
    cluster: LocalCluster,
    node: AgentNode,
    tmp_path: Path,
    path: str,
    protocols: list[str],
    **session: object,
) -> Outcome:
    """One WebSocket session straight to the kubelet's :10250 as a system:masters client."""
    cert, key = cluster.pki.ca.issue(
        "ws-admin", organizations=["system:masters"], client=True
    ).write(tmp_path, "ws-admin")
    ctx = ssl.create_default_context(cafile=str(node.root / "pki" / "kubelet.crt"))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(cert), str(key))

    def call() -> Outcome:
        ws = WsClient.connect(str(node.lab.address), 10250, path, protocols, tls=ctx)
        try:
            assert ws.protocol == protocols[0]
            return remotecommand(ws, **session)  # type: ignore[arg-type]
        finally:
            ws.close()

    return run_in_netns(node.lab.netns_path, call)


def test_exec_websocket_v5_straight_to_the_kubelet(
    cluster: LocalCluster, agent_node: AgentNode, ns: str, sleeper: str, tmp_path: Path
) -> None:
    """A v5.channel.k8s.io client on :10250: stdin and its CLOSE, stdout/stderr, the exit code."""
    cmd = "&".join(
        f"command={urllib.parse.quote(c)}" for c in ["sh", "-c", "cat; echo e >&2; exit 6"]
    )
    out = _kubelet_websocket(
        cluster, agent_node, tmp_path,
        f"/exec/{ns}/{sleeper}/main?{cmd}&input=1&output=1&error=1", ["v5.channel.k8s.io"],
        stdin=b"via websocket\n",
    )  # fmt: skip
    assert out.stdout == b"via websocket\n" and out.stderr == b"e\n", out
    assert out.exit_code == 6


def test_exec_websocket_tty_resize_straight_to_the_kubelet(
    cluster: LocalCluster, agent_node: AgentNode, ns: str, sleeper: str, tmp_path: Path
) -> None:
    """v4.channel.k8s.io with a TTY on :10250: the resize channel sets the terminal's size."""
    cmd = "&".join(f"command={urllib.parse.quote(c)}" for c in ["sh", "-c", "sleep 0.5; stty size"])
    out = _kubelet_websocket(
        cluster, agent_node, tmp_path,
        f"/exec/{ns}/{sleeper}/main?{cmd}&output=1&tty=1", ["v4.channel.k8s.io"],
        resize=(101, 27),
    )  # fmt: skip
    assert b"27 101" in out.stdout, out
    assert out.status == {"metadata": {}, "status": "Success"}


# ---- port-forward ------------------------------------------------------------------------------


@contextlib.contextmanager
def port_forward(
    cluster: LocalCluster, ns: str, target: str, local: int, remote: int, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        kubectl_argv(
            cluster, "port-forward", "-n", ns, target, f"{local}:{remote}", "--address=127.0.0.1"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert b"Forwarding from 127.0.0.1" in line, line + (
            proc.stderr.read() if proc.stderr else b""
        )
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        body: bytes = resp.read()
        return body


@TRANSPORTS
def test_port_forward(cluster: LocalCluster, ns: str, web: str, env: dict[str, str]) -> None:
    """kubectl port-forward to the pod's localhost:8080: small requests in parallel and 4 MiB."""
    want = kubectl(cluster, "exec", "-n", ns, web, "--", "busybox", "sha256sum", "/www/big")
    assert want.returncode == 0, want.stderr
    big_sha = want.stdout.split()[0].decode()
    port = 18081 if env is WS_ENV else 18082
    with port_forward(cluster, ns, f"pod/{web}", port, 8080, env):
        assert _get(f"http://127.0.0.1:{port}/index.html") == b"hello\n"
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            small = [pool.submit(_get, f"http://127.0.0.1:{port}/index.html") for _ in range(16)]
            large = [pool.submit(_get, f"http://127.0.0.1:{port}/big") for _ in range(2)]
            assert all(f.result() == b"hello\n" for f in small)
            for f in large:
                body = f.result()
                assert len(body) == 4096 * 1024
                assert hashlib.sha256(body).hexdigest() == big_sha


def test_port_forward_closed_port_reports_an_error(
    cluster: LocalCluster, ns: str, web: str
) -> None:
    """A port nobody listens on: the connection is closed and kubectl reports the error."""
    with port_forward(cluster, ns, f"pod/{web}", 18083, 8099, SPDY_ENV) as proc:
        with pytest.raises(OSError):
            _get("http://127.0.0.1:18083/")
        time.sleep(0.5)
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert b"8099" in err, err


# ---- attach ------------------------------------------------------------------------------------


def test_attach_with_stdin(
    cluster: LocalCluster, admin_api: client.ApiClient, ns: str, agent_node: AgentNode
) -> None:
    """`kubectl attach -i` to a container with stdin: what we type reaches it, its answer comes back."""
    name = _run(
        client.CoreV1Api(admin_api), ns, "reader",
        "while read l; do echo got $l; done", agent_node, stdin=True,
    )  # fmt: skip
    proc = subprocess.Popen(
        kubectl_argv(cluster, "attach", "-i", "-n", ns, name, "-c", "main"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        line = b""
        deadline = time.monotonic() + 30
        while b"got ping" not in line and time.monotonic() < deadline:
            proc.stdin.write(b"ping\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line += os.read(proc.stdout.fileno(), 4096)
        assert b"got ping" in line
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the SPDY framing on its own (no cluster) ----------------------------------------------------


def test_spdy_dictionary_and_session_roundtrip() -> None:
    """The SPDY/3 dictionary is the spec's 1423 bytes; a SYN_STREAM gets a SYN_REPLY, data flows."""
    assert len(spdy.DICTIONARY) == 1423
    assert hashlib.sha256(spdy.DICTIONARY).hexdigest() == (
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    )

    async def scenario() -> None:
        sent: list[bytes] = []

        async def drain() -> None:
            return None

        conn = spdy.SpdyConnection(sent.append, drain)
        deflate = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=spdy.DICTIONARY)
        block = deflate.compress(spdy.encode_headers({"streamType": ["stdin"]}))
        block += deflate.flush(zlib.Z_SYNC_FLUSH)
        syn = spdy.control_frame(spdy.SYN_STREAM, 0, struct.pack(">IIH", 1, 0, 0) + block)
        wire = syn + spdy.data_frame(1, spdy.FLAG_FIN, b"hello")
        wire += spdy.control_frame(spdy.PING, 0, struct.pack(">I", 7))
        for i in range(0, len(wire), 3):  # arbitrary fragmentation
            conn.feed_data(wire[i : i + 3])
        stream = await conn.accept(1.0)
        assert stream is not None and stream.header("streamtype") == "stdin"
        assert await stream.read() == b"hello"
        assert await stream.read() == b""
        reply = sent[0]
        assert struct.unpack(">HH", reply[:4]) == (0x8003, spdy.SYN_REPLY)
        inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
        assert spdy.decode_headers(inflate.decompress(reply[12:])) == {}
        assert sent[1] == spdy.control_frame(spdy.PING, 0, struct.pack(">I", 7))
        await stream.write(b"x" * 70000)
        await stream.close()
        frames = b"".join(sent[2:])
        assert len(frames) == 70000 + 8 * 4  # three data frames and the FIN
        conn.feed_eof()
        assert conn.closed and await conn.accept(0.1) is None

    asyncio.run(scenario())


def test_attach_tty_with_resize(
    cluster: LocalCluster, admin_api: client.ApiClient, ns: str, agent_node: AgentNode
) -> None:
    """`kubectl attach -it` to a TTY container's shell: typed commands run, resizes arrive."""
    name = _run(
        client.CoreV1Api(admin_api), ns, "ttyshell", "exec sh", agent_node, stdin=True, tty=True
    )
    master, slave = pty.openpty()
    _set_winsize(slave, 33, 88)
    proc = subprocess.Popen(
        kubectl_argv(cluster, "attach", "-it", "-n", ns, name, "-c", "main"),
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        env={**os.environ, "TERM": "dumb"},
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )  # fmt: skip
    os.close(slave)
    try:
        out = b""
        deadline = time.monotonic() + 20
        while b"33 88" not in out and time.monotonic() < deadline:
            os.write(master, b"stty size\n")
            out += _read_until(master, b"33 88", 1.0)
        assert b"33 88" in out, (out, agent_node.log_tail())
        _set_winsize(master, 44, 111)
        proc.send_signal(signal.SIGWINCH)
        out = b""
        deadline = time.monotonic() + 15
        while b"44 111" not in out and time.monotonic() < deadline:
            os.write(master, b"stty size\n")
            out += _read_until(master, b"44 111", 1.0)
        assert b"44 111" in out, out
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
