"""Container logs as `kubectl logs` wants them: CRI log files read, filtered and streamed.

A CRI log file (written by conmon for our runtime, by containerd's shim for others)
holds one record per line:

    2026-01-02T03:04:05.123456789+00:00 stdout F hello world
    <timestamp RFC3339Nano>             <stream> <tag> <text>

The tag `P` marks a partial record: the text continues in the stream's next record,
which `F` (full) ends. Records of the two streams may interleave, so partial text is
joined per stream; a joined line carries the timestamp of its first piece.

Files are never loaded whole: `--tail` finds its start offset by reading backwards
in blocks, then the file is read forwards in blocks; `--follow` keeps reading as the
file grows until the container is seen to have stopped (then the rest is drained).
The query parameters and their errors follow the kubelet's (v1 PodLogOptions).
"""

import asyncio
import datetime
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

BLOCK = 64 * 1024
_HEADER = 128  # enough for "<timestamp> <stream> <tag> "
STREAMS = frozenset({"stdout", "stderr"})
_STREAM_PARAM = {"All": STREAMS, "Stdout": frozenset({"stdout"}), "Stderr": frozenset({"stderr"})}
_TS_RE = re.compile(
    rb"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$"
)

# The header of a full record in either stream, for the fast path of LineAssembler:
# "<RFC 3339 time> <stdout|stderr> F[:<more tags>] " at the start of a line.
_FULL_HEADER_RE = re.compile(
    rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d) "
    rb"(?:stdout|stderr) F(?::[^ \n]*)? ",
    re.MULTILINE,
)

DECODE_ERROR = '{"message": "Unable to decode query."}'
INVALID_ERROR = '{"message": "Invalid request."}'


class LogRequestError(Exception):
    """The request cannot be served; `status` is the HTTP status, the text its body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class LogOptions:
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    since_ns: int | None = None
    streams: frozenset[str] = field(default=STREAMS)


# ---- query parameters ------------------------------------------------------------------


def _bool(text: str) -> bool:
    # As Kubernetes converts query strings to bool: only "", "false" and "0" are false.
    return text.strip().lower() not in ("", "false", "0")


def _int(query: Mapping[str, str], key: str) -> int | None:
    if key not in query:
        return None
    try:
        return int(query[key].strip())
    except ValueError:
        raise LogRequestError(400, DECODE_ERROR) from None


def parse_rfc3339(text: str) -> int:
    """Nanoseconds since the epoch for an RFC 3339 timestamp (fractions up to ns kept)."""
    m = _TS_RE.match(text.strip().encode())
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    return _epoch_ns(m)


def _epoch_ns(m: re.Match[bytes]) -> int:
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, zone = m.group(7) or b"", m.group(8)
    offset = 0
    if zone != b"Z":
        sign = -1 if zone[:1] == b"-" else 1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    dt = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.UTC)
    seconds = int(dt.timestamp()) - offset
    return seconds * 1_000_000_000 + int(frac.ljust(9, b"0") or b"0")


def format_timestamp(ns: int) -> bytes:
    """The kubelet's RFC3339NanoFixed, in UTC: 2026-01-02T03:04:05.123456789Z."""
    seconds, frac = divmod(ns, 1_000_000_000)
    dt = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{frac:09d}Z".encode()


def parse_log_options(query: Mapping[str, str], *, now_ns: int) -> LogOptions:
    """PodLogOptions from the query, decoded and validated as the kubelet does.

    Undecodable values answer 400, invalid combinations 422 (the kubelet's wording).
    """
    q = dict(query)
    if "tail" in q:  # the old name of tailLines; "all" means no limit
        tail = q.pop("tail")
        if tail != "all":
            q["tailLines"] = tail
        else:
            q.pop("tailLines", None)
    tail_lines = _int(q, "tailLines")
    limit_bytes = _int(q, "limitBytes")
    since_seconds = _int(q, "sinceSeconds")
    since_time: int | None = None
    if "sinceTime" in q:
        try:
            since_time = parse_rfc3339(q["sinceTime"])
        except ValueError:
            raise LogRequestError(400, DECODE_ERROR) from None
    stream = q.get("stream", "All") or "All"
    if (
        (tail_lines is not None and tail_lines < 0)
        or (limit_bytes is not None and limit_bytes < 1)
        or (since_seconds is not None and since_seconds < 1)
        or (since_seconds is not None and since_time is not None)
        or stream not in _STREAM_PARAM
        or (tail_lines is not None and stream != "All")
    ):
        raise LogRequestError(422, INVALID_ERROR)
    since_ns: int | None = None
    if since_seconds is not None:
        since_ns = now_ns - since_seconds * 1_000_000_000
    if since_time is not None and (since_ns is None or since_time > since_ns):
        since_ns = since_time
    return LogOptions(
        follow=_bool(q.get("follow", "")),
        previous=_bool(q.get("previous", "")),
        timestamps=_bool(q.get("timestamps", "")),
        tail_lines=tail_lines,
        limit_bytes=limit_bytes,
        since_ns=since_ns,
        streams=_STREAM_PARAM[stream],
    )


# ---- the CRI log format --------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    ts_ns: int
    stream: str
    partial: bool
    text: bytes  # without the line's end


def parse_record(line: bytes) -> Record | None:
    """One CRI log line (without its newline); None if it is not one."""
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        return None
    m = _TS_RE.match(parts[0])
    stream = parts[1].decode("ascii", "replace")
    if m is None or stream not in STREAMS:
        return None
    try:
        ts_ns = _epoch_ns(m)
    except ValueError:  # matched the shape, but no such date (month 13, second 60)
        return None
    tag = parts[2].split(b":", 1)[0]
    return Record(ts_ns, stream, tag == b"P", parts[3] if len(parts) == 4 else b"")


def _is_full(header: bytes) -> bool:
    parts = header.split(b" ", 3)
    return len(parts) < 3 or not parts[2].startswith(b"P")


def find_tail_offset(f: BinaryIO, lines: int) -> int:
    """The offset where the last `lines` whole lines (P pieces joined) of the file begin.

    Reads backwards in blocks, looking only at the header of each record.
    """
    end = f.seek(0, os.SEEK_END)
    if lines <= 0:
        return end
    full_seen = 0
    next_start = end  # start of the record after the one being looked at
    pos = end
    while pos > 0:
        size = min(BLOCK, pos)
        pos -= size
        f.seek(pos)
        buf = f.read(size + _HEADER)  # the block, and a look at the headers just after it
        i = size
        while (i := buf.rfind(b"\n", 0, i)) >= 0:
            start = pos + i + 1
            if start < end:
                if _is_full(buf[i + 1 : i + 1 + _HEADER]):
                    full_seen += 1
                    if full_seen > lines:
                        return next_start
                next_start = start
    return 0


class LineAssembler:
    """Joins partial records per stream and renders the lines the options ask for."""

    def __init__(self, opts: LogOptions) -> None:
        self.opts = opts
        self._pending: dict[str, tuple[int, bytearray]] = {}

    def feed(self, line: bytes, *, ended: bool = True) -> bytes:
        rec = parse_record(line)
        if rec is None or rec.stream not in self.opts.streams:
            return b""
        if rec.partial:
            ts, buf = self._pending.setdefault(rec.stream, (rec.ts_ns, bytearray()))
            buf += rec.text
            return b""
        ts, buf = self._pending.pop(rec.stream, (rec.ts_ns, bytearray()))
        return self._render(ts, bytes(buf) + rec.text + (b"\n" if ended else b""))

    def feed_block(self, block: bytes) -> bytes:
        """Whole lines (`block` ends with a newline) rendered; the same as `feed` per line.

        The common case, every record full and no timestamps, stream or time filter to
        apply, is one regex substitution over the block that strips the headers (at C
        speed); if any line is not such a record, the block goes line by line.
        """
        o = self.opts
        if not self._pending and not o.timestamps and o.since_ns is None and o.streams == STREAMS:
            out, n = _FULL_HEADER_RE.subn(b"", block)
            if n == block.count(b"\n"):
                return out
        return b"".join(self.feed(line) for line in block[:-1].split(b"\n"))

    def flush(self) -> bytes:
        """Whatever partial text is left (the stream ended without finishing its line)."""
        pending = sorted(self._pending.values(), key=lambda p: p[0])
        self._pending.clear()
        return b"".join(self._render(ts, bytes(buf)) for ts, buf in pending)

    def _render(self, ts_ns: int, text: bytes) -> bytes:
        if self.opts.since_ns is not None and ts_ns < self.opts.since_ns:
            return b""
        if self.opts.timestamps:
            return format_timestamp(ts_ns) + b" " + text
        return text


# ---- streaming a file ------------------------------------------------------------------------

Write = Callable[[bytes], Awaitable[bool]]
"""Sends bytes to the client; False when the client has gone."""
StillRunning = Callable[[], Awaitable[bool]]
"""Whether the container writing the file may still write to it."""


def open_log(path: Path, tail_lines: int | None = None) -> BinaryIO:
    """Open a log file positioned where the last `tail_lines` lines begin (blocking)."""
    f = path.open("rb")
    try:
        if tail_lines is not None:
            f.seek(find_tail_offset(f, tail_lines))
    except BaseException:
        f.close()
        raise
    return f


async def stream_log(
    f: BinaryIO,
    opts: LogOptions,
    write: Write,
    *,
    still_running: StillRunning,
    stopping: Callable[[], bool] = lambda: False,
    poll_s: float = 0.2,
    recheck_s: float = 1.0,
) -> None:
    """Send the log in `f` (from `open_log`) through `write` as `opts` say, following it if asked.

    With `follow`, reading goes on while `still_running()` says so (asked at most every
    `recheck_s` while the file does not grow); once it says no, what is left is read
    and the stream ends. It also ends when the client goes, `stopping()` turns true,
    or `limit_bytes` is reached. `f` is closed at the end.
    """
    left = opts.limit_bytes
    lines = LineAssembler(opts)
    carry = b""
    draining = False
    loop = asyncio.get_running_loop()
    next_check = 0.0

    async def send(data: bytes) -> bool:
        nonlocal left
        if not data:
            return True
        if left is not None:
            data = data[:left]
            left -= len(data)
        if not await write(data):
            return False
        return left is None or left > 0

    try:
        while True:
            chunk = await asyncio.to_thread(f.read, BLOCK)
            if chunk:
                data = carry + chunk
                cut = data.rfind(b"\n") + 1
                block, carry = data[:cut], data[cut:]
                if block and not await send(lines.feed_block(block)):
                    return
                continue
            # end of file for now
            if not opts.follow or draining:
                if carry:
                    await send(lines.feed(carry, ended=False))
                await send(lines.flush())
                return
            if stopping():
                return
            now = loop.time()
            if now >= next_check:
                next_check = now + recheck_s
                if not await still_running():
                    draining = True  # read what was written before it stopped, then end
                    continue
            if not await write(b""):
                return
            await asyncio.sleep(poll_s)
    finally:
        await asyncio.to_thread(f.close)


def attempts(container_dir: Path) -> list[int]:
    """The attempts (restart counts) with a log file `<attempt>.log`, oldest first."""
    try:
        names = [p.name for p in container_dir.iterdir()]
    except OSError:
        return []
    found = []
    for name in names:
        stem, dot, ext = name.partition(".")
        if dot and ext == "log" and stem.isdigit():
            found.append(int(stem))
    return sorted(found)
