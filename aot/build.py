"""Ahead-of-time build: Triton source -> cubin + PTX per variant -> generated C++ table. The stages, each a module:
aot/plan.py (tables -> variants), aot/compiler.py (compile, cache, limits), aot/sass.py (SASS checks),
aot/manifest.py (what may reach generated code), aot/codegen.py (C++); this file runs them (build, relink, CLI).

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
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aot import manifest as manifest_checks, spec, tables  # noqa: E402
from aot.codegen import generate_cpp, manifest_text, write_if_changed  # noqa: E402
from aot.compiler import CACHE_FORMAT, KERNEL_SOURCES, check_limits, compile_variant  # noqa: E402
from aot.plan import plan_variants  # noqa: E402

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

