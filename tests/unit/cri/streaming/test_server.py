"""The CRI streaming server without a kernel: tokens, addresses, and exec over WebSocket and SPDY
against a fake process (the wire is real: aiohttp serves, our test client speaks RFC 6455)."""

import asyncio
import base64
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from cri.streaming import ExecRequest, PortForwardRequest, StreamingError, StreamingServer, spdy
from cri.streaming.channels import ExecOptions
from cri.streaming.server import parse_address
from tests.support.wsclient import OP_TEXT, WsClient, WsError, remotecommand


class FakeProcess:
    """Echoes stdin to stdout upper-cased; exits 4 at stdin EOF."""

    tty = False

    def __init__(self) -> None:
        self.out: asyncio.Queue[bytes] = asyncio.Queue()
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.killed = False

    async def write_stdin(self, data: bytes) -> None:
        await self.out.put(data.upper())

    async def close_stdin(self) -> None:
        await self.out.put(b"")
        if not self.exited.done():
            self.exited.set_result(4)

    async def read_stdout(self) -> bytes:
        return await self.out.get()

    async def read_stderr(self) -> bytes:
        await self.exited
        return b""

    def resize(self, width: int, height: int) -> None:
        pass

    async def wait(self) -> int:
        return await self.exited

    async def error_output(self) -> bytes:
        return b""

    def kill(self) -> None:
        self.killed = True

    def close(self) -> None:
        pass


class FakeRuntime:
    def __init__(self) -> None:
        self.started: list[list[str]] = []

    async def exec_stream(
        self, container_id: str, argv: list[str], *, tty: bool = False, stdin: bool = False
    ) -> FakeProcess:
        self.started.append(argv)
        return FakeProcess()

    def attach_paths(self, container_id: str) -> tuple[Path, Path]:
        raise LookupError(container_id)

    def sandbox_netns_of(self, sandbox_id: str) -> str | None:
        return None


def test_tokens_are_single_use_and_expire() -> None:
    """A URL works once; an unused one is gone after the TTL; the in-flight cap holds."""
    now = [100.0]
    server = StreamingServer(FakeRuntime(), token_ttl_s=60, max_in_flight=2, clock=lambda: now[0])
    opts = ExecOptions(["true"], False, True, False, False)
    url = server.get_exec(ExecRequest("c1", opts))
    token = url.rsplit("/", 1)[1]
    assert url.startswith("http://127.0.0.1:0/exec/") and len(token) >= 16
    assert server._consume(token) == ExecRequest("c1", opts)
    with pytest.raises(web.HTTPNotFound) as gone:
        server._consume(token)
    assert "unknown or expired" in str(gone.value.text)
    late = server.get_port_forward(PortForwardRequest("s1", (80,))).rsplit("/", 1)[1]
    server.get_exec(ExecRequest("c2", opts))
    with pytest.raises(StreamingError, match="waiting"):
        server.get_exec(ExecRequest("c3", opts))
    now[0] += 61
    with pytest.raises(web.HTTPNotFound):
        server._consume(late)
    server.get_exec(ExecRequest("c4", opts))  # expired ones were dropped


def test_addresses() -> None:
    """host:port and [v6]:port parse; wildcards and garbage are refused."""
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:10010") == ("::1", 10010)
    for bad in ("0.0.0.0:1", "[::]:1", "localhost", ":80"):
        with pytest.raises(StreamingError):
            parse_address(bad)


Scenario = Callable[[StreamingServer, asyncio.AbstractEventLoop, FakeRuntime], None]


def _serve(fn: Scenario) -> None:
    """Run a StreamingServer on a loop thread; call fn(server, loop) from this thread."""
    loop = asyncio.new_event_loop()
    runtime = FakeRuntime()
    server = StreamingServer(runtime)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        fn(server, loop, runtime)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _issue(server: StreamingServer, loop: asyncio.AbstractEventLoop, opts: ExecOptions) -> str:
    async def issue() -> str:
        return server.get_exec(ExecRequest("c", opts))

    return asyncio.run_coroutine_threadsafe(issue(), loop).result(5)


def test_exec_over_websocket_v5() -> None:
    """stdin in, then CLOSE(0): stdout comes back, the exit code is in the status."""
    opts = ExecOptions(["up"], True, True, False, False)

    def scenario(
        server: StreamingServer, loop: asyncio.AbstractEventLoop, runtime: FakeRuntime
    ) -> None:
        url = _issue(server, loop, opts)
        ws = WsClient.connect("127.0.0.1", server.port, _path(server, url), ["v5.channel.k8s.io"])
        try:
            assert ws.protocol == "v5.channel.k8s.io"
            out = remotecommand(ws, stdin=b"abc")
        finally:
            ws.close()
        assert out.frames[0] == (1, b"")
        assert out.stdout == b"ABC" and out.exit_code == 4
        assert runtime.started == [["up"]]

    _serve(scenario)


def test_exec_over_websocket_base64() -> None:
    """v4.base64.channel.k8s.io: text frames, an ASCII channel digit, base64 payloads."""
    opts = ExecOptions(["up"], True, True, False, False)

    def scenario(
        server: StreamingServer, loop: asyncio.AbstractEventLoop, runtime: FakeRuntime
    ) -> None:
        url = _issue(server, loop, opts)
        ws = WsClient.connect(
            "127.0.0.1", server.port, _path(server, url), ["v4.base64.channel.k8s.io"]
        )
        try:
            assert ws.recv() == (OP_TEXT, b"1")  # readiness: channel '1', empty payload
            ws.send(b"0" + base64.b64encode(b"hey"), OP_TEXT)
            assert ws.recv() == (OP_TEXT, b"1" + base64.b64encode(b"HEY"))
        finally:
            ws.close()

    _serve(scenario)


def _path(server: StreamingServer, url: str) -> str:
    return url.split(f":{server.port}", 1)[1]


def test_unknown_token_is_404_and_protocols_are_negotiated() -> None:
    """A made-up token gets 404; a WebSocket client asking only for unknown protocols gets 403."""

    def scenario(
        server: StreamingServer, loop: asyncio.AbstractEventLoop, runtime: FakeRuntime
    ) -> None:
        with pytest.raises(WsError, match="404"):
            WsClient.connect("127.0.0.1", server.port, "/exec/nope", ["v5.channel.k8s.io"])
        url = _issue(server, loop, ExecOptions(["x"], False, True, False, False))
        path = _path(server, url)
        with pytest.raises(WsError, match="403"):
            WsClient.connect("127.0.0.1", server.port, path, ["v9.channel.k8s.io"])

    _serve(scenario)


def test_spdy_frames_roundtrip() -> None:
    """The SPDY/3 dictionary is the spec's 1423 bytes; compressed headers decode."""
    assert len(spdy.DICTIONARY) == 1423
    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=spdy.DICTIONARY)
    block = deflate.compress(spdy.encode_headers({"streamType": ["stdout"]}))
    block += deflate.flush(zlib.Z_SYNC_FLUSH)
    inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
    assert spdy.decode_headers(inflate.decompress(block)) == {"streamtype": ["stdout"]}
    frame = spdy.control_frame(spdy.PING, 0, struct.pack(">I", 1))
    assert frame[:4] == b"\x80\x03\x00\x06"
