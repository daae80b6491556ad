"""The node-wide container monitor: one process per runtime root, not a conmon per container.

    runtime service ──JSON line on <root>/monitor/monitor.sock──▶ monitor (one per root)
                                                    │ runs `<oci> create` as its child, so
                                                    │ every container init is re-parented
                                                    │ to it (PR_SET_CHILD_SUBREAPER)
                                                    ▼
                                        container init (stdio: pipes or a pty of ours)

It does for every container what conmon does for one, with conmon's files, so the rest of
the runtime cannot tell them apart:

- holds the container's stdout/stderr pipes (or the terminal master, received on a console
  socket) and writes the CRI log: `<RFC3339Nano> stdout|stderr F <line>`, `P` for a piece
  without its newline (a read ends mid-line), timestamps as conmon writes them;
- on the init's exit (it reaps it: subreaper) drains the pipes, then writes `<exits>/<id>`:
  the exit code as text (128+signal for a signal), its mtime the exit time;
- serves `<sockets>/<id>/attach` (SOCK_SEQPACKET: output packets start with 2 stdout or 3
  stderr, input packets are raw stdin) and reads `<bundle>/ctl` ("1 rows cols" resizes the
  terminal, "2 0 0" reopens the log file).

It is started by the runtime when none answers (started detached: setsid and a second
fork, so it is nobody's child and outlives the runtime), keeps `monitor.pid` under an
exclusive flock on `monitor.lock` (two can never run on one root), and exits when it holds
no container and no runtime is connected. Requests: one JSON object per line, one answer
per line; `{"op": "hold"}` is a runtime's connection that keeps the monitor up while open.

Its own restart is not seamless: a killed monitor takes the read ends of the containers'
pipes with it, so the containers' next writes to stdout/stderr fail (EPIPE / SIGPIPE), and
their exits are no longer recorded (the runtime reports them as "Unknown", 255, as it does
for a conmon that died). Only the standard library is imported: this process's RSS is the
node's cost, not a pod's.
"""

# No pathlib: it imports re, fnmatch and urllib, ~1 MiB of this process's RSS.
# ruff: noqa: PTH103, PTH104, PTH106, PTH108, PTH118, PTH119, PTH120, PTH123, S108

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import sys
import termios
import time

PR_SET_CHILD_SUBREAPER = 36
READ_SIZE = 8192
ATTACH_STDOUT = 2
ATTACH_STDERR = 3
IDLE_EXIT_S = 3.0


def _version() -> str:
    """This file's content hash: a runtime with other code asks for a re-exec (an upgrade)."""
    import hashlib

    with open(__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


VERSION = _version()
REQUEST_KEYS = (
    "id", "log_path", "exit_dir", "socket_dir", "ctl", "pid_file", "tty", "stdin", "runtime",
)  # fmt: skip
MAX_ORPHANS = 1024
STDIN_QUEUE_MAX = 1 << 20


def _timestamp() -> bytes:
    """RFC 3339 with nanoseconds and the local offset with a colon, as conmon writes it."""
    ns = time.time_ns()
    sec, frac = divmod(ns, 1_000_000_000)
    tm = time.localtime(sec)
    off = tm.tm_gmtoff or 0
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", tm)
        + f".{frac:09d}{sign}{off // 3600:02d}:{off % 3600 // 60:02d}"
    ).encode()


def cri_log_records(stream: bytes, data: bytes, ts: bytes) -> bytes:
    """`data` (one read) as CRI log lines: F for each full line, P for a trailing piece."""
    parts = data.split(b"\n")
    out = [b"%s %s F %s\n" % (ts, stream, line) for line in parts[:-1]]
    if parts[-1]:
        out.append(b"%s %s P %s\n" % (ts, stream, parts[-1]))
    return b"".join(out)


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _bind_unix(sock: socket.socket, path: str) -> None:
    """bind() through /proc/self/fd/<dir> so long state paths fit in sun_path."""
    dir_fd = os.open(os.path.dirname(path), os.O_PATH | os.O_CLOEXEC)
    try:
        name = f"/proc/self/fd/{dir_fd}/{os.path.basename(path)}"
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
        sock.bind(name)
    finally:
        os.close(dir_fd)


class Container:
    """One container the monitor holds."""

    def __init__(self, req: dict[str, object], conn: Client | None) -> None:
        self.request = {k: req.get(k) for k in REQUEST_KEYS}
        self.id = str(req["id"])
        self.log_path = str(req["log_path"])
        self.exit_dir = str(req["exit_dir"])
        self.attach_dir = os.path.join(str(req["socket_dir"]), self.id)
        self.ctl_path = str(req["ctl"])
        self.pid_file = str(req["pid_file"])
        self.tty = bool(req.get("tty"))
        self.stdin = bool(req.get("stdin"))
        self.requester: Client | None = conn
        self.runtime = os.path.basename(str(req["runtime"]))
        self.create_pid = 0
        self.pid = 0
        self.log_fd = -1
        self.out_fd = -1
        self.err_fd = -1
        self.in_fd = -1
        self.master = -1
        self.console: socket.socket | None = None
        self.console_path = ""
        self.attach: socket.socket | None = None
        self.clients: list[socket.socket] = []
        self.ctl_fd = -1
        self.ctl_buf = b""
        self.in_pending = bytearray()  # attach input waiting for room in stdin
        self.in_watch = -1
        self.pending: list[tuple[bytes, bytes]] = []  # output before create finished

    def open_log(self) -> None:
        if self.log_fd >= 0:
            os.close(self.log_fd)
        self.log_fd = os.open(
            self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
        )


class Client:
    """A runtime's connection: requests in, answers out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.hold = False

    def answer(self, doc: dict[str, object]) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(json.dumps(doc).encode() + b"\n")
            self.sock.setblocking(False)
        except OSError:
            pass


class Monitor:
    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.sel = selectors.DefaultSelector()
        self.containers: dict[str, Container] = {}
        self.by_pid: dict[int, Container] = {}
        self.creating: dict[int, Container] = {}
        self.orphans: dict[int, int] = {}
        self.clients: list[Client] = []
        self.last_busy = time.monotonic()
        self.console_dir = f"/tmp/kpy-mon-{os.getpid()}"
        self.seq = 0
        self.lock_fd = -1
        self.reexec_asked = False

    # ---- set-up ---------------------------------------------------------------------------

    def listen(self) -> None:
        self._signals()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _bind_unix(self.server, os.path.join(self.dir, "monitor.sock"))
        self.server.listen(64)
        self.server.setblocking(False)
        self.sel.register(self.server, selectors.EVENT_READ, ("server", None))
        os.makedirs(self.console_dir, mode=0o700, exist_ok=True)

    def _signals(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only an explicit kill -9 ends us early
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.sel.register(self.wake_r, selectors.EVENT_READ, ("wake", None))

    # ---- handing over to a new program image (same PID, same file descriptors) -------------

    def reexec(self) -> None:
        """execve() this process's program again with every container's descriptors open.

        The PID stays, so the container inits stay our children (exit codes are still
        ours to reap); pipes, terminal masters, log files, attach and control sockets are
        inherited, so no output is lost (a container writing more than a pipe holds
        during the exec just waits). Attach sessions and runtime connections are closed:
        clients reconnect. The state goes through <dir>/resume.json.
        """
        keep = [self.lock_fd, self.server.fileno()]
        containers = []
        for c in self.containers.values():
            for conn in list(c.clients):
                self._drop_attach(c, conn)
            assert c.attach is not None
            fds = {
                "out": c.out_fd, "err": c.err_fd, "in": c.in_fd, "master": c.master,
                "log": c.log_fd, "ctl": c.ctl_fd, "attach": c.attach.fileno(),
            }  # fmt: skip
            keep += [fd for fd in fds.values() if fd >= 0]
            containers.append({**c.request, "pid": c.pid, "fds": fds})
        for client in list(self.clients):
            client.sock.close()
        state = {
            "lock": self.lock_fd,
            "server": self.server.fileno(),
            "seq": self.seq,
            "orphans": {str(k): v for k, v in self.orphans.items()},
            "containers": containers,
        }
        _write_atomic(os.path.join(self.dir, "resume.json"), json.dumps(state))
        for fd in keep:
            os.set_inheritable(fd, True)
        signal.set_wakeup_fd(-1)
        sys.stdout.flush()
        sys.stderr.flush()
        argv = [sys.executable, "-IS", sys.argv[0], self.dir, "--resume"]
        os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and launcher

    def resume(self) -> None:
        """Take over what `reexec` left: the same containers, descriptors and socket."""
        path = os.path.join(self.dir, "resume.json")
        with open(path) as f:
            state = json.load(f)
        os.unlink(path)
        self._signals()
        self.lock_fd = int(state["lock"])
        os.set_inheritable(self.lock_fd, False)
        self.server = socket.socket(fileno=int(state["server"]))
        self.server.set_inheritable(False)
        self.server.setblocking(False)
        self.sel.register(self.server, selectors.EVENT_READ, ("server", None))
        self.seq = int(state["seq"])
        self.orphans = {int(k): int(v) for k, v in state["orphans"].items()}
        for doc in state["containers"]:
            c = Container(doc, None)
            c.pid = int(doc["pid"])
            fds = doc["fds"]
            for fd in fds.values():
                if fd >= 0:
                    os.set_inheritable(fd, False)
            c.out_fd, c.err_fd, c.in_fd = fds["out"], fds["err"], fds["in"]
            c.master, c.log_fd, c.ctl_fd = fds["master"], fds["log"], fds["ctl"]
            c.attach = socket.socket(fileno=fds["attach"])
            c.attach.setblocking(False)
            self.sel.register(c.attach, selectors.EVENT_READ, ("attach", c))
            for fd, stream in ((c.out_fd, b"stdout"), (c.err_fd, b"stderr"), (c.master, b"stdout")):
                if fd >= 0:
                    self.sel.register(fd, selectors.EVENT_READ, ("output", (c, stream)))
            if c.ctl_fd >= 0:
                self.sel.register(c.ctl_fd, selectors.EVENT_READ, ("ctl", c))
            self.containers[c.id] = c
            self.by_pid[c.pid] = c
        self.reap()  # exits that happened during the exec

    # ---- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            for key, _ in self.sel.select(1.0):
                kind, obj = key.data
                getattr(self, f"_on_{kind}")(key.fileobj, obj)
            if self.reexec_asked and not self.creating:
                self.reexec()
            if self.containers or self.creating or self.clients:
                self.last_busy = time.monotonic()
            elif time.monotonic() - self.last_busy > IDLE_EXIT_S:
                try:  # a runtime connecting right now keeps us
                    conn, _ = self.server.accept()
                except BlockingIOError:
                    return
                conn.setblocking(False)
                client = Client(conn)
                self.clients.append(client)
                self.sel.register(conn, selectors.EVENT_READ, ("client", client))

    def _on_wake(self, _fd: object, _obj: object) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        self.reap()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.creating:
                self._created(self.creating.pop(pid), status)
            elif pid in self.by_pid:
                self._exited(self.by_pid.pop(pid), _exit_code(status))
            else:
                if len(self.orphans) >= MAX_ORPHANS:
                    self.orphans.pop(next(iter(self.orphans)))
                self.orphans[pid] = status

    def _on_server(self, _sock: object, _obj: object) -> None:
        try:
            conn, _ = self.server.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        client = Client(conn)
        self.clients.append(client)
        self.sel.register(conn, selectors.EVENT_READ, ("client", client))

    def _on_client(self, _sock: object, client: Client) -> None:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(client.sock)
            client.sock.close()
            self.clients.remove(client)
            for c in list(self.containers.values()) + list(self.creating.values()):
                if c.requester is client:
                    c.requester = None
            if not (self.containers or self.creating or self.clients):
                self.last_busy = 0.0  # the last runtime went with nothing held: leave now
            return
        client.buf += data
        while b"\n" in client.buf:
            line, client.buf = client.buf.split(b"\n", 1)
            try:
                req = json.loads(line)
                self.handle(client, req)
            except Exception as err:  # noqa: BLE001 - one bad request must not end the node's monitor
                client.answer({"error": f"{type(err).__name__}: {err}"})

    def handle(self, client: Client, req: dict[str, object]) -> None:
        op = req.get("op")
        if op == "hold":
            client.hold = True
            client.answer({"pid": os.getpid(), "version": VERSION})
        elif op == "status":
            client.answer(
                {
                    "pid": os.getpid(),
                    "containers": sorted(self.containers),
                    "creating": len(self.creating),
                }
            )
        elif op == "reexec":
            self.reexec_asked = True
            client.answer({"pid": os.getpid(), "containers": len(self.containers)})
        elif op == "create":
            self.create(client, req)
        else:
            client.answer({"error": f"unknown request {op!r}"})

    # ---- create -----------------------------------------------------------------------------

    def create(self, client: Client, req: dict[str, object]) -> None:
        c = Container(req, client)
        if c.id in self.containers or any(x.id == c.id for x in self.creating.values()):
            client.answer({"error": f"container {c.id[:12]} is already held by the monitor"})
            return
        child_fds: list[int] = []
        try:
            c.open_log()
            devnull = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            child_fds.append(devnull)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            c.err_fd = err_r
            child_fds.append(err_w)
            if c.tty:
                self.seq += 1
                c.console_path = os.path.join(self.console_dir, f"{self.seq}.sock")
                c.console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                _bind_unix(c.console, c.console_path)
                c.console.listen(1)
                c.console.setblocking(False)
                self.sel.register(c.console, selectors.EVENT_READ, ("console", c))
                stdio = [devnull, err_w, err_w]  # the runtime's own words, on error
            else:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                c.out_fd = out_r
                child_fds.append(out_w)
                stdin = devnull
                if c.stdin:
                    in_r, in_w = os.pipe2(os.O_CLOEXEC)
                    c.in_fd = in_w
                    os.set_blocking(in_w, False)
                    child_fds.append(in_r)
                    stdin = in_r
                stdio = [stdin, out_w, err_w]
            for fd, stream in ((c.out_fd, b"stdout"), (c.err_fd, b"stderr")):
                if fd >= 0:
                    os.set_blocking(fd, False)
                    self.sel.register(fd, selectors.EVENT_READ, ("output", (c, stream)))
            runtime = str(req["runtime"])
            extra = req.get("runtime_args")
            args = [str(a) for a in extra] if isinstance(extra, list) else []
            argv = [runtime, *args, "create",
                    "--bundle", str(req["bundle"]), "--pid-file", c.pid_file]  # fmt: skip
            if c.tty:
                argv += ["--console-socket", c.console_path]
            argv.append(c.id)
            env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
            actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(stdio)]
            c.create_pid = os.posix_spawn(
                runtime,
                argv,
                env,
                file_actions=actions,
                setsid=True,
                # ignored signals stay ignored across exec: the container gets the defaults
                setsigdef=(signal.SIGTERM, signal.SIGPIPE, signal.SIGHUP, signal.SIGCHLD),
                setsigmask=(),
            )
            self.creating[c.create_pid] = c
        except OSError as err:
            self._discard(c)
            client.answer({"error": f"starting {req.get('runtime')} create: {err}"})
        finally:
            for fd in child_fds:
                os.close(fd)

    def _on_console(self, _sock: object, c: Container) -> None:
        self._take_console(c)

    def _take_console(self, c: Container) -> None:
        """The runtime sends the terminal's master on the console socket (SCM_RIGHTS)."""
        if c.console is None or c.master >= 0:
            return
        try:
            conn, _ = c.console.accept()
        except BlockingIOError:
            return
        with conn:
            conn.setblocking(True)
            conn.settimeout(2.0)
            try:
                _, fds, _, _ = socket.recv_fds(conn, 4096, 4)
            except OSError:
                fds = []
        for extra in fds[1:]:
            os.close(extra)
        if fds:
            c.master = fds[0]
            os.set_blocking(c.master, False)
            self.sel.register(c.master, selectors.EVENT_READ, ("output", (c, b"stdout")))
        self._close_console(c)

    def _close_console(self, c: Container) -> None:
        if c.console is not None:
            self.sel.unregister(c.console)
            c.console.close()
            c.console = None
            try:
                os.unlink(c.console_path)
            except OSError:
                pass

    def _created(self, c: Container, status: int) -> None:
        """`<oci> create` ended: answer the runtime with the init's PID or the error."""
        self._take_console(c)
        self._close_console(c)
        for fd in (c.out_fd, c.err_fd, c.master):
            if fd >= 0:
                self._read_output(c, fd, b"stdout" if fd != c.err_fd else b"stderr", once=True)
        pid = 0
        if status == 0:
            try:
                with open(c.pid_file) as f:
                    pid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
        if pid <= 0:
            said = b"".join(d for _, d in c.pending).decode(errors="replace").strip()
            why = said or f"exit status {_exit_code(status)}"
            if c.requester is not None:
                c.requester.answer({"error": f"{c.runtime} create failed: {why}"})
            self._discard(c)
            return
        c.pid = pid
        try:
            self._serve_container(c)
        except OSError as err:
            if c.requester is not None:
                c.requester.answer({"error": f"setting up attach/ctl of the container: {err}"})
            self._discard(c)
            return
        pending, c.pending = c.pending, []
        ts = _timestamp()
        for stream, data in pending:
            self._log(c, stream, data, ts)
        self.containers[c.id] = c
        if c.requester is not None:
            c.requester.answer({"pid": pid, "monitor_pid": os.getpid()})
            c.requester = None
        if pid in self.orphans:  # the init exited before create returned
            self._exited(c, _exit_code(self.orphans.pop(pid)))
        else:
            self.by_pid[pid] = c

    def _serve_container(self, c: Container) -> None:
        os.makedirs(c.attach_dir, exist_ok=True)
        c.attach = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        _bind_unix(c.attach, os.path.join(c.attach_dir, "attach"))
        c.attach.listen(16)
        c.attach.setblocking(False)
        self.sel.register(c.attach, selectors.EVENT_READ, ("attach", c))
        try:
            os.mkfifo(c.ctl_path, 0o600)
        except FileExistsError:
            pass
        c.ctl_fd = os.open(c.ctl_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(c.ctl_fd, selectors.EVENT_READ, ("ctl", c))

    # ---- output, attach, control --------------------------------------------------------------

    def _on_output(self, fd: int, obj: tuple[Container, bytes]) -> None:
        c, stream = obj
        self._read_output(c, fd, stream, once=True)

    def _read_output(self, c: Container, fd: int, stream: bytes, *, once: bool) -> None:
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:  # EIO: the terminal's last slave is gone
                data = b""
            if not data:
                self._close_output(c, fd)
                return
            if c.pid == 0:
                c.pending.append((stream, data))
            else:
                self._log(c, stream, data, _timestamp())
            if once:
                return

    def _close_output(self, c: Container, fd: int) -> None:
        self.sel.unregister(fd)
        os.close(fd)
        if fd == c.out_fd:
            c.out_fd = -1
        elif fd == c.err_fd:
            c.err_fd = -1
        elif fd == c.master:
            c.master = -1

    def _log(self, c: Container, stream: bytes, data: bytes, ts: bytes) -> None:
        if c.log_fd >= 0:
            try:
                os.write(c.log_fd, cri_log_records(stream, data, ts))
            except OSError as err:
                print(f"monitor: writing the log of {c.id[:12]}: {err}", file=sys.stderr)
        kind = bytes([ATTACH_STDERR if stream == b"stderr" else ATTACH_STDOUT])
        for client in list(c.clients):
            try:
                for off in range(0, len(data), READ_SIZE):
                    client.send(kind + data[off : off + READ_SIZE])
            except OSError:  # gone, or too slow to keep up: it misses no log, only the live view
                self._drop_attach(c, client)

    def _on_attach(self, _sock: object, c: Container) -> None:
        assert c.attach is not None
        try:
            conn, _ = c.attach.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        c.clients.append(conn)
        self.sel.register(conn, selectors.EVENT_READ, ("attach_in", c))

    def _on_attach_in(self, conn: socket.socket, c: Container) -> None:
        try:
            data = conn.recv(READ_SIZE + 1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_attach(c, conn)  # stdin stays open for the next attach
            return
        self._write_stdin(c, data)

    def _write_stdin(self, c: Container, data: bytes) -> None:
        """To the container's stdin (pipe or terminal); what does not fit waits for room."""
        target = c.master if c.tty else c.in_fd
        if target < 0:
            return
        if c.in_pending:
            if len(c.in_pending) + len(data) > STDIN_QUEUE_MAX:
                print(f"monitor: stdin of {c.id[:12]} is full; input dropped", file=sys.stderr)
                return
            c.in_pending += data
            return
        try:
            n = os.write(target, data)
        except BlockingIOError:
            n = 0
        except OSError as err:
            print(f"monitor: stdin of {c.id[:12]}: {err}", file=sys.stderr)
            return
        if n < len(data):
            c.in_pending += data[n:]
            # a duplicate to watch for room: the terminal's master is registered for reading
            c.in_watch = os.dup(target)
            self.sel.register(c.in_watch, selectors.EVENT_WRITE, ("stdin_room", c))

    def _on_stdin_room(self, fd: int, c: Container) -> None:
        try:
            n = os.write(fd, c.in_pending)
        except BlockingIOError:
            return
        except OSError:
            n = len(c.in_pending)
        del c.in_pending[:n]
        if not c.in_pending:
            self._stop_stdin_watch(c)

    def _stop_stdin_watch(self, c: Container) -> None:
        if c.in_watch >= 0:
            self.sel.unregister(c.in_watch)
            os.close(c.in_watch)
            c.in_watch = -1
        c.in_pending.clear()

    def _drop_attach(self, c: Container, conn: socket.socket) -> None:
        if conn in c.clients:
            c.clients.remove(conn)
            self.sel.unregister(conn)
            conn.close()

    def _on_ctl(self, fd: int, c: Container) -> None:
        try:
            c.ctl_buf += os.read(fd, 4096)
        except BlockingIOError:
            return
        while b"\n" in c.ctl_buf:
            line, c.ctl_buf = c.ctl_buf.split(b"\n", 1)
            fields = line.split()
            if len(fields) != 3:
                continue
            kind, a, b = (int(x) for x in fields)
            if kind == 1 and c.master >= 0:
                fcntl.ioctl(c.master, termios.TIOCSWINSZ, struct.pack("HHHH", a, b, 0, 0))
            elif kind == 2:
                try:
                    c.open_log()
                except OSError as err:
                    print(f"monitor: reopening the log of {c.id[:12]}: {err}", file=sys.stderr)

    # ---- exit ------------------------------------------------------------------------------

    def _exited(self, c: Container, code: int) -> None:
        """Drain what the container wrote, then record its exit as conmon does."""
        for fd, stream in ((c.out_fd, b"stdout"), (c.err_fd, b"stderr"), (c.master, b"stdout")):
            if fd >= 0:
                self._read_output(c, fd, stream, once=False)
        try:
            _write_atomic(os.path.join(c.exit_dir, c.id), str(code))
        except OSError as err:
            print(f"monitor: exit file of {c.id[:12]}: {err}", file=sys.stderr)
        self._discard(c)

    def _discard(self, c: Container) -> None:
        self._close_console(c)
        self._stop_stdin_watch(c)
        for conn in list(c.clients):
            self._drop_attach(c, conn)
        if c.attach is not None:
            self.sel.unregister(c.attach)
            c.attach.close()
            c.attach = None
            try:
                os.unlink(os.path.join(c.attach_dir, "attach"))
            except OSError:
                pass
        for fd in (c.out_fd, c.err_fd, c.master, c.ctl_fd):
            if fd >= 0:
                self.sel.unregister(fd)
                os.close(fd)
        c.out_fd = c.err_fd = c.master = c.ctl_fd = -1
        for fd in (c.in_fd, c.log_fd):
            if fd >= 0:
                os.close(fd)
        c.in_fd = c.log_fd = -1
        self.containers.pop(c.id, None)
        self.by_pid.pop(c.pid, None)


def daemonize(directory: str) -> int:
    """Start a monitor for `directory` detached from the caller; 0 when one runs (now or already).

    The caller waits for this process, which forks: the child makes a new session, forks
    again (the grandchild is re-parented to init, or the nearest subreaper, never to the
    runtime), takes the lock and says "ready" on a pipe; a monitor already holding the lock
    is fine too.
    """
    os.makedirs(directory, exist_ok=True)
    ready_r, ready_w = os.pipe()
    if os.fork() > 0:
        os.close(ready_w)
        said = b""
        while chunk := os.read(ready_r, 4096):
            said += chunk
        if said.startswith(b"ready"):
            return 0
        sys.stderr.write(said.decode(errors="replace") or "the monitor died starting\n")
        return 1
    os.close(ready_r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    try:
        lock = os.open(
            os.path.join(directory, "monitor.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        )
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.write(ready_w, b"ready (another monitor holds the lock)\n")
            os._exit(0)
        devnull = os.open("/dev/null", os.O_RDWR)
        os.dup2(devnull, 0)
        os.close(devnull)
        logfd = os.open(
            os.path.join(directory, "monitor.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT
        )
        os.dup2(logfd, 1)
        os.dup2(logfd, 2)
        os.close(logfd)
        os.chdir("/")
        monitor = Monitor(directory)
        monitor.lock_fd = lock
        monitor.listen()
        _write_atomic(os.path.join(directory, "monitor.pid"), str(os.getpid()))
    except Exception as err:  # noqa: BLE001 - said to the starter, who reports it
        os.write(ready_w, f"monitor start failed: {err}\n".encode())
        os._exit(1)
    os.write(ready_w, b"ready\n")
    os.close(ready_w)
    sys.stdout.flush()
    return serve(monitor)


def serve(monitor: Monitor) -> int:
    """Run until idle, then remove the socket and the pid file (the lock goes with us)."""
    directory = monitor.dir
    try:
        monitor.run()
    finally:
        for name in ("monitor.sock", "monitor.pid"):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
        try:
            os.rmdir(monitor.console_dir)
        except OSError:
            pass
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[1] == "--resume":
        monitor = Monitor(args[0])
        monitor.resume()
        print(
            f"monitor {os.getpid()}: re-executed, {len(monitor.containers)} containers kept",
            flush=True,
        )
        return serve(monitor)
    if len(args) != 1:
        sys.stderr.write("usage: kubelet-py-monitor DIR\n")
        return 2
    return daemonize(args[0])


if __name__ == "__main__":
    sys.exit(main())
