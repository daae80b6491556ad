"""linux.seccomp (OCI shape) → a classic BPF program for seccomp(2). Pure.

The program, as libseccomp would build it (but without libseccomp):

        ld  arch
        jeq AUDIT_ARCH_X86_64 ? x86_64 : other
    x86_64:
        ld  nr
        jge 0x40000000 ? x32-or-kill        (the x32 ABI sets that bit)
        <rules with x86_64 numbers>
        ret defaultAction
    x32:  <rules with x32 numbers>  ret defaultAction       (if SCMP_ARCH_X32 is listed)
    other:
        jeq AUDIT_ARCH_I386 ? i386 : kill                   (if SCMP_ARCH_X86 is listed)
    i386: ld nr  <rules with i386 numbers>  ret defaultAction
    kill: ret KILL_PROCESS                                   (an architecture not listed)

Rules: each syscall's rules are tried in profile order and the first that
matches decides (an entry without `args` always matches). Syscalls whose only
rule is unconditional are tested in runs of `jeq nr` that share one `ret`.
Argument comparisons are 64-bit, done on the two 32-bit halves of
`seccomp_data.args[i]`: EQ, NE, MASKED_EQ (`(arg & value) == valueTwo`), GT,
GE, LT, LE, all unsigned, as libseccomp does. Syscall names this table does not
know are skipped (runc does the same), so one profile serves several kernels.
"""

from __future__ import annotations

import struct

from cri.oci.errors import SpecError

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];
OFF_NR = 0
OFF_ARCH = 4
OFF_ARGS = 16

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000

# classic BPF opcodes
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGT_K = 0x25
BPF_JGE_K = 0x35
BPF_JA = 0x05
BPF_AND_K = 0x54
BPF_RET_K = 0x06
BPF_MAXINSNS = 4096

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000

EPERM = 1

FILTER_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
}

Insn = tuple[int, int, int, int]  # code, jt, jf, k


def action_value(action: str, errno_ret: int | None, *, where: str) -> int:
    """The SECCOMP_RET_* value of an OCI action name."""
    if action in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return SECCOMP_RET_KILL_THREAD
    if action == "SCMP_ACT_KILL_PROCESS":
        return SECCOMP_RET_KILL_PROCESS
    if action == "SCMP_ACT_TRAP":
        return SECCOMP_RET_TRAP
    if action == "SCMP_ACT_ERRNO":
        return SECCOMP_RET_ERRNO | ((EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if action == "SCMP_ACT_TRACE":
        return SECCOMP_RET_TRACE | ((EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if action == "SCMP_ACT_LOG":
        return SECCOMP_RET_LOG
    if action == "SCMP_ACT_ALLOW":
        return SECCOMP_RET_ALLOW
    if action == "SCMP_ACT_NOTIFY":
        raise SpecError(f"{where}: SCMP_ACT_NOTIFY needs a listener; not supported")
    raise SpecError(f"{where}: unknown seccomp action {action!r}")


class _Asm:
    """Instructions with symbolic jump targets, resolved to 8-bit offsets at the end."""

    def __init__(self) -> None:
        self.insns: list[tuple[int, int | str, int | str, int | str]] = []
        self.labels: dict[str, int] = {}
        self._n = 0

    def new_label(self) -> str:
        self._n += 1
        return f"L{self._n}"

    def place(self, label: str) -> None:
        self.labels[label] = len(self.insns)

    def ld(self, offset: int) -> None:
        self.insns.append((BPF_LD_W_ABS, 0, 0, offset))

    def jump(self, code: int, k: int, jt: int | str, jf: int | str) -> None:
        self.insns.append((code, jt, jf, k))

    def and_(self, k: int) -> None:
        self.insns.append((BPF_AND_K, 0, 0, k))

    def ja(self, target: str) -> None:
        self.insns.append((BPF_JA, 0, 0, target))

    def ret(self, k: int) -> None:
        self.insns.append((BPF_RET_K, 0, 0, k))

    def assemble(self) -> list[Insn]:
        out: list[Insn] = []
        for i, (code, jt, jf, k) in enumerate(self.insns):

            def rel(target: int | str, limit: int, i: int = i) -> int:
                if isinstance(target, int):
                    return target
                offset = self.labels[target] - (i + 1)
                if not 0 <= offset <= limit:
                    raise SpecError(f"seccomp: jump of {offset} instructions is out of range")
                return offset

            if code == BPF_JA:
                out.append((code, 0, 0, rel(k, 0xFFFFFFFF)))
            else:
                assert isinstance(k, int)
                out.append((code, rel(jt, 255), rel(jf, 255), k))
        return out


class _Cond:
    __slots__ = ("index", "op", "value", "value_two")

    def __init__(self, *, index: int, op: str, value: int, value_two: int) -> None:
        self.index = index
        self.op = op
        self.value = value
        self.value_two = value_two


_OPS = ("SCMP_CMP_EQ", "SCMP_CMP_NE", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_GT", "SCMP_CMP_GE",
        "SCMP_CMP_LT", "SCMP_CMP_LE")  # fmt: skip


def _parse_cond(raw: object, where: str) -> _Cond:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: must be an object")
    index, op = raw.get("index"), raw.get("op")
    value, value_two = raw.get("value", 0), raw.get("valueTwo", 0)
    if not isinstance(index, int) or not 0 <= index <= 5:
        raise SpecError(f"{where}.index: must be 0..5")
    if op not in _OPS:
        raise SpecError(f"{where}.op: unknown comparison {op!r}")
    for v in (value, value_two):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 64:
            raise SpecError(f"{where}: value and valueTwo must be unsigned 64-bit integers")
    assert isinstance(value, int) and isinstance(value_two, int)
    return _Cond(index=index, op=str(op), value=value, value_two=value_two)


def _emit_cond(asm: _Asm, cond: _Cond, fail: str) -> None:
    """Fall through when the comparison holds, jump to `fail` when it does not."""
    lo_off = OFF_ARGS + 8 * cond.index
    hi_off = lo_off + 4
    v = cond.value
    v_hi, v_lo = v >> 32, v & 0xFFFFFFFF
    ok = asm.new_label()
    op = cond.op
    if op == "SCMP_CMP_EQ":
        asm.ld(hi_off)
        asm.jump(BPF_JEQ_K, v_hi, 0, fail)
        asm.ld(lo_off)
        asm.jump(BPF_JEQ_K, v_lo, ok, fail)
    elif op == "SCMP_CMP_NE":
        asm.ld(hi_off)
        asm.jump(BPF_JEQ_K, v_hi, 0, ok)
        asm.ld(lo_off)
        asm.jump(BPF_JEQ_K, v_lo, fail, ok)
    elif op == "SCMP_CMP_MASKED_EQ":
        d = cond.value_two
        asm.ld(hi_off)
        asm.and_(v_hi)
        asm.jump(BPF_JEQ_K, d >> 32, 0, fail)
        asm.ld(lo_off)
        asm.and_(v_lo)
        asm.jump(BPF_JEQ_K, d & 0xFFFFFFFF, ok, fail)
    elif op in ("SCMP_CMP_GT", "SCMP_CMP_GE"):
        asm.ld(hi_off)
        asm.jump(BPF_JGT_K, v_hi, ok, 0)
        asm.jump(BPF_JEQ_K, v_hi, 0, fail)
        asm.ld(lo_off)
        asm.jump(BPF_JGT_K if op == "SCMP_CMP_GT" else BPF_JGE_K, v_lo, ok, fail)
    else:  # LT, LE: the negations of GE, GT
        asm.ld(hi_off)
        asm.jump(BPF_JGT_K, v_hi, fail, 0)
        asm.jump(BPF_JEQ_K, v_hi, 0, ok)
        asm.ld(lo_off)
        asm.jump(BPF_JGE_K if op == "SCMP_CMP_LT" else BPF_JGT_K, v_lo, fail, ok)
    asm.place(ok)


Rule = tuple[int, tuple[_Cond, ...]]  # (action value, conditions ANDed)


def _parse_rules(profile: dict[str, object], where: str) -> list[tuple[list[str], Rule]]:
    raw_rules = profile.get("syscalls") or []
    if not isinstance(raw_rules, list):
        raise SpecError(f"{where}.syscalls: must be a list")
    out: list[tuple[list[str], Rule]] = []
    for i, raw in enumerate(raw_rules):
        at = f"{where}.syscalls[{i}]"
        if not isinstance(raw, dict):
            raise SpecError(f"{at}: must be an object")
        names = raw.get("names") or ([raw["name"]] if raw.get("name") else [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SpecError(f"{at}.names: must be a list of syscall names")
        errno_ret = raw.get("errnoRet")
        if errno_ret is not None and not isinstance(errno_ret, int):
            raise SpecError(f"{at}.errnoRet: must be an integer")
        action = action_value(str(raw.get("action")), errno_ret, where=at)
        args = raw.get("args") or []
        if not isinstance(args, list):
            raise SpecError(f"{at}.args: must be a list")
        conds = tuple(_parse_cond(a, f"{at}.args[{j}]") for j, a in enumerate(args))
        out.append((list(names), (action, conds)))
    return out


def _emit_table(asm: _Asm, rules: list[tuple[list[str], Rule]], table: dict[str, int],
                default: int) -> None:  # fmt: skip
    """The rules of one architecture; A holds the syscall number on entry."""
    by_nr: dict[int, list[Rule]] = {}
    for names, rule in rules:
        for name in names:
            nr = table.get(name)
            if nr is None:
                continue
            chain = by_nr.setdefault(nr, [])
            if chain and not chain[-1][1]:
                continue  # an earlier unconditional rule already decides this syscall
            chain.append(rule)
    simple: dict[int, list[int]] = {}
    conditional: list[tuple[int, list[Rule]]] = []
    for nr, chain in sorted(by_nr.items()):
        if len(chain) == 1 and not chain[0][1]:
            if chain[0][0] != default:
                simple.setdefault(chain[0][0], []).append(nr)
        else:
            conditional.append((nr, chain))
    for action, nrs in simple.items():
        for start in range(0, len(nrs), 250):
            chunk = nrs[start : start + 250]
            hit, after = asm.new_label(), asm.new_label()
            for nr in chunk:
                asm.jump(BPF_JEQ_K, nr, hit, 0)
            asm.ja(after)
            asm.place(hit)
            asm.ret(action)
            asm.place(after)
    for nr, chain in conditional:
        next_syscall = asm.new_label()
        asm.jump(BPF_JEQ_K, nr, 1, 0)
        asm.ja(next_syscall)
        decided = False
        for action, conds in chain:
            fail = asm.new_label()
            for cond in conds:
                _emit_cond(asm, cond, fail)
            asm.ret(action)
            asm.place(fail)
            if not conds:
                decided = True
                break
        if not decided:
            asm.ret(default)
        asm.place(next_syscall)
    asm.ret(default)


class Filter:
    """A compiled filter: the instructions and the seccomp(2) flags to install it with."""

    __slots__ = ("flags", "instructions")

    def __init__(self, instructions: list[Insn], flags: int) -> None:
        self.instructions = instructions
        self.flags = flags

    def program(self) -> bytes:
        """The instructions as `struct sock_filter` records (code u16, jt u8, jf u8, k u32)."""
        return b"".join(struct.pack("=HBBI", *insn) for insn in self.instructions)


def compile_profile(profile: dict[str, object], where: str = "linux.seccomp") -> Filter:
    """Compile an OCI `linux.seccomp` object; SpecError says what in it is wrong."""
    from cri.oci import syscalls_table

    default_errno = profile.get("defaultErrnoRet")
    if default_errno is not None and not isinstance(default_errno, int):
        raise SpecError(f"{where}.defaultErrnoRet: must be an integer")
    default = action_value(str(profile.get("defaultAction")), default_errno, where=where)
    arches_raw = profile.get("architectures") or []
    if not isinstance(arches_raw, list):
        raise SpecError(f"{where}.architectures: must be a list")
    arches = set(arches_raw) or {"SCMP_ARCH_X86_64"}
    if profile.get("listenerPath"):
        raise SpecError(f"{where}.listenerPath: seccomp notify is not supported")
    flags = 0
    flag_names = profile.get("flags") or []
    if not isinstance(flag_names, list):
        raise SpecError(f"{where}.flags: must be a list")
    for name in flag_names:
        if name not in FILTER_FLAGS:
            raise SpecError(f"{where}.flags: unknown flag {name!r}")
        flags |= FILTER_FLAGS[name]
    rules = _parse_rules(profile, where)

    asm = _Asm()
    other, kill = asm.new_label(), asm.new_label()
    asm.ld(OFF_ARCH)
    asm.jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0)
    asm.ja(other)
    asm.ld(OFF_NR)
    x32 = asm.new_label()
    asm.jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1)
    asm.ja(x32 if "SCMP_ARCH_X32" in arches else kill)
    _emit_table(asm, rules, syscalls_table.X86_64, default)
    if "SCMP_ARCH_X32" in arches:
        asm.place(x32)
        _emit_table(asm, rules, syscalls_table.X32, default)
    asm.place(other)
    if "SCMP_ARCH_X86" in arches:
        asm.jump(BPF_JEQ_K, AUDIT_ARCH_I386, 1, 0)
        asm.ja(kill)
        asm.ld(OFF_NR)
        _emit_table(asm, rules, syscalls_table.I386, default)
    asm.place(kill)
    asm.ret(SECCOMP_RET_KILL_PROCESS)
    insns = asm.assemble()
    if len(insns) > BPF_MAXINSNS:
        raise SpecError(f"{where}: the filter has {len(insns)} instructions, over {BPF_MAXINSNS}")
    return Filter(insns, flags)
