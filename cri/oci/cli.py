"""The `kubelet-py-oci` command line, shaped like runc's so conmon and the runtime service
can drive either one:

    kubelet-py-oci [--root DIR] [--log FILE] [--log-format text|json] COMMAND ...
      create [--bundle B] [--pid-file P] [--console-socket S] [--preserve-fds N] ID
      start ID          kill [--all] ID [SIGNAL]       delete [--force] ID
      state ID          list [--format table|json] [-q]          pause ID    resume ID
      update [--resources FILE|-] [--memory N] [--cpu-quota N] [--cpu-period N]
             [--cpu-share N] [--pids-limit N] [--cpuset-cpus L] [--cpuset-mems L] ID
      exec [--process FILE] [--detach] [--pid-file P] [--console-socket S] [--tty]
           [--user UID[:GID]] [--cwd DIR] [--env K=V]... [--cap CAP]... [--no-new-privs]
           [--additional-gids G]... [--preserve-fds N] ID [ARGS...]

A failure prints one line, `kubelet-py-oci: container 3f2a…: <step>: <reason>`,
on stderr (and as JSON to --log), and exits 1. The parser is hand-written:
argparse would cost more than some commands take to run.
"""

# No pathlib here: it imports re, fnmatch and urllib, ~5 ms of every command's budget.
# ruff: noqa: PTH100

from __future__ import annotations

import os
import sys

from cri.oci.errors import OCIError, UsageError

PROG = "kubelet-py-oci"
VERSION = "0.1.0"
SPEC_VERSION = "1.0.2"

# flag → (takes a value, canonical name); per command.
_GLOBAL = {"--root": True, "--log": True, "--log-format": True, "--debug": False,
           "--systemd-cgroup": False, "--rootless": True, "--criu": True}  # fmt: skip
_FLAGS: dict[str, dict[str, tuple[bool, str]]] = {
    "create": {
        "--bundle": (True, "bundle"), "-b": (True, "bundle"),
        "--pid-file": (True, "pid-file"), "--console-socket": (True, "console-socket"),
        "--preserve-fds": (True, "preserve-fds"), "--no-pivot": (False, "no-pivot"),
        "--no-new-keyring": (False, "no-new-keyring"),
    },
    "start": {},
    "kill": {"--all": (False, "all"), "-a": (False, "all")},
    "delete": {"--force": (False, "force"), "-f": (False, "force")},
    "state": {},
    "update": {
        "--resources": (True, "resources"), "-r": (True, "resources"),
        "--memory": (True, "memory"), "--memory-swap": (True, "memory-swap"),
        "--memory-reservation": (True, "memory-reservation"),
        "--cpu-quota": (True, "cpu-quota"), "--cpu-period": (True, "cpu-period"),
        "--cpu-share": (True, "cpu-share"), "--cpuset-cpus": (True, "cpuset-cpus"),
        "--cpuset-mems": (True, "cpuset-mems"), "--pids-limit": (True, "pids-limit"),
    },
    "pause": {},
    "resume": {},
    "list": {"--format": (True, "format"), "-f": (True, "format"), "--quiet": (False, "quiet"),
             "-q": (False, "quiet")},
    "exec": {
        "--process": (True, "process"), "-p": (True, "process"),
        "--detach": (False, "detach"), "-d": (False, "detach"),
        "--pid-file": (True, "pid-file"), "--console-socket": (True, "console-socket"),
        "--tty": (False, "tty"), "-t": (False, "tty"),
        "--user": (True, "user"), "-u": (True, "user"),
        "--cwd": (True, "cwd"), "--env": (True, "env"), "-e": (True, "env"),
        "--cap": (True, "cap"), "-c": (True, "cap"),
        "--no-new-privs": (False, "no-new-privs"),
        "--additional-gids": (True, "additional-gids"), "-g": (True, "additional-gids"),
        "--preserve-fds": (True, "preserve-fds"),
        "--process-label": (True, "process-label"), "--apparmor": (True, "apparmor"),
        "--ignore-paused": (False, "ignore-paused"), "--cgroup": (True, "cgroup"),
    },
}  # fmt: skip
_MULTI = {"env", "cap", "additional-gids"}


class Args:
    __slots__ = ("command", "flags", "globals", "positional")

    def __init__(self) -> None:
        self.globals: dict[str, str] = {}
        self.command = ""
        self.flags: dict[str, list[str]] = {}
        self.positional: list[str] = []

    def flag(self, name: str, default: str = "") -> str:
        values = self.flags.get(name)
        return values[-1] if values else default

    def many(self, name: str) -> list[str]:
        return self.flags.get(name, [])


def _split(arg: str) -> tuple[str, str | None]:
    if arg.startswith("--") and "=" in arg:
        name, _, value = arg.partition("=")
        return name, value
    return arg, None


def parse_args(argv: list[str]) -> Args:
    """runc-style: global flags, a command, its flags; exec stops at the first positional."""
    out = Args()
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, value = _split(argv[i])
        if name in ("--version", "-v", "--help", "-h"):
            out.command = name
            return out
        if name not in _GLOBAL:
            raise UsageError(f"unknown global flag {name}")
        if _GLOBAL[name] and value is None:
            i += 1
            if i >= len(argv):
                raise UsageError(f"{name} needs a value")
            value = argv[i]
        out.globals[name[2:]] = value if value is not None else "true"
        i += 1
    if i >= len(argv):
        raise UsageError("no command given")
    out.command = argv[i]
    if out.command not in _FLAGS:
        raise UsageError(f"unknown command {out.command!r}")
    table = _FLAGS[out.command]
    i += 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out.positional += argv[i + 1 :]
            break
        if arg.startswith("-") and len(arg) > 1 and not out.positional:
            name, value = _split(arg)
            if name not in table:
                raise UsageError(f"{out.command}: unknown flag {name}")
            takes_value, canonical = table[name]
            if takes_value and value is None:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"{out.command}: {name} needs a value")
                value = argv[i]
            out.flags.setdefault(canonical, []).append(value if value is not None else "true")
            i += 1
            continue
        out.positional.append(arg)
        if out.command == "exec":
            out.positional += argv[i + 1 :]
            break
        i += 1
    return out


def _abspath(path: str) -> str:
    return path if not path or path.startswith("/") else os.path.abspath(path)


def _container_id(args: Args, *, exactly: int = 1) -> str:
    if not args.positional:
        raise UsageError(f"{args.command}: a container ID is needed")
    if exactly and len(args.positional) > exactly:
        raise UsageError(f"{args.command}: unexpected arguments {args.positional[exactly:]}")
    from cri.oci.state import check_id

    return check_id(args.positional[0])


def _int_flag(args: Args, name: str) -> int:
    text = args.flag(name, "0")
    if not text.isdigit():
        raise UsageError(f"--{name} must be a number, not {text!r}")
    return int(text)


def dispatch(args: Args) -> int:
    root = _abspath(args.globals.get("root", "")) or "/run/kubelet-py-oci"
    cmd = args.command
    if cmd in ("--version", "-v"):
        os.write(1, f"{PROG} version {VERSION}\nspec: {SPEC_VERSION}\n".encode())
        return 0
    if cmd in ("--help", "-h"):
        os.write(1, (__doc__ or "").encode())
        return 0
    if args.globals.get("systemd-cgroup") == "true":
        raise UsageError("--systemd-cgroup is not supported: cgroupsPath is a cgroupfs path")
    if cmd == "create":
        from cri.oci import create

        create.run(
            create.CreateRequest(
                root=root,
                container_id=_container_id(args),
                bundle=_abspath(args.flag("bundle") or "."),
                pid_file=_abspath(args.flag("pid-file")),
                console_socket=_abspath(args.flag("console-socket")),
                preserve_fds=_int_flag(args, "preserve-fds"),
            )
        )
        return 0
    if cmd == "exec":
        from cri.oci import execcmd

        gids: list[int] = []
        for text in args.many("additional-gids"):
            for part in text.split(","):
                if not part.strip().isdigit():
                    raise UsageError(f"--additional-gids {text!r}: must be numbers")
                gids.append(int(part))
        return execcmd.run(
            execcmd.ExecRequest(
                root=root,
                container_id=_container_id(args, exactly=0),
                args=args.positional[1:],
                process_file=_abspath(args.flag("process")),
                user=args.flag("user"),
                cwd=args.flag("cwd"),
                env=args.many("env"),
                tty=args.flag("tty") == "true",
                detach=args.flag("detach") == "true",
                pid_file=_abspath(args.flag("pid-file")),
                console_socket=_abspath(args.flag("console-socket")),
                caps=args.many("cap"),
                no_new_privs=args.flag("no-new-privs") == "true",
                additional_gids=gids,
                preserve_fds=_int_flag(args, "preserve-fds"),
            )
        )
    from cri.oci import commands

    if cmd == "start":
        commands.start(root, _container_id(args))
    elif cmd == "kill":
        if len(args.positional) > 2:
            raise UsageError("kill: expected ID [SIGNAL]")
        cid = _container_id(args, exactly=2)
        sig = commands.parse_signal(args.positional[1] if len(args.positional) > 1 else "TERM")
        commands.kill(root, cid, sig, all_processes=args.flag("all") == "true")
    elif cmd == "delete":
        commands.delete(root, _container_id(args), force=args.flag("force") == "true")
    elif cmd == "state":
        commands.print_state(root, _container_id(args))
    elif cmd == "list":
        commands.list_containers(root, fmt=args.flag("format", "table"),
                                 quiet=args.flag("quiet") == "true")  # fmt: skip
    elif cmd == "update":
        commands.update(root, _container_id(args), _update_doc(args))
    elif cmd in ("pause", "resume"):
        commands.pause(root, _container_id(args), freeze=cmd == "pause")
    return 0


_UPDATE_FLAGS = {
    "memory": ("memory", "limit"), "memory-swap": ("memory", "swap"),
    "memory-reservation": ("memory", "reservation"), "cpu-quota": ("cpu", "quota"),
    "cpu-period": ("cpu", "period"), "cpu-share": ("cpu", "shares"),
    "pids-limit": ("pids", "limit"), "cpuset-cpus": ("cpu", "cpus"), "cpuset-mems": ("cpu", "mems"),
}  # fmt: skip


def _update_doc(args: Args) -> dict[str, object]:
    """linux.resources to apply: the --resources JSON (a file, or - for stdin), then flags."""
    from cri.oci import fastjson

    doc: dict[str, object] = {}
    source = args.flag("resources")
    if source:
        try:
            if source == "-":
                raw = b""
                while chunk := os.read(0, 65536):
                    raw += chunk
            else:
                with open(source, "rb") as f:  # noqa: PTH123
                    raw = f.read()
            parsed = fastjson.loads(raw)
        except (OSError, ValueError) as err:
            raise UsageError(f"update: cannot read --resources {source}: {err}") from err
        if not isinstance(parsed, dict):
            raise UsageError("update: --resources must be a JSON object")
        doc = parsed
    for flag, (section, key) in _UPDATE_FLAGS.items():
        text = args.flag(flag)
        if not text:
            continue
        value: object = text if key in ("cpus", "mems") else _number(flag, text)
        part = doc.setdefault(section, {})
        if not isinstance(part, dict):
            raise UsageError(f"update: resources.{section} must be an object")
        part[key] = value
    return doc


def _number(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--{flag} must be an integer, not {text!r}") from None


def _short(container_id: str) -> str:
    return container_id if len(container_id) <= 16 else container_id[:12] + "…"


def _log_error(args: Args, line: str) -> None:
    path = args.globals.get("log")
    if not path:
        return
    import time

    if args.globals.get("log-format") == "json":
        from cri.oci import fastjson

        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        text = fastjson.dumps({"level": "error", "msg": line, "time": stamp}) + "\n"
    else:
        text = f"{PROG}: {line}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = Args()
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        return dispatch(args)
    except OCIError as err:
        cid = args.positional[0] if args.positional and args.command != "list" else ""
        line = err.line(_short(cid) if cid else "")
        os.write(2, f"{PROG}: {line}\n".encode(errors="replace"))
        _log_error(args, line)
        return 2 if isinstance(err, UsageError) else 1
    except ValueError as err:  # a damaged state.json
        os.write(2, f"{PROG}: {err}\n".encode(errors="replace"))
        return 1
