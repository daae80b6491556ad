"""kubectl exec / attach / port-forward: the kubelet's streaming endpoints over SPDY/3.1.

    GET|POST /exec/{ns}/{pod}/{container}?command=..&input=1&output=1&error=1&tty=1
    GET|POST /portForward/{ns}/{pod}
        ─▶ 101 Switching Protocols, Upgrade: SPDY/3.1, X-Stream-Protocol-Version: <chosen>

remotecommand (v4.channel.k8s.io … channel.k8s.io): the client opens one stream per
channel, header `streamType` = error | stdin | stdout | stderr | resize. We wait for the
ones the query asked for, run the command, copy, half-close stdout/stderr when the
process's output ends, then write the outcome on the error stream: v4 a metav1.Status
(Success, or Failure/NonZeroExitCode with the exit code as cause), older versions only
an error text. `resize` carries a JSON {"Width", "Height"} per change.

portforward.k8s.io: per forwarded connection the client opens an `error` and a `data`
stream with the same `requestID` and a `port` header; we connect to the pod's
127.0.0.1:<port> from a thread that has entered the sandbox's network namespace, copy both
ways, and report failures as text on the error stream.
"""

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from kubelet_py.server.spdy import SpdyConnection, SpdyStream

log = logging.getLogger("kubelet_py.server.streaming")

HEADER_PROTOCOL = "X-Stream-Protocol-Version"
HEADER_ACCEPTED = "X-Accepted-Stream-Protocol-Versions"
EXEC_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
PORT_FORWARD_PROTOCOLS = ("portforward.k8s.io",)
STREAM_CREATION_TIMEOUT_S = 30.0
IDLE_CLOSE_S = 5.0


class ExecProcess(Protocol):
    """What a runtime hands back for a streamed exec (cri.runtime.executor.ExecStream)."""

    tty: bool

    async def write_stdin(self, data: bytes) -> None: ...
    async def close_stdin(self) -> None: ...
    async def read_stdout(self) -> bytes: ...
    async def read_stderr(self) -> bytes: ...
    def resize(self, width: int, height: int) -> None: ...
    async def wait(self) -> int: ...
    async def error_output(self) -> bytes: ...
    def kill(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class ExecOptions:
    command: list[str]
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


def _flag(query: Any, name: str) -> bool:
    return str(query.get(name, "")).lower() in ("1", "true")


def parse_exec_options(query: Any, *, attach: bool = False) -> ExecOptions:
    """The query of an exec/attach request (400 when it asks for nothing)."""
    opts = ExecOptions(
        command=list(query.getall("command", [])),
        stdin=_flag(query, "input") or _flag(query, "stdin"),
        stdout=_flag(query, "output") or _flag(query, "stdout"),
        stderr=_flag(query, "error") or _flag(query, "stderr"),
        tty=_flag(query, "tty"),
    )
    if not attach and not opts.command:
        raise web.HTTPBadRequest(text="you must specify at least one command for the container")
    if not (opts.stdin or opts.stdout or opts.stderr):
        raise web.HTTPBadRequest(text="you must specify at least 1 of stdin, stdout, stderr")
    if opts.tty and opts.stderr:
        opts = ExecOptions(opts.command, opts.stdin, opts.stdout, False, True)
    return opts


def _client_protocols(request: web.Request) -> list[str]:
    out: list[str] = []
    for value in request.headers.getall(HEADER_PROTOCOL, []):
        out += [p.strip() for p in value.split(",") if p.strip()]
    return out


def negotiate(request: web.Request, server: tuple[str, ...]) -> str:
    """The protocol the client asked for first that we speak ("" if it asked for none)."""
    client = _client_protocols(request)
    if not client:
        return ""
    for proto in client:
        if proto in server:
            return proto
    raise web.HTTPForbidden(
        text=f"unable to upgrade: unable to negotiate protocol: client supports {client}, "
        f"server accepts {list(server)}",
        headers={HEADER_ACCEPTED: ", ".join(server)},
    )


async def upgrade(request: web.Request, protocol: str) -> tuple[web.StreamResponse, SpdyConnection]:
    """Answer 101 and take the connection over: every further byte goes to the session."""
    if request.headers.get("Upgrade", "").lower() != "spdy/3.1":
        raise web.HTTPBadRequest(text="unable to upgrade: missing upgrade headers in request")
    transport = request.transport
    protocol_handler = request.protocol
    if transport is None:
        raise ConnectionResetError("the client went away")
    resp = web.StreamResponse(status=101)
    resp.headers["Connection"] = "Upgrade"
    resp.headers["Upgrade"] = "SPDY/3.1"
    if protocol:
        resp.headers[HEADER_PROTOCOL] = protocol
    resp.force_close()

    async def drain() -> None:
        await protocol_handler._drain_helper()

    conn = SpdyConnection(
        transport.write,
        drain,
        pause=transport.pause_reading,
        resume=transport.resume_reading,
    )
    # Before the 101 goes out, so no frame of the client can reach the HTTP parser.
    protocol_handler.set_parser(conn)  # type: ignore[arg-type]
    protocol_handler.keep_alive(False)
    await resp.prepare(request)
    return resp, conn


def watch_closing(conn: SpdyConnection, closing: asyncio.Event | None) -> asyncio.Task[None]:
    """A task that ends the session (GOAWAY) when the server shuts down."""

    async def watch() -> None:
        if closing is None:
            await conn.done.wait()
            return
        done = asyncio.ensure_future(conn.done.wait())
        stop = asyncio.ensure_future(closing.wait())
        try:
            await asyncio.wait({done, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            stop.cancel()
        if stop.done() and not stop.cancelled():
            conn.goaway()

    return asyncio.create_task(watch())


async def finish(conn: SpdyConnection) -> None:
    """Let the client close first (it has what it needs), then say GOAWAY ourselves."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(conn.done.wait(), IDLE_CLOSE_S)
    if not conn.closed:
        conn.goaway()
        with contextlib.suppress(ConnectionError, OSError):
            await conn._drain()


# ---- exec / attach ------------------------------------------------------------------------


async def _expected_streams(
    conn: SpdyConnection, opts: ExecOptions, protocol: str
) -> dict[str, SpdyStream] | None:
    want = {"error"}
    if opts.stdin:
        want.add("stdin")
    if opts.stdout:
        want.add("stdout")
    if opts.stderr and not opts.tty:
        want.add("stderr")
    if opts.tty and protocol in ("v4.channel.k8s.io", "v3.channel.k8s.io"):
        want.add("resize")
    got: dict[str, SpdyStream] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_CREATION_TIMEOUT_S
    while not want <= got.keys():
        stream = await conn.accept(max(0.0, deadline - loop.time()))
        if stream is None:
            return None
        kind = stream.header("streamType")
        if kind in ("error", "stdin", "stdout", "stderr", "resize"):
            got[kind] = stream
        else:
            stream.cancel()
    return got


def _status(protocol: str, code: int | None, error: str | None, argv: list[str]) -> bytes:
    if protocol != "v4.channel.k8s.io":
        if error:
            return error.encode()
        if code:
            return f"command terminated with non-zero exit code: exit status {code}".encode()
        return b""
    status: dict[str, Any]
    if error:
        status = {
            "metadata": {},
            "status": "Failure",
            "message": error,
            "reason": "InternalError",
            "details": {"causes": [{"message": error}]},
            "code": 500,
        }
    elif code:
        status = {
            "metadata": {},
            "status": "Failure",
            "message": "command terminated with non-zero exit code: error executing command "
            f"{argv}, exit code {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    else:
        status = {"metadata": {}, "status": "Success"}
    return json.dumps(status).encode()


async def _pump_out(read: Callable[[], Awaitable[bytes]], stream: SpdyStream | None) -> None:
    while True:
        data = await read()
        if not data:
            break
        if stream is not None and not stream.local_closed:
            await stream.write(data)
    if stream is not None:
        await stream.close()


async def _pump_in(stream: SpdyStream, proc: ExecProcess) -> None:
    while True:
        data = await stream.read()
        if not data:
            break
        await proc.write_stdin(data)
    if not stream.reset:
        await proc.close_stdin()


async def _pump_resize(stream: SpdyStream, proc: "_Resizable") -> None:
    decoder = json.JSONDecoder()
    buf = ""
    while True:
        data = await stream.read()
        if not data:
            return
        buf += data.decode(errors="replace")
        while True:
            buf = buf.lstrip()
            if not buf:
                break
            try:
                obj, end = decoder.raw_decode(buf)
            except ValueError:
                break
            buf = buf[end:]
            if isinstance(obj, dict):
                proc.resize(int(obj.get("Width") or 0), int(obj.get("Height") or 0))


async def serve_exec(
    request: web.Request,
    opts: ExecOptions,
    start: Callable[[ExecOptions], Awaitable[ExecProcess]],
    *,
    closing: asyncio.Event | None = None,
) -> web.StreamResponse:
    """Upgrade, wait for the client's streams, run the process, report how it ended."""
    protocol = negotiate(request, EXEC_PROTOCOLS)
    resp, conn = await upgrade(request, protocol)
    proc: ExecProcess | None = None
    tasks: list[asyncio.Task[None]] = [watch_closing(conn, closing)]
    try:
        streams = await _expected_streams(conn, opts, protocol)
        if streams is None:
            log.info("exec: the client did not open its streams in time")
            return resp
        code: int | None = None
        error: str | None = None
        try:
            proc = await start(opts)
        except Exception as err:  # noqa: BLE001 — reported to the client, like the kubelet
            error = f"error executing command {opts.command}: {err}"
        if proc is not None:
            out = _pump_out(proc.read_stdout, streams.get("stdout"))
            outs = [asyncio.create_task(out)]
            if not proc.tty:
                outs.append(asyncio.create_task(_pump_out(proc.read_stderr, streams.get("stderr"))))
            if "stdin" in streams:
                tasks.append(asyncio.create_task(_pump_in(streams["stdin"], proc)))
            if "resize" in streams:
                tasks.append(asyncio.create_task(_pump_resize(streams["resize"], proc)))
            tasks += outs
            exited = asyncio.ensure_future(proc.wait())
            gone = asyncio.ensure_future(conn.done.wait())
            try:
                await asyncio.wait({exited, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not exited.done():
                    exited.cancel()
            if not exited.done() or exited.cancelled():
                # the client went away first: like the kubelet, end what it started
                log.info("exec: the client went away, killing %s", opts.command)
                return resp
            code = exited.result()
            if proc.tty:
                # the terminal may stay open in a background child: don't wait on it forever
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*outs), 2.0)
                for stream_name in ("stdout",):
                    if stream_name in streams:
                        await streams[stream_name].close()
                if code:
                    said = (await proc.error_output()).decode(errors="replace").strip()
                    if said and "exec failed" in said:
                        error, code = f"error executing command {opts.command}: {said}", None
            else:
                await asyncio.gather(*outs)
        for name in ("stdout", "stderr"):
            if name in streams:
                await streams[name].close()
        err_stream = streams["error"]
        body = _status(protocol, code, error, opts.command)
        if body:
            await err_stream.write(body)
        await err_stream.close()
        await finish(conn)
    except (ConnectionError, OSError) as err:
        log.debug("exec session ended: %s", err)
    finally:
        if proc is not None:
            proc.kill()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if proc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5.0)
            proc.close()
        conn.close()
    return resp


# ---- port forwarding ------------------------------------------------------------------------

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


async def serve_port_forward(
    request: web.Request, netns: str | None, what: str, *, closing: asyncio.Event | None = None
) -> web.StreamResponse:
    protocol = negotiate(request, PORT_FORWARD_PROTOCOLS)
    if not protocol:
        raise web.HTTPBadRequest(
            text=f"unable to upgrade: header {HEADER_PROTOCOL} does not exist in request"
        )
    resp, conn = await upgrade(request, protocol)
    pending: dict[str, dict[str, SpdyStream]] = {}
    tasks: set[asyncio.Task[None]] = {watch_closing(conn, closing)}
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
    return resp


# ---- attach (conmon's attach socket) ------------------------------------------------------

_CONMON_STDOUT = 2
_CONMON_STDERR = 3
_ATTACH_PACKET = 8192


async def serve_attach(
    request: web.Request,
    opts: ExecOptions,
    runtime_root: Any,
    container_id: str,
    *,
    closing: asyncio.Event | None = None,
) -> web.StreamResponse:
    """kubectl attach: relay conmon's attach socket (SOCK_SEQPACKET, a type byte per packet).

    The session lasts until the container's output ends or the client goes away.
    """
    protocol = negotiate(request, EXEC_PROTOCOLS)
    loop = asyncio.get_running_loop()
    sock_dir = Path(runtime_root) / "sockets" / container_id
    try:
        dir_fd = os.open(sock_dir, os.O_PATH | os.O_CLOEXEC)
    except OSError as err:
        raise web.HTTPBadRequest(
            text=f"container {container_id[:12]} has no attach socket"
        ) from err
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    try:
        # /proc/self/fd/<dir>/attach keeps the path under the 108-byte sun_path limit
        await loop.sock_connect(sock, f"/proc/self/fd/{dir_fd}/attach")
    except OSError as err:
        sock.close()
        raise web.HTTPBadRequest(text=f"cannot attach to the container: {err}") from err
    finally:
        os.close(dir_fd)
    tasks: list[asyncio.Task[None]] = []
    resp, conn = await upgrade(request, protocol)
    tasks.append(watch_closing(conn, closing))
    try:
        streams = await _expected_streams(conn, opts, protocol)
        if streams is None:
            return resp

        async def stdin_pump(stream: SpdyStream) -> None:
            while True:
                data = await stream.read()
                if not data:
                    return
                for off in range(0, len(data), _ATTACH_PACKET):
                    await loop.sock_sendall(sock, data[off : off + _ATTACH_PACKET])

        if "stdin" in streams:
            tasks.append(asyncio.create_task(stdin_pump(streams["stdin"])))
        if "resize" in streams:
            # conmon's control FIFO (in the bundle): "1 <rows> <cols>" is a window resize
            ctl = Path(runtime_root) / "containers" / container_id / "bundle" / "ctl"
            tasks.append(asyncio.create_task(_pump_resize(streams["resize"], _ConmonResize(ctl))))
        out, err_out = streams.get("stdout"), streams.get("stderr")
        reader = asyncio.ensure_future(_relay_attach(loop, sock, out, err_out, opts.tty))
        gone = asyncio.ensure_future(conn.done.wait())
        try:
            await asyncio.wait({reader, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (reader, gone):
                fut.cancel()
            await asyncio.gather(reader, gone, return_exceptions=True)
        for name in ("stdout", "stderr"):
            if name in streams:
                await streams[name].close()
        body = _status(protocol, 0, None, [])
        if body:
            await streams["error"].write(body)
        await streams["error"].close()
        await finish(conn)
    except (ConnectionError, OSError) as err:
        log.debug("attach session ended: %s", err)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()
        conn.close()
    return resp


class _ConmonResize:
    """Terminal size changes for an attached TTY container: conmon's control FIFO."""

    WIN_RESIZE_EVENT = 1

    def __init__(self, ctl: Path) -> None:
        self.ctl = ctl
        self._pending: tuple[int, int] | None = None

    def resize(self, width: int, height: int) -> None:
        """Coalesced: conmon parses one message per read of the FIFO, so send only the latest."""
        if width <= 0 or height <= 0:
            return
        if self._pending is None:
            asyncio.get_running_loop().call_later(0.05, self._flush)
        self._pending = (width, height)

    def _flush(self) -> None:
        if self._pending is None:
            return
        width, height = self._pending
        self._pending = None
        try:
            fd = os.open(self.ctl, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            log.debug("attach: no control FIFO for a resize: %s", err)
            return
        try:
            os.write(fd, f"{self.WIN_RESIZE_EVENT} {height} {width}\n".encode())
        except OSError as err:
            log.debug("attach: resize dropped: %s", err)
        finally:
            os.close(fd)


class _Resizable(Protocol):
    def resize(self, width: int, height: int) -> None: ...


async def _relay_attach(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    out: SpdyStream | None,
    err_out: SpdyStream | None,
    tty: bool,
) -> None:
    while True:
        packet = await loop.sock_recv(sock, _ATTACH_PACKET + 1)
        if not packet:
            return
        kind, data = packet[0], packet[1:]
        target = err_out if kind == _CONMON_STDERR and not tty else out
        if kind not in (_CONMON_STDOUT, _CONMON_STDERR) or target is None or not data:
            continue
        await target.write(data)
