"""SPDY/3.1 framing, the server side of the streams the API server opens to a kubelet.

    kube-apiserver ──HTTP/1.1 Upgrade: SPDY/3.1──▶ 101 ──▶ frames both ways on one TCP/TLS
        SYN_STREAM(id, headers) ─▶ we answer SYN_REPLY at once, the stream is open
        DATA(id, bytes[, FIN])  ◀─▶ each side half-closes with FIN
        RST_STREAM, PING (echoed), SETTINGS/WINDOW_UPDATE (ignored), GOAWAY (closes)

Control frame: 1|version(15) type(16) flags(8) length(24) payload. Data frame:
0|stream id(31) flags(8) length(24) payload. Name/value blocks are one zlib stream per
direction per connection, primed with the SPDY/3 dictionary and flushed with
Z_SYNC_FLUSH after each block. Like spdystream (what Kubernetes uses), flow control
windows are neither enforced nor announced.
"""

import asyncio
import logging
import struct
import zlib
from collections.abc import Awaitable, Callable

log = logging.getLogger("cri.streaming.spdy")

VERSION = 3

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01

RST_PROTOCOL_ERROR = 1
RST_INVALID_STREAM = 2
RST_REFUSED_STREAM = 3
RST_CANCEL = 5
RST_INTERNAL_ERROR = 6

MAX_DATA = 32 * 1024
"""Largest data frame we send (the frame format allows 16 MiB - 1)."""

_WORDS = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
]
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502"
    "504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
    "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
    "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
    "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
    "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,"
    "publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()
"""The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1), 1423 bytes."""

Headers = dict[str, list[str]]


class SpdyProtocolError(Exception):
    pass


def encode_headers(headers: Headers) -> bytes:
    """An uncompressed name/value block (names lowercased, values joined by NUL)."""
    out = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        n = name.lower().encode()
        v = "\x00".join(values).encode()
        out += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
    return b"".join(out)


def decode_headers(block: bytes) -> Headers:
    out: Headers = {}
    try:
        (count,) = struct.unpack_from(">I", block, 0)
        pos = 4
        for _ in range(count):
            (n,) = struct.unpack_from(">I", block, pos)
            name = block[pos + 4 : pos + 4 + n].decode()
            pos += 4 + n
            (n,) = struct.unpack_from(">I", block, pos)
            value = block[pos + 4 : pos + 4 + n].decode()
            pos += 4 + n
            out.setdefault(name.lower(), []).extend(value.split("\x00"))
    except (struct.error, UnicodeDecodeError) as err:
        raise SpdyProtocolError(f"bad name/value block: {err}") from err
    return out


def control_frame(ftype: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, flags: int, data: bytes) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(data)) + data


class SpdyStream:
    """One stream the peer opened: read what it sends, write back, half-close with FIN."""

    def __init__(self, conn: "SpdyConnection", stream_id: int, headers: Headers) -> None:
        self.conn = conn
        self.id = stream_id
        self.headers = headers
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.remote_closed = False
        self.local_closed = False
        self.reset = False

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower()) or [""]
        return values[0]

    def _feed(self, data: bytes, fin: bool) -> None:
        if self.remote_closed:
            return
        if data:
            self.conn._buffered(len(data))
            self._chunks.put_nowait(data)
        if fin:
            self.remote_closed = True
            self._chunks.put_nowait(b"")

    def _abort(self) -> None:
        """Reset by the peer or the connection is gone: reads end, writes are dropped."""
        self.reset = True
        self.local_closed = True
        if not self.remote_closed:
            self.remote_closed = True
            self._chunks.put_nowait(b"")

    async def read(self) -> bytes:
        """The next chunk the peer sent; b"" once it half-closed (or reset) the stream."""
        if self._chunks.empty() and self.remote_closed:
            return b""
        data = await self._chunks.get()
        if not data:
            self._chunks.put_nowait(b"")  # stay at EOF for later readers
        else:
            self.conn._consumed(len(data))
        return data

    async def write(self, data: bytes) -> bool:
        if self.local_closed or self.conn.closed:
            return False
        view = memoryview(data)
        for off in range(0, len(view), MAX_DATA):
            self.conn._send(data_frame(self.id, 0, bytes(view[off : off + MAX_DATA])))
            await self.conn.drain()
        return True

    async def close(self) -> None:
        """Half-close: FIN on our side."""
        if self.local_closed or self.conn.closed:
            self.local_closed = True
            return
        self.local_closed = True
        self.conn._send(data_frame(self.id, FLAG_FIN, b""))
        await self.conn.drain()

    def cancel(self) -> None:
        if not self.conn.closed and not (self.local_closed and self.remote_closed):
            self.conn._send(control_frame(RST_STREAM, 0, struct.pack(">II", self.id, RST_CANCEL)))
        self._abort()


class SpdyConnection:
    """The server end of one SPDY/3.1 session, fed bytes by the HTTP server's transport.

    `feed_data`/`feed_eof` have the shape aiohttp's `RequestHandler.set_parser` expects,
    so after the 101 answer every byte of the connection comes here.
    """

    HIGH_WATER = 4 * 1024 * 1024

    def __init__(
        self,
        write: Callable[[bytes], None],
        drain: Callable[[], Awaitable[None]],
        *,
        pause: Callable[[], None] | None = None,
        resume: Callable[[], None] | None = None,
    ) -> None:
        self._write = write
        self._drain = drain
        self._pause = pause
        self._resume = resume
        self._paused = False
        self._unread = 0
        self._buf = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=DICTIONARY)
        self.streams: dict[int, SpdyStream] = {}
        self._incoming: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self.closed = False
        self.done = asyncio.Event()
        """Set once the peer went away (EOF, GOAWAY) or we closed."""
        self.last_stream_id = 0

    # ---- what the transport gives us ------------------------------------------------

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.closed:
            return False, b""
        self._buf += data
        try:
            self._parse()
        except SpdyProtocolError as err:
            log.debug("SPDY protocol error: %s", err)
            self._goaway(1)
            self.close()
        return False, b""

    def feed_eof(self) -> None:
        self.close()

    def _parse(self) -> None:
        buf = self._buf
        while len(buf) >= 8 and not self.closed:
            (w1, w2) = struct.unpack_from(">II", buf, 0)
            length = w2 & 0xFFFFFF
            flags = w2 >> 24
            if len(buf) < 8 + length:
                return
            payload = bytes(buf[8 : 8 + length])
            del buf[: 8 + length]
            if w1 & 0x80000000:
                version = (w1 >> 16) & 0x7FFF
                if version != VERSION:
                    raise SpdyProtocolError(f"unsupported SPDY version {version}")
                self._control(w1 & 0xFFFF, flags, payload)
            else:
                self._data(w1 & 0x7FFFFFFF, flags, payload)

    def _control(self, ftype: int, flags: int, payload: bytes) -> None:
        if ftype == SYN_STREAM:
            if len(payload) < 10:
                raise SpdyProtocolError("short SYN_STREAM")
            stream_id = struct.unpack_from(">I", payload, 0)[0] & 0x7FFFFFFF
            headers = decode_headers(self._inflate.decompress(payload[10:]))
            if stream_id in self.streams or stream_id == 0:
                self._send(
                    control_frame(RST_STREAM, 0, struct.pack(">II", stream_id, RST_PROTOCOL_ERROR))
                )
                return
            stream = SpdyStream(self, stream_id, headers)
            self.streams[stream_id] = stream
            self.last_stream_id = max(self.last_stream_id, stream_id)
            self._send(self._headers_frame(SYN_REPLY, stream_id, {}))
            if flags & FLAG_FIN:
                stream._feed(b"", True)
            self._incoming.put_nowait(stream)
        elif ftype == RST_STREAM:
            stream_id = struct.unpack_from(">I", payload, 0)[0] & 0x7FFFFFFF
            rst = self.streams.get(stream_id)
            if rst is not None:
                rst._abort()
        elif ftype == PING:
            self._send(control_frame(PING, 0, payload[:4]))
        elif ftype == GOAWAY:
            self.close()
        elif ftype in (HEADERS, SYN_REPLY):
            # keep the decompressor in step even though the headers mean nothing to us
            self._inflate.decompress(payload[4:])
            stream_id = struct.unpack_from(">I", payload, 0)[0] & 0x7FFFFFFF
            hs = self.streams.get(stream_id)
            if hs is not None and flags & FLAG_FIN:
                hs._feed(b"", True)
        # SETTINGS, WINDOW_UPDATE and anything unknown: nothing to do

    def _data(self, stream_id: int, flags: int, payload: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            self._send(
                control_frame(RST_STREAM, 0, struct.pack(">II", stream_id, RST_INVALID_STREAM))
            )
            return
        stream._feed(payload, bool(flags & FLAG_FIN))

    # ---- back-pressure on what the peer sends ------------------------------------

    def _buffered(self, n: int) -> None:
        self._unread += n
        if not self._paused and self._unread > self.HIGH_WATER and self._pause is not None:
            self._paused = True
            self._pause()

    def _consumed(self, n: int) -> None:
        self._unread -= n
        if self._paused and self._unread < self.HIGH_WATER // 2 and self._resume is not None:
            self._paused = False
            self._resume()

    # ---- sending --------------------------------------------------------------------

    def _headers_frame(self, ftype: int, stream_id: int, headers: Headers) -> bytes:
        block = self._deflate.compress(encode_headers(headers))
        block += self._deflate.flush(zlib.Z_SYNC_FLUSH)
        return control_frame(ftype, 0, struct.pack(">I", stream_id) + block)

    def _send(self, frame: bytes) -> None:
        if not self.closed:
            self._write(frame)

    async def drain(self) -> None:
        if not self.closed:
            await self._drain()

    def _goaway(self, status: int = 0) -> None:
        self._send(control_frame(GOAWAY, 0, struct.pack(">II", self.last_stream_id, status)))

    def close(self) -> None:
        """Forget the session: every stream reads EOF, writes are dropped."""
        if self.closed:
            return
        self.closed = True
        for stream in self.streams.values():
            stream._abort()
        self._incoming.put_nowait(None)
        self.done.set()
        if self._paused and self._resume is not None:
            self._paused = False
            self._resume()

    def goaway(self) -> None:
        """Tell the peer we are done (GOAWAY), then close."""
        self._goaway(0)
        self.close()

    async def accept(self, timeout_s: float | None) -> SpdyStream | None:
        """The next stream the peer opens, in order (None: timed out, or the session ended)."""
        if self.closed and self._incoming.empty():
            return None
        try:
            return await asyncio.wait_for(self._incoming.get(), timeout_s)
        except TimeoutError:
            return None
