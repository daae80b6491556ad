"""The pod init program is a well-formed static x86-64 ELF whose jumps land on instructions."""

import struct

from cri.runtime import podinit


def test_elf_headers() -> None:
    """ELF64 little-endian executable for x86-64, one R+X LOAD of the whole file, no exec stack."""
    prog = podinit.program()
    assert prog[:4] == b"\x7fELF" and prog[4:6] == b"\x02\x01"
    e_type, machine, _, entry, phoff = struct.unpack_from("<HHIQQ", prog, 16)
    assert (e_type, machine, phoff) == (2, 0x3E, 64)
    assert entry == podinit.BASE + 64 + 2 * 56
    p_type, flags, offset, vaddr, _, filesz, memsz, _ = struct.unpack_from("<IIQQQQQQ", prog, 64)
    assert (p_type, flags, offset, vaddr) == (1, 5, 0, podinit.BASE)
    assert filesz == memsz == len(prog) < 512
    assert struct.unpack_from("<II", prog, 120) == (0x6474E551, 6)  # PT_GNU_STACK, RW


def test_jumps_land_on_the_labels() -> None:
    """jnz/js go to exit(1), jz to the child's setsid, the loop's jmp back to pause."""
    code = podinit._code()
    exit_fail = podinit._mov_edi(1) + podinit._mov_eax(podinit.SYS_EXIT) + podinit.SYSCALL
    fail_at = code.index(exit_fail)
    child_at = code.index(podinit._mov_eax(podinit.SYS_SETSID))
    pause_at = code.index(podinit._mov_eax(podinit.SYS_PAUSE))

    def target(opcode: int, start: int = 0) -> int:
        at = code.index(bytes([opcode]), start)
        return at + 2 + struct.unpack_from("<b", code, at + 1)[0]

    jnz = code.index(b"\x85\xc0\x75") + 2
    assert target(0x75, jnz) == fail_at
    fork_test = code.index(b"\x85\xc0\x78") + 2
    assert target(0x78, fork_test) == fail_at
    assert target(0x74, fork_test + 2) == child_at
    assert target(0xEB, pause_at) == pause_at
