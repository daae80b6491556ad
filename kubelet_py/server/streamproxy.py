"""Proxy an upgraded exec/attach/port-forward request to the URL the CRI runtime returned.

    apiserver ──SPDY/WebSocket upgrade──▶ kubelet :10250 /exec/ns/pod/ctr
                                            │ CRI Exec ─▶ url (http://127.0.0.1:p/exec/<token>)
                                            └─ same method, upgrade headers ─▶ url
    ◀── the runtime's 101 (or its error) ───┘  then bytes both ways, untouched

This is what the upstream kubelet does with any CRI runtime (containerd, CRI-O): the
protocol (SPDY/3.1, WebSocket v5/v4…, port-forward tunnels) is negotiated end to end with
the runtime's streaming server, so the kubelet never parses the session.
"""

import asyncio
import contextlib
import logging
import urllib.parse

from aiohttp import web

log = logging.getLogger("kubelet_py.server.streamproxy")

_FORWARDED = (
    "Upgrade",
    "Connection",
    "X-Stream-Protocol-Version",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
)
_NOT_COPIED_BACK = {"content-length", "transfer-encoding", "date", "server"}
_HIGH_WATER = 1 << 20
_MAX_HEAD = 64 * 1024


class StreamProxyError(Exception):
    """The runtime's streaming server could not be reached or answered nonsense."""


class _ClientSide:
    """The client's bytes after the upgrade (aiohttp's set_parser shape) go upstream."""

    def __init__(self, upstream: asyncio.StreamWriter, client: asyncio.Transport) -> None:
        self.upstream = upstream
        self.client = client
        self.done = asyncio.Event()
        self._paused = False
        self._resumer: asyncio.Future[None] | None = None

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.done.is_set() or self.upstream.is_closing():
            return False, b""
        self.upstream.write(data)
        if not self._paused and self.upstream.transport.get_write_buffer_size() > _HIGH_WATER:
            self._paused = True
            self.client.pause_reading()
            self._resumer = asyncio.ensure_future(self._resume())
        return False, b""

    async def _resume(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.upstream.drain()
        self._paused = False
        with contextlib.suppress(RuntimeError):
            self.client.resume_reading()

    def feed_eof(self) -> None:
        self.done.set()


def _upstream_request(request: web.Request, url: str) -> tuple[str, int, bytes]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise StreamProxyError(f"the runtime's streaming URL {url!r} is not http://host:port/…")
    port = parts.port or 80
    target = parts.path or "/"
    query = parts.query or request.rel_url.raw_query_string
    if query:
        target += "?" + query
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    lines = [f"{request.method} {target} HTTP/1.1", f"Host: {host}:{port}"]
    for name in _FORWARDED:
        for value in request.headers.getall(name, []):
            lines.append(f"{name}: {value}")
    return parts.hostname, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    text = head.decode("latin-1").split("\r\n")
    try:
        _version, code, *reason = text[0].split(" ", 2)
        status = int(code)
    except ValueError as err:
        raise StreamProxyError(f"bad status line from the runtime: {text[0]!r}") from err
    headers = []
    for line in text[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers.append((name.strip(), value.strip()))
    return status, (reason[0] if reason else ""), headers


async def proxy_stream(request: web.Request, url: str) -> web.StreamResponse:
    """Forward the upgrade to `url`; relay the answer and then the raw bytes."""
    host, port, head_out = _upstream_request(request, url)
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=_MAX_HEAD)
    except OSError as err:
        raise web.HTTPBadGateway(text=f"the runtime's streaming server at {url}: {err}") from err
    try:
        writer.write(head_out)
        await writer.drain()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30.0)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as err:
            raise web.HTTPBadGateway(text=f"no answer from the streaming server: {err}") from err
        status, reason, headers = _parse_head(head)
        if status != 101:
            length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
            body = await reader.readexactly(length) if length else b""
            ctype = next((v for k, v in headers if k.lower() == "content-type"), "text/plain")
            return web.Response(
                status=status, body=body, headers={"Content-Type": ctype}, reason=reason or None
            )
        return await _relay(request, reader, writer, headers)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def _relay(
    request: web.Request,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    headers: list[tuple[str, str]],
) -> web.StreamResponse:
    transport = request.transport
    handler = request.protocol
    if transport is None:
        raise ConnectionResetError("the client went away")
    resp = web.StreamResponse(status=101)
    for name, value in headers:
        if name.lower() not in _NOT_COPIED_BACK:
            resp.headers.add(name, value)
    resp.force_close()
    client = _ClientSide(writer, transport)
    handler.set_parser(client)  # type: ignore[arg-type]
    handler.keep_alive(False)
    await resp.prepare(request)

    async def downstream() -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            transport.write(data)
            await handler._drain_helper()

    down = asyncio.ensure_future(downstream())
    gone = asyncio.ensure_future(client.done.wait())
    try:
        await asyncio.wait({down, gone}, return_when=asyncio.FIRST_COMPLETED)
    except (ConnectionError, OSError) as err:
        log.debug("stream proxy ended: %s", err)
    finally:
        for fut in (down, gone):
            fut.cancel()
        await asyncio.gather(down, gone, return_exceptions=True)
        client.done.set()
    return resp
