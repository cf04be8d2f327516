"""Time candidate kernel configs (Triton JIT, the same source the AOT build compiles) on the seed problems.

    python -m bench.probe                  # every group below
    python -m bench.probe --groups p41_half p76_tf32 --out /tmp/probe

A development tool for docs/perf-log.md (needs a GPU and triton), complementary to bench.tune: tune.py picks
table entries over whole shape buckets; this one answers one question at a time on one shape, and times
each candidate twice, the two ways that disagreed in the past:
  back_to_back  bench.timing.time_cuda: calls queued back to back, median of per-call CUDA events
                (what bench/bench.py reports; the GPU never idles between calls)
  do_bench      triton.testing.do_bench median: the L2 is flushed (a 256 MB memset) before every call
Candidates with WEIGHT_FP16 (fp32 in, fp16 tensor cores) round the weight to fp16 inside the timed call, as
the AOT launcher does.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.contenders import composite  # noqa: E402
from fusedops.reference import EPS, SEED_PROBLEMS, precision_name, rel_err  # noqa: E402
from bench.timing import round_order, time_cuda  # noqa: E402
from aot import plan  # noqa: E402
from bench.tune import cfg, coop, jit_runner, tma, wgmma  # noqa: E402


AOT = "aot"  # the built op itself, through torch.ops.fusedops (whatever the tables pick)
TABLE = "table"  # the config the shipped tables give the group's shape, through Triton's JIT (asked of the library)
P41, P76 = ((m, n, k) for _, _, m, k, n in SEED_PROBLEMS)  # the seed problems' (M, N, K), as the bench defines them
# group -> (op, M, N, K, dtype of x, DOT, [(label, config)]); a TABLE candidate's label names the variant it is
GROUPS = {
    "p41_half": ("linear_bn_gelu_relu", *P41, torch.float16, "native", [
        ("table", TABLE), ("AOT op (torch.ops.fusedops)", AOT),
        ("tma 128x256x64 s3", tma(128, 256, 64, 8, 3)), ("tma 256x128x64 s3", tma(256, 128, 64, 8, 3)),
        ("tma 128x256x64 s3 g16", tma(128, 256, 64, 8, 3, group=16)),
        ("coop 128x256x64 s4 TMA store", coop(128, 256, 64, 4, TMA_STORE=1)),
    ]),
    # the same kernel through the AOT op and through the JIT, timed interleaved (--rounds): is there a gap?
    "p41_aot_vs_jit": ("linear_bn_gelu_relu", *P41, torch.float16, "native", [
        ("table", TABLE), ("AOT op (torch.ops.fusedops)", AOT),
    ]),
    "p76_half": ("linear_relu", *P76, torch.float16, "native", [
        ("table", TABLE), ("AOT op (torch.ops.fusedops)", AOT),
        ("tma 128x256x64 s3", tma(128, 256, 64, 8, 3)),
        ("coop 128x256x64 s4 TMA store", coop(128, 256, 64, 4, TMA_STORE=1)),
    ]),
    "p76_tf32": ("linear_relu", *P76, torch.float32, "tf32", [
        ("table", TABLE), ("AOT op (torch.ops.fusedops)", AOT),
        ("coop 128x256x32 s4 TMA store", coop(128, 256, 32, 4, TMA_STORE=1)),
        ("coop 128x256x16 s8 TMA store", coop(128, 256, 16, 8, TMA_STORE=1)),
        ("coop 128x256x32 s4", coop(128, 256, 32, 4)),
    ]),
    "p41_tf32": ("linear_bn_gelu_relu", *P41, torch.float32, "tf32", [
        ("table", TABLE), ("AOT op (torch.ops.fusedops)", AOT),
        ("tiled 128x256x32 s3", cfg(128, 256, 32, 8, 3)), ("tma 128x128x32 s4", tma(128, 128, 32, 8, 4)),
    ]),
    "p41_fp32_fp16": ("linear_bn_gelu_relu", *P41, torch.float32, "fp16", [
        ("table", TABLE), ("AOT op (torch.ops.fusedops)", AOT),
        ("wgmma 128x256x64 w8 s3", wgmma(128, 256, 64, 8, 3)),
        ("wgmma 128x256x64 w8 s3 g4", wgmma(128, 256, 64, 8, 3, group=4)),
    ]),
    # coop's main loop against the TMA kernel's where the epilogue is cheap (relu, K 1024): coop's lower L2 hit rate
    "k1024_relu_half_coop": ("linear_relu", 4096, 4096, 1024, torch.float16, "native", [
        ("table", TABLE), ("coop 128x256x64 s4 TMA store", coop(128, 256, 64, 4, TMA_STORE=1)),
        ("coop 128x256x64 s3 TMA store", coop(128, 256, 64, 3, TMA_STORE=1)),
        ("coop 128x256x64 s4 TMA store g16", coop(128, 256, 64, 4, TMA_STORE=1, group=16)),
    ]),
    # a decode-sized batch: reading W (128 MiB) at the copy rate is the floor; split-K spreads it over more SMs
    "m64_half": ("linear_relu", 64, 8192, 8192, torch.float16, "native", [
        ("table", TABLE), ("AOT op (torch.ops.fusedops)", AOT),
        ("tiled 16x64x256 s3", cfg(16, 64, 256, 4, 3)),
        ("tiled 64x64x128 s4 split-K 4", cfg(64, 64, 128, 4, 4, SPLIT_K=4)),
        ("tiled 32x64x128 s4 split-K 8", cfg(32, 64, 128, 4, 4, SPLIT_K=8)),
    ]),
}


def reference_kind(op, dtype, dot):
    """What a group is judged against: cuBLASLt's bias+ReLU for fp32 TF32 linear_relu, the fp16 GEMM on pre-cast
    operands for fp32 in / fp16 math, else the bare GEMM."""
    if dtype == torch.float32 and dot == "tf32" and op == "linear_relu":
        return "lt_relu"
    return "mm16" if dtype == torch.float32 and dot == "fp16" else "mm"


def table_config(op, M, N, K, dtype, dot):
    """(label, config) of the variant the shipped library's rules give this aligned call on this GPU."""
    from fusedops._ops import _selected_variant
    v = _selected_variant(op, precision_name(dtype, dot), "aligned", M, N, K)  # (dot is never "auto" here)
    return f"table: {v['name'].split('__')[-1]}", plan.table_form(v["kernel"], v["config"])


def candidates_of(group):
    op, M, N, K, dtype, dot, candidates = GROUPS[group]
    return [table_config(op, M, N, K, dtype, dot) if config == TABLE else (label, config)
            for label, config in candidates]


def make_runner(op, M, N, K, dtype, dot, config):
    g = torch.Generator(device="cuda")
    g.manual_seed(0)
    x = torch.randn(M, K, device="cuda", dtype=torch.float32, generator=g).to(dtype)
    w = (torch.randn(N, K, device="cuda", dtype=torch.float32, generator=g) * K ** -0.5).to(dtype)
    y = torch.empty(M, N, device="cuda", dtype=dtype)
    b, mean, beta = (torch.randn(N, device="cuda", generator=g) * 0.1 for _ in range(3))
    var = torch.rand(N, device="cuda", generator=g) * 0.5 + 0.5
    gamma = torch.randn(N, device="cuda", generator=g) * 0.2 + 1.0

    def reference():  # the bench's eager composite, in fp64
        with torch.no_grad():
            return composite(op)(*(t.double() for t in (x, w, b, mean, var, gamma, beta)))

    if config == AOT:
        import fusedops
        kw = {"precision": dot} if dtype == torch.float32 else {}
        if op == "linear_relu":
            def run():
                return fusedops.linear_relu(x, w, b, **kw)
        else:
            def run():
                return fusedops.linear_bn_gelu_relu(x, w, b, mean, var, gamma, beta, EPS, **kw)
    else:
        run = jit_runner(op, dot, config, x, w, y, (b, mean, var, gamma, beta))
    return run, reference, (x, w, b)


def reference_runner(kind, x, w, b):
    if kind == "mm":
        return lambda: torch.mm(x, w.t())
    if kind == "mm16":
        x16, w16 = x.to(torch.float16), w.to(torch.float16)
        return lambda: torch.mm(x16, w16.t())
    if kind == "lt_relu":
        return lambda: torch._addmm_activation(b, x, w.t(), use_gelu=False)
    raise ValueError(kind)


def both_timings(fn):
    import triton
    t = time_cuda(fn, warmup=10, reps=100, budget_ms=300.0, min_reps=20)
    d = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    return t.median_ms, d


def interleaved(group, rounds, out):
    """Every candidate of a group and its reference, timed back to back in `rounds` interleaved rounds
    (A B C, B C A, ...: timing.round_order, as the bench); medians over the pooled calls, so a power-limit clock
    dip lands on all of them alike."""
    import statistics
    op, M, N, K, dtype, dot, _ = GROUPS[group]
    candidates, reference_name = candidates_of(group), reference_kind(op, dtype, dot)
    runners, ref, errors = [], None, {}
    for label, config in candidates:
        run, reference, tensors = make_runner(op, M, N, K, dtype, dot, config)
        try:
            y = run()
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - e.g. out of shared memory on this GPU: report, time the rest
            print(f"{group:<14} {label:<36} ERROR {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
            continue
        if ref is None:  # every candidate gets the same seeded inputs: one fp64 reference serves them all
            ref = reference()
        errors[label] = rel_err(y, ref)
        runners.append((label, run))
    runners.append((f"reference {reference_name}", reference_runner(reference_name, *tensors)))
    pooled = {label: [] for label, _ in runners}
    for r in range(rounds):
        for i in round_order(len(runners), r):
            label, run = runners[i]
            pooled[label] += time_cuda(run, warmup=5, reps=60, budget_ms=150.0, min_reps=10).times_ms
    rows = [dict(group=group, label=label, rounds=rounds, median_ms=statistics.median(t), calls=len(t),
                 rel_err=errors.get(label)) for label, t in pooled.items()]
    for r in rows:
        err = "" if r["rel_err"] is None else f"  err {r['rel_err']:.1e}"
        print(f"{group:<14} {r['label']:<36} interleaved x{rounds}: {r['median_ms']:.4f} ms ({r['calls']} calls)"
              f"{err}", flush=True)
    (out / f"probe_{group}_interleaved.json").write_text(json.dumps(rows, indent=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", nargs="*", default=list(GROUPS))
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new candidates after this")
    parser.add_argument("--rounds", type=int, default=1, help="> 1: time each group's candidates interleaved, "
                        "back to back only")
    parser.add_argument("--calls", type=int, default=0, help="> 0: only run each candidate, then the reference, this "
                        "many times, untimed (for a profiler such as ncu to time the kernels themselves)")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 references (mm, cuBLASLt) on TF32, as the TF32 targets
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.calls > 0:
        for group in args.groups:
            op, M, N, K, dtype, dot, _ = GROUPS[group]
            reference_name = reference_kind(op, dtype, dot)
            for label, config in candidates_of(group):
                run, _, operands = make_runner(op, M, N, K, dtype, dot, config)
                torch.cuda.nvtx.range_push(label)
                for _ in range(args.calls):
                    run()
                torch.cuda.synchronize()
                torch.cuda.nvtx.range_pop()
                print(f"{group:<14} {label:<36} ran {args.calls} times", flush=True)
            reference = reference_runner(reference_name, *operands)  # the library kernel it is judged against
            for _ in range(args.calls):
                reference()
            torch.cuda.synchronize()
            print(f"{group:<14} reference {reference_name:<26} ran {args.calls} times", flush=True)
        return
    if args.rounds > 1:
        for group in args.groups:
            interleaved(group, args.rounds, out)
        return
    start = time.time()
    rows = []
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu",
                            "--format=csv,noheader", "-lms", "200"], stdout=open(out / "smi.csv", "w"),
                           stderr=subprocess.DEVNULL) if shutil.which("nvidia-smi") else None
    try:
        for group in args.groups:
            op, M, N, K, dtype, dot, _ = GROUPS[group]
            candidates, reference_name = candidates_of(group), reference_kind(op, dtype, dot)
            flop = 2.0 * M * N * K
            for label, config in candidates:
                if time.time() - start > args.budget_s:
                    print(f"budget spent; skipping {group} / {label}", flush=True)
                    continue
                row = dict(group=group, label=label, config=config)
                try:
                    run, reference, tensors = make_runner(op, M, N, K, dtype, dot, config)
                    y = run()
                    torch.cuda.synchronize()
                    ref = reference()
                    row["rel_err"] = rel_err(y, ref)
                    row["b2b_ms"], row["do_bench_ms"] = both_timings(run)
                    if label == candidates[0][0]:  # the reference once per group, beside its first candidate
                        ref_fn = reference_runner(reference_name, *tensors)
                        r_b2b, r_db = both_timings(ref_fn)
                        rows.append(dict(group=group, label=f"reference {reference_name}", b2b_ms=r_b2b,
                                         do_bench_ms=r_db))
                        print(f"{group:<14} {'reference ' + reference_name:<36} b2b {r_b2b:.4f} ms  "
                              f"do_bench {r_db:.4f} ms", flush=True)
                except Exception as e:  # noqa: BLE001 - report and go on
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                rows.append(row)
                if "error" in row:
                    print(f"{group:<14} {label:<36} ERROR {row['error']}", flush=True)
                else:
                    print(f"{group:<14} {label:<36} b2b {row['b2b_ms']:.4f} ms  do_bench {row['do_bench_ms']:.4f} ms"
                          f"  {flop / row['b2b_ms'] / 1e9:.0f} TFLOP/s  err {row['rel_err']:.1e}", flush=True)
                (out / "probe.json").write_text(json.dumps(rows, indent=1))
    finally:
        if smi:
            smi.terminate()
    print("\nsummary (ms, back-to-back / do_bench)")
    for r in rows:
        if "error" not in r:
            print(f"  {r['group']:<14} {r['label']:<36} {r['b2b_ms']:.4f} / {r['do_bench_ms']:.4f}")


if __name__ == "__main__":
    main()
