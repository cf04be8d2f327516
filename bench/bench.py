"""Benchmark torch.ops.fusedops against PyTorch, cuBLAS, torch.compile and the two seed Triton kernels.

    python -m bench.bench                 full sweep (both ops; fp16, bf16, fp32; torch.compile everywhere)
    python -m bench.bench --quick         seed problems + a small fp16 sweep, fewer repetitions (< 2 min)
    python -m bench.bench --no-compile    skip torch.compile (its max-autotune compiles take most of a full run)
    python -m bench.bench --ops linear_relu --dtypes fp16 bf16 --out /tmp/res

One process, one GPU (the current CUDA device).

Problems: the seed problems (problem 41: linear_bn_gelu_relu, M 16384, K 4096, N 4096; problem 76: linear_relu,
M 1024, K 8192, N 8192; fp32 inputs as given, also timed with fp16 and bf16 inputs) and a sweep
M in {1, 16, 64, 256, 1024, 4096, 16384} x (N, K) in {(4096, 4096), (8192, 8192), (1024, 4096), (4096, 1024)}
for both ops in fp16, bf16 and fp32. --quick: the seed problems plus M in {16, 1024, 16384} at N = K = 4096, fp16.

Contenders (per problem and input dtype; an fp32 input is timed at three precisions: "ieee" = full fp32
products, torch.set_float32_matmul_precision('highest'), i.e. allow_tf32=False; "tf32" = 'high', i.e.
allow_tf32=True; "fp16" = fp16 operands, fp32 accumulate):
  fusedops        the fused op on the inputs as given; fp32 inputs with precision="ieee" / "tf32" / "fp16".
                  The epilogue vectors (bias, BN statistics and affine) are in the input dtype, as a model's.
  eager           F.linear + F.batch_norm(eval) + F.gelu + torch.relu (or F.linear + torch.relu), with every
                  tensor in the input dtype (a model.half()/.bfloat16() model). eager[fp16] on fp32 input: x is
                  cast to fp16 inside the timed call, the weight and vectors were cast once beforehand.
  cublas          THE FLOOR: the GEMM alone (torch.mm(x, w.t()) or torch.addmm(b, x, w.t()), whichever is faster;
                  the note says which) in the same precision; cublas[fp16] on fp32 input uses operands cast to
                  fp16 beforehand (no cast in the timed call).
  cublasLt+relu   torch._addmm_activation(b, x, w.t(), use_gelu=False): cuBLASLt's fused bias+ReLU epilogue
                  (linear_relu only); [fp16] on fp32 input casts x inside the timed call like eager[fp16].
  compile         torch.compile(eager composite, mode="max-autotune-no-cudagraphs", dynamic=False), compiled
                  once per problem, dtype and precision (each its own copy of the function, so its own dynamo
                  cache; torch._dynamo.reset() before and after each problem); the compile time
                  is in the note. Scope: --compile {none,seed-fp16,seed-half,seed,all} (default: seed-fp16 with --quick,
                  all otherwise; --no-compile = none).
  seed 000/001    the seed documents' [CURRENT CODE] (found in <repo>/shared/seeds or <repo>/../shared/seeds, or
                  --seeds DIR), exec'd at run time and called through its wrapper exactly as written: seed 000
                  (linear_bn_gelu_relu) casts x and the weight to fp16 and transposes the weight on every call,
                  returns fp32; seed 001 (linear_relu) transposes the weight on every call, accumulates in the
                  input dtype (which Triton rejects for fp16/bf16: those rows show the compile error) and uses
                  TF32 for fp32. Their Triton autotuning happens in the untimed first call.

Timing (bench/timing.py, time_cuda): one untimed call (compiles, autotuning), then warm-up calls, then timed calls,
each between its own pair of CUDA events; the figure is the median. Host overhead is hidden: before each chunk of
timed calls a GPU spin kernel (torch.cuda._sleep) is queued that outlasts the host's enqueueing of the chunk, so
the events measure GPU execution, not Python or launch latency. Calls rotate among several input sets (x and the
weight) holding together more than 2x the L2 cache (props.L2_cache_size, 50 MB on an H100), at most 32 sets and
8 GB; large problems use one set. Repetitions adapt to the call's duration (--budget-ms per contender, between
a minimum and --reps). All contenders of a problem use the same input sets. The contenders of a problem are timed
in --rounds interleaved rounds (A B C A B C ...; default 3, 2 with --quick), each with its share of the budget, and
each row's median is over all its timed calls: the H100 here runs at its 700 W limit under these GEMMs and its
clock swings between ~1.4 and 1.98 GHz, so a contender timed in one block would owe part of its figure to its
place in the order.

Correctness: before timing, every contender's result on the first input set is compared with the eager fp32
composite at 'highest' precision on the same (upcast) inputs: rel err = ||out - ref|| / ||ref||. Bounds: the
contender column of fusedops.reference.TOLERANCE (1e-4 for ieee, 1e-2 otherwise); "FAIL" marks a result over its
bound (a non-finite one too), "ERROR" a contender that raised. Nothing aborts the run. cublas rows are the bare GEMM
and are not checked.

Code: bench/cases.py (what is measured), bench/contenders.py (running and checking them on the GPU),
bench/timing.py (CUDA-event timing), bench/report.py (tables, JSON, plot), bench/seeds.py (the seed documents'
kernels); this file is the command line.

Output: a table of every row (median ms; TFLOP/s = 2*M*N*K / time; "x floor" = contender time / cublas time at the
same precision, so 1.00 is the bare GEMM and lower is better), a summary of the seed problems, and in --out
(default bench/results/): bench_<time>.json (all rows, device, versions, settings; rewritten after every problem,
so an interrupted run leaves its partial results) and bench_<time>.png (TFLOP/s against M, one panel per op,
dtype, N and K; needs matplotlib).
"""
import argparse
import datetime as _dt
import gc
import platform
import re
import sys
import time
from pathlib import Path
from typing import List

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script (python bench/bench.py): make `bench` importable
    sys.path.insert(0, str(REPO_ROOT))
from bench.cases import (COMPILE_SCOPES, DTYPES, FAMILIES, OPS, build_cases, model_shapes,  # noqa: E402
                         plan_contenders, random_shapes)
from bench.contenders import (CaseData, INPUT_BUDGET_BYTES, TOLERANCE, base_row,  # noqa: E402
                              run_case_contenders)
from bench.report import (Progress, SEED_TARGET, X_FLOOR_LABEL, _short, finish_case_rows,  # noqa: E402
                          plot_results, ratio_summary_table, results_table, seed_summary_table, write_json)
from bench.seeds import find_seed_dir, load_seeds, seed_entry  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "bench" / "results"
TIMING = {  # per mode: warm-up calls, max timed calls, min timed calls, timed milliseconds per contender,
    # untimed milliseconds of a contender's own calls right before each of its timed blocks (timing.time_cuda)
    "quick": dict(warmup=3, reps=40, min_reps=5, budget_ms=60.0, settle_ms=30.0),
    "full": dict(warmup=5, reps=200, min_reps=10, budget_ms=200.0, settle_ms=100.0),
}
# The contenders of a case are timed in this many interleaved rounds (the budget above is split among them).
TIMING_ROUNDS = {"quick": 2, "full": 3}


def collect_meta(args, mode, seed_dir, seeds, state, timing_kw, compile_scope) -> dict:
    import torch
    meta = dict(
        timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        argv=sys.argv[1:] if args is None else args.argv, mode=mode, compile_scope=compile_scope,
        python=platform.python_version(), platform=platform.platform(), torch=torch.__version__,
        torch_cuda=torch.version.cuda, timing=timing_kw, input_budget_bytes=INPUT_BUDGET_BYTES,
        tolerance=TOLERANCE, x_floor=X_FLOOR_LABEL, hostname=platform.node(),
    )
    try:
        import triton
        meta["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        meta["triton"] = f"unavailable ({type(e).__name__}: {e})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        from bench.timing import l2_bytes
        meta.update(device=props.name, capability=f"{props.major}.{props.minor}",
                    sm_count=props.multi_processor_count, l2_bytes=l2_bytes(),
                    memory_bytes=props.total_memory)
    meta["fusedops"] = state.get("fusedops_version")
    meta["seed_dir"] = str(seed_dir) if seed_dir else None
    meta["seeds"] = {op: dict(file=e["file"], sha256=e["sha256"], error=e["error"]) for op, e in seeds.items()}
    return meta


def parse_nk(s: str):
    m = re.fullmatch(r"(\d+)[x,:](\d+)", s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected NxK (e.g. 4096x1024); got {s!r}")
    return int(m.group(1)), int(m.group(2))


def build_parser():
    p = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="seed problems + M {16,1024,16384} at N=K=4096 in fp16, "
                   "fewer repetitions; torch.compile only for the seed problems in fp16")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON and PNG (default: bench/results)")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES),
                   help="input dtypes (seed problems and sweep)")
    p.add_argument("--seeds", default=None, help="the project's seed documents (the Triton kernels the ops started "
                   "from), timed as the 'seed' contender where present; default: <repo>/shared/seeds, then "
                   "<repo>/../shared/seeds. A clone without them runs every other contender")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (same as --compile none)")
    p.add_argument("--compile", choices=COMPILE_SCOPES, default=None, dest="compile_scope",
                   help="where to time torch.compile: none, seed-fp16 (seed problems, fp16 input), seed-half (seed "
                   "problems, fp16 and bf16 inputs), seed (seed "
                   "problems, all dtypes), all (default: seed-fp16 with --quick, else all)")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES),
                   help="contender families to run (cublas is the floor for 'x floor')")
    p.add_argument("--ms", nargs="+", type=int, default=None, help="sweep M values (override)")
    p.add_argument("--nk", nargs="+", type=parse_nk, default=None, help="sweep (N, K) pairs as NxK (override)")
    p.add_argument("--shapes", choices=("sweep", "random", "models"), default="sweep",
                   help="the (M, N, K) after the seed problems: the sweep's grid (--ms x --nk), --shape-count shapes "
                   "drawn log-uniformly with --shape-seed (M 1-16384, N and K 256-16384, not only powers of two), or "
                   "well-known models' Linear layers at several batch sizes")
    p.add_argument("--shape-count", type=int, default=64, help="how many random shapes (--shapes random)")
    p.add_argument("--shape-seed", type=int, default=0, help="seed of the random shapes: one seed a tuning set, "
                   "another a held-out set")
    p.add_argument("--seed-problems-only", action="store_true", help="no sweep")
    p.add_argument("--no-seed-problems", action="store_true", help="sweep only")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per contender")
    p.add_argument("--reps", type=int, default=None, help="most timed calls per contender")
    p.add_argument("--budget-ms", type=float, default=None, help="timed GPU milliseconds per contender (reps adapt)")
    p.add_argument("--settle-ms", type=float, default=None, help="untimed GPU milliseconds of a contender's own "
                   "calls before each timed block, so it is timed at the clock its own work sustains")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds per case (default: "
                   + ", ".join(f"{k} {v}" for k, v in TIMING_ROUNDS.items()) + ")")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    mode = "quick" if args.quick else "full"
    compile_scope = "none" if args.no_compile else (args.compile_scope or ("seed-fp16" if args.quick else "all"))
    timing_kw = dict(TIMING[mode])
    rounds = args.rounds if args.rounds is not None else TIMING_ROUNDS[mode]
    for k in ("warmup", "reps", "budget_ms", "settle_ms"):
        if getattr(args, k) is not None:
            timing_kw[k] = getattr(args, k)

    import torch
    if not torch.cuda.is_available():
        print("bench: needs a CUDA GPU (none visible)", file=sys.stderr)
        return 2

    import fusedops
    info = fusedops.build_info()
    state = {"fusedops_version": f"{info['version']} (archs {info['manifest'].get('archs')})"}

    seed_dir = find_seed_dir(args.seeds)
    seeds = load_seeds(seed_dir) if "seed" in args.families else {
        op: seed_entry(label=None, error="not requested") for op in OPS}
    for op, e in seeds.items():
        if e["error"] and "seed" in args.families:
            print(f"note: no seed row for {op}: {e['error']}", file=sys.stderr)

    shapes = {"sweep": None, "random": lambda: random_shapes(args.shape_count, args.shape_seed),
              "models": model_shapes}[args.shapes]
    cases = build_cases(quick=args.quick, ops=args.ops, dtypes=args.dtypes, ms=args.ms, nks=args.nk,
                        seed_problems=not args.no_seed_problems, sweep=not args.seed_problems_only,
                        shapes=None if shapes is None or args.seed_problems_only else shapes())
    plans = []
    for c in cases:
        seed_label = seeds[c.op]["label"] if seeds[c.op]["wrapper"] is not None else None
        plans.append((c, plan_contenders(c, families=args.families, compile_scope=compile_scope,
                                         seed_label=seed_label)))
    total = sum(len(s) for _, s in plans)

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out)
    json_path = out_dir / f"bench_{stamp}.json"
    png_path = out_dir / f"bench_{stamp}.png"
    meta = collect_meta(args, mode, seed_dir, seeds, state, timing_kw, compile_scope)
    meta["timing_rounds"] = rounds
    print(f"bench: {meta.get('device')} (sm {meta.get('capability')}, L2 {meta.get('l2_bytes', 0) / 2**20:.0f} MiB); "
          f"torch {meta['torch']}, triton {meta['triton']}, fusedops {meta['fusedops']}", file=sys.stderr)
    print(f"bench: {len(cases)} problems, {total} timed rows, mode {mode}, torch.compile scope {compile_scope}; "
          f"results -> {json_path}", file=sys.stderr)

    results: List[dict] = []
    progress = Progress(total, enabled=not args.no_progress)
    t_start = time.time()
    try:
        for case, specs in plans:
            rows = []
            data = ref = None
            try:
                progress.set(f"{case.label}: inputs")
                data = CaseData(case)
                ref = data.reference(case.op)
            except Exception as e:  # noqa: BLE001
                msg = f"{type(e).__name__}: {e}"
                progress.write(f"{case.label}: could not set up: {_short(msg, 200)}")
                for spec in specs:
                    rows.append(dict(base_row(case, spec), check="ERROR", error=msg[:2000]))
                    progress.update()
            else:
                for row in run_case_contenders(case, specs, data, ref, seeds, state, timing_kw, rounds, progress):
                    if row["error"]:
                        progress.write(f"{case.label} {row['contender']}: ERROR {_short(row['error'], 160)}")
                    elif row["check"] == "FAIL":
                        progress.write(f"{case.label} {row['contender']}: FAIL rel err {row['rel_err']:.2e} > "
                                       f"{row['tol']:.0e}")
                    rows.append(row)
                    progress.update()
            finish_case_rows(rows)
            results.extend(rows)
            del data, ref
            gc.collect()
            torch.cuda.empty_cache()
            meta["elapsed_s"] = time.time() - t_start
            write_json(json_path, meta, results)
    except KeyboardInterrupt:
        progress.write("interrupted: reporting what was timed so far")
    finally:
        progress.close()

    meta["elapsed_s"] = time.time() - t_start
    meta["complete"] = len(results) == total
    write_json(json_path, meta, results)
    png = None if args.no_plot else plot_results(results, png_path)

    print()
    print(results_table(results))
    print()
    print(X_FLOOR_LABEL)
    print("TFLOP/s = 2*M*N*K / median time; rel err vs the fp32 'highest' eager composite; bounds: "
          + ", ".join(f"{k} {v:.0e}" for k, v in TOLERANCE.items()))
    print()
    print("fusedops' time over cuBLAS's (x floor) and eager's (x eager) per case: median, 90th percentile, worst")
    print(ratio_summary_table(results))
    if any(r.get("problem") for r in results):
        print()
        print(f"Seed problems (target for fusedops with fp16/bf16 inputs: <= {SEED_TARGET:.2f} x floor):")
        print(seed_summary_table(results))
    fails = [r for r in results if r["family"] == "fusedops" and r.get("check") in ("FAIL", "ERROR")]
    others = [r for r in results if r["family"] != "fusedops" and r.get("check") in ("FAIL", "ERROR")]
    print()
    print(f"fusedops rows failing or raising: {len(fails)}; other rows: {len(others)}; "
          f"{meta['elapsed_s'] / 60:.1f} min")
    print(f"results: {json_path}" + (f"\nplot: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
