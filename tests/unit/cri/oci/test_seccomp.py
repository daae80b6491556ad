"""The seccomp compiler: OCI profiles become classic BPF that the kernel would accept."""

import errno
import struct
from pathlib import Path

import pytest

from cri.oci import gen_syscalls, syscalls_table
from cri.oci.errors import SpecError
from cri.oci.seccomp import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_KILL_THREAD,
    SECCOMP_RET_LOG,
    SECCOMP_RET_TRAP,
    compile_profile,
)
from cri.runtime.seccomp import runtime_default_profile
from tests.unit.cri.oci.bpf import run, seccomp_data

NR = syscalls_table.X86_64
ALLOW, EPERM = SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | errno.EPERM


def verdict(profile: dict[str, object], name: str, *args: int, arch: int = AUDIT_ARCH_X86_64,
            table: dict[str, int] = NR) -> int:  # fmt: skip
    return run(compile_profile(profile).instructions, seccomp_data(table[name], arch, args))


def test_program_starts_with_the_architecture_check() -> None:
    """The first instructions load seccomp_data.arch and compare it with AUDIT_ARCH_X86_64."""
    insns = compile_profile({"defaultAction": "SCMP_ACT_ALLOW"}).instructions
    assert insns[0] == (0x20, 0, 0, 4)  # ld [4]: arch
    assert insns[1] == (0x15, 1, 0, AUDIT_ARCH_X86_64)  # jeq x86_64, skip the ja
    assert insns[3] == (0x20, 0, 0, 0)  # ld [0]: nr
    assert insns[-1] == (0x06, 0, 0, SECCOMP_RET_KILL_PROCESS)


def test_program_bytes_are_sock_filter_records() -> None:
    """program() packs (u16 code, u8 jt, u8 jf, u32 k) per instruction, 8 bytes each."""
    flt = compile_profile({"defaultAction": "SCMP_ACT_ALLOW"})
    raw = flt.program()
    assert len(raw) == 8 * len(flt.instructions)
    assert struct.unpack_from("=HBBI", raw, 0) == flt.instructions[0]


def test_deny_list_profile() -> None:
    """RuntimeDefault's deny-list: listed calls get EPERM, others are allowed."""
    profile = runtime_default_profile()
    assert verdict(profile, "unshare") == EPERM
    assert verdict(profile, "mount") == EPERM
    assert verdict(profile, "reboot") == EPERM
    assert verdict(profile, "read") == ALLOW
    assert verdict(profile, "execve") == ALLOW


def test_allow_list_profile_with_errno_default() -> None:
    """defaultAction ERRNO with defaultErrnoRet: only listed calls pass."""
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.ENOSYS,
        "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}],
    }
    assert verdict(profile, "write") == ALLOW
    assert verdict(profile, "openat") == SECCOMP_RET_ERRNO | errno.ENOSYS


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("SCMP_ACT_KILL", SECCOMP_RET_KILL_THREAD),
        ("SCMP_ACT_KILL_PROCESS", SECCOMP_RET_KILL_PROCESS),
        ("SCMP_ACT_TRAP", SECCOMP_RET_TRAP),
        ("SCMP_ACT_LOG", SECCOMP_RET_LOG),
        ("SCMP_ACT_ERRNO", EPERM),
    ],
)
def test_actions(action: str, expected: int) -> None:
    """Each OCI action maps to its SECCOMP_RET_* value (ERRNO without errnoRet is EPERM)."""
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": action}],
    }
    assert verdict(profile, "mkdir") == expected
    assert verdict(profile, "rmdir") == ALLOW


def test_errno_ret_is_used() -> None:
    """errnoRet chooses the errno of an ERRNO rule."""
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO",
                             "errnoRet": 13}]}  # fmt: skip
    assert verdict(profile, "mkdirat") == SECCOMP_RET_ERRNO | 13


def _one_arg(op: str, value: int, value_two: int = 0) -> dict[str, object]:
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                      "args": [{"index": 0, "op": op, "value": value, "valueTwo": value_two}]}],
    }  # fmt: skip


BIG = 0x1_0000_0005  # differs from 5 only in the high word


@pytest.mark.parametrize(
    ("op", "value", "arg", "denied"),
    [
        ("SCMP_CMP_EQ", 5, 5, True),
        ("SCMP_CMP_EQ", 5, 6, False),
        ("SCMP_CMP_EQ", 5, BIG, False),
        ("SCMP_CMP_EQ", BIG, BIG, True),
        ("SCMP_CMP_NE", 5, 5, False),
        ("SCMP_CMP_NE", 5, 6, True),
        ("SCMP_CMP_NE", 5, BIG, True),
        ("SCMP_CMP_GT", 5, 6, True),
        ("SCMP_CMP_GT", 5, 5, False),
        ("SCMP_CMP_GT", BIG, 0xFFFF_FFFF, False),
        ("SCMP_CMP_GT", 0xFFFF_FFFF, BIG, True),
        ("SCMP_CMP_GE", 5, 5, True),
        ("SCMP_CMP_GE", 5, 4, False),
        ("SCMP_CMP_LT", 5, 4, True),
        ("SCMP_CMP_LT", 5, 5, False),
        ("SCMP_CMP_LT", BIG, 0xFFFF_FFFF, True),
        ("SCMP_CMP_LE", 5, 5, True),
        ("SCMP_CMP_LE", 5, 6, False),
        ("SCMP_CMP_LE", 5, BIG, False),
    ],
)
def test_64_bit_argument_comparisons(op: str, value: int, arg: int, denied: bool) -> None:
    """Comparisons use both 32-bit halves of the argument, unsigned."""
    assert verdict(_one_arg(op, value), "personality", arg) == (EPERM if denied else ALLOW)


def test_masked_eq() -> None:
    """MASKED_EQ: (arg & value) == valueTwo, on all 64 bits."""
    profile = _one_arg("SCMP_CMP_MASKED_EQ", 0xFF00_0000_00F0, 0x1200_0000_0030)
    assert verdict(profile, "personality", 0x12AB_0000_0034) == EPERM
    assert verdict(profile, "personality", 0x13AB_0000_0034) == ALLOW
    assert verdict(profile, "personality", 0x12AB_0000_0044) == ALLOW


def test_conditions_of_one_rule_are_anded_and_rules_tried_in_order() -> None:
    """All args of a rule must hold; the first matching rule of a syscall decides."""
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": 1},
                      {"index": 1, "op": "SCMP_CMP_EQ", "value": 2}]},
            {"names": ["socket"], "action": "SCMP_ACT_LOG",
             "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": 1}]},
            {"names": ["socket"], "action": "SCMP_ACT_TRAP"},
        ],
    }  # fmt: skip
    assert verdict(profile, "socket", 1, 2) == ALLOW
    assert verdict(profile, "socket", 1, 3) == SECCOMP_RET_LOG
    assert verdict(profile, "socket", 2, 2) == SECCOMP_RET_TRAP
    assert verdict(profile, "read") == EPERM


def test_foreign_architecture_is_killed_unless_listed() -> None:
    """i386 calls are judged by the i386 table when SCMP_ARCH_X86 is listed, else killed."""
    profile = runtime_default_profile()
    i386 = syscalls_table.I386
    assert verdict(profile, "mkdir", arch=AUDIT_ARCH_I386, table=i386) == ALLOW
    assert verdict(profile, "unshare", arch=AUDIT_ARCH_I386, table=i386) == EPERM
    only64 = {**profile, "architectures": ["SCMP_ARCH_X86_64"]}
    assert verdict(only64, "mkdir", arch=AUDIT_ARCH_I386, table=i386) == SECCOMP_RET_KILL_PROCESS
    assert verdict(only64, "read", arch=0xC00000B7) == SECCOMP_RET_KILL_PROCESS  # aarch64


def test_x32_abi_calls() -> None:
    """Syscall numbers with the x32 bit use the x32 table, or are killed if X32 is not listed."""
    profile = runtime_default_profile()
    x32 = syscalls_table.X32
    assert verdict(profile, "unshare", table=x32) == EPERM
    assert verdict(profile, "read", table=x32) == ALLOW
    only64 = {**profile, "architectures": ["SCMP_ARCH_X86_64"]}
    assert verdict(only64, "read", table=x32) == SECCOMP_RET_KILL_PROCESS


def test_many_syscalls_still_fit_the_jump_range() -> None:
    """An allow-list of every x86_64 syscall assembles (8-bit jumps are chunked)."""
    profile = {"defaultAction": "SCMP_ACT_ERRNO",
               "syscalls": [{"names": sorted(NR), "action": "SCMP_ACT_ALLOW"}]}  # fmt: skip
    flt = compile_profile(profile)
    assert len(flt.instructions) < 4096
    for name in ("read", "openat2", "file_setattr", "mseal"):
        assert verdict(profile, name) == ALLOW


def test_unknown_names_are_skipped_and_flags_parsed() -> None:
    """Names this kernel table lacks are ignored; filter flags become seccomp(2) flags."""
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"],
               "syscalls": [{"names": ["no_such_call", "mkdir"],
                             "action": "SCMP_ACT_ERRNO"}]}  # fmt: skip
    flt = compile_profile(profile)
    assert flt.flags == 2
    assert verdict(profile, "mkdir") == EPERM


@pytest.mark.parametrize(
    "profile",
    [
        {"defaultAction": "SCMP_ACT_BOGUS"},
        {"defaultAction": "SCMP_ACT_NOTIFY"},
        {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["NOPE"]},
        {"defaultAction": "SCMP_ACT_ALLOW",
         "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                       "args": [{"index": 6, "op": "SCMP_CMP_EQ", "value": 1}]}]},
        {"defaultAction": "SCMP_ACT_ALLOW",
         "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                       "args": [{"index": 0, "op": "SCMP_CMP_ALMOST", "value": 1}]}]},
        {"defaultAction": "SCMP_ACT_ALLOW",
         "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                       "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": -1}]}]},
    ],
)  # fmt: skip
def test_bad_profiles_are_spec_errors(profile: dict[str, object]) -> None:
    """A profile we cannot compile is a SpecError naming the field, not a crash."""
    with pytest.raises(SpecError, match=r"linux\.seccomp"):
        compile_profile(profile)


def test_syscall_table_matches_the_installed_headers() -> None:
    """The committed table agrees with the kernel's asm/unistd_*.h (linux-libc-dev, set up)."""
    headers = Path("/usr/include/x86_64-linux-gnu/asm")
    assert (headers / "unistd_64.h").exists(), "linux-libc-dev is missing: run scripts/setup"
    fresh = gen_syscalls.tables(headers)
    assert fresh["X86_64"] == syscalls_table.X86_64
    assert fresh["I386"] == syscalls_table.I386
    assert fresh["X32"] == syscalls_table.X32
    assert NR["read"] == 0 and NR["unshare"] == 272 and NR["seccomp"] == 317
