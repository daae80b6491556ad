"""Starting OCI bundles: conmon as the per-container monitor, an OCI runtime beneath it.

    runtime service ──spawn──▶ conmon (C, ~0.3 MiB, outlives us) ──create──▶ runc
                                  │ holds the container's stdio, writes the CRI log
                                  │ (k8s-file format) and, on exit, <exits>/<id>
                                  ▼
                              container process

No Python process stays per container. conmon reports the container's PID (or
the runtime's error) on a sync pipe; `start`, `kill`, `delete` and `exec` go to
the OCI runtime's CLI directly. The runtime is our own `kubelet-py-oci` (cri.oci)
by default; runc and crun are accepted too (crun refuses the hybrid cgroup layout
of some machines, and says so).
"""

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

from cri.runtime.errors import ExecutorError, NotFoundError

log = logging.getLogger(__name__)

_START_SOCKET = "start.sock"
"""Where a created container of our executor waits to be started (cri.oci.state)."""


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


class ConmonExecutor:
    """A conmon per container (Debian's conmon 2.x), the OCI runtime beneath it."""

    monitor = "conmon"

    def __init__(
        self, *, state_dir: Path, runtime: str = "kubelet-py-oci", conmon: str = "conmon"
    ) -> None:
        self.conmon = shutil.which(conmon) or conmon
        self.state_dir = state_dir
        self.runtime_root = state_dir / "oci"
        self.exits_dir = state_dir / "exits"
        self.sockets_dir = state_dir / "sockets"
        for d in (self.runtime_root, self.exits_dir, self.sockets_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.ours = runtime == "kubelet-py-oci"
        if self.ours:
            # Our own executor (cri.oci), started as `python3 -IS` by a small launcher:
            # pip's console-script wrapper would cost ~25 ms per call.
            from cri.oci.launcher import write_launcher

            self.runtime = write_launcher(str(state_dir / "kubelet-py-oci"))
        else:
            self.runtime = shutil.which(runtime) or runtime

    def _runtime_argv(self, *args: str) -> list[str]:
        return [self.runtime, f"--root={self.runtime_root}", *args]

    async def _run(self, *args: str, what: str, timeout_s: float = 30.0) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            *self._runtime_argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise ExecutorError(f"{what}: {Path(self.runtime).name} timed out") from exc
        if proc.returncode != 0:
            text = err.decode(errors="replace").strip()
            if "does not exist" in text or "not exist" in text:
                raise NotFoundError(f"{what}: {text}")
            raise ExecutorError(f"{what}: {Path(self.runtime).name} failed: {text}")
        return out

    async def create(
        self,
        *,
        container_id: str,
        bundle: Path,
        log_path: Path,
        name: str,
        tty: bool = False,
        stdin: bool = False,
    ) -> int:
        """Create the container under a new conmon; return the container's host PID."""
        read_fd, write_fd = os.pipe()
        persist = bundle.parent / "persist"
        persist.mkdir(exist_ok=True)
        argv = [
            self.conmon,
            "--api-version", "1",
            "-c", container_id,
            "-u", container_id,
            "-n", name,
            "-r", self.runtime,
            "--runtime-arg", f"--root={self.runtime_root}",
            "-b", str(bundle),
            "-p", str(bundle.parent / "pidfile"),
            "-P", str(bundle.parent / "conmon.pid"),
            "-l", f"k8s-file:{log_path}",
            "--exit-dir", str(self.exits_dir),
            "--persist-dir", str(persist),
            "--socket-dir-path", str(self.sockets_dir),
            "--log-level", "error",
        ]  # fmt: skip
        if tty:
            argv.append("--terminal")
        if stdin:
            argv += ["--stdin", "--leave-stdin-open"]
        env = {"_OCI_SYNCPIPE": str(write_fd), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                pass_fds=(write_fd,),
                start_new_session=True,
                cwd=bundle.parent,  # conmon drops files (e.g. "oom") into its working dir
            )
        finally:
            os.close(write_fd)
        try:
            loop = asyncio.get_running_loop()
            data = await loop.run_in_executor(None, _read_first_line, read_fd)
        finally:
            os.close(read_fd)
        _, err = await proc.communicate()
        what = f"creating container {container_id[:12]} ({name})"
        if not data:
            raise ExecutorError(f"{what}: conmon exited without a result: {err.decode().strip()}")
        for line in data.decode(errors="replace").splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            pid = int(msg.get("data", -1))
            if pid > 0:
                return pid
            raise ExecutorError(f"{what}: {msg.get('message') or 'runtime create failed'}")
        raise ExecutorError(f"{what}: unreadable conmon answer {data!r}")

    def monitor_alive(self, container_dir: Path) -> bool:
        """Is the process that holds this container (and will write its exit file) alive?"""
        return pid_alive(_read_pid(container_dir / "conmon.pid"))

    async def released(self, container_dir: Path) -> None:
        """Wait (a little) until the monitor has let go of a removed container."""
        pid = _read_pid(container_dir / "conmon.pid")
        deadline = asyncio.get_running_loop().time() + 5.0
        while pid_alive(pid) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        """The runtime stops: conmons are on their own already."""

    async def start(self, container_id: str) -> None:
        what = f"starting container {container_id[:12]}"
        if self.ours and await self._start_in_process(container_id, what):
            return
        await self._run("start", container_id, what=what)

    async def _start_in_process(self, container_id: str, what: str) -> bool:
        """Our executor's `start` without a process: what `kubelet-py-oci start` does.

        The created init waits on <root>/<id>/start.sock and exec's the container's process
        when a client connects; EOF means it did, text first is why it could not. Saves the
        ~20 ms of a Python start per container. False: nobody listens, and the CLI says why.
        """
        directory = self.runtime_root / container_id
        loop = asyncio.get_running_loop()
        try:
            dir_fd = os.open(directory, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        chunks = []
        try:
            try:
                # /proc/self/fd/<dir>/start.sock stays under the 108-byte sun_path limit
                await loop.sock_connect(sock, f"/proc/self/fd/{dir_fd}/{_START_SOCKET}")
            except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError):
                return False
            finally:
                os.close(dir_fd)
            while True:
                try:
                    data = await loop.sock_recv(sock, 4096)
                except ConnectionResetError as err:
                    raise ExecutorError(f"{what}: the container's init died") from err
                if not data:
                    break
                chunks.append(data)
        finally:
            sock.close()
        (directory / _START_SOCKET).unlink(missing_ok=True)
        message = b"".join(chunks).decode(errors="replace").strip()
        if message:
            raise ExecutorError(f"{what}: kubelet-py-oci failed: {message}")
        return True

    async def kill(self, container_id: str, sig: int, *, all_processes: bool = False) -> None:
        args = ["kill"]
        if all_processes:
            args.append("--all")
        await self._run(
            *args, container_id, str(sig), what=f"signalling container {container_id[:12]}"
        )

    async def update(self, container_id: str, resources: dict[str, object]) -> None:
        """Change a running container's cgroup limits (the OCI runtime's `update`)."""
        proc = await asyncio.create_subprocess_exec(
            *self._runtime_argv("update", "--resources", "-", container_id),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, err = await proc.communicate(json.dumps(resources).encode())
        if proc.returncode != 0:
            raise ExecutorError(
                f"updating resources of container {container_id[:12]}: {err.decode().strip()}"
            )

    async def delete(self, container_id: str) -> None:
        try:
            await self._run(
                "delete", "--force", container_id, what=f"deleting container {container_id[:12]}"
            )
        except NotFoundError:
            pass

    def exit_code(self, container_id: str) -> tuple[int, float] | None:
        """(exit code, exit time) once conmon has recorded the container's exit."""
        path = self.exits_dir / container_id
        try:
            text = path.read_text().strip()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        if not text:
            return None
        return int(text), mtime

    def exit_ids(self) -> set[str]:
        """IDs of containers conmon has written an exit file for."""
        try:
            return {p.name for p in self.exits_dir.iterdir()}
        except FileNotFoundError:
            return set()

    def forget_exit(self, container_id: str) -> None:
        (self.exits_dir / container_id).unlink(missing_ok=True)

    async def exec_sync(
        self,
        container_id: str,
        argv: list[str],
        *,
        timeout_s: float,
        user: str | None = None,
        env: list[str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult:
        args = ["exec"]
        if user:
            args += ["--user", user]
        if cwd:
            args += ["--cwd", cwd]
        for item in env or []:
            args += ["--env", item]
        args += [container_id, *argv]
        proc = await asyncio.create_subprocess_exec(
            *self._runtime_argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(), timeout_s if timeout_s > 0 else None
            )
        except TimeoutError:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = await proc.communicate()
            return ExecResult(exit_code=-1, stdout=out, stderr=err, timed_out=True)
        assert proc.returncode is not None
        return ExecResult(exit_code=proc.returncode, stdout=out, stderr=err)

    async def exec_stream(
        self,
        container_id: str,
        argv: list[str],
        *,
        tty: bool = False,
        stdin: bool = False,
        user: str | None = None,
        env: list[str] | None = None,
        cwd: str | None = None,
    ) -> "ExecStream":
        """Start `argv` in the container with its stdio wired to us (kubectl exec).

        Without a TTY the process's stdin/stdout/stderr are pipes. With one, runc runs in
        the foreground on a pseudo-terminal of ours: it puts that terminal in raw mode, makes
        one in the container and copies between the two, and on SIGWINCH gives the
        container's terminal the size of ours. (A --console-socket would need a detached
        runc, whose process we could then not wait for.)
        """
        args = ["exec"]
        if user:
            args += ["--user", user]
        if cwd:
            args += ["--cwd", cwd]
        for item in env or []:
            args += ["--env", item]
        if tty:
            args.append("--tty")
        # the process's host PID, to kill it (not just runc) when the client goes away
        pid_dir = self.state_dir / "exec"
        pid_dir.mkdir(exist_ok=True)
        pid_file = pid_dir / f"{container_id[:12]}-{os.urandom(6).hex()}.pid"
        args += ["--pid-file", str(pid_file), container_id, *argv]
        if not tty:
            proc = await asyncio.create_subprocess_exec(
                *self._runtime_argv(*args),
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            return ExecStream(proc, None, pid_file)
        master, slave = os.openpty()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._runtime_argv(*args),
                stdin=slave,
                stdout=slave,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return ExecStream(proc, master, pid_file)


MONITOR_LAUNCHER = """#!{python} -IS
# Written by cri.runtime.executor: kubelet-py's node-wide container monitor.
import sys
sys.path.insert(0, {root!r})
from cri.runtime.monitor import main
sys.exit(main())
"""


class NodeMonitorExecutor(ConmonExecutor):
    """One monitor process per runtime root (cri.runtime.monitor) holds every container.

    The same files as conmon (exit files, attach sockets, control FIFOs, CRI logs), so
    everything but `create` is the conmon executor's. The monitor is started detached
    when none answers on <root>/monitor/monitor.sock; this runtime keeps a "hold"
    connection open to it, so an idle monitor goes away only when no runtime uses it.
    """

    monitor = "node"

    def __init__(self, *, state_dir: Path, runtime: str = "kubelet-py-oci") -> None:
        super().__init__(state_dir=state_dir, runtime=runtime)
        self.monitor_dir = state_dir / "monitor"
        self.monitor_dir.mkdir(exist_ok=True)
        self.launcher = str(state_dir / "kubelet-py-monitor")
        _write_monitor_launcher(self.launcher)
        self._hold: socket.socket | None = None
        self._start_lock = asyncio.Lock()

    def monitor_alive(self, container_dir: Path) -> bool:
        return pid_alive(_read_pid(container_dir / "monitor.pid"))

    async def released(self, container_dir: Path) -> None:
        """The monitor lets go of a container when it writes the exit file: nothing to wait for."""

    async def close(self) -> None:
        """Let go of the monitor; an idle one leaves at once, and we wait until it has.

        (It may sit in a network namespace that is about to be removed: a node's netns
        lives on while a process is in it.)
        """
        if self._hold is None:
            return
        idle = False
        pid = _read_pid(self.monitor_dir / "monitor.pid")
        sock = await self._connect()
        if sock is not None:
            with contextlib.suppress(ExecutorError):
                status = await _ask(sock, {"op": "status"})
                idle = not status.get("containers") and not status.get("creating")
        self._hold.close()
        self._hold = None
        deadline = asyncio.get_running_loop().time() + 3.0
        while idle and pid_alive(pid) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    async def _connect(self) -> socket.socket | None:
        loop = asyncio.get_running_loop()
        try:
            dir_fd = os.open(self.monitor_dir, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            # /proc/self/fd/<dir>/monitor.sock stays under the 108-byte sun_path limit
            await loop.sock_connect(sock, f"/proc/self/fd/{dir_fd}/monitor.sock")
        except OSError:
            sock.close()
            return None
        finally:
            os.close(dir_fd)
        return sock

    def _hold_lost(self) -> bool:
        if self._hold is None:
            return True
        try:
            gone = self._hold.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            gone = True
        if gone:
            self._hold.close()
            self._hold = None
        return gone

    async def ensure_monitor(self) -> socket.socket:
        """A request connection to the node monitor, started (detached) if none answers."""
        async with self._start_lock:
            problem = ""
            for _ in range(5):
                sock = await self._connect()
                if sock is not None:
                    if self._hold_lost():
                        hold = await self._connect()
                        said = await _ask(hold, {"op": "hold"}) if hold is not None else {}
                        if hold is not None and "pid" in said:
                            self._hold = hold
                            if said.get("version") != _monitor_version():
                                await self._upgrade(said)
                        elif hold is not None:
                            hold.close()
                    if self._hold is not None:
                        return sock
                    sock.close()  # it was going away idle: start another
                proc = await asyncio.create_subprocess_exec(
                    self.launcher,
                    str(self.monitor_dir),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
                _, err = await proc.communicate()
                problem = err.decode(errors="replace").strip()
                if proc.returncode != 0:
                    raise ExecutorError(
                        f"starting the node monitor in {self.monitor_dir}: {problem}"
                    )
                await asyncio.sleep(0.05)
            raise ExecutorError(
                f"the node monitor in {self.monitor_dir} does not answer: {problem or 'no reason'}"
            )

    async def _upgrade(self, said: dict[str, object]) -> None:
        """The monitor runs other code than ours: it re-executes itself, keeping containers."""
        log.info(
            "node monitor %s runs code %s, ours is %s: asking it to re-exec",
            said.get("pid"),
            said.get("version"),
            _monitor_version(),
        )
        sock = await self._connect()
        if sock is not None:
            await _ask(sock, {"op": "reexec"})
        if self._hold is not None:  # the re-exec closes it; the next request holds again
            self._hold.close()
            self._hold = None

    async def create(
        self,
        *,
        container_id: str,
        bundle: Path,
        log_path: Path,
        name: str,
        tty: bool = False,
        stdin: bool = False,
    ) -> int:
        """Ask the node monitor to create the container; return the container's host PID."""
        what = f"creating container {container_id[:12]} ({name})"
        (bundle.parent / "persist").mkdir(exist_ok=True)
        request = {
            "op": "create",
            "id": container_id,
            "bundle": str(bundle),
            "log_path": str(log_path),
            "tty": tty,
            "stdin": stdin,
            "runtime": self.runtime,
            "runtime_args": [f"--root={self.runtime_root}"],
            "exit_dir": str(self.exits_dir),
            "socket_dir": str(self.sockets_dir),
            "pid_file": str(bundle.parent / "pidfile"),
            "ctl": str(bundle / "ctl"),
        }
        try:
            answer = await _ask(await self.ensure_monitor(), request, timeout_s=60.0)
        except MonitorGoneError:
            # It was leaving idle as we connected (it leaves only with nothing in flight,
            # so the request was not seen): once more, with a monitor started afresh.
            answer = await _ask(await self.ensure_monitor(), request, timeout_s=60.0)
        if "error" in answer:
            raise ExecutorError(f"{what}: {answer['error']}")
        (bundle.parent / "monitor.pid").write_text(str(answer["monitor_pid"]))
        return int(str(answer["pid"]))


class MonitorGoneError(ExecutorError):
    """The node monitor closed a connection without answering (it left, or died)."""


async def _ask(
    sock: socket.socket, request: dict[str, object], *, timeout_s: float = 10.0
) -> dict[str, object]:
    """One JSON line to the node monitor, one back; the socket is closed unless it is a hold."""
    loop = asyncio.get_running_loop()
    data = b""
    try:
        await loop.sock_sendall(sock, json.dumps(request).encode() + b"\n")
        async with asyncio.timeout(timeout_s):
            while b"\n" not in data:
                chunk = await loop.sock_recv(sock, 65536)
                if not chunk:
                    break
                data += chunk
    except (OSError, TimeoutError) as err:
        sock.close()
        raise ExecutorError(f"the node monitor did not answer {request['op']}: {err}") from err
    if request["op"] != "hold":
        sock.close()
    if not data:
        raise MonitorGoneError(f"the node monitor closed the connection on {request['op']}")
    answer: dict[str, object] = json.loads(data.split(b"\n", 1)[0])
    return answer


def _monitor_version() -> str:
    """What cri.runtime.monitor.VERSION is for the code this runtime would start."""
    data = (Path(__file__).parent / "monitor.py").read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _write_monitor_launcher(path: str) -> None:
    from cri.oci.launcher import import_root

    text = MONITOR_LAUNCHER.format(python=os.path.realpath(sys.executable), root=import_root())
    try:
        if Path(path).read_text() == text:
            return
    except OSError:
        pass
    tmp = Path(f"{path}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.rename(path)


def new_executor(*, state_dir: Path, runtime: str, monitor: str) -> ConmonExecutor:
    """The executor for `--monitor conmon|node`."""
    if monitor == "node":
        return NodeMonitorExecutor(state_dir=state_dir, runtime=runtime)
    if monitor == "conmon":
        return ConmonExecutor(state_dir=state_dir, runtime=runtime)
    raise ExecutorError(f"unknown container monitor {monitor!r}: conmon or node")


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def pid_alive(pid: int) -> bool:
    """A live process (not a zombie) with this PID."""
    if pid <= 0:
        return False  # kill(0, …) would address our own process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class ExecStream:
    """A process started by `exec_stream`: its stdio, its exit, its terminal size."""

    def __init__(
        self, proc: asyncio.subprocess.Process, master: int | None, pid_file: Path | None = None
    ) -> None:
        self.proc = proc
        self.pid_file = pid_file
        self.master = master
        self.tty = master is not None
        self._master_eof = False
        self._timers: list[asyncio.TimerHandle] = []
        if master is not None:
            os.set_blocking(master, False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def write_stdin(self, data: bytes) -> None:
        if self.master is not None:
            await self._write_master(data)
            return
        if self.proc.stdin is None:
            return
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def close_stdin(self) -> None:
        if self.master is not None:
            # A terminal has no half-close; EOF is the VEOF character (^D) at line start.
            await self._write_master(b"\x04")
            return
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()

    async def read_stdout(self) -> bytes:
        """Output (of the terminal, with a TTY); b"" at EOF."""
        if self.master is not None:
            return await self._read_master()
        assert self.proc.stdout is not None
        return await self.proc.stdout.read(65536)

    async def read_stderr(self) -> bytes:
        if self.master is not None:
            return b""
        assert self.proc.stderr is not None
        return await self.proc.stderr.read(65536)

    async def _read_master(self) -> bytes:
        assert self.master is not None
        if self._master_eof:
            return b""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                fut: asyncio.Future[None] = loop.create_future()
                loop.add_reader(self.master, _wake, fut)
                try:
                    await fut
                finally:
                    loop.remove_reader(self.master)
                continue
            except OSError:  # EIO once the last slave is closed
                data = b""
            if not data:
                self._master_eof = True
            return data

    async def _write_master(self, data: bytes) -> None:
        assert self.master is not None
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
                view = view[n:]
            except BlockingIOError:
                fut: asyncio.Future[None] = loop.create_future()
                loop.add_writer(self.master, _wake, fut)
                try:
                    await fut
                finally:
                    loop.remove_writer(self.master)
            except OSError:
                return

    def resize(self, width: int, height: int) -> None:
        if self.master is None or width <= 0 or height <= 0:
            return
        try:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        except OSError:
            return
        self._winch()
        # runc may not handle SIGWINCH yet right after it started: say it again shortly
        loop = asyncio.get_running_loop()
        for delay in (0.3, 1.0):
            self._timers.append(loop.call_later(delay, self._winch))

    def _winch(self) -> None:
        if self.proc.returncode is None:
            try:
                os.kill(self.proc.pid, signal.SIGWINCH)  # runc copies the size inward
            except ProcessLookupError:
                pass

    async def wait(self) -> int:
        code = await self.proc.wait()
        return code

    async def error_output(self) -> bytes:
        """What runc itself said on stderr (with a TTY, where the process's output is not)."""
        if self.master is None or self.proc.stderr is None:
            return b""
        return await self.proc.stderr.read()

    def kill(self) -> None:
        """SIGKILL the process in the container (its host PID from runc's pid file), and runc."""
        if self.proc.returncode is not None:
            return
        if self.pid_file is not None:
            try:
                pid = int(self.pid_file.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid > 0:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        if self.master is not None:
            try:
                os.close(self.master)
            except OSError:
                pass
            self.master = None


def _wake(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


def _read_first_line(fd: int) -> bytes:
    """conmon writes one JSON line per event and keeps the pipe open: read just the first."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data
