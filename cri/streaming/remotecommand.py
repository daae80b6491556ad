"""exec and attach over a remotecommand session (SPDY or WebSocket, see channels.py).

    exec:   wait for the channels the request asked for ─▶ start the process ─▶ copy
            stdin ▶ process ▶ stdout/stderr, resize ▶ terminal ─▶ the outcome on `error`
    attach: the same, but the process is the container's own, reached through conmon's
            attach socket (SOCK_SEQPACKET, a type byte per packet) and its control FIFO

The outcome: v4/v5 a metav1.Status (Success, or Failure/NonZeroExitCode with the exit code
as the cause), older versions only an error text. `resize` carries JSON {"Width","Height"}
per change. When the client goes away first the process is killed, as the kubelet does.
"""

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from cri.streaming.channels import STATUS_PROTOCOLS, Channel, ExecOptions, Session
from cri.streaming.upgrade import watch_closing

log = logging.getLogger("cri.streaming.remotecommand")


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


class Resizable(Protocol):
    def resize(self, width: int, height: int) -> None: ...


def _flag(query: Any, name: str) -> bool:
    return str(query.get(name, "")).lower() in ("1", "true")


class OptionsError(ValueError):
    """The request asks for an impossible session (answered 400)."""


def parse_exec_options(query: Any, *, attach: bool = False) -> ExecOptions:
    """The query of an exec/attach request (the kubelet's URL form)."""
    return exec_options(
        command=list(query.getall("command", [])),
        stdin=_flag(query, "input") or _flag(query, "stdin"),
        stdout=_flag(query, "output") or _flag(query, "stdout"),
        stderr=_flag(query, "error") or _flag(query, "stderr"),
        tty=_flag(query, "tty"),
        attach=attach,
    )


def exec_options(
    *, command: list[str], stdin: bool, stdout: bool, stderr: bool, tty: bool, attach: bool
) -> ExecOptions:
    if not attach and not command:
        raise OptionsError("you must specify at least one command for the container")
    if not (stdin or stdout or stderr):
        raise OptionsError("you must specify at least 1 of stdin, stdout, stderr")
    return ExecOptions(command, stdin, stdout, stderr and not tty, tty)


def status_body(protocol: str, code: int | None, error: str | None, argv: list[str]) -> bytes:
    if protocol not in STATUS_PROTOCOLS:
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


async def _pump_out(read: Callable[[], Awaitable[bytes]], channel: Channel | None) -> None:
    while True:
        data = await read()
        if not data:
            break
        if channel is not None and not channel.local_closed:
            await channel.write(data)
    if channel is not None:
        await channel.close()


async def _pump_in(channel: Channel, proc: ExecProcess) -> None:
    while True:
        data = await channel.read()
        if not data:
            break
        await proc.write_stdin(data)
    if not channel.reset:
        await proc.close_stdin()


async def pump_resize(channel: Channel, target: Resizable) -> None:
    decoder = json.JSONDecoder()
    buf = ""
    while True:
        data = await channel.read()
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
                target.resize(int(obj.get("Width") or 0), int(obj.get("Height") or 0))


async def _report(
    channels: dict[str, Channel],
    protocol: str,
    code: int | None,
    error: str | None,
    argv: list[str],
) -> None:
    for name in ("stdout", "stderr"):
        if name in channels:
            await channels[name].close()
    body = status_body(protocol, code, error, argv)
    if body:
        await channels["error"].write(body)
    await channels["error"].close()


async def serve_exec(
    session: Session,
    protocol: str,
    opts: ExecOptions,
    start: Callable[[ExecOptions], Awaitable[ExecProcess]],
    *,
    closing: asyncio.Event | None = None,
) -> None:
    """Wait for the client's channels, run the process, report how it ended."""
    proc: ExecProcess | None = None
    tasks: list[asyncio.Task[None]] = [watch_closing(session.done, session.goaway, closing)]
    try:
        channels = await session.channels(opts, protocol)
        if channels is None:
            log.info("exec: the client did not open its streams in time")
            return
        code: int | None = None
        error: str | None = None
        try:
            proc = await start(opts)
        except Exception as err:  # noqa: BLE001 — reported to the client, like the kubelet
            error = f"error executing command {opts.command}: {err}"
        if proc is not None:
            outs = [asyncio.create_task(_pump_out(proc.read_stdout, channels.get("stdout")))]
            if not proc.tty:
                outs.append(
                    asyncio.create_task(_pump_out(proc.read_stderr, channels.get("stderr")))
                )
            if "stdin" in channels:
                tasks.append(asyncio.create_task(_pump_in(channels["stdin"], proc)))
            if "resize" in channels:
                tasks.append(asyncio.create_task(pump_resize(channels["resize"], proc)))
            tasks += outs
            exited = asyncio.ensure_future(proc.wait())
            gone = asyncio.ensure_future(session.done.wait())
            try:
                await asyncio.wait({exited, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not exited.done():
                    exited.cancel()
            if not exited.done() or exited.cancelled():
                # the client went away first: like the kubelet, end what it started
                log.info("exec: the client went away, killing %s", opts.command)
                return
            code = exited.result()
            if proc.tty:
                # the terminal may stay open in a background child: don't wait on it forever
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*outs), 2.0)
                if code:
                    said = (await proc.error_output()).decode(errors="replace").strip()
                    if said and "exec failed" in said:
                        error, code = f"error executing command {opts.command}: {said}", None
            else:
                await asyncio.gather(*outs)
        await _report(channels, protocol, code, error, opts.command)
        await session.finish()
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
        session.close()


# ---- attach (conmon's attach socket) ------------------------------------------------------

_CONMON_STDOUT = 2
_CONMON_STDERR = 3
_ATTACH_PACKET = 8192


class AttachError(Exception):
    """The container cannot be attached to (no socket, conmon gone)."""


async def connect_attach(socket_dir: Path) -> socket.socket:
    """A connection to conmon's attach socket in `socket_dir` (before any upgrade is answered)."""
    loop = asyncio.get_running_loop()
    try:
        dir_fd = os.open(socket_dir, os.O_PATH | os.O_CLOEXEC)
    except OSError as err:
        raise AttachError(f"no attach socket in {socket_dir}: {err.strerror}") from err
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    try:
        # /proc/self/fd/<dir>/attach keeps the path under the 108-byte sun_path limit
        await loop.sock_connect(sock, f"/proc/self/fd/{dir_fd}/attach")
    except OSError as err:
        sock.close()
        raise AttachError(f"cannot attach to the container: {err}") from err
    finally:
        os.close(dir_fd)
    return sock


async def serve_attach(
    session: Session,
    protocol: str,
    opts: ExecOptions,
    sock: socket.socket,
    ctl_fifo: Path,
    *,
    closing: asyncio.Event | None = None,
) -> None:
    """kubectl attach: relay conmon's attach socket until the output ends or the client leaves."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = [watch_closing(session.done, session.goaway, closing)]
    try:
        channels = await session.channels(opts, protocol)
        if channels is None:
            return

        async def stdin_pump(channel: Channel) -> None:
            while True:
                data = await channel.read()
                if not data:
                    return
                for off in range(0, len(data), _ATTACH_PACKET):
                    await loop.sock_sendall(sock, data[off : off + _ATTACH_PACKET])

        if "stdin" in channels:
            tasks.append(asyncio.create_task(stdin_pump(channels["stdin"])))
        if "resize" in channels:
            tasks.append(
                asyncio.create_task(pump_resize(channels["resize"], ConmonResize(ctl_fifo)))
            )
        out, err_out = channels.get("stdout"), channels.get("stderr")
        reader = asyncio.ensure_future(_relay_attach(loop, sock, out, err_out, opts.tty))
        gone = asyncio.ensure_future(session.done.wait())
        try:
            await asyncio.wait({reader, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (reader, gone):
                fut.cancel()
            await asyncio.gather(reader, gone, return_exceptions=True)
        await _report(channels, protocol, 0, None, [])
        await session.finish()
    except (ConnectionError, OSError) as err:
        log.debug("attach session ended: %s", err)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()
        session.close()


class ConmonResize:
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


async def _relay_attach(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    out: Channel | None,
    err_out: Channel | None,
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
