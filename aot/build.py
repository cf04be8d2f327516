"""Ahead-of-time build: Triton source -> cubin + PTX per variant -> generated C++ table.

    python -m aot.build --out build/aot        (setup.py runs this; needs Triton, no GPU, no driver)

For every (arch, op, precision, layout, tile config) that aot/spec.py and the arch's tuning table
ask for, compile the kernel for an explicit GPUTarget, read its registers / stack / shared memory
with the cuobjdump inside the Triton wheel, enforce the per-arch limits, and write into --out:
  kernels/<variant>.cubin, kernels/<variant>.ptx   the binaries (embedded into the .so by .incbin)
  fusedops_kernels.cpp                            variant table, rule table, one launcher per variant
  manifest.json                                   every variant with its metadata (also embedded)
Compiles are cached under --cache by a hash of everything that affects the binary.

    python -m aot.build --relink DIR           (setup.py with FUSEDOPS_PREBUILT_AOT=DIR; no Triton needed)

rewrites DIR/fusedops_kernels.cpp from DIR/manifest.json and DIR/kernels/, which an earlier build wrote on another
machine or with another Triton (one kernel build serves wheels for several torch versions), after checking that
they were built from this checkout's kernels, spec and tuning tables.
"""
import argparse
import concurrent.futures as futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aot import manifest as manifest_checks, spec, tables  # noqa: E402

CACHE_FORMAT = "7"  # bump when the compile recipe or what is read from its output changes
# Every kernel's source, for each variant's cache key (a Gluon kernel imports the Triton helpers) and the digest.
KERNEL_SOURCES = sorted({spec.KERNELS[k]["source"] for k in spec.KERNELS})


def digest_files():
    """The files that decide the kernels, their launch arguments and the rules (the tuning rules, not their evidence),
    relative to the checkout."""
    return sorted({*KERNEL_SOURCES, "aot/spec.py"} | {str(p.relative_to(ROOT)) for p in tables.rule_files().values()})


def kernel_source_digest():
    """A hash of digest_files(): prebuilt kernels are usable only with the sources they were built from."""
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    for name in digest_files():
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes() + b"\0")
    return digest.hexdigest()[:24]


def plan_variants(archs):
    """Every variant to compile, and the ordered selection rules that point at them."""
    variants, rules, index = [], [], {}

    def variant_for(arch, op, precision, layout, config):
        kernel = config.get("KERNEL", "tiled")
        kernel_spec = spec.KERNELS.get(kernel)
        if kernel_spec is None or layout not in kernel_spec["layouts"] or arch < kernel_spec["min_arch"]:
            raise SystemExit(f"tuning table for sm_{arch}: KERNEL {kernel!r} cannot serve the {layout} layout on "
                             f"sm_{arch} (kernels: {spec.KERNELS})")
        if arch > (kernel_spec["max_arch"] or arch):
            raise SystemExit(f"tuning table for sm_{arch}: KERNEL {kernel!r} runs on sm_{kernel_spec['max_arch']} at "
                             f"most ({op} {precision}); sm_{arch} needs a table of its own, "
                             f"aot/tuning/sm_{arch}.json (a table of another arch is used when it has none)")
        if kernel_spec["dots"] is not None and spec.PRECISIONS[precision][1] not in kernel_spec["dots"]:
            raise SystemExit(f"tuning table for sm_{arch}: KERNEL {kernel!r} serves DOT {kernel_spec['dots']} only; "
                             f"{op} {precision} asks for it")
        known = {*spec.CONFIG_KEYS, "KERNEL", *kernel_spec["knobs"], *spec.LAUNCHER_KNOBS}
        unknown = set(config) - known
        if unknown:  # e.g. a knob of another kernel: it would be ignored without a word
            raise SystemExit(f"tuning table for sm_{arch}: {op} {precision} sets {sorted(unknown)}, which KERNEL "
                             f"{kernel!r} does not take (its knobs: {sorted(kernel_spec['knobs'])}; launcher knobs: "
                             f"{sorted(spec.LAUNCHER_KNOBS)})")
        knobs = {k: int(config.get(k, default)) for k, default in kernel_spec["knobs"].items()}
        knobs.update({k: int(config.get(k, default)) for k, default in spec.LAUNCHER_KNOBS.items()})
        for name, value in knobs.items():
            if value not in spec.KNOB_VALUES.get(name, (0, 1)):
                raise SystemExit(f"tuning table for sm_{arch}: {name} must be one of "
                                 f"{spec.KNOB_VALUES.get(name, (0, 1))}; {op} {precision} has {value}")
        if knobs["WEIGHT_FP16"] and spec.PRECISIONS[precision][1] != "fp16":
            raise SystemExit(f"tuning table for sm_{arch}: WEIGHT_FP16 applies only to precisions whose kernel "
                             f"computes in fp16 (fp32_fp16); {op} {precision} asks for it")
        for name, value in kernel_spec["requires"].items():
            if knobs[name] != value:
                raise SystemExit(f"tuning table for sm_{arch}: KERNEL {kernel!r} needs {name}={value}; "
                                 f"{op} {precision} has {knobs[name]}")
        if knobs.get("VECTORS_FIRST") and knobs.get("SPLIT_K", 1) != 1:
            raise SystemExit(f"tuning table for sm_{arch}: VECTORS_FIRST applies only without split-K (the tile's "
                             f"last program applies the epilogue); {op} {precision} sets SPLIT_K={knobs['SPLIT_K']}")
        if knobs["CTAS_PER_SM"] != 1 and not kernel_spec["persistent"]:
            raise SystemExit(f"tuning table for sm_{arch}: CTAS_PER_SM applies only to persistent kernels; "
                             f"{op} {precision} sets it on KERNEL {kernel!r}")
        config = dict({k: int(config[k]) for k in spec.CONFIG_KEYS}, **knobs)
        key = (arch, op, precision, layout, kernel, tuple(config.values()))
        if key not in index:
            tag = "m{BLOCK_M}n{BLOCK_N}k{BLOCK_K}g{GROUP_M}w{num_warps}s{num_stages}".format(**config)
            tag = tag if kernel == "tiled" else f"{kernel}_{tag}"
            defaults = dict(kernel_spec["knobs"], **spec.LAUNCHER_KNOBS)  # name the non-defaults
            tag += "".join(f"_{k.lower()}{v}" if k in spec.KNOB_VALUES else f"_{'' if v else 'no'}{k.lower()}"
                           for k, v in knobs.items() if v != defaults[k])
            index[key] = len(variants)
            variants.append(dict(name=f"{op}__{precision}__sm{arch}__{layout}__{tag}", arch=arch, op=op,
                                 precision=precision, layout=layout, kernel=kernel, config=config))
        return index[key]

    for arch in archs:
        table_arch, table = tables.load_rules(arch)
        for op in spec.OPS:
            for precision, (_, _, table_key) in spec.PRECISIONS.items():
                op_rules = [r for r in table["rules"][table_key] if op in r.get("ops", [op])]
                if not op_rules or any(k in op_rules[-1] for k in ("max_m", "max_n", "max_k")):
                    raise SystemExit(f"sm_{table_arch}.json: rules[{table_key!r}] for {op} must end with a "
                                     f"catch-all rule (one without max_m/max_n/max_k)")
                for rule in op_rules:
                    rules.append(dict(arch=arch, op=op, precision=precision, layout="aligned",
                                      max_m=rule.get("max_m", -1), max_n=rule.get("max_n", -1),
                                      max_k=rule.get("max_k", -1),
                                      variant=variant_for(arch, op, precision, "aligned", rule["config"])))
                rules.append(dict(arch=arch, op=op, precision=precision, layout="generic", max_m=-1, max_n=-1,
                                  max_k=-1, variant=variant_for(arch, op, precision, "generic",
                                                                table["generic"][table_key])))
        for v in variants:
            if v["arch"] == arch:
                v["tuning_table"] = f"sm_{table_arch}.json"
    return variants, rules


def kernel_signature(kernel_kind, precision, layout, weight_fp16=False):
    """Triton function, signature, constexprs and divisibility attributes for one variant."""
    kernel = spec.kernel_function(kernel_kind)
    elem = spec.PRECISIONS[precision][0]
    layout_spec = spec.LAYOUTS[layout]
    names = kernel.arg_names
    signature = {n: spec.ARG_TYPES[n].replace("X", elem) for n in names if n in spec.ARG_TYPES}
    if weight_fp16:
        signature["w_ptr"] = "*fp16"
    constexprs = {n: 1 for n in layout_spec["unit_strides"] if n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in layout_spec["divisible_by_16"] if n in names}
    return kernel, names, signature, constexprs, attrs


def compile_variant(variant, cache_dir):
    """Compile one variant (or take it from the cache). Runs in a worker process."""
    import triton
    from triton.backends.compiler import GPUTarget

    config = variant["config"]
    kernel, names, signature, constexprs, attrs = kernel_signature(variant["kernel"], variant["precision"],
                                                                   variant["layout"], config["WEIGHT_FP16"])
    constexprs = dict(constexprs, EPILOGUE=spec.OPS[variant["op"]], DOT=spec.PRECISIONS[variant["precision"]][1],
                      **{k: config[k] for k in spec.TILE_KEYS},
                      **{k: spec.knob_constexpr(k, config[k]) for k in spec.KERNELS[variant["kernel"]]["knobs"]})
    constexprs.update(spec.pipeline_constexprs(variant["kernel"], config))
    full_signature = {n: ("constexpr" if n in constexprs else signature[n]) for n in names}
    runtime_args = [n for n in names if n not in constexprs]

    key_src = json.dumps([CACHE_FORMAT, triton.__version__, [(ROOT / p).read_text() for p in KERNEL_SOURCES],
                          variant["arch"], full_signature, sorted(constexprs.items()),
                          sorted((str(k), v) for k, v in attrs.items()), config], sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    entry = Path(cache_dir) / key
    if (entry / "meta.json").exists():
        meta = json.loads((entry / "meta.json").read_text())
        return dict(variant, **meta, cache_key=key, cached=True)

    target = GPUTarget("cuda", variant["arch"], 32)
    backend = triton.compiler.make_backend(target)
    options = backend.parse_options({"num_warps": config["num_warps"], "num_stages": config["num_stages"],
                                     **spec.KERNELS[variant["kernel"]].get("options", {})})
    if kernel.is_gluon():
        from triton.experimental.gluon._runtime import GluonASTSource as source_type
    else:
        source_type = triton.compiler.ASTSource
    src = source_type(fn=kernel, signature=full_signature, constexprs=constexprs, attrs=attrs)
    compiled, ptxas_log = compile_with_ptxas_log(src, target, options)
    md = compiled.metadata
    if getattr(md, "profile_scratch_size", 0):
        raise RuntimeError(f"{variant['name']}: kernel needs profile scratch memory; the launcher passes none")
    ptx = compiled.asm["ptx"]
    header = ptx[ptx.index(".entry"):ptx.index(")", ptx.index(".entry"))]
    extra_params = header.count(".param") - len(runtime_args)
    if not 0 <= extra_params <= 2:
        raise RuntimeError(f"{variant['name']}: PTX has {header.count('.param')} params for "
                           f"{len(runtime_args)} runtime arguments; this Triton's ABI is unknown")
    tmp = entry.with_name(key + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "kernel.cubin").write_bytes(compiled.asm["cubin"])
    (tmp / "kernel.ptx").write_text(ptx)
    meta = dict(entry_name=md.name, shared_bytes=int(md.shared), num_warps=int(md.num_warps),
                scratch_bytes=int(getattr(md, "global_scratch_size", 0)),
                scratch_align=int(getattr(md, "global_scratch_align", 1)),
                runtime_args=runtime_args, scratch_params=extra_params, triton=triton.__version__,
                ptx_target=re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1),
                wgmma_serial_reason=read_wgmma_serial_reason(ptxas_log),
                wgmma_register_hazard=read_wgmma_register_hazard(tmp / "kernel.cubin", ptx),
                **read_resource_usage(tmp / "kernel.cubin"))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(entry, ignore_errors=True)
    tmp.rename(entry)
    return dict(variant, **meta, cache_key=key, cached=False)


def compile_with_ptxas_log(src, target, options):
    """triton.compile, plus the report of the ptxas run that made this cubin (Triton runs ptxas with -v and prints
    the report when asked; always_compile keeps Triton's own cache from skipping that run)."""
    import contextlib
    import io

    import triton
    from triton import knobs

    log = io.StringIO()
    saved = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log = knobs.compilation.always_compile = True
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=target, options=options.__dict__)
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = saved
    return compiled, log.getvalue()


def cuobjdump():
    import triton
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(tool) if tool.exists() else shutil.which("cuobjdump")


def read_wgmma_serial_reason(ptxas_log):
    """ptxas's reason for running a kernel's wgmma instructions one at a time, or None. The tensor cores then idle
    between wgmmas, which costs a Hopper main loop much of its speed, and only ptxas's report says so
    Recorded in the manifest; with A in registers it is what keeps a kernel correct."""
    m = re.search(r"wgmma\.mma_async instructions are serialized due to (.*?) in the function", ptxas_log)
    return m.group(1) if m else None


def read_resource_usage(cubin):
    out = subprocess.run([cuobjdump(), "--dump-resource-usage", str(cubin)], check=True,
                         capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not m:
        raise RuntimeError(f"cannot read resource usage of {cubin}:\n{out}")
    reg, stack, static_shared, local = map(int, m.groups())
    # Triton kernels keep no arrays on the stack: stack or local bytes mean register spills.
    return dict(registers=reg, stack_bytes=stack, local_bytes=local, static_shared_bytes=static_shared,
                spills=stack > 0 or local > 0)


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


def check_limits(built):
    """Fail the build, with the reason, on variants that cannot launch or break the target-GPU rules."""
    problems = []
    for v in built:
        limit = spec.SHARED_MEMORY_LIMIT[v["arch"]]
        total_shared = v["shared_bytes"] + v["static_shared_bytes"]
        if total_shared > limit:
            problems.append(f"{v['name']}: needs {total_shared} bytes of shared memory per block; "
                            f"sm_{v['arch']} allows {limit} ({limit // 1024} KB)")
        ctas = v["config"]["CTAS_PER_SM"]
        if ctas > 1 and (ctas * (total_shared + 1024) > spec.SHARED_MEMORY_PER_SM[v["arch"]]
                         or ctas * v["registers"] * v["num_warps"] * 32 > spec.REGISTERS_PER_SM):
            problems.append(f"{v['name']}: CTAS_PER_SM={ctas} needs {ctas} x ({total_shared} + 1024) bytes of shared "
                            f"memory and {ctas} x {v['registers']} x {v['num_warps'] * 32} registers; one SM of "
                            f"sm_{v['arch']} has {spec.SHARED_MEMORY_PER_SM[v['arch']]} and {spec.REGISTERS_PER_SM}")
        if v["wgmma_register_hazard"]:
            problems.append(f"{v['name']}: {v['wgmma_register_hazard']} (wrong results possible): pick another config "
                            f"in aot/tuning/{v['tuning_table']}, one whose wgmma waits for each other")
        if v["arch"] in spec.STRICT_ARCHS and v["spills"]:
            problems.append(f"{v['name']}: spills registers on sm_{v['arch']} ({v['registers']} registers, "
                            f"{v['stack_bytes']} stack bytes): shrink its tile in "
                            f"aot/tuning/{v['tuning_table']}")
    if problems:
        raise SystemExit("fusedops AOT build failed:\n  " + "\n  ".join(problems))


def cpp_string(text):
    return json.dumps(text)  # a JSON string literal is a valid C++ string literal for ASCII text


def generate_cpp(manifest, out):
    """The C++ side of a checked manifest (aot/manifest.py): blobs (.incbin), launchers, variant and rule tables."""
    built, rules = manifest["variants"], manifest["rules"]
    kernels_dir = manifest_checks.check_incbin_path((out / "kernels").resolve())
    enums = {"op": list(spec.OPS), "precision": list(spec.PRECISIONS), "layout": list(spec.LAYOUTS)}
    lines = [
        "// Generated by aot/build.py: do not edit, do not commit.",
        '#include "kernel_table.h"',
        "",
        "namespace fusedops {",
        "namespace {",
        "void* kNoScratch = nullptr;  // Triton's global/profile scratch parameters: unused by these kernels",
        "}  // namespace",
        "",
    ]
    asm = []
    for i, v in enumerate(built):
        for kind in ("cubin", "ptx"):
            sym = f"fusedops_v{i}_{kind}"
            path = f"{kernels_dir}/{v['name']}.{kind}"
            asm += [f".global {sym}", f".hidden {sym}", ".balign 16", f"{sym}:", f'.incbin "{path}"',
                    ".byte 0",  # PTX must be NUL-terminated for cuModuleLoadData; harmless after a cubin
                    f".global {sym}_end", f".hidden {sym}_end", f"{sym}_end:"]
            lines.append(f'extern "C" const unsigned char {sym}[], {sym}_end[];')
    lines.append('__asm__(".section .rodata\\n"')
    lines += ["        " + cpp_string(a + "\n") for a in asm]
    lines += ['        ".previous\\n");', ""]

    for i, v in enumerate(built):
        args = ", ".join(f"const_cast<void*>(static_cast<const void*>(&a.{n}))" for n in v["runtime_args"])
        scratch = ["&kNoScratch"] * v["scratch_params"]  # (global, profile) scratch, in Triton's order
        if v["scratch_bytes"]:
            scratch[0] = "const_cast<CUdeviceptr*>(&a.global_scratch)"
        args = ", ".join([args] + scratch)
        lines += [
            f"// {v['name']} (blob {v['cache_key']}): {v['registers']} registers, {v['shared_bytes']} B shared, "
            f"spills={v['spills']}",
            f"static CUresult launch_v{i}(const DriverApi& d, CUfunction f, CUstream s, unsigned grid, "
            f"const LaunchArgs& a) {{",
            f"  void* params[] = {{{args}}};",
            f"  return d.cuLaunchKernel(f, grid, 1, 1, {v['num_warps'] * 32}, 1, 1, {v['shared_bytes']}, s, "
            f"params, nullptr);",
            "}",
        ]
    lines += ["", "const Variant kVariants[] = {"]
    lines += [designated(variant_fields(i, v)) for i, v in enumerate(built)]
    lines += ["};", f"const size_t kNumVariants = {len(built)};", "", "const Rule kRules[] = {"]
    lines += [designated(dict(arch=r["arch"], op=f"Op::{r['op']}", precision=f"Precision::{r['precision']}",
                              layout=f"Layout::{r['layout']}", max_m=r["max_m"], max_n=r["max_n"], max_k=r["max_k"],
                              variant=r["variant"])) for r in rules]
    lines += ["};", f"const size_t kNumRules = {len(rules)};", ""]
    text = manifest_text(manifest)
    lines.append("const char* const kManifestJson =")
    for start in range(0, len(text), 2000):  # keep string-literal pieces short for old compilers
        lines.append("    " + cpp_string(text[start:start + 2000]))
    lines += [";", "", "}  // namespace fusedops", ""]
    (out / "fusedops_kernels.cpp").write_text("\n".join(lines))

    header = ["// Generated by aot/build.py from aot/spec.py: do not edit, do not commit.", "#pragma once",
              "#include <cstdint>", "namespace fusedops {"]
    for name, values in enums.items():
        header.append(f"enum class {name.capitalize()} : uint8_t {{ {', '.join(values)} }};")
        header.append(f"inline const char* {name}_name({name.capitalize()} v) {{")
        header.append(f"  static const char* const names[] = {{{', '.join(cpp_string(x) for x in values)}}};")
        header.append("  return names[static_cast<int>(v)];")
        header.append("}")
    header += ["}  // namespace fusedops", ""]
    write_if_changed(out / "fusedops_spec.h", "\n".join(header))


def cpp_bool(value):
    return "true" if value else "false"


def variant_fields(i, v):
    """One kernel-table entry (csrc/kernel_table.h struct Variant), field by field, as C++ expressions."""
    c, kernel = v["config"], spec.KERNELS[v["kernel"]]
    blob = f"fusedops_v{i}"
    return dict(
        name=cpp_string(v["name"]), arch=v["arch"], op=f"Op::{v['op']}", precision=f"Precision::{v['precision']}",
        layout=f"Layout::{v['layout']}", block_m=c["BLOCK_M"], block_n=c["BLOCK_N"], block_k=c["BLOCK_K"],
        group_m=c["GROUP_M"], num_warps=v["num_warps"], num_stages=c["num_stages"],
        persistent=cpp_bool(kernel["persistent"]), cublas_gemm=cpp_bool(kernel["cublas_gemm"]),
        weight_fp16=cpp_bool(c["WEIGHT_FP16"]), ctas_per_sm=c["CTAS_PER_SM"], split_k=c.get("SPLIT_K", 1),
        shared_bytes=v["shared_bytes"], scratch_bytes=v["scratch_bytes"], scratch_align=v["scratch_align"],
        entry=cpp_string(v["entry_name"]), cubin=f"{blob}_cubin",
        cubin_size=f"static_cast<size_t>({blob}_cubin_end - {blob}_cubin - 1)",
        ptx=f"reinterpret_cast<const char*>({blob}_ptx)", launch=f"&launch_v{i}")


def designated(fields):
    """A C++ aggregate initializer naming each field ({.name = value, ...}): the compiler matches every value to its
    field by name and refuses any out of declaration order, so a field added to the struct cannot shift the rest."""
    return "  {" + ", ".join(f".{name} = {value}" for name, value in fields.items()) + "},"


def manifest_text(manifest):
    """manifest.json's text, as the build writes it and the library embeds it (ASCII: json escapes the rest)."""
    return json.dumps(manifest, indent=1, ensure_ascii=True)


def write_if_changed(path, text):
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def build(out, cache, jobs, archs):
    import triton

    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels").mkdir(exist_ok=True)
    variants, rules = plan_variants(archs)
    print(f"fusedops AOT: {len(variants)} variants for sm_{', sm_'.join(map(str, archs))} "
          f"(triton {triton.__version__}), {jobs} jobs", flush=True)
    built = [None] * len(variants)
    with futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        todo = {pool.submit(compile_variant, v, str(cache)): i for i, v in enumerate(variants)}
        for n, fut in enumerate(futures.as_completed(todo), 1):
            built[todo[fut]] = v = fut.result()
            print(f"  [{n}/{len(variants)}] {'cached  ' if v['cached'] else 'compiled'} {v['name']} "
                  f"regs={v['registers']} smem={v['shared_bytes']} spills={v['spills']}", flush=True)
    check_limits(built)
    for v in built:  # a performance note, not an error: with A in registers it is what keeps the kernel correct
        if v["wgmma_serial_reason"]:
            print(f"fusedops AOT: note: {v['name']}: ptxas runs its wgmma one at a time ({v['wgmma_serial_reason']})",
                  flush=True)
    for v in built:
        for kind in manifest_checks.BINARY_KINDS:
            src = cache / v["cache_key"] / f"kernel.{kind}"
            dst = out / "kernels" / f"{v['name']}.{kind}"
            if not dst.exists() or dst.read_bytes() != src.read_bytes():
                shutil.copyfile(src, dst)
            v[f"{kind}_sha256"] = manifest_checks.sha256_of(dst)
    manifest = dict(triton=triton.__version__, source_digest=kernel_source_digest(), archs=archs,
                    ops=list(spec.OPS), precisions=list(spec.PRECISIONS),
                    layouts=list(spec.LAYOUTS), variants=[{k: v[k] for k in (
                        "name", "arch", "op", "precision", "layout", "kernel", "config", "entry_name",
                        "shared_bytes", "scratch_bytes",
                        "registers", "stack_bytes", "local_bytes", "spills", "ptx_target", "wgmma_serial_reason",
                        "wgmma_register_hazard", "tuning_table", *manifest_checks.LAUNCH_KEYS)}
                        for v in built], rules=rules)
    manifest_checks.check(manifest)
    write_if_changed(out / "manifest.json", manifest_text(manifest))
    generate_cpp(manifest, out)
    print(f"fusedops AOT: wrote {out / 'fusedops_kernels.cpp'} and manifest.json "
          f"({sum(not v['cached'] for v in built)} compiled, {sum(v['cached'] for v in built)} cached)")
    return out / "fusedops_kernels.cpp"


def relink(out):
    """Regenerate out/fusedops_kernels.cpp from the manifest and binaries a build wrote into out (perhaps elsewhere:
    the .incbin paths are absolute). The manifest is untrusted input: every field the code generator reads is checked
    (aot/manifest.py), every binary against its recorded sha256, and kernels built from other sources than this
    checkout's are refused."""
    out = Path(out).resolve()
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(f"fusedops: prebuilt kernels: {out} holds no manifest.json; expected the --out directory "
                         f"of `python -m aot.build`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise SystemExit(f"fusedops: prebuilt kernels: {manifest_path} is not JSON ({e})")
    missing = sorted({k for v in manifest.get("variants", []) if isinstance(v, dict)
                      for k in manifest_checks.LAUNCH_KEYS if k not in v}) if isinstance(manifest, dict) else []
    if missing:
        raise SystemExit(f"fusedops: prebuilt kernels: {manifest_path} lacks {missing}: it was written by an older "
                         f"aot/build.py; rebuild the kernels")
    try:
        manifest_checks.check(manifest)
    except manifest_checks.ManifestError as e:
        raise SystemExit(f"fusedops: prebuilt kernels refused: {manifest_path}: {e}")
    here = kernel_source_digest()
    if manifest["source_digest"] != here:
        raise SystemExit(f"fusedops: the kernels in {out} were built from other kernels/, aot/spec.py or "
                         f"aot/tuning/ files than this checkout's (source digest {manifest['source_digest']}, here "
                         f"{here}); rebuild them with `python -m aot.build --out {out}`")
    absent = [f"{v['name']}.{kind}" for v in manifest["variants"] for kind in manifest_checks.BINARY_KINDS
              if not (out / "kernels" / f"{v['name']}.{kind}").is_file()]
    if absent:
        raise SystemExit(f"fusedops: {out / 'kernels'} lacks {len(absent)} of the binaries its manifest lists, "
                         f"e.g. {absent[0]}")
    try:
        manifest_checks.check_binaries(manifest, out / "kernels")
        generate_cpp(manifest, out)
    except manifest_checks.ManifestError as e:
        raise SystemExit(f"fusedops: prebuilt kernels refused: {e}")
    print(f"fusedops AOT: relinked {len(manifest['variants'])} prebuilt variants for sm_"
          f"{', sm_'.join(map(str, manifest['archs']))} (triton {manifest['triton']}) into "
          f"{out / 'fusedops_kernels.cpp'}", flush=True)
    return out / "fusedops_kernels.cpp"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "aot")
    parser.add_argument("--cache", type=Path, default=None, help="compile cache (default: <out>/../aot-cache)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--relink", type=Path, metavar="DIR", help="only regenerate DIR's C++ from its manifest "
                        "and binaries (kernels built elsewhere); no compile, no Triton")
    args = parser.parse_args()
    if args.relink:
        relink(args.relink)
    else:
        build(args.out, args.cache or args.out.parent / "aot-cache", args.jobs, spec.cuda_archs())


if __name__ == "__main__":
    main()
