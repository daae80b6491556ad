"""A fault-injecting HTTP reverse proxy for tests, in front of a real plain-HTTP registry.

The registry and the client stay real; the proxy sits between them on 127.0.0.1 and, for
requests whose path matches a regex, breaks the exchange in one chosen way:

    with FaultProxy(registry.url) as proxy:            # 127.0.0.1:<free port>
        proxy.answer(r"/manifests/", 500)              # answer 500 without asking upstream
        proxy.answer(r"/v2/", 401, www_authenticate='Basic realm="x"')
        proxy.replace(r"/manifests/", content_type="application/x-unknown", body=b"{}")
        proxy.cut(r"/blobs/sha256:ab", after=4096)     # full Content-Length, 4096 bytes, close
        proxy.throttle(r"/blobs/", bytes_per_s=256_000)
        proxy.corrupt(r"/blobs/sha256:ab")             # one byte flipped, same length
        proxy.ignore_range(r"/blobs/")                 # upstream sees no Range: answers 200
        proxy.add(Fault(path=..., cut_after=300, bytes_per_s=4000, times=1))  # combined, once
        proxy.clear()                                  # back to verbatim forwarding

Everything else is forwarded verbatim: method, path and query (not re-encoded), every
request header including `Host` and `Range` (hop-by-hop headers excepted), request bodies
(Content-Length or chunked) and response bodies, both streamed in chunks, never held whole.
Every exchange is recorded (`requests()`): method, path, Range header, the status the client
got, the body bytes it was sent, and the fault applied.

It runs its own asyncio loop in one background thread: an `asyncio` stream server (a small
HTTP/1.1 parser, so a fault can do what a real server would not: close a connection in the
middle of a body it promised) and an aiohttp client session to the upstream. `stop()` closes
the listener, every client connection and the upstream session, then ends and joins the
thread, so nothing outlives it.
"""

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self

import aiohttp
import yarl
from multidict import CIMultiDict

LOOPBACK = "127.0.0.1"

# RFC 9110 section 7.6.1 hop-by-hop headers; a proxy does not forward them.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_CHUNK = 64 * 1024
_MAX_HEAD = 64 * 1024
_REASONS = {
    200: "OK",
    206: "Partial Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    416: "Range Not Satisfiable",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
_ERROR_CODES = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NAME_UNKNOWN", 429: "TOOMANYREQUESTS"}

Headers = list[tuple[str, str]]


class FaultProxyError(RuntimeError):
    """The proxy did not start or stop in time."""


@dataclass
class Fault:
    """What to do to exchanges whose path matches `path` (a regex, `re.search`).

    Effects combine (a throttled response can also be cut), except that `status` answers
    without contacting the upstream at all. `times` limits how many exchanges the fault
    affects (None: all); the first matching fault with uses left wins.
    """

    path: str
    methods: frozenset[str] | None = None  # None: any method
    times: int | None = None
    status: int | None = None  # answer this status ourselves
    www_authenticate: str | None = None  # with `status`: a WWW-Authenticate header
    content_type: str | None = None  # replace the response's Content-Type
    body: bytes | None = None  # replace the response body (Content-Length follows)
    cut_after: int | None = None  # close the connection after this many body bytes
    bytes_per_s: float | None = None  # send the body at this rate
    flip_at: int | None = None  # XOR 0xff into this body offset (-1: the middle)
    drop_request_headers: frozenset[str] = frozenset()  # lower-case names not to forward
    name: str = ""
    used: int = 0  # exchanges affected so far

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.times is not None and self.used >= self.times:
            return False
        return re.search(self.path, path) is not None


@dataclass
class Exchange:
    """One request the proxy handled, updated while its response streams."""

    method: str
    path: str  # without the query
    query: str
    range: str | None  # the request's Range header, verbatim
    status: int = 0  # what the client got (0: no response head was sent)
    bytes_sent: int = 0  # response body bytes written to the client
    content_length: int | None = None  # what the response head promised
    fault: str | None = None  # name of the fault applied, if any
    complete: bool = False  # the whole response was sent
    error: str | None = None  # why it was not (client gone, upstream error, cut)
    started: float = field(default_factory=time.monotonic)

    @property
    def range_start(self) -> int | None:
        """N of a `bytes=N-...` Range header, else None."""
        m = re.fullmatch(r"\s*bytes=(\d+)-\d*\s*", self.range or "")
        return int(m.group(1)) if m else None


class _Cut(Exception):
    """A fault ended the response early on purpose."""


class FaultProxy:
    """A reverse proxy to `upstream` (`http://host:port`) on 127.0.0.1; see the module doc."""

    def __init__(self, upstream: str, *, start_timeout_s: float = 10.0) -> None:
        if not upstream.startswith("http://"):
            raise ValueError("FaultProxy forwards to plain-HTTP upstreams only")
        self.upstream = upstream.rstrip("/")
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._exchanges: list[Exchange] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._session: aiohttp.ClientSession | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- addresses -----------------------------------------------------------------------

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of image references pulled through us."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- faults --------------------------------------------------------------------------

    def add(self, fault: Fault) -> Fault:
        """Install `fault` (after those already installed) and return it."""
        re.compile(fault.path)
        if not fault.name:
            fault.name = f"fault-{len(self._faults) + 1}:{fault.path}"
        with self._lock:
            self._faults.append(fault)
        return fault

    def answer(
        self,
        path: str,
        status: int,
        *,
        www_authenticate: str | None = None,
        body: bytes | None = None,
        times: int | None = None,
        methods: frozenset[str] | None = None,
    ) -> Fault:
        """Answer `status` ourselves (a distribution-style JSON error body unless `body`)."""
        return self.add(
            Fault(
                path=path,
                status=status,
                www_authenticate=www_authenticate,
                body=body,
                times=times,
                methods=methods,
                name=f"answer {status}",
            )
        )

    def replace(
        self, path: str, *, content_type: str, body: bytes, times: int | None = None
    ) -> Fault:
        """Forward, but serve `body` with `content_type` instead of the upstream's."""
        return self.add(
            Fault(path=path, content_type=content_type, body=body, times=times, name="replace")
        )

    def cut(self, path: str, *, after: int, times: int | None = None) -> Fault:
        """Send the head with the full Content-Length, `after` body bytes, then close."""
        return self.add(Fault(path=path, cut_after=after, times=times, name=f"cut@{after}"))

    def throttle(self, path: str, *, bytes_per_s: float, times: int | None = None) -> Fault:
        """Send matching response bodies at `bytes_per_s`."""
        if bytes_per_s <= 0:
            raise ValueError("bytes_per_s must be positive")
        return self.add(
            Fault(path=path, bytes_per_s=bytes_per_s, times=times, name=f"throttle {bytes_per_s}")
        )

    def corrupt(self, path: str, *, at: int = -1, times: int | None = None) -> Fault:
        """Flip the byte at body offset `at` (-1: the middle); the length is unchanged."""
        return self.add(Fault(path=path, flip_at=at, times=times, name=f"corrupt@{at}"))

    def ignore_range(self, path: str, *, times: int | None = None) -> Fault:
        """Forward without the Range header, as a server that ignores Range would answer."""
        return self.add(
            Fault(
                path=path, drop_request_headers=frozenset({"range"}), times=times, name="no-range"
            )
        )

    def remove(self, fault: Fault) -> None:
        with self._lock:
            self._faults = [f for f in self._faults if f is not fault]

    def clear(self) -> None:
        """Remove every fault: forward verbatim from now on."""
        with self._lock:
            self._faults = []

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.used += 1
                    return replace(fault)  # a copy: later edits do not change this exchange
        return None

    # -- records -------------------------------------------------------------------------

    def requests(self, path: str | None = None, *, method: str | None = None) -> list[Exchange]:
        """Copies of the recorded exchanges, oldest first; filtered by path regex / method."""
        with self._lock:
            found = list(self._exchanges)
        return [
            replace(e)
            for e in found
            if (path is None or re.search(path, e.path)) and (method is None or e.method == method)
        ]

    def bytes_sent(self, path: str | None = None) -> int:
        """Response body bytes sent so far for exchanges whose path matches `path`."""
        return sum(e.bytes_sent for e in self.requests(path))

    def forget(self) -> None:
        """Drop the recorded exchanges (faults stay)."""
        with self._lock:
            self._exchanges = []

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self._exchanges.append(exchange)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Listen on a free 127.0.0.1 port and serve from a background thread."""
        if self._thread is not None:
            raise FaultProxyError("proxy already started")
        loop = asyncio.new_event_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOOPBACK, 0))  # the kernel picks the port: no race with others
            self.port = int(sock.getsockname()[1])
        except BaseException:
            sock.close()
            loop.close()
            raise
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, name=f"faultproxy-{self.port}", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._start(sock), self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close the listener, every connection and the upstream session; join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if thread.is_alive() and not loop.is_closed():
                try:
                    self._call(self._shutdown(), timeout_s)
                finally:
                    loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
            if thread.is_alive():
                raise FaultProxyError(f"proxy thread {thread.name} did not stop in {timeout_s}s")
        finally:
            if not thread.is_alive() and not loop.is_closed():
                loop.close()
            self._loop = None
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run_loop(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        # After stop(): let cancelled tasks and closed transports finish their callbacks.
        pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.run_until_complete(self._loop.shutdown_default_executor())  # resolver threads

    def _call(self, coro: Coroutine[Any, Any, None], timeout_s: float) -> None:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            future.result(timeout_s)
        except TimeoutError as err:
            future.cancel()
            raise FaultProxyError(f"proxy did not answer within {timeout_s}s") from err

    async def _start(self, sock: socket.socket) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
            auto_decompress=False,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._server = await asyncio.start_server(self._connection, sock=sock, limit=_MAX_HEAD)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._conns)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- serving -------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._writers.add(writer)
        try:
            while True:
                try:
                    first = await reader.readexactly(1)
                    if not first.isalpha():
                        # Not HTTP (a TLS ClientHello from a client trying HTTPS first): say
                        # so at once, as Go's server does, so the client falls back quickly.
                        writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                        await writer.drain()
                        return
                    head = first + await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                keep_alive = await self._exchange(head, reader, writer)
                if not keep_alive:
                    return
        except (ConnectionError, OSError, _Cut):
            return
        except asyncio.CancelledError:
            return  # stop(): end quietly (asyncio logs a cancelled connection callback)
        finally:
            self._writers.discard(writer)
            self._conns.discard(task)
            writer.close()

    async def _exchange(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Handle one request; True if the connection may carry another."""
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            await _send_head(writer, 400, [("Content-Length", "0")])
            return False
        headers: Headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        path, _, query = target.partition("?")
        exchange = Exchange(method=method, path=path, query=query, range=_header(headers, "range"))
        self._record(exchange)
        body = _request_body(headers, reader)
        close_after = (
            version == "HTTP/1.0" or (_header(headers, "connection") or "").lower() == "close"
        )
        fault = self._take_fault(method, path)
        if fault is not None:
            exchange.fault = fault.name
        if fault is not None and fault.status is not None:
            if body is not None:
                async for _ in body:  # keep the connection usable
                    pass
            await self._answer(fault, method, exchange, writer)
            return not close_after
        try:
            return (
                await self._forward(method, target, headers, body, fault, exchange, writer)
                and not close_after
            )
        except (ConnectionError, OSError) as err:
            exchange.error = f"client connection: {err or type(err).__name__}"
            raise

    async def _answer(
        self, fault: Fault, method: str, exchange: Exchange, writer: asyncio.StreamWriter
    ) -> None:
        assert fault.status is not None
        status = fault.status
        body = fault.body
        if body is None:
            code = _ERROR_CODES.get(status, "UNKNOWN")
            message = f"injected by the fault proxy ({_REASONS.get(status, 'error')})"
            body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
        out: Headers = [
            ("Content-Type", fault.content_type or "application/json; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Docker-Distribution-Api-Version", "registry/2.0"),
        ]
        if fault.www_authenticate is not None:
            out.append(("WWW-Authenticate", fault.www_authenticate))
        # Records change before the bytes leave: a client that saw them sees the record too.
        exchange.status = status
        exchange.content_length = len(body)
        if method == "HEAD":
            exchange.complete = True
        await _send_head(writer, status, out)
        if method != "HEAD":
            exchange.bytes_sent = len(body)
            exchange.complete = True
            writer.write(body)
            await writer.drain()

    async def _forward(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: AsyncIterator[bytes] | None,
        fault: Fault | None,
        exchange: Exchange,
        writer: asyncio.StreamWriter,
    ) -> bool:
        assert self._session is not None
        dropped = _HOP_BY_HOP | (fault.drop_request_headers if fault is not None else frozenset())
        send = [(k, v) for k, v in headers if k.lower() not in dropped]
        # A chunked request body arrives decoded and leaves re-chunked (no Content-Length).
        url = yarl.URL(self.upstream + target, encoded=True)
        try:
            upstream = await self._session.request(
                method,
                url,
                headers=CIMultiDict(send),
                data=body,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            exchange.error = f"upstream: {err or type(err).__name__}"
            payload = json.dumps({"errors": [{"code": "UNKNOWN", "message": str(err)}]}).encode()
            exchange.status = 502
            exchange.bytes_sent = len(payload)
            await _send_head(
                writer,
                502,
                [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
            )
            writer.write(payload)
            await writer.drain()
            return False
        async with upstream:
            out: Headers = [
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in upstream.raw_headers
                if k.decode("latin-1").lower() not in _HOP_BY_HOP
            ]
            length = upstream.content_length
            no_body = method == "HEAD" or upstream.status in (204, 304) or upstream.status < 200
            replaced: bytes | None = None
            if fault is not None and fault.body is not None and not no_body:
                replaced = fault.body
                length = len(replaced)
                out = [
                    (k, v) for k, v in out if k.lower() not in ("content-length", "content-type")
                ]
                out.append(("Content-Length", str(length)))
            if fault is not None and fault.content_type is not None:
                out = [(k, v) for k, v in out if k.lower() != "content-type"]
                out.append(("Content-Type", fault.content_type))
            chunked = not no_body and length is None
            if chunked:
                out.append(("Transfer-Encoding", "chunked"))
            exchange.status = upstream.status
            exchange.content_length = length
            exchange.complete = no_body or length == 0
            await _send_head(writer, upstream.status, out)
            if no_body:
                return True
            if replaced is not None:
                chunks: AsyncIterator[bytes] = _one(replaced)
            else:
                chunks = upstream.content.iter_chunked(_CHUNK)
            try:
                await self._send_body(chunks, fault, length, chunked, exchange, writer)
            except (aiohttp.ClientError, TimeoutError) as err:
                # The upstream broke mid-body: pass the breakage on, as a real proxy would.
                exchange.error = f"upstream: {err or type(err).__name__}"
                upstream.close()
                writer.transport.abort()
                return False
            except BaseException:
                upstream.close()
                raise
        return True

    async def _send_body(
        self,
        chunks: AsyncIterator[bytes],
        fault: Fault | None,
        length: int | None,
        chunked: bool,
        exchange: Exchange,
        writer: asyncio.StreamWriter,
    ) -> None:
        flip_at = fault.flip_at if fault is not None else None
        if flip_at == -1:
            flip_at = (length or 0) // 2
        cut_after = fault.cut_after if fault is not None else None
        rate = fault.bytes_per_s if fault is not None else None
        piece = _CHUNK if rate is None else max(1, min(_CHUNK, int(rate / 20)))
        began = time.monotonic()
        sent = 0
        async for big in chunks:
            for start in range(0, len(big), piece):
                data = big[start : start + piece]
                if flip_at is not None and sent <= flip_at < sent + len(data):
                    i = flip_at - sent
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                if cut_after is not None and sent + len(data) >= cut_after:
                    data = data[: cut_after - sent]
                    sent += len(data)
                    exchange.bytes_sent = sent
                    exchange.error = f"cut after {sent} bytes"
                    await self._write(writer, data, chunked)
                    # FIN after the bytes: the client sees a body shorter than promised.
                    writer.close()
                    await writer.wait_closed()
                    raise _Cut()
                sent += len(data)
                exchange.bytes_sent = sent
                exchange.complete = not chunked and sent == length
                await self._write(writer, data, chunked)
                if rate is not None:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        if chunked:
            exchange.complete = True
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, data: bytes, chunked: bool) -> None:
        if not data:
            return
        if chunked:
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        else:
            writer.write(data)
        await writer.drain()


def _header(headers: Headers, name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


async def _send_head(writer: asyncio.StreamWriter, status: int, headers: Headers) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _request_body(headers: Headers, reader: asyncio.StreamReader) -> AsyncIterator[bytes] | None:
    """The request body as a stream (Content-Length or chunked), or None without one."""
    if (_header(headers, "transfer-encoding") or "").lower().endswith("chunked"):
        return _chunked_body(reader)
    length = int(_header(headers, "content-length") or 0)
    if length <= 0:
        return None
    return _sized_body(reader, length)


async def _sized_body(reader: asyncio.StreamReader, length: int) -> AsyncIterator[bytes]:
    left = length
    while left > 0:
        data = await reader.read(min(left, _CHUNK))
        if not data:
            raise ConnectionResetError("client closed the connection inside a request body")
        left -= len(data)
        yield data


async def _chunked_body(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.02, what: str = ""
) -> None:
    """Poll `predicate` until it holds; raise TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(interval_s)
