"""`exec`: run another process in a running container (ExecSync, conmon's exec mode).

exec (this process)                         child
───────────────────                         ─────
read state.json, build the process:
  --process FILE, or config.json's process
  with args/--env/--cwd/--user/--cap applied
open /proc/<init>/ns/*, setns(pid)
fork ──────────────────────────────────────▶ join cgroups, setns(ipc, uts, net, cgroup, mnt)
                                             [pty] rlimits, user, caps, seccomp, execve
read report pipe: EOF on exec = started ◀─── or "err step\\0message"
--detach: write --pid-file, exit 0
else: forward signals, wait, exit with the child's code (128+N for signal N)

--tty without --console-socket (runc's foreground mode, what `kubectl exec -t` gets): the
child makes the pseudo-terminal and hands its master back over a socketpair; this process
puts its own terminal in raw mode, copies both ways, and gives the container's terminal
the size of its own on start and on every SIGWINCH.
"""

# No pathlib here: it imports re, fnmatch and urllib, ~5 ms of every command's budget.
# ruff: noqa: PTH123

from __future__ import annotations

import os

from cri.oci import cgroups, fastjson, linux, process, state
from cri.oci.errors import OCIError, SpecError, StateError, SysError, UsageError, os_error
from cri.oci.spec import Process, parse_process

FORWARDED_SIGNALS = (1, 2, 3, 10, 12, 15, 28)  # HUP INT QUIT USR1 USR2 TERM WINCH


class ExecRequest:
    __slots__ = ("additional_gids", "args", "caps", "console_socket", "container_id", "cwd",
                 "detach", "env", "no_new_privs", "pid_file", "preserve_fds", "process_file",
                 "root", "tty", "user")  # fmt: skip

    def __init__(
        self,
        *,
        root: str,
        container_id: str,
        args: list[str],
        process_file: str = "",
        user: str = "",
        cwd: str = "",
        env: list[str] | None = None,
        tty: bool = False,
        detach: bool = False,
        pid_file: str = "",
        console_socket: str = "",
        caps: list[str] | None = None,
        no_new_privs: bool = False,
        additional_gids: list[int] | None = None,
        preserve_fds: int = 0,
    ) -> None:
        self.root = root
        self.container_id = container_id
        self.args = args
        self.process_file = process_file
        self.user = user
        self.cwd = cwd
        self.env = env or []
        self.tty = tty
        self.detach = detach
        self.pid_file = pid_file
        self.console_socket = console_socket
        self.caps = caps or []
        self.no_new_privs = no_new_privs
        self.additional_gids = additional_gids or []
        self.preserve_fds = preserve_fds


def process_doc(req: ExecRequest, config: dict[str, object]) -> dict[str, object]:
    """The OCI process object to run (pure): a --process file's, or the container's, adjusted."""
    if req.process_file:
        try:
            with open(req.process_file, "rb") as f:
                doc = fastjson.loads(f.read())
        except OSError as err:
            raise os_error(f"read process file {req.process_file}", err) from err
        except ValueError as err:
            raise SpecError(str(err), step=f"parse {req.process_file}") from err
        if not isinstance(doc, dict):
            raise SpecError(f"{req.process_file}: not a JSON object")
        return doc
    base = config.get("process")
    doc = dict(base) if isinstance(base, dict) else {}
    if not req.args:
        raise UsageError("exec needs a command to run")
    doc["args"] = list(req.args)
    doc["terminal"] = req.tty
    env = doc.get("env")
    doc["env"] = [*(env if isinstance(env, list) else []), *req.env]
    if req.cwd:
        doc["cwd"] = req.cwd
    if req.user:
        uid_text, _, gid_text = req.user.partition(":")
        if not uid_text.isdigit() or (gid_text and not gid_text.isdigit()):
            raise UsageError(f"--user {req.user!r}: must be UID[:GID], numeric")
        doc["user"] = {"uid": int(uid_text), "gid": int(gid_text or 0),
                       "additionalGids": list(req.additional_gids)}  # fmt: skip
    elif req.additional_gids:
        user = doc.get("user")
        doc["user"] = {**(user if isinstance(user, dict) else {}),
                       "additionalGids": list(req.additional_gids)}  # fmt: skip
    if req.caps:
        raw = doc.get("capabilities")
        capsets = dict(raw) if isinstance(raw, dict) else {}
        for key in ("bounding", "effective", "permitted", "inheritable", "ambient"):
            current = capsets.get(key)
            merged = list(current) if isinstance(current, list) else []
            merged += [c for c in req.caps if c not in merged]
            capsets[key] = merged
        doc["capabilities"] = capsets
    if req.no_new_privs:
        doc["noNewPrivileges"] = True
    return doc


def run(req: ExecRequest) -> int:
    record = state.load(req.root, req.container_id)
    if record is None:
        raise StateError(f"container {req.container_id} is still being created")
    status = state.status(req.root, record)
    if status != state.RUNNING:
        raise StateError(f"cannot exec in a {status} container")
    proc = parse_process(process_doc(req, record.config))
    foreground_tty = proc.terminal and not req.console_socket
    if foreground_tty and req.detach:
        raise UsageError("a detached terminal needs --console-socket")
    linux_doc = record.config.get("linux")
    seccomp_filter = None
    if isinstance(linux_doc, dict) and isinstance(linux_doc.get("seccomp"), dict):
        from cri.oci import seccomp

        seccomp_filter = seccomp.compile_profile(linux_doc["seccomp"])
    kinds = []
    if isinstance(linux_doc, dict) and isinstance(linux_doc.get("namespaces"), list):
        kinds = [ns.get("type") for ns in linux_doc["namespaces"] if isinstance(ns, dict)]
    # Join the init's namespaces; mount last, since host paths vanish after it.
    order = [k for k in ("pid", "ipc", "uts", "network", "cgroup", "mount") if k in kinds]
    fds: list[tuple[str, int]] = []
    console = None
    console_parent = None
    report_r = report_w = -1
    pid = 0
    try:
        for kind in order:
            path = f"/proc/{record.pid}/ns/{linux.NAMESPACE_FILES[kind]}"
            try:
                fds.append((kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
            except OSError as err:
                raise os_error(f"open {path}", err) from err
        if not record.init_alive():
            raise StateError("cannot exec: the container's init has exited")
        if proc.terminal:
            # The child imports these after joining the mount namespace, out of our files' reach.
            import _socket
            import fcntl  # noqa: F401
            import struct  # noqa: F401

            if foreground_tty:
                console_parent, console = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
            else:
                console = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                try:
                    console.connect(req.console_socket)
                except OSError as err:
                    raise os_error(f"connect to console socket {req.console_socket}", err) from err
        report_r, report_w = os.pipe()
        group = cgroups.Cgroup.from_json(record.cgroup)
        for kind, fd in fds:
            if kind == "pid":
                try:
                    linux.setns(fd, linux.CLONE_NEWPID)
                except OSError as err:
                    raise os_error("join pid namespace", err) from err
        pid, join_v2 = process.fork_in_cgroup(group)
        if pid == 0:
            _child(proc, group, [(k, fd) for k, fd in fds if k != "pid"], seccomp_filter,
                   report_w, console, req.preserve_fds, join_v2)  # fmt: skip
        os.close(report_w)
        report_w = -1
        if console is not None:
            console.close()  # the child's end
            console = None
        data = b""
        while True:
            chunk = os.read(report_r, 4096)
            if not chunk:
                break
            data += chunk
        if data:
            os.waitpid(pid, 0)
            pid = 0
            step, _, message = data.decode(errors="replace").partition("\x00")
            raise SysError(message.rstrip("\n"), step=step.removeprefix("err "))
        master = _receive_master(console_parent) if console_parent is not None else -1
    except BaseException:
        if pid > 0:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        raise
    finally:
        for _, fd in fds:
            os.close(fd)
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)
        if console is not None:
            console.close()
        if console_parent is not None:
            console_parent.close()
    if req.pid_file:
        state.write_atomic(req.pid_file, str(pid).encode(), mode=0o644)
    if req.detach:
        return 0
    if master >= 0:
        from cri.oci import terminal

        return terminal.relay(pid, master)
    return _wait_forwarding(pid)


def _receive_master(sock: object) -> int:
    """The pseudo-terminal master the child sent over the socketpair (SCM_RIGHTS)."""
    import _socket
    import struct

    try:
        _data, ancdata, _flags, _addr = sock.recvmsg(  # type: ignore[attr-defined]
            4096, _socket.CMSG_LEN(4)
        )
    except OSError as err:
        raise os_error("receive the exec terminal", err) from err
    for level, kind, payload in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS and len(payload) >= 4:
            fd: int = struct.unpack("i", payload[:4])[0]
            return fd
    raise SysError("the child sent no terminal", step="receive the exec terminal")


def _wait_forwarding(pid: int) -> int:
    from cri.oci import sig

    def forward(received: int, _frame: object) -> None:
        try:
            os.kill(pid, received)
        except ProcessLookupError:
            pass

    for signum in FORWARDED_SIGNALS:
        sig.set_handler(signum, forward)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _child(
    proc: object,
    group: cgroups.Cgroup,
    fds: list[tuple[str, int]],
    seccomp_filter: object,
    report_fd: int,
    console: object,
    preserve_fds: int,
    join_v2: bool,
) -> None:
    """The exec'd process-to-be; reports an error line or execs. Never returns."""
    assert isinstance(proc, Process)
    try:
        try:
            cgroups.join(group, v2=join_v2)  # cgroup2: born there (see process.fork_in_cgroup)
            for kind, fd in fds:
                try:
                    linux.setns(fd, linux.NAMESPACE_FLAGS[kind])
                except OSError as err:
                    raise os_error(f"join {kind} namespace", err) from err
            os.chdir("/")
            if proc.terminal:
                _console(proc, console)
            process.set_rlimits(proc)
            path = process.finalize(proc, seccomp_filter=seccomp_filter)  # type: ignore[arg-type]
            os.closerange(3 + preserve_fds, report_fd)
            os.closerange(report_fd + 1, 1 << 20)
            process.exec_process(proc, path, seccomp_filter=seccomp_filter)  # type: ignore[arg-type]
        except OCIError as err:
            msg = f"err {err.step}\x00{err}"
            os.write(report_fd, msg.encode())
        except BaseException as err:  # noqa: BLE001 - anything must reach the parent
            os.write(report_fd, f"err exec\x00{type(err).__name__}: {err}".encode())
    finally:
        os._exit(127)


def _console(proc: object, console: object) -> None:
    import _socket
    import fcntl
    import struct

    try:
        master, slave = os.openpty()
        name = os.ttyname(slave)
        console.sendmsg(  # type: ignore[attr-defined]
            [name.encode()], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack("i", master))]
        )
        console.close()  # type: ignore[attr-defined]
        os.close(master)
        os.setsid()
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        fcntl.ioctl(0, 0x540E, 0)  # TIOCSCTTY
        if slave > 2:
            os.close(slave)
    except OSError as err:
        raise os_error("set up the exec console", err) from err
    del proc
