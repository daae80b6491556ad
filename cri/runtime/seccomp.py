"""Seccomp profiles for containers, in the OCI runtime spec's `linux.seccomp` shape.

- `RuntimeDefault`: allow everything except the syscalls Docker's default profile
  keeps from unprivileged containers (kernel modules, kexec, reboot, clock and
  keyring changes, bpf/perf, namespace and mount tricks, ...). Denied calls fail
  with EPERM, as in Docker. Written as a deny-list for brevity; the list is the
  set of names Docker's profile omits or gates on CAP_SYS_ADMIN and friends.
- `Localhost`: a JSON profile file in Docker's or the OCI format (`archMap` or
  `architectures`, `syscalls[].names` or `.name`, `action`, `errnoRet`, `args`),
  validated here so a broken profile is an InvalidArgument, not a runc crash.
"""

import json
from pathlib import Path
from typing import Any

from cri.runtime.errors import InvalidArgumentError

_ACTIONS = {
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
}  # fmt: skip
_OPS = {
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
}  # fmt: skip

DENIED_BY_DEFAULT = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
    "get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount",
    "mount_setattr", "move_mount", "move_pages", "name_to_handle_at", "nfsservctl",
    "open_by_handle_at", "open_tree", "perf_event_open", "pivot_root", "process_vm_readv",
    "process_vm_writev", "ptrace", "query_module", "quotactl", "quotactl_fd", "reboot",
    "request_key", "set_mempolicy", "setns", "settimeofday", "stime", "swapoff", "swapon",
    "sysfs", "_sysctl", "syslog", "umount", "umount2", "unshare", "uselib", "userfaultfd",
    "ustat", "vm86", "vm86old",
)  # fmt: skip

_ARCHES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]


def runtime_default_profile() -> dict[str, Any]:
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": list(_ARCHES),
        "syscalls": [{"names": list(DENIED_BY_DEFAULT), "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }


def _rule(raw: Any, *, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidArgumentError(f"{where}: a syscalls entry is not an object")
    names = raw.get("names") or ([raw["name"]] if raw.get("name") else [])
    if not names or not all(isinstance(n, str) and n for n in names):
        raise InvalidArgumentError(f"{where}: a syscalls entry has no syscall names")
    action = raw.get("action")
    if action not in _ACTIONS:
        raise InvalidArgumentError(f"{where}: unknown seccomp action {action!r} for {names}")
    rule: dict[str, Any] = {"names": list(names), "action": action}
    if "errnoRet" in raw:
        rule["errnoRet"] = int(raw["errnoRet"])
    args = raw.get("args") or []
    for arg in args:
        if not isinstance(arg, dict) or arg.get("op") not in _OPS:
            raise InvalidArgumentError(f"{where}: bad argument filter {arg!r} for {names}")
    if args:
        rule["args"] = [
            {k: arg[k] for k in ("index", "value", "valueTwo", "op") if k in arg} for arg in args
        ]
    return rule


def load_localhost_profile(path: str) -> dict[str, Any]:
    """Read and validate a Localhost profile; InvalidArgumentError says what is wrong."""
    where = f"seccomp profile {path}"
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise InvalidArgumentError(f"{where}: file not found") from err
    except (OSError, ValueError) as err:
        raise InvalidArgumentError(f"{where}: not readable JSON: {err}") from err
    if not isinstance(doc, dict):
        raise InvalidArgumentError(f"{where}: not a JSON object")
    default = doc.get("defaultAction")
    if default not in _ACTIONS:
        raise InvalidArgumentError(f"{where}: defaultAction {default!r} is not a seccomp action")
    arches = list(doc.get("architectures") or [])
    for entry in doc.get("archMap") or []:
        if isinstance(entry, dict) and entry.get("architecture"):
            arches.append(entry["architecture"])
            arches += list(entry.get("subArchitectures") or [])
    out: dict[str, Any] = {
        "defaultAction": default,
        "architectures": arches or list(_ARCHES),
        "syscalls": [_rule(r, where=where) for r in doc.get("syscalls") or []],
    }
    if "defaultErrnoRet" in doc:
        out["defaultErrnoRet"] = int(doc["defaultErrnoRet"])
    return out
