"""python -m fusedops info [--variants|--json]   what this binary holds, and whether this GPU is served
python -m fusedops demo [--device D]   the two seed problems through the fused ops, against PyTorch
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

import fusedops
from fusedops.reference import SEED_PROBLEMS, TOLERANCE, make_problem, precision_name, reference, rel_err, run_fused


def info(as_json, list_variants):
    build = fusedops.build_info()
    if as_json:
        print(json.dumps(build, indent=1))
        return 0
    manifest = build["manifest"]
    print(f"fusedops {build['version']} (built with torch {build['built_with_torch']}, kernels compiled by triton "
          f"{manifest['triton']}; running torch {torch.__version__})")
    if not torch.cuda.is_available():
        print("GPU: no CUDA GPU visible: every call runs the CPU reference path (ATen, fp32)")
    for d in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        major, minor = torch.cuda.get_device_capability(d)
        name = torch.cuda.get_device_name(d)
        try:
            arch = torch.ops.fusedops._arch_for_capability(major * 10 + minor)
            how = "from PTX (FUSEDOPS_FORCE_ARCH)" if os.environ.get("FUSEDOPS_FORCE_ARCH") else "cubins"
            print(f"GPU cuda:{d} {name} (sm_{major}{minor}): served by the sm_{arch} kernels, {how}")
        except RuntimeError as e:
            print(f"GPU cuda:{d} {name} (sm_{major}{minor}): NOT served: {e}")
    print(f"archs: {', '.join(f'sm_{a}' for a in manifest['archs'])}; ops: {', '.join(manifest['ops'])}; "
          f"precisions: {', '.join(manifest['precisions'])}")
    variants = manifest["variants"]
    per_arch = ", ".join(f"{sum(v['arch'] == a for v in variants)} for sm_{a}" for a in manifest["archs"])
    spilling = [v for v in variants if v["spills"]]
    print(f"{len(variants)} kernel variants ({per_arch})"
          + (f"; variants that spill registers: {len(spilling)} (kept where measured fastest; the build refuses "
             f"spills on sm_89)" if spilling else "") + ("" if list_variants else "; `info --variants` lists them"))
    print(f"library: {fusedops.library_path}")
    if list_variants:
        serial = any(v["wgmma_serial_reason"] for v in variants)
        print(f"  {'variant':<64} {'regs':>4} {'smem':>7} {'spills':>6}" + ("  wgmma" if serial else ""))
        for v in variants:
            note = ("  one at a time" if v["wgmma_serial_reason"] else "") if serial else ""
            print(f"  {v['name']:<64} {v['registers']:>4} {v['shared_bytes']:>7} {str(v['spills']):>6}{note}")
    return 0


def median_ms(fn, device, repeats):
    fn()  # warm-up: module load, allocator
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def demo(device, scale, repeats):
    if scale is None:
        scale = 1 if device.type == "cuda" else 16
    on_gpu = device.type == "cuda"
    print(f"fusedops {fusedops.__version__} demo on {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if on_gpu else "")
          + (f", sizes divided by {scale}" if scale > 1 else ""))
    print(f"{'problem':<11} {'op':<20} {'M x K x N':<18} {'precision':<9} {'fused ms':>9} {'torch ms':>9} "
          + (f"{'speedup':>7} " if on_gpu else "") + f"{'rel err':>9}  check")
    failures = 0
    # the CPU path is the fp32 ATen reference whatever the precision: one row per problem there
    precisions = ("auto", "tf32", "fp16") if on_gpu else ("auto",)
    for i, (name, op, m, k, n) in enumerate(SEED_PROBLEMS):
        m, k, n = max(m // scale, 1), max(k // scale, 1), max(n // scale, 1)
        p = make_problem((m,), n, k, torch.float32, device=device, seed=i)
        with torch.no_grad():
            ref = reference(op, p)
            torch_ms = median_ms(lambda: reference(op, p, dtype=torch.float32), device, repeats)
            for precision in precisions:
                run = lambda: run_fused(op, p, precision=precision)  # noqa: E731
                out = run()
                err = rel_err(out, ref)
                bound = TOLERANCE[precision_name(torch.float32, precision if on_gpu else "ieee")].norm
                ok = err < bound and bool(torch.isfinite(out).all())
                failures += not ok
                ms = median_ms(run, device, repeats)
                print(f"{name:<11} {op:<20} {f'{m}x{k}x{n}':<18} {precision if on_gpu else '-':<9} {ms:>9.3f} "
                      f"{torch_ms:>9.3f} " + (f"{torch_ms / ms:>6.2f}x " if on_gpu else "")
                      + f"{err:>9.2e}  {'ok' if ok else 'FAIL'}")
    print("torch ms: PyTorch eager (F.linear + epilogue ops) in fp32 with the current matmul precision; "
          "rel err: ||fused - fp64 reference|| / ||reference||")
    if not on_gpu:
        print("On the CPU both sides run ATen in fp32 (the precision argument has no effect there), so the times say "
              "nothing about the fused kernels; their speed on GPUs is in docs/PERF.md.")
    return 1 if failures else 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fusedops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="version, archs and kernel variants in this binary; is this GPU served")
    p_info.add_argument("--json", action="store_true", help="the full build info and manifest as JSON")
    p_info.add_argument("--variants", action="store_true", help="list every kernel variant (registers, shared "
                        "memory, spills)")
    p_demo = sub.add_parser("demo", help="run both seed problems through the fused ops against PyTorch")
    p_demo.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    p_demo.add_argument("--scale", type=positive_int, default=None,
                        help="divide M, K, N by this (default: 1 GPU, 16 CPU)")
    p_demo.add_argument("--repeats", type=positive_int, default=None,
                        help="timed runs per case (default: 50 GPU, 3 CPU)")
    args = parser.parse_args(argv)
    if args.command == "info":
        return info(args.json, args.variants)
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        p_demo.error(f"argument --device: {e}")
    if device.type not in ("cpu", "cuda"):
        p_demo.error(f"argument --device: the demo runs on cpu or cuda; got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p_demo.error("argument --device: cuda asked for, but torch sees no CUDA GPU here (use --device cpu)")
    repeats = args.repeats or (50 if device.type == "cuda" else 3)
    return demo(device, args.scale, repeats)


def positive_int(text):
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {value}")
    return value


def run_cli():
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `python -m fusedops info | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    return code


if __name__ == "__main__":
    sys.exit(run_cli())
