"""Stage 3 of the AOT build: reading a compiled kernel's SASS (cuobjdump from the Triton wheel) for what would make it
wrong: a register-A wgmma whose A registers are overwritten before a wait retires it.
"""
import re
import shutil
import subprocess
from pathlib import Path

def cuobjdump():
    import triton
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(tool) if tool.exists() else shutil.which("cuobjdump")


def read_wgmma_register_hazard(cubin, ptx):
    """Where a kernel may overwrite the A registers of a wgmma still in flight, or None.

    With A in registers (fp32 x rounded to fp16 on the fly), PTX forbids writing A's registers until a
    wgmma.wait_group covers that wgmma. Triton's own pipeliner can get this wrong: it waits with wgmmas still in
    flight while the next k-step rounds new A values into the same registers (undefined: NaN seen on the H100). So
    the build reads the SASS and follows every path from each register-A HGMMA (branches
    and loop back-edges included) until a WARPGROUP.DEPBAR retires its group; a write to its A registers before
    that is a hazard."""
    if "wgmma.mma_async" not in ptx:
        return None
    sass = subprocess.run([cuobjdump(), "--dump-sass", str(cubin)], check=True, capture_output=True, text=True).stdout
    return find_wgmma_register_hazard(sass)


SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


HGMMA_REGISTER_A = re.compile(r"HGMMA\.\S+ R\d+, R(\d+), ")


HGMMA_A_REGISTERS = 4  # an m64 x k(32 bytes) A fragment: 4 registers per thread, whatever the element type


PREDICATE_OPERAND = re.compile(r"!?U?P(T|\d+)$")


def sass_instructions(sass):
    """[(address, predicate, opcode, operands)] of every SASS instruction, in address order."""
    out = []
    for m in SASS_LINE.finditer(sass):
        text = m.group(2).strip()
        predicate = None
        if text.startswith("@"):
            predicate, text = text.split(None, 1)
        opcode, _, operands = text.partition(" ")
        out.append((int(m.group(1), 16), predicate, opcode, operands.strip()))
    return out


def written_registers(opcode, operands):
    """The R registers an instruction writes. SASS names destinations first: predicate outputs (P0, PT) and then the
    register (stores and branches name an address or a target); compares (*SETP*) write predicates only. Widths
    come from the opcode; HGMMA writes its accumulator, never another wgmma's A."""
    if "SETP" in opcode or opcode.startswith("HGMMA"):
        return range(0)
    fields = [f.strip() for f in operands.split(",")]
    while fields and PREDICATE_OPERAND.match(fields[0]):
        fields.pop(0)
    m = re.fullmatch(r"R(\d+)(\.\w+)?", fields[0]) if fields else None
    if not m:
        return range(0)
    if ".128" in opcode or (opcode.startswith("LDSM") and opcode.endswith(".4")) or (
            opcode.startswith(("HMMA", "IMMA")) and ".F32" in opcode):
        width = 4
    elif any(t in opcode for t in (".64", ".WIDE", "F64", "S64", "U64")) or opcode.startswith(("D", "HMMA", "IMMA")) \
            or (opcode.startswith("LDSM") and opcode.endswith(".2")):
        width = 2
    else:
        width = 1
    return range(int(m.group(1)), int(m.group(1)) + width)


def find_wgmma_register_hazard(sass):
    """read_wgmma_register_hazard's walk, over a cuobjdump SASS listing (each function on its own)."""
    for function in re.split(r"\n\s*Function : ", sass):
        hazard = function_wgmma_register_hazard(sass_instructions(function))
        if hazard:
            return hazard
    return None


def function_wgmma_register_hazard(code):
    at = {address: i for i, (address, *_) in enumerate(code)}

    def target(i):
        _, _, opcode, operands = code[i]
        t = re.search(r"0x([0-9a-f]+)\s*$", operands)
        if t is None or int(t.group(1), 16) not in at:
            raise ValueError(f"unreadable target: {opcode} {operands}")
        return at[int(t.group(1), 16)]

    def successors(i):
        _, predicate, opcode, operands = code[i]
        if opcode in ("EXIT", "RET") or opcode.startswith(("EXIT.", "RET.")):
            return [i + 1] if predicate else []  # (a callee's RET: the caller's next instruction is walked anyway)
        if opcode.startswith("BRA"):
            # conditional: a guard predicate, or a condition among the operands (BRA.U !UP0, BRA.DIV UR4, ...)
            conditional = predicate or "," in operands
            return [target(i)] + ([i + 1] if conditional else [])
        if opcode.startswith("CALL"):
            return [target(i), i + 1]  # the callee's writes count; then on after the call
        if opcode.startswith(("BRX", "JMX", "JMP")):
            raise ValueError(f"indirect branch {opcode} {operands}")
        return [i + 1]

    for start, (address, _, opcode, operands) in enumerate(code):
        m = HGMMA_REGISTER_A.match(f"{opcode} {operands}")
        if not m:
            continue
        a_regs = set(range(int(m.group(1)), int(m.group(1)) + HGMMA_A_REGISTERS))
        # state: (instruction, has this HGMMA's group been committed, groups committed after it (capped))
        todo, seen = [(start, False, 0)], set()
        while todo:
            i, committed, newer = state = todo.pop()
            if i >= len(code) or state in seen:
                continue
            seen.add(state)
            _, predicate, op, args = code[i]
            if i != start and a_regs & set(written_registers(op, args)):
                return (f"register-A HGMMA at 0x{address:x} reads R{min(a_regs)}-R{max(a_regs)}, which {op} at "
                        f"0x{code[i][0]:x} overwrites before a wait retires it")
            if op.startswith("HGMMA") and "gsb0" in args:
                committed, newer = (True, min(newer + 1, 8)) if committed and i != start else (True, 0)
            wait = re.match(r"gsb0, 0x([0-9a-f]+)", args) if op == "WARPGROUP.DEPBAR.LE" else None
            if wait and not predicate and committed and newer >= int(wait.group(1), 16):
                continue  # retired on this path
            try:
                todo += [(j, committed, newer) for j in successors(i)]
            except ValueError as e:
                return f"SASS not analysable ({e}): cannot show register-A wgmma safe"
    return None
