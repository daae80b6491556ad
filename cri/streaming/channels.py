"""One shape for the two ways a client multiplexes stdio: SPDY streams and WebSocket channels.

    SPDY/3.1 (spdy.py)                       WebSocket (RFC 6455, aiohttp)
      the client opens one stream per          every message starts with a channel byte:
      channel, header streamType =             0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize;
      stdin|stdout|stderr|error|resize;        base64.* protocols: the byte is an ASCII digit
      FIN half-closes                          and the payload base64 text; v5.channel.k8s.io:
                                               [255, n] closes channel n (stdin EOF)

`Session.channels(opts, protocol)` hands exec/attach (remotecommand.py) the channels the
request asked for, whichever transport carried them; `Session.done` is set when the peer
went away. The WebSocket server side writes one empty message on the lowest writable
channel first, which tells a client the connection is up (what Kubernetes' servers do).
"""

import asyncio
import base64
import binascii
import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

from aiohttp import WSMsgType, web

from cri.streaming.spdy import SpdyConnection, SpdyStream

log = logging.getLogger("cri.streaming.channels")

STREAM_CREATION_TIMEOUT_S = 30.0
IDLE_CLOSE_S = 5.0

CHANNEL_NUMBERS = {"stdin": 0, "stdout": 1, "stderr": 2, "error": 3, "resize": 4}
CLOSE_SIGNAL = 255
V5 = "v5.channel.k8s.io"
STATUS_PROTOCOLS = frozenset({"v4.channel.k8s.io", "v4.base64.channel.k8s.io", V5})
"""Protocols whose error channel carries a metav1.Status (older ones: plain text)."""
RESIZE_PROTOCOLS = frozenset({"v3.channel.k8s.io", *STATUS_PROTOCOLS})


@dataclass(frozen=True)
class ExecOptions:
    command: list[str]
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


class Channel(Protocol):
    """One direction-agnostic channel: read what the peer sends, write back, half-close."""

    reset: bool
    local_closed: bool

    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> bool: ...
    async def close(self) -> None: ...
    def cancel(self) -> None: ...


class Session(Protocol):
    """An upgraded connection carrying a remotecommand session."""

    done: asyncio.Event

    @property
    def closed(self) -> bool: ...

    async def channels(self, opts: ExecOptions, protocol: str) -> dict[str, Channel] | None: ...
    async def finish(self) -> None: ...
    def goaway(self) -> None: ...
    def close(self) -> None: ...


def wanted_channels(opts: ExecOptions, protocol: str) -> set[str]:
    want = {"error"}
    if opts.stdin:
        want.add("stdin")
    if opts.stdout:
        want.add("stdout")
    if opts.stderr and not opts.tty:
        want.add("stderr")
    if opts.tty and protocol in RESIZE_PROTOCOLS:
        want.add("resize")
    return want


# ---- SPDY ---------------------------------------------------------------------------------------


class SpdySession:
    """A SPDY connection seen as a remotecommand session: wait for the client's streams."""

    def __init__(self, conn: SpdyConnection) -> None:
        self.conn = conn
        self.done = conn.done

    @property
    def closed(self) -> bool:
        return self.conn.closed

    async def channels(self, opts: ExecOptions, protocol: str) -> dict[str, Channel] | None:
        want = wanted_channels(opts, protocol)
        got: dict[str, SpdyStream] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAM_CREATION_TIMEOUT_S
        while not want <= got.keys():
            stream = await self.conn.accept(max(0.0, deadline - loop.time()))
            if stream is None:
                return None
            kind = stream.header("streamType")
            if kind in CHANNEL_NUMBERS:
                got[kind] = stream
            else:
                stream.cancel()
        return dict(got)

    async def finish(self) -> None:
        """Let the client close first (it has what it needs), then say GOAWAY ourselves."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.conn.done.wait(), IDLE_CLOSE_S)
        if not self.conn.closed:
            self.conn.goaway()
            with contextlib.suppress(ConnectionError, OSError):
                await self.conn.drain()

    def goaway(self) -> None:
        self.conn.goaway()

    def close(self) -> None:
        self.conn.close()


# ---- WebSocket --------------------------------------------------------------------------------


class WebSocketChannel:
    """Channel `num` of a WebSocket session."""

    def __init__(self, session: "WebSocketSession", num: int) -> None:
        self.session = session
        self.num = num
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.remote_closed = False
        self.local_closed = False
        self.reset = False

    def _feed(self, data: bytes) -> None:
        if not self.remote_closed and data:
            self._chunks.put_nowait(data)

    def _eof(self, *, reset: bool = False) -> None:
        if reset:
            self.reset = True
            self.local_closed = True
        if not self.remote_closed:
            self.remote_closed = True
            self._chunks.put_nowait(b"")

    async def read(self) -> bytes:
        if self._chunks.empty() and self.remote_closed:
            return b""
        data = await self._chunks.get()
        if not data:
            self._chunks.put_nowait(b"")
        return data

    async def write(self, data: bytes) -> bool:
        if self.local_closed or self.session.closed:
            return False
        return await self.session.send(self.num, data)

    async def close(self) -> None:
        """Our side is done; the protocols have no server-to-client half-close on the wire."""
        self.local_closed = True

    def cancel(self) -> None:
        self._eof(reset=True)


class WebSocketSession:
    """The server end of a channel.k8s.io-family WebSocket (`ws` is already prepared)."""

    MAX_FRAME = 32 * 1024

    def __init__(self, ws: web.WebSocketResponse, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self.base64 = "base64" in protocol
        self.close_signal = protocol == V5
        self.done = asyncio.Event()
        self.closed = False
        self._channels = {n: WebSocketChannel(self, n) for n in CHANNEL_NUMBERS.values()}
        self._closer: asyncio.Future[None] | None = None
        self._reader = asyncio.create_task(self._read_loop(), name="websocket-reader")

    async def _read_loop(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.BINARY:
                    data = bytes(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    data = str(msg.data).encode()
                else:
                    continue
                self._dispatch(data)
        except (ConnectionError, OSError) as err:
            log.debug("websocket read ended: %s", err)
        finally:
            self.close()

    def _dispatch(self, data: bytes) -> None:
        if not data:
            return
        if self.close_signal and data[0] == CLOSE_SIGNAL:
            if len(data) == 2 and data[1] in self._channels:
                self._channels[data[1]]._eof()
            return
        num = data[0] - ord("0") if self.base64 else data[0]
        channel = self._channels.get(num)
        if channel is None:
            return
        payload = data[1:]
        if self.base64:
            try:
                payload = base64.b64decode(payload)
            except (binascii.Error, ValueError):
                log.debug("websocket: bad base64 on channel %d", num)
                return
        channel._feed(payload)

    async def send(self, num: int, data: bytes) -> bool:
        try:
            for off in range(0, max(len(data), 1), self.MAX_FRAME):
                chunk = data[off : off + self.MAX_FRAME]
                if self.base64:
                    await self.ws.send_str(chr(ord("0") + num) + base64.b64encode(chunk).decode())
                else:
                    await self.ws.send_bytes(bytes((num,)) + chunk)
        except (ConnectionError, OSError, RuntimeError) as err:
            log.debug("websocket write failed: %s", err)
            self.close()
            return False
        return True

    async def channels(self, opts: ExecOptions, protocol: str) -> dict[str, Channel] | None:
        want = wanted_channels(opts, protocol)
        if opts.tty:
            want.add("resize")  # always channel 4 on a WebSocket
        got: dict[str, Channel] = {name: self._channels[CHANNEL_NUMBERS[name]] for name in want}
        if not opts.stdin:
            self._channels[0]._eof()
        first = "stdout" if "stdout" in got else "stderr" if "stderr" in got else "error"
        if not await self.send(CHANNEL_NUMBERS[first], b""):
            return None
        return got

    async def finish(self) -> None:
        """A normal closure (1000); the client ends its streams on it."""
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            await asyncio.wait_for(self.ws.close(), IDLE_CLOSE_S)
        self.close()

    def goaway(self) -> None:
        self._closer = asyncio.ensure_future(self.finish())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for channel in self._channels.values():
            channel._eof(reset=True)
        self.done.set()
        if not self._reader.done() and asyncio.current_task() is not self._reader:
            self._reader.cancel()
