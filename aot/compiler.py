"""Stage 2 of the AOT build: one variant -> cubin + PTX for an explicit GPUTarget (no GPU needed), cached, with
what ptxas and cuobjdump say of it (registers, stack, shared memory, wgmma serialisation, SASS hazards), and the
per-arch limits every variant must meet.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from aot import sass, spec

ROOT = Path(__file__).resolve().parent.parent

CACHE_FORMAT = "7"  # bump when the compile recipe or what is read from its output changes


# Every kernel's source, for each variant's cache key (a Gluon kernel imports the Triton helpers) and the digest.
KERNEL_SOURCES = sorted({spec.KERNELS[k]["source"] for k in spec.KERNELS})


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
                wgmma_register_hazard=sass.read_wgmma_register_hazard(tmp / "kernel.cubin", ptx),
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


def read_wgmma_serial_reason(ptxas_log):
    """ptxas's reason for running a kernel's wgmma instructions one at a time, or None. The tensor cores then idle
    between wgmmas, which costs a Hopper main loop much of its speed, and only ptxas's report says so
    Recorded in the manifest; with A in registers it is what keeps a kernel correct."""
    m = re.search(r"wgmma\.mma_async instructions are serialized due to (.*?) in the function", ptxas_log)
    return m.group(1) if m else None


def read_resource_usage(cubin):
    out = subprocess.run([sass.cuobjdump(), "--dump-resource-usage", str(cubin)], check=True,
                         capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not m:
        raise RuntimeError(f"cannot read resource usage of {cubin}:\n{out}")
    reg, stack, static_shared, local = map(int, m.groups())
    # Triton kernels keep no arrays on the stack: stack or local bytes mean register spills.
    return dict(registers=reg, stack_bytes=stack, local_bytes=local, static_shared_bytes=static_shared,
                spills=stack > 0 or local > 0)


def check_limits(built):
    """Fail the build, with the reason, on variants that cannot launch or break the target-GPU rules."""
    problems = []
    for v in built:
        limit = spec.SHARED_MEMORY_LIMIT[v["arch"]]
        total_shared = v["shared_bytes"] + v["static_shared_bytes"]
        if total_shared > limit:
            problems.append(f"{v['name']}: needs {total_shared} bytes of shared memory per block; "
                            f"sm_{v['arch']} allows {limit} ({limit // 1024} KB)")
        if v["wgmma_register_hazard"]:
            problems.append(f"{v['name']}: {v['wgmma_register_hazard']} (wrong results possible): pick another config "
                            f"in aot/tuning/{v['tuning_table']}, one whose wgmma waits for each other")
        if v["arch"] in spec.STRICT_ARCHS and v["spills"]:
            problems.append(f"{v['name']}: spills registers on sm_{v['arch']} ({v['registers']} registers, "
                            f"{v['stack_bytes']} stack bytes): shrink its tile in "
                            f"aot/tuning/{v['tuning_table']}")
    if problems:
        raise SystemExit("fusedops AOT build failed:\n  " + "\n  ".join(problems))
