"""portforward.k8s.io: TCP connections into a pod's network namespace, over SPDY/3.1.

Per forwarded connection the client opens an `error` and a `data` stream with the same
`requestID` and a `port` header; we connect to the pod's 127.0.0.1:<port> from a thread
that has entered the sandbox's network namespace, copy both ways, and report failures as
text on the error stream. The SPDY session arrives either on a plain HTTP upgrade or
tunneled in a WebSocket (subprotocol `SPDY/3.1+portforward.k8s.io`, binary messages
carrying the SPDY bytes), which is how kubectl and crictl speak it over WebSockets.
"""

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import socket
import threading

from aiohttp import WSMsgType, web

from cri.streaming.spdy import SpdyConnection, SpdyStream
from cri.streaming.upgrade import (
    HEADER_PROTOCOL,
    PORT_FORWARD_PROTOCOLS,
    WS_TUNNEL_PREFIX,
    is_websocket,
    negotiate,
    negotiate_websocket,
    upgrade_spdy,
    watch_closing,
)

log = logging.getLogger("cri.streaming.portforward")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_CLONE_NEWNET = 0x40000000


def connect_in_netns(netns: str | None, port: int, timeout_s: float = 10.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:port made inside the network namespace `netns`.

    The socket is created by a short-lived thread that setns()'s first (a socket belongs to
    the namespace it was created in; the thread, not the process, switches).
    """
    result: list[socket.socket | BaseException] = []

    def target() -> None:
        try:
            if netns:
                fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if _libc.setns(fd, _CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
                finally:
                    os.close(fd)
            result.append(socket.create_connection(("127.0.0.1", port), timeout=timeout_s))
        except BaseException as err:  # noqa: BLE001 — handed to the caller
            result.append(err)

    thread = threading.Thread(target=target, name=f"portforward-{port}", daemon=True)
    thread.start()
    thread.join()
    got = result[0]
    if isinstance(got, BaseException):
        raise got
    got.setblocking(False)
    return got


async def _forward(
    pair_data: SpdyStream, pair_error: SpdyStream, port: int, netns: str | None, what: str
) -> None:
    loop = asyncio.get_running_loop()
    try:
        sock = await asyncio.to_thread(connect_in_netns, netns, port)
    except OSError as err:
        msg = f"error forwarding port {port} to pod {what}: {err}"
        log.info("%s", msg)
        await pair_error.write(msg.encode())
        await pair_error.close()
        await pair_data.close()
        return

    async def upstream() -> None:
        while True:
            data = await pair_data.read()
            if not data:
                break
            await loop.sock_sendall(sock, data)
        if not pair_data.reset:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

    up = asyncio.create_task(upstream())
    try:
        while True:
            try:
                data = await loop.sock_recv(sock, 65536)
            except OSError:
                data = b""
            if not data:
                break
            if not await pair_data.write(data):
                break
        await pair_data.close()
        if not pair_data.reset:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(up), 60.0)
    except OSError as err:
        log.debug("port forward %s:%d ended: %s", what, port, err)
    finally:
        up.cancel()
        await asyncio.gather(up, return_exceptions=True)
        sock.close()
        await pair_error.close()


async def _serve_session(
    conn: SpdyConnection, netns: str | None, what: str, closing: asyncio.Event | None
) -> None:
    pending: dict[str, dict[str, SpdyStream]] = {}
    tasks: set[asyncio.Task[None]] = {watch_closing(conn.done, conn.goaway, closing)}
    try:
        while True:
            stream = await conn.accept(None)
            if stream is None:
                break
            kind = stream.header("streamType")
            rid = stream.header("requestID")
            if kind not in ("data", "error"):
                stream.cancel()
                continue
            pair = pending.setdefault(rid, {})
            if kind in pair:
                stream.cancel()
                continue
            pair[kind] = stream
            if len(pair) < 2:
                continue
            del pending[rid]
            try:
                port = int(pair["data"].header("port"))
                if not 0 < port < 65536:
                    raise ValueError(port)
            except ValueError:
                msg = f'invalid port header "{pair["data"].header("port")}"'
                await pair["error"].write(msg.encode())
                await pair["error"].close()
                pair["data"].cancel()
                continue
            task = asyncio.create_task(_forward(pair["data"], pair["error"], port, netns, what))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except (ConnectionError, OSError) as err:
        log.debug("port-forward session ended: %s", err)
    finally:
        conn.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _WebSocketPipe:
    """SpdyConnection's byte sink on a WebSocket: each write becomes one binary message."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.task = asyncio.create_task(self._send_loop(), name="portforward-ws-writer")

    def write(self, data: bytes) -> None:
        self._queue.put_nowait(data)

    async def drain(self) -> None:
        await self._queue.join()

    async def _send_loop(self) -> None:
        while True:
            data = await self._queue.get()
            try:
                await self.ws.send_bytes(data)
            except (ConnectionError, OSError, RuntimeError):
                pass
            finally:
                self._queue.task_done()


async def serve_port_forward(
    request: web.Request, netns: str | None, what: str, *, closing: asyncio.Event | None = None
) -> web.StreamResponse:
    """Upgrade (SPDY, or SPDY tunneled in a WebSocket) and forward until the client leaves."""
    if is_websocket(request):
        server = tuple(WS_TUNNEL_PREFIX + p for p in PORT_FORWARD_PROTOCOLS)
        protocol = negotiate_websocket(request, server)
        if not protocol:
            raise web.HTTPBadRequest(
                text=f"unable to upgrade: a WebSocket port-forward must ask for {server[0]}"
            )
        ws = web.WebSocketResponse(protocols=(protocol,), compress=False)
        await ws.prepare(request)
        pipe = _WebSocketPipe(ws)
        conn = SpdyConnection(pipe.write, pipe.drain)

        async def feed() -> None:
            try:
                async for msg in ws:
                    if msg.type == WSMsgType.BINARY:
                        conn.feed_data(bytes(msg.data))
            finally:
                conn.feed_eof()

        reader = asyncio.create_task(feed(), name="portforward-ws-reader")
        try:
            await _serve_session(conn, netns, what, closing)
        finally:
            for task in (reader, pipe.task):
                task.cancel()
            await asyncio.gather(reader, pipe.task, return_exceptions=True)
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                await ws.close()
        return ws
    protocol = negotiate(request, PORT_FORWARD_PROTOCOLS)
    if not protocol:
        raise web.HTTPBadRequest(
            text=f"unable to upgrade: header {HEADER_PROTOCOL} does not exist in request"
        )
    resp, conn = await upgrade_spdy(request, protocol)
    await _serve_session(conn, netns, what, closing)
    return resp
