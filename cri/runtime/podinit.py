"""The pod's PID-namespace holder: a 300-byte static x86-64 program, written by us at start.

A PID namespace lives as long as its init (PID 1) does: once that exits, nothing can be
forked into it any more, bind mount or not. A pod whose containers share one PID namespace
(CRI NamespaceMode POD, `shareProcessNamespace`) therefore needs a process that is PID 1
for the pod's lifetime. Instead of a pause image this is:

    parent (what we start)            child (PID 1 of the new namespace)
    ──────────────────────            ──────────────────────────────────
    unshare(CLONE_NEWPID)
    fork() ─────────────────────────▶ setsid(); close(0, 1, 2)
    write(1, &child_host_pid, 4)      rt_sigaction(SIGCHLD, SIG_IGN): orphans that are
    exit(0)                             re-parented to it are reaped by the kernel
                                      for (;;) pause();

It needs no libc, allocates nothing and has one page of code: its RSS is a few KiB (see
bench/ and the runtime tests). The runtime reads the child's host PID from the pipe,
bind-mounts /proc/<pid>/ns/pid into the sandbox directory for the containers to join,
and kills it (SIGKILL, which also ends whatever is left in the namespace) when the
sandbox stops. `program()` is pure and unit-tested; the bytes are hand-assembled below.
"""

import struct
from pathlib import Path

BASE = 0x400000
_HEADERS = 64 + 2 * 56

SYS_WRITE, SYS_CLOSE, SYS_RT_SIGACTION, SYS_PAUSE = 1, 3, 13, 34
SYS_FORK, SYS_EXIT, SYS_SETSID, SYS_UNSHARE = 57, 60, 112, 272
CLONE_NEWPID = 0x20000000
SIGCHLD = 17
SIG_IGN = 1


def _mov_eax(n: int) -> bytes:
    return b"\xb8" + struct.pack("<I", n)


def _mov_edi(n: int) -> bytes:
    return b"\xbf" + struct.pack("<I", n)


SYSCALL = b"\x0f\x05"


def _code() -> bytes:
    """The instructions; short jumps are patched once the label offsets are known."""
    exit_fail = _mov_edi(1) + _mov_eax(SYS_EXIT) + SYSCALL
    child = b"".join(
        [
            _mov_eax(SYS_SETSID) + SYSCALL,
            *(_mov_edi(fd) + _mov_eax(SYS_CLOSE) + SYSCALL for fd in (0, 1, 2)),
            b"\x6a\x00" * 3 + b"\x6a\x01",  # push mask, restorer, flags = 0; handler = SIG_IGN
            _mov_edi(SIGCHLD),
            b"\x48\x89\xe6",  # mov rsi, rsp
            b"\x31\xd2",  # xor edx, edx (no old action)
            b"\x41\xba\x08\x00\x00\x00",  # mov r10d, 8 (sizeof sigset)
            _mov_eax(SYS_RT_SIGACTION) + SYSCALL,
        ]
    )
    pause_loop = _mov_eax(SYS_PAUSE) + SYSCALL
    pause_loop += b"\xeb" + struct.pack("<b", -(len(pause_loop) + 2))  # jmp back to pause
    parent = b"".join(
        [
            b"\x50",  # push rax (the child's PID)
            _mov_edi(1),
            b"\x48\x89\xe6",  # mov rsi, rsp
            b"\xba\x04\x00\x00\x00",  # mov edx, 4
            _mov_eax(SYS_WRITE) + SYSCALL,
            b"\x31\xff",  # xor edi, edi
            _mov_eax(SYS_EXIT) + SYSCALL,
        ]
    )
    # layout: head | parent | fail | child | pause_loop
    fork_part = _mov_eax(SYS_FORK) + SYSCALL + b"\x85\xc0"  # test eax, eax
    # after fork_part: js fail (2) ; jz child (2) ; parent ; fail ; child
    js_to_fail = 2 + len(parent)  # skip the jz and the parent
    jz_to_child = len(parent) + len(exit_fail)
    after_fork = b"\x78" + struct.pack("<b", js_to_fail) + b"\x74" + struct.pack("<b", jz_to_child)
    unshare_part = _mov_edi(CLONE_NEWPID) + _mov_eax(SYS_UNSHARE) + SYSCALL + b"\x85\xc0"
    # jnz fail: skip fork_part, after_fork and parent
    jnz_to_fail = len(fork_part) + len(after_fork) + len(parent)
    head = unshare_part + b"\x75" + struct.pack("<b", jnz_to_fail)
    return head + fork_part + after_fork + parent + exit_fail + child + pause_loop


def program() -> bytes:
    """The whole ELF executable (pure)."""
    code = _code()
    size = _HEADERS + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, BASE + _HEADERS, 64, 0, 0, 64, 56, 2, 0, 0, 0
    )
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, size, size, 0x1000)
    gnu_stack = struct.pack("<IIQQQQQQ", 0x6474E551, 6, 0, 0, 0, 0, 0, 16)
    return header + load + gnu_stack + code


def write_program(path: Path) -> Path:
    """Install the program at `path` (atomically; rewritten only when it differs)."""
    data = program()
    try:
        if path.read_bytes() == data:
            return path
    except OSError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(path)
    return path
