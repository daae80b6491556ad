"""A classic-BPF interpreter for seccomp programs, so tests can run a compiled filter."""

import struct

MASK32 = 0xFFFFFFFF


def seccomp_data(nr: int, arch: int, args: tuple[int, ...] = ()) -> bytes:
    padded = (list(args) + [0] * 6)[:6]
    return struct.pack("<iIQ6Q", nr, arch, 0, *padded)


def run(insns: list[tuple[int, int, int, int]], data: bytes) -> int:
    """Execute like the kernel's seccomp BPF does; return the filter's verdict."""
    a = 0
    pc = 0
    steps = 0
    while True:
        steps += 1
        assert steps < 100_000, "runaway filter"
        assert 0 <= pc < len(insns), f"fell off the program at {pc}"
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # LD
            assert code == 0x20, f"unexpected load {code:#x}"
            assert k % 4 == 0 and k + 4 <= len(data)
            a = struct.unpack_from("<I", data, k)[0]
        elif cls == 0x04:  # ALU
            assert code == 0x54, f"unexpected ALU op {code:#x}"
            a &= k
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            if op == 0x10:
                cond = a == k
            elif op == 0x20:
                cond = a > k
            elif op == 0x30:
                cond = a >= k
            elif op == 0x40:
                cond = (a & k) != 0
            else:
                raise AssertionError(f"unexpected jump {code:#x}")
            pc += jt if cond else jf
        elif cls == 0x06:  # RET
            return k & MASK32
        else:
            raise AssertionError(f"unexpected instruction class {code:#x}")
