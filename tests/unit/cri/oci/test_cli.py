"""The command line, JSON without `json`, exec's process object, and the launcher (pure)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cri.oci import cli, execcmd, fastjson, launcher
from cri.oci.errors import SysError, UsageError
from cri.oci.spec import parse_process


def test_conmon_create_argv() -> None:
    """The exact argv conmon 2.1.6 uses for create (checked with strace against runc)."""
    args = cli.parse_args(["--root=/r", "create", "--bundle", "/b", "--pid-file", "/p",
                           "--console-socket", "/s", "abc"])  # fmt: skip
    assert args.globals == {"root": "/r"}
    assert args.command == "create"
    assert args.flag("bundle") == "/b" and args.flag("pid-file") == "/p"
    assert args.flag("console-socket") == "/s"
    assert args.positional == ["abc"]


def test_conmon_exec_argv_and_exec_sync_argv() -> None:
    """conmon's `exec --pid-file P --process F --detach ID`, and ExecSync's flags before ID ARGS."""
    args = cli.parse_args(["--root", "/r", "exec", "--pid-file", "/p", "--process", "/f",
                           "--detach", "abc"])  # fmt: skip
    assert args.flag("process") == "/f" and args.flag("detach") == "true"
    assert args.positional == ["abc"]
    sync = cli.parse_args(["exec", "--user", "0:0", "--cwd", "/", "--env", "A=1", "--env", "B=2",
                           "abc", "sh", "-c", "exit 3"])  # fmt: skip
    assert sync.many("env") == ["A=1", "B=2"]
    assert sync.positional == ["abc", "sh", "-c", "exit 3"]  # flags after the ID are the command's


def test_kill_delete_and_errors() -> None:
    """Short flags, `--flag=value`, and unknown flags or commands as usage errors."""
    assert cli.parse_args(["kill", "-a", "abc", "KILL"]).flag("all") == "true"
    assert cli.parse_args(["delete", "--force=true", "abc"]).flag("force") == "true"
    with pytest.raises(UsageError, match="unknown flag"):
        cli.parse_args(["start", "--bogus", "abc"])
    with pytest.raises(UsageError, match="unknown command"):
        cli.parse_args(["frobnicate"])
    with pytest.raises(UsageError, match="needs a value"):
        cli.parse_args(["create", "--bundle"])


def test_errors_are_one_line_naming_container_and_step(tmp_path: Path) -> None:
    """main() prints `kubelet-py-oci: container ID: step: reason` and exits non-zero."""
    proc = subprocess.run(
        [sys.executable, "-m", "cri.oci", f"--root={tmp_path}", "create", "--bundle",
         str(tmp_path / "nope"), "ctr1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kubelet-py-oci: container ctr1: read ")
    assert "config.json: No such file or directory" in lines[0]
    assert not (tmp_path / "ctr1").exists()  # nothing left behind


def test_signal_names() -> None:
    """KILL, SIGKILL and 9 are one signal; nonsense is a usage error."""
    from cri.oci.commands import parse_signal

    assert parse_signal("KILL") == parse_signal("SIGKILL") == parse_signal("9") == 9
    assert parse_signal("term") == 15
    with pytest.raises(UsageError):
        parse_signal("SIGNOPE")


@pytest.mark.parametrize(
    "value",
    [{"a": [1, 2.5, None, True, False, 'x"y\n\u00e9'], "b": {}, "c": []}, [], "s", 0, -3],
)
def test_fastjson_round_trip(value: object) -> None:
    """fastjson reads what json writes and writes what json reads, indented or not."""
    assert fastjson.loads(json.dumps(value)) == value
    assert json.loads(fastjson.dumps(value)) == value
    assert json.loads(fastjson.dumps(value, indent=2)) == value


def test_fastjson_rejects_garbage() -> None:
    """Trailing data and empty input are ValueErrors, like json's."""
    for text in ("", "{} x", "{"):
        with pytest.raises(ValueError, match="not JSON"):
            fastjson.loads(text)


def test_exec_process_from_the_container_with_overrides() -> None:
    """ExecSync runs with the container's caps/env, plus --env, --cwd, --user."""
    config = {"process": {"args": ["sleep"], "env": ["PATH=/bin", "A=1"], "cwd": "/",
                          "user": {"uid": 0, "gid": 0, "additionalGids": [7]},
                          "capabilities": {"bounding": ["CAP_KILL"]},
                          "noNewPrivileges": True}}  # fmt: skip
    req = execcmd.ExecRequest(root="/r", container_id="c", args=["id"], user="1000:1001",
                              cwd="/tmp", env=["A=2"], caps=["CAP_CHOWN"])  # fmt: skip
    proc = parse_process(execcmd.process_doc(req, config))
    assert proc.args == ("id",)
    assert proc.env_value("A") == "2" and proc.env_value("PATH") == "/bin"
    assert (proc.user.uid, proc.user.gid, proc.user.additional_gids) == (1000, 1001, ())
    assert proc.cwd == "/tmp" and proc.no_new_privileges
    assert proc.capabilities is not None
    assert proc.capabilities.bounding == ("CAP_KILL", "CAP_CHOWN")
    assert proc.capabilities.ambient == ("CAP_CHOWN",)


def test_exec_process_file_is_taken_as_is(tmp_path: Path) -> None:
    """conmon's --process FILE replaces the container's process entirely."""
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"args": ["echo", "hi"], "cwd": "/", "env": []}))
    req = execcmd.ExecRequest(root="/r", container_id="c", args=[], process_file=str(path))
    assert execcmd.process_doc(req, {"process": {"args": ["x"]}})["args"] == ["echo", "hi"]
    bad = execcmd.ExecRequest(root="/r", container_id="c", args=["id"], user="app")
    with pytest.raises(UsageError, match="numeric"):
        execcmd.process_doc(bad, {})


def test_find_executable(tmp_path: Path) -> None:
    """PATH lookup skips non-executables; a miss says so the way runc does."""
    from cri.oci.process import find_executable

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "tool").write_text("")
    exe = tmp_path / "b" / "tool"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    env = {"PATH": f"{tmp_path}/a:{tmp_path}/b"}
    assert find_executable("tool", env, "/") == str(exe)
    with pytest.raises(SysError, match='"nope": executable file not found in \\$PATH'):
        find_executable("nope", env, "/")


def test_launcher_runs_without_site(tmp_path: Path) -> None:
    """The launcher uses `python -IS` and finds cri.oci by a fixed sys.path entry."""
    text = launcher.render(python="/usr/bin/python3", root="/src")
    assert text.startswith("#!/usr/bin/python3 -IS\n") and "'/src'" in text
    path = launcher.write_launcher(str(tmp_path / "kubelet-py-oci"))
    assert os.access(path, os.X_OK)
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("kubelet-py-oci version ")
