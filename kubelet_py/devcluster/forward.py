"""A TCP forwarder from the root namespace's loopback into a lab namespace.

The control plane lives in the lab namespace, which the root namespace has no
route to (on purpose: the root namespace gets no lab routes). People and tests
reach the apiserver through this forwarder instead: it listens on 127.0.0.1 in
the root namespace and opens each upstream connection from a socket created by
a thread that sits in the lab namespace. A socket keeps the namespace it was
created in, so the copy loop itself runs on an ordinary asyncio loop.
"""

import asyncio
import contextlib
import socket
import threading
from pathlib import Path

from kubelet_py.devcluster.errors import DevClusterError
from kubelet_py.devcluster.netlab import netns_executor

_CHUNK = 256 * 1024


class LoopbackForwarder:
    """Forwards 127.0.0.1:<port> (root namespace) to `target` inside `target_netns`."""

    def __init__(
        self,
        *,
        target_netns: Path,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self._target_netns = target_netns
        self._target = (target_host, target_port)
        self._listen = (listen_host, listen_port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._executor = netns_executor(target_netns, workers=2)
        self.port = 0

    def start(self) -> int:
        """Start listening; return the bound port once the listener is up."""
        self._thread = threading.Thread(
            target=self._thread_main, name=f"forward:{self._target_netns.name}", daemon=True
        )
        self._thread.start()
        self._ready.wait(timeout=10)
        if self._error is not None:
            raise DevClusterError(f"loopback forwarder failed to start: {self._error}")
        if not self._ready.is_set():
            raise DevClusterError("loopback forwarder did not start within 10 s")
        return self.port

    def stop(self) -> None:
        """Close the listener and every open connection, then join the thread."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and loop.is_running():
            loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as err:  # noqa: BLE001 - surfaced to start() via _error
            self._error = err
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with asyncio.TaskGroup() as tg:

            def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                tg.create_task(self._handle(reader, writer), name="forward-conn")

            self._server = await asyncio.start_server(on_client, *self._listen)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stopping.wait()
            self._server.close()
            for task in asyncio.all_tasks():
                if task.get_name() == "forward-conn":
                    task.cancel()

    def _new_upstream_socket(self) -> socket.socket:
        # Runs on an executor thread that lives in the target namespace.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock = await loop.run_in_executor(self._executor, self._new_upstream_socket)
            try:
                await loop.sock_connect(sock, self._target)
            except OSError:
                sock.close()
                raise
            up_reader, up_writer = await asyncio.open_connection(sock=sock)
        except OSError:
            writer.close()
            return
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pipe(reader, up_writer))
                tg.create_task(_pipe(up_reader, writer))
        except* OSError:
            pass
        finally:
            for w in (writer, up_writer):
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()
