"""`create`: build the container and leave its init waiting for `start`.

    create (this process)                      init (forked; PID 1 of the new PID namespace)
    ─────────────────────                      ─────────────────────────────────────────────
    read + check config.json, compile seccomp
    mkdir <root>/<id>, cgroup dirs + limits
    bind <root>/<id>/start.sock, listen
    unshare(CLONE_NEWPID) / setns(pid path)
    clone3 into its cgroup2 dir ──────────────▶ join v1 cgroups, setns(paths), unshare(new ns)
    write + fsync state.json.tmp               oom_score_adj, rlimits, rootfs, pivot_root,
                                               hostname, sysctls, ro/masked paths, user, caps
    read report pipe ◀──────── "ok" or error ── find the executable
    write pid file, rename state.json; exit 0  accept() on start.sock … (`start` connects)
                                               seccomp, execve: the connection closes on exec
                                               (O_CLOEXEC), which `start` reads as success

Everything the init imports is imported before the fork: after pivot_root our
source files are out of its reach.

The init is orphaned when `create` exits and is reaped by the nearest subreaper
(conmon). Any failure before "ok" kills the init and removes the cgroup
directories and the state directory, and the error names the step.
"""

# No pathlib here: it imports re, fnmatch and urllib, ~5 ms of every command's budget.
# ruff: noqa: PTH102, PTH103, PTH106, PTH108, PTH112, PTH123, PTH208, PTH104

from __future__ import annotations

import _socket
import os
import time

from cri.oci import cgroups, fastjson, linux, process, rootfs, state
from cri.oci.errors import OCIError, SpecError, StateError, SysError, os_error
from cri.oci.spec import Spec, parse_spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cri.oci.seccomp import Filter

READY = b"ok\n"
TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414
INIT_TIMEOUT_S = 60.0


class CreateRequest:
    __slots__ = ("bundle", "console_socket", "container_id", "pid_file", "preserve_fds", "root")

    def __init__(
        self,
        *,
        root: str,
        container_id: str,
        bundle: str,
        pid_file: str,
        console_socket: str,
        preserve_fds: int = 0,
    ) -> None:
        self.root = root
        self.container_id = container_id
        self.bundle = bundle
        self.pid_file = pid_file
        self.console_socket = console_socket
        self.preserve_fds = preserve_fds


def load_spec(bundle: str) -> tuple[Spec, dict[str, object]]:
    """The parsed spec and the document as written (kept in state.json for `exec`)."""
    path = f"{bundle}/config.json"
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise os_error(f"read {path}", err) from err
    try:
        doc = fastjson.loads(raw)
    except ValueError as err:
        raise SpecError(str(err), step=f"parse {path}") from err
    spec = parse_spec(doc)
    assert isinstance(doc, dict)
    return spec, doc


def _rm_state_dir(directory: str) -> None:
    try:
        for name in os.listdir(directory):
            os.unlink(f"{directory}/{name}")
        os.rmdir(directory)
    except FileNotFoundError:
        pass


def run(req: CreateRequest) -> None:
    os.makedirs(req.root, 0o711, exist_ok=True)
    directory = state.container_dir(req.root, req.container_id)
    try:
        os.mkdir(directory, 0o711)
    except FileExistsError:
        raise StateError(f"container {req.container_id} already exists") from None
    try:
        _create(req, directory)
    except BaseException:
        _rm_state_dir(directory)
        raise


class _Init:
    """Everything the forked init needs, prepared by the parent before fork."""

    __slots__ = ("bundle", "cgroup", "console", "filter", "listener", "ns_fds", "preserve_fds",
                 "report_fd", "rootfs", "spec")  # fmt: skip

    def __init__(self, **kw: object) -> None:
        for k, v in kw.items():
            setattr(self, k, v)

    spec: Spec
    rootfs: str
    bundle: str
    cgroup: cgroups.Cgroup
    filter: Filter | None
    ns_fds: list[tuple[str, int]]
    listener: object
    console: object
    report_fd: int
    preserve_fds: int


def _create(req: CreateRequest, directory: str) -> None:
    spec, raw_config = load_spec(req.bundle)
    root_path = spec.root_path
    rootfs_dir = root_path if root_path.startswith("/") else f"{req.bundle}/{root_path}"
    rootfs_dir = os.path.realpath(rootfs_dir)
    if not os.path.isdir(rootfs_dir):
        raise SpecError(f"root.path {rootfs_dir} is not a directory")
    for kind in ("user", "time"):
        if spec.namespace(kind) is not None:
            raise SpecError(f"{kind} namespaces are not supported", step="check spec")
    mnt = spec.namespace("mount")
    if mnt is None or mnt.path:
        raise SpecError("a container needs a new mount namespace", step="check spec")
    if spec.process.terminal and not req.console_socket:
        raise SpecError("process.terminal is set but no --console-socket was given")
    seccomp_filter = None
    if spec.seccomp is not None:
        from cri.oci import seccomp

        seccomp_filter = seccomp.compile_profile(spec.seccomp)

    ns_fds: list[tuple[str, int]] = []
    group: cgroups.Cgroup | None = None
    pid = 0
    listener = console = None
    report_r = report_w = -1
    try:
        for ns in spec.namespaces:
            if ns.path:
                try:
                    ns_fds.append((ns.kind, os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)))
                except OSError as err:
                    raise os_error(f"open {ns.kind} namespace {ns.path}", err) from err
        with open("/proc/self/mountinfo") as f:
            hierarchies = cgroups.parse_mountinfo(f.read())
        group = cgroups.create(
            hierarchies=hierarchies,
            cgroups_path=spec.cgroups_path,
            container_id=req.container_id,
            resources=spec.resources,
        )
        listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        os.chdir(directory)  # bind by a short relative name: sun_path holds 108 bytes
        try:
            listener.bind(state.START_SOCKET)
        except OSError as err:
            raise os_error("bind start socket", err) from err
        listener.listen(1)
        if spec.process.terminal:
            # The init imports these after pivot_root, when our files are out of its reach.
            import fcntl  # noqa: F401
            import struct  # noqa: F401

            console = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            try:
                console.connect(req.console_socket)
            except OSError as err:
                raise os_error(f"connect to console socket {req.console_socket}", err) from err
        report_r, report_w = os.pipe()
        pid_ns = spec.namespace("pid")
        if pid_ns is not None:
            try:
                if pid_ns.path:
                    linux.setns(dict(ns_fds)["pid"], linux.CLONE_NEWPID)
                else:
                    linux.unshare(linux.CLONE_NEWPID)
            except OSError as err:
                raise os_error("enter pid namespace " + (pid_ns.path or "(new)"), err) from err
        init = _Init(
            spec=spec,
            rootfs=rootfs_dir,
            bundle=req.bundle,
            cgroup=group,
            filter=seccomp_filter,
            ns_fds=[(k, fd) for k, fd in ns_fds if k != "pid"],
            listener=listener,
            console=console,
            report_fd=report_w,
            preserve_fds=req.preserve_fds,
        )
        pid, join_v2 = process.fork_in_cgroup(group)
        if pid == 0:
            _init_main(init)  # never returns
        os.close(report_w)
        report_w = -1
        if join_v2:
            cgroups.join(group, pid, v1=False)
        # Write (and fsync) state.json's temp file while the init builds the container;
        # it is renamed into place only once the init says it is ready.
        st = state.proc_stat(pid)
        state_tmp = ""
        if st is not None:
            record = state.State(
                id=req.container_id,
                pid=pid,
                starttime=st[1],
                bundle=req.bundle,
                rootfs=rootfs_dir,
                created=_rfc3339_now(),
                annotations=spec.annotations,
                cgroup=group.to_json(),
                config=raw_config,
            )
            state_tmp = state.write_temp(
                f"{directory}/{state.STATE_FILE}", fastjson.dumps(record.to_json()).encode()
            )
        _await_ready(report_r, pid)
        now = state.proc_stat(pid)
        if st is None or now is None or now[1] != st[1]:
            raise SysError("the container's init exited right after it was ready", step="init")
        if req.pid_file:
            state.write_atomic(req.pid_file, str(pid).encode(), mode=0o644, sync=False)
        os.rename(state_tmp, f"{directory}/{state.STATE_FILE}")
    except BaseException:
        if pid > 0:
            _kill_and_reap(pid)
        if group is not None:
            cgroups.remove(group)
        raise
    finally:
        for _, fd in ns_fds:
            os.close(fd)
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)
        for sock in (listener, console):
            if sock is not None:
                sock.close()


def _rfc3339_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout


def _await_ready(fd: int, pid: int) -> None:
    """Wait for the init's "ok"; its error line, or its death, becomes the exception."""
    from cri.oci import sig

    data = b""
    previous = sig.set_handler(sig.SIGALRM, _alarm)
    sig.alarm(int(INIT_TIMEOUT_S))
    try:
        while b"\n" not in data:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    except _Timeout:
        raise SysError(f"no answer within {INIT_TIMEOUT_S:.0f}s", step="wait for init") from None
    finally:
        sig.alarm(0)
        sig.set_handler(sig.SIGALRM, previous)  # type: ignore[arg-type]
    if data == READY:
        return
    if data.startswith(b"err "):
        step, _, message = data[4:].decode(errors="replace").rstrip("\n").partition("\x00")
        raise SysError(message, step=step)
    _, status = os.waitpid(pid, 0)
    raise SysError(f"exited without a report (wait status {status:#x})", step="container init")


# ---- the init process --------------------------------------------------------------------


def _report(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _init_main(init: _Init) -> None:
    """Runs in the forked child; never returns to the caller's code."""
    try:
        try:
            _init(init)
        except OCIError as err:
            _report(init.report_fd, f"err {err.step}\x00{err}\n".encode())
        except BaseException as err:  # noqa: BLE001 - anything must reach the parent
            _report(init.report_fd, f"err container init\x00{type(err).__name__}: {err}\n".encode())
    finally:
        os._exit(1)


def _init(init: _Init) -> None:
    spec = init.spec
    proc = spec.process
    cgroups.join(init.cgroup, v2=False)  # cgroup2: born there, or joined by the parent
    for kind, fd in init.ns_fds:
        try:
            linux.setns(fd, linux.NAMESPACE_FLAGS[kind])
        except OSError as err:
            raise os_error(f"join {kind} namespace", err) from err
        os.close(fd)
    flags = 0
    for ns in spec.namespaces:
        if not ns.path and ns.kind != "pid":
            flags |= linux.NAMESPACE_FLAGS[ns.kind]
    try:
        linux.unshare(flags)
    except OSError as err:
        raise os_error("create namespaces", err) from err
    if proc.oom_score_adj is not None:
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(proc.oom_score_adj))
        except OSError as err:
            raise os_error(f"set oom_score_adj to {proc.oom_score_adj}", err) from err
    process.set_rlimits(proc)
    cgroup_dirs = dict(init.cgroup.paths)
    rootfs.prepare(spec, rootfs=init.rootfs, bundle=init.bundle, cgroup_dirs=cgroup_dirs)
    if proc.terminal:
        _setup_console(init)
    uts = spec.namespace("uts")
    if uts is not None:
        try:
            if spec.hostname:
                linux.sethostname(spec.hostname)
            if spec.domainname:
                linux.setdomainname(spec.domainname)
        except OSError as err:
            raise os_error(f"set hostname {spec.hostname}", err) from err
    rootfs.write_sysctls(spec.sysctl)
    rootfs.readonly_paths(spec.readonly_paths)
    rootfs.mask_paths(spec.masked_paths)
    if spec.root_readonly:
        rootfs.readonly_root()
    path = process.finalize(proc, seccomp_filter=init.filter)
    _report(init.report_fd, READY)
    os.close(init.report_fd)
    listener = init.listener
    while True:
        try:
            conn_fd, _ = listener._accept()  # type: ignore[attr-defined]
            break
        except InterruptedError:
            continue
    listener.close()  # type: ignore[attr-defined]
    try:
        os.closerange(3 + init.preserve_fds, conn_fd)
        os.closerange(conn_fd + 1, 1 << 20)
        process.exec_process(proc, path, seccomp_filter=init.filter)
    except OCIError as err:
        message = f"{err.step}: {err}"
    except BaseException as err:  # noqa: BLE001 - `start` must hear of it, whatever it is
        message = f"container init: {type(err).__name__}: {err}"
    try:
        os.write(conn_fd, message.encode())
    except OSError:
        pass
    os.write(2, f"kubelet-py-oci: {message}\n".encode())  # into the container's log
    os._exit(127)


def _setup_console(init: _Init) -> None:
    """A pty from the container's devpts: the master goes to the console socket, the slave is
    stdio and /dev/console."""
    import fcntl
    import struct

    try:
        master, slave = os.openpty()
        name = os.ttyname(slave)
        proc = init.spec.process
        if proc.console_width and proc.console_height:
            size = struct.pack("HHHH", proc.console_height, proc.console_width, 0, 0)
            fcntl.ioctl(master, TIOCSWINSZ, size)
        sock = init.console
        sock.sendmsg(  # type: ignore[attr-defined]
            [name.encode()],
            [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack("i", master))],
        )
        sock.close()  # type: ignore[attr-defined]
        os.close(master)
        os.setsid()
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        fcntl.ioctl(0, TIOCSCTTY, 0)
        if slave > 2:
            os.close(slave)
        linux.mount(name, "/dev/console", None, 0x1000)  # MS_BIND
    except OSError as err:
        raise os_error("set up the console", err) from err
