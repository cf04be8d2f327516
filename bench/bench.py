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
                  The epilogue vectors (bias, BN statistics and affine) are passed in fp32.
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
contender column of fusedops.reference.TOLERANCE (1e-4 for ieee, 1e-2 otherwise); "FAIL" marks a result over its bound (a non-finite one too), "ERROR" a contender that raised.
Nothing aborts the run. cublas rows are the bare GEMM and are not checked.

Output: a table of every row (median ms; TFLOP/s = 2*M*N*K / time; "x floor" = contender time / cublas time at the
same precision, so 1.00 is the bare GEMM and lower is better), a summary of the seed problems, and in --out
(default bench/results/): bench_<time>.json (all rows, device, versions, settings; rewritten after every problem,
so an interrupted run leaves its partial results) and bench_<time>.png (TFLOP/s against M, one panel per op,
dtype, N and K; needs matplotlib).
"""
import argparse
import contextlib
import datetime as _dt
import gc
import hashlib
import json
import linecache
import math
import os
import platform
import re
import sys
import time
import traceback
import types
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script (python bench/bench.py): make `bench` importable
    sys.path.insert(0, str(REPO_ROOT))
from fusedops import reference  # noqa: E402  (the composites, seed problems and tolerances every check shares)

SEED_PROBLEMS = reference.SEED_PROBLEMS
DEFAULT_OUT = REPO_ROOT / "bench" / "results"

OPS = ("linear_bn_gelu_relu", "linear_relu")
DTYPES = ("fp16", "bf16", "fp32")
SWEEP_M = (1, 16, 64, 256, 1024, 4096, 16384)
SWEEP_NK = ((4096, 4096), (8192, 8192), (1024, 4096), (4096, 1024))
QUICK_M = (16, 1024, 16384)
QUICK_NK = ((4096, 4096),)
QUICK_DTYPES = ("fp16",)
# Relative-error bound of any contender against the fp32 'highest' composite, per precision class of a row.
TOLERANCE = {cls: reference.TOLERANCE[name].contender
             for cls, name in (("ieee", "fp32_ieee"), ("tf32", "fp32_tf32"), ("fp16", "fp16"), ("bf16", "bf16"))}
# Seed document prefix and the wrapper each defines, per op.
SEED_FILES = {"linear_bn_gelu_relu": ("000_", "fused_linear_bn_gelu_relu"),
              "linear_relu": ("001_", "fused_linear_relu")}
VECTORS = ("b", "mean", "var", "gamma", "beta")  # the epilogue vectors, in the composite's argument order
SEED_TARGET = 1.10  # the bound for fp16/bf16 fusedops at the seed problems: time / cuBLAS floor
INPUT_BUDGET_BYTES = 8 << 30
COMPILE_SCOPES = ("none", "seed-fp16", "seed-half", "seed", "all")
FAMILIES = ("cublas", "fusedops", "eager", "cublaslt", "compile", "seed")
TIMING = {  # per mode: warm-up calls, max timed calls, min timed calls, timed milliseconds per contender,
    # untimed milliseconds of a contender's own calls right before each of its timed blocks (timing.time_cuda)
    "quick": dict(warmup=3, reps=40, min_reps=5, budget_ms=60.0, settle_ms=30.0),
    "full": dict(warmup=5, reps=200, min_reps=10, budget_ms=200.0, settle_ms=100.0),
}
# The contenders of a case are timed in this many interleaved rounds (the budget above is split among them).
TIMING_ROUNDS = {"quick": 2, "full": 3}


# ----------------------------------------------------------------------------------------------------------------
# Seed documents (pure Python)
# ----------------------------------------------------------------------------------------------------------------

def seed_dir_candidates(explicit=None) -> List[Path]:
    if explicit:
        return [Path(explicit)]
    return [REPO_ROOT / "shared" / "seeds", REPO_ROOT.parent / "shared" / "seeds"]


def find_seed_dir(explicit=None) -> Optional[Path]:
    for d in seed_dir_candidates(explicit):
        if d.is_dir():
            return d
    return None


def seed_file(seed_dir: Path, prefix: str) -> Optional[Path]:
    found = sorted(Path(seed_dir).glob(prefix + "*.txt"))
    return found[0] if found else None


_CODE_BLOCK = re.compile(r"```python[^\n]*\n(.*?)```", re.DOTALL)


def extract_current_code(text: str) -> str:
    """The first ```python block after the "[CURRENT CODE]" marker."""
    at = text.find("[CURRENT CODE]")
    if at < 0:
        raise ValueError("no [CURRENT CODE] marker in the seed document")
    m = _CODE_BLOCK.search(text, at)
    if not m:
        raise ValueError("no ```python block after [CURRENT CODE] in the seed document")
    return m.group(1)


def load_seed_module(path, module_name: Optional[str] = None) -> types.ModuleType:
    """Exec a seed document's current code into a fresh module. The source is registered with linecache under a
    pseudo file name so that @triton.jit (which reads its function's source through inspect) finds it."""
    path = Path(path)
    code = extract_current_code(path.read_text())
    name = module_name or "bench_seed_" + re.sub(r"\W", "_", path.stem)
    filename = f"<seed {path.name}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    mod = types.ModuleType(name, f"seed code from {path}")
    mod.__file__ = filename
    exec(compile(code, filename, "exec"), mod.__dict__)
    mod.SEED_SOURCE_SHA256 = hashlib.sha256(code.encode()).hexdigest()
    return mod


def seed_entry(label: Optional[str], error: Optional[str] = None) -> dict:
    """A seed op's entry before (or instead of) loading its document."""
    return dict(module=None, wrapper=None, file=None, sha256=None, error=error, label=label)


def load_seeds(seed_dir: Optional[Path]) -> Dict[str, dict]:
    """op -> {module, wrapper, file, sha256, error}; module None (and error set) where it could not be loaded."""
    out = {}
    for op, (prefix, wrapper) in SEED_FILES.items():
        entry = seed_entry(label="seed " + prefix[:-1])
        if seed_dir is None:
            entry["error"] = "seed directory not found"
        else:
            path = seed_file(seed_dir, prefix)
            if path is None:
                entry["error"] = f"no {prefix}*.txt in {seed_dir}"
            else:
                entry["file"] = str(path)
                try:
                    mod = load_seed_module(path)
                    fn = getattr(mod, wrapper, None)
                    if fn is None:
                        raise AttributeError(f"the seed code defines no {wrapper}()")
                    entry.update(module=mod, wrapper=fn, sha256=mod.SEED_SOURCE_SHA256)
                except Exception as e:  # noqa: BLE001 - report, never abort
                    entry["error"] = f"{type(e).__name__}: {e}"
        out[op] = entry
    return out


# ----------------------------------------------------------------------------------------------------------------
# Problems and contenders (pure Python)
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    op: str
    dtype: str
    M: int
    N: int
    K: int
    problem: Optional[str] = None  # the seed problem's name where this is one

    @property
    def flops(self) -> float:
        return 2.0 * self.M * self.N * self.K

    @property
    def label(self) -> str:
        return f"{self.problem + ' ' if self.problem else ''}{self.op} {self.dtype} M{self.M} N{self.N} K{self.K}"


@dataclass(frozen=True)
class Spec:
    name: str        # the row's contender name
    family: str      # one of FAMILIES
    precision: str   # math class: ieee / tf32 / fp16 / bf16 (the floor with the same class is the reference)
    variant: str     # "native": inputs as given; "from_fp32": fp32 inputs into fp16 math


def build_cases(*, quick: bool, ops: Sequence[str] = OPS, dtypes: Sequence[str] = DTYPES,
                ms: Optional[Sequence[int]] = None, nks: Optional[Sequence[tuple]] = None,
                seed_problems: bool = True, sweep: bool = True) -> List[Case]:
    """Seed problems first (fp32, fp16, bf16), then the sweep; a sweep point equal to a seed problem is kept once."""
    cases: Dict[tuple, Case] = {}
    if seed_problems:
        for name, op, m, k, n in SEED_PROBLEMS:
            if op not in ops:
                continue
            for dt in ("fp32", "fp16", "bf16"):
                if dt in dtypes:
                    cases[(op, dt, m, n, k)] = Case(op, dt, m, n, k, name)
    if sweep:
        s_ms = tuple(ms) if ms else (QUICK_M if quick else SWEEP_M)
        s_nks = tuple(nks) if nks else (QUICK_NK if quick else SWEEP_NK)
        s_dts = [d for d in (QUICK_DTYPES if quick else DTYPES) if d in dtypes]
        for op in ops:
            for dt in s_dts:
                for n, k in s_nks:
                    for m in s_ms:
                        cases.setdefault((op, dt, m, n, k), Case(op, dt, m, n, k))
    return list(cases.values())


def compile_applies(case: Case, scope: str) -> bool:
    if scope == "all":
        return True
    if scope == "seed":
        return case.problem is not None
    if scope == "seed-half":
        return case.problem is not None and case.dtype in ("fp16", "bf16")
    if scope == "seed-fp16":
        return case.problem is not None and case.dtype == "fp16"
    return False


def plan_contenders(case: Case, *, families: Sequence[str] = FAMILIES, compile_scope: str = "all",
                    seed_label: Optional[str] = None) -> List[Spec]:
    """The rows a case gets, floors first. seed_label None: no seed row."""
    relu = case.op == "linear_relu"
    do_compile = compile_applies(case, compile_scope)
    specs: List[Spec] = []

    def add(family, name, precision, variant="native"):
        if family in families:
            specs.append(Spec(name, family, precision, variant))

    if case.dtype in ("fp16", "bf16"):
        p = case.dtype
        add("cublas", "cublas", p)
        add("fusedops", "fusedops", p)
        add("eager", "eager", p)
        if relu:
            add("cublaslt", "cublasLt+relu", p)
        if do_compile:
            add("compile", "compile", p)
    else:
        for p in ("ieee", "tf32"):
            add("cublas", f"cublas[{p}]", p)
        add("cublas", "cublas[fp16]", "fp16", "from_fp32")
        for p in ("ieee", "tf32"):
            add("fusedops", f"fusedops[{p}]", p)
        add("fusedops", "fusedops[fp16]", "fp16")
        for p in ("ieee", "tf32"):
            add("eager", f"eager[{p}]", p)
        add("eager", "eager[fp16]", "fp16", "from_fp32")
        if relu:
            for p in ("ieee", "tf32"):
                add("cublaslt", f"cublasLt+relu[{p}]", p)
            add("cublaslt", "cublasLt+relu[fp16]", "fp16", "from_fp32")
        if do_compile:
            for p in ("ieee", "tf32"):
                add("compile", f"compile[{p}]", p)
    if seed_label is not None:
        if case.op == "linear_bn_gelu_relu":
            p = "fp16"  # seed 000 always rounds x and the weight to fp16
        else:
            p = "tf32" if case.dtype == "fp32" else case.dtype  # seed 001: allow_tf32=True, or the input's type
        add("seed", seed_label, p)
    return specs


# ----------------------------------------------------------------------------------------------------------------
# Tables, JSON, plot (pure Python; matplotlib optional)
# ----------------------------------------------------------------------------------------------------------------

def format_table(headers: Sequence[str], rows: Sequence[Sequence], align: Optional[str] = None,
                 separators: Sequence[int] = ()) -> str:
    """Plain-text table. align: one 'l' or 'r' per column (default: left). separators: row indices before which
    a blank line goes."""
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, v in enumerate(r):
            widths[i] = max(widths[i], len(v))
    align = align or "l" * len(headers)

    def line(vals):
        return "  ".join(v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(vals, widths, align)).rstrip()

    out = [line(list(headers)), "  ".join("-" * w for w in widths)]
    seps = set(separators)
    for i, r in enumerate(cells):
        if i in seps and i:
            out.append("")
        out.append(line(r))
    return "\n".join(out)


def _fmt(v, spec):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def _short(s: Optional[str], n=60) -> str:
    """One line: the first line, and for a multi-line message (a Triton CompilationError, say) also its last."""
    lines = [ln.strip() for ln in (s or "").strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    s = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return s if len(s) <= n else s[: n - 3] + "..."


X_FLOOR_LABEL = ("x floor = contender time / cuBLAS GEMM-alone time at the same precision "
                 "(1.00 = as fast as the bare GEMM; lower is better)")


def results_table(results: Sequence[dict]) -> str:
    headers = ["problem", "op", "dtype", "M", "N", "K", "contender", "ms", "TFLOP/s", "x floor", "rel err", "check",
               "note"]
    rows, seps, last = [], [], None
    for r in results:
        key = (r["op"], r["dtype"], r["M"], r["N"], r["K"])
        if key != last:
            seps.append(len(rows))
            last = key
        note = _short(r.get("error"), 110) if r.get("error") else _short(r.get("note"), 60)
        rows.append([r.get("problem") or "", r["op"], r["dtype"], r["M"], r["N"], r["K"], r["contender"],
                     _fmt(r.get("median_ms"), ".4f"), _fmt(r.get("tflops"), ".1f"), _fmt(r.get("x_floor"), ".2f"),
                     _fmt(r.get("rel_err"), ".1e"), r.get("check") or "", note])
    return format_table(headers, rows, "lllrrrlrrrrll", seps)


def _eager_for(results: Sequence[dict], r: dict) -> Optional[dict]:
    for e in results:
        if (e["family"] == "eager" and e["precision"] == r["precision"] and
                (e["op"], e["dtype"], e["M"], e["N"], e["K"]) == (r["op"], r["dtype"], r["M"], r["N"], r["K"])):
            return e
    return None


def seed_summary_table(results: Sequence[dict], target: float = SEED_TARGET) -> str:
    """Rows of the seed problems only, with speed-up over eager at the same precision and, for fusedops with fp16 or
    bf16 inputs, whether it meets the target (time within `target` x the floor)."""
    headers = ["problem", "dtype", "contender", "ms", "TFLOP/s", "x floor", "vs eager", "check", "target"]
    rows, seps, last = [], [], None
    for r in results:
        if not r.get("problem"):
            continue
        key = (r["problem"], r["dtype"])
        if key != last:
            seps.append(len(rows))
            last = key
        e = _eager_for(results, r)
        speedup = (e["median_ms"] / r["median_ms"]) if (e and e.get("median_ms") and r.get("median_ms")) else None
        tgt = ""
        if r["family"] == "fusedops" and r["dtype"] in ("fp16", "bf16") and r.get("x_floor") is not None:
            tgt = f"{'met' if r['x_floor'] <= target else 'MISSED'} (<= {target:.2f})"
        rows.append([r["problem"], r["dtype"], r["contender"], _fmt(r.get("median_ms"), ".4f"),
                     _fmt(r.get("tflops"), ".1f"), _fmt(r.get("x_floor"), ".2f"),
                     _fmt(speedup, ".2f") + ("x" if speedup else ""), r.get("check") or "", tgt])
    return format_table(headers, rows, "lllrrrrll", seps)


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def write_json(path, meta: dict, results: Sequence[dict]) -> Path:
    """All rows plus run metadata; NaN/inf become null; written atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_json_safe({"meta": meta, "results": list(results)}), indent=1))
    os.replace(tmp, path)
    return path


def plot_results(results: Sequence[dict], path) -> Optional[Path]:
    """TFLOP/s against M (log x), one panel per (op, dtype, N, K), one line per contender. None (with a warning)
    where matplotlib is missing or nothing was timed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        print(f"warning: no plot ({type(e).__name__}: {e}); install matplotlib for it", file=sys.stderr)
        return None
    groups: Dict[tuple, Dict[str, list]] = {}
    for r in results:
        if r.get("tflops") is None:
            continue
        g = groups.setdefault((r["op"], r["dtype"], r["N"], r["K"]), {})
        g.setdefault(r["contender"], []).append((r["M"], r["tflops"]))
    if not groups:
        print("warning: no plot (nothing was timed)", file=sys.stderr)
        return None
    names = sorted({name for g in groups.values() for name in g})
    cmap = plt.get_cmap("tab20")
    colors = {name: cmap(i % 20) for i, name in enumerate(names)}  # one colour per contender in every panel
    keys = sorted(groups, key=lambda k: (OPS.index(k[0]) if k[0] in OPS else 9, DTYPES.index(k[1])
                                         if k[1] in DTYPES else 9, k[2], k[3]))
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, pts in sorted(groups[key].items()):
            pts = sorted(pts)
            style = "-" if not name.startswith("cublas[") and name != "cublas" else "--"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, color=colors[name],
                    lw=1.6 if "fusedops" in name else 1.0, label=name)
        op, dt, n, k = key
        ax.set_title(f"{op} {dt} N={n} K={k}", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M")
        ax.set_ylabel("TFLOP/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class Progress:
    """tqdm where importable, else a plain line every couple of seconds (in place on a terminal)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.n, self.desc, self.enabled = total, 0, "", enabled
        self.t0 = self.last = time.time()
        self.bar = None
        self.tty = sys.stderr.isatty()
        self.every = 2.0 if self.tty else 15.0  # seconds between plain progress lines
        if enabled and self.tty:  # a log file gets plain lines, not a bar's carriage returns
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr, smoothing=0.05,
                                mininterval=0.5)
            except Exception:  # noqa: BLE001
                self.bar = None

    def set(self, desc: str):
        self.desc = desc
        if self.bar is not None:
            self.bar.set_description_str(desc[:70])
        else:
            self._plain(force=False)

    def update(self, k: int = 1):
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        else:
            self._plain(force=self.n >= self.total)

    def _plain(self, force):
        if not self.enabled:
            return
        now = time.time()
        if not force and now - self.last < self.every:
            return
        self.last = now
        msg = f"[{self.n:>4}/{self.total}] {now - self.t0:6.0f} s  {self.desc}"
        if self.tty:
            sys.stderr.write("\r" + msg[:150].ljust(150) + ("\n" if force else ""))
        else:
            sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    def write(self, msg: str):
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            if self.tty:
                sys.stderr.write("\r" + " " * 150 + "\r")
            sys.stderr.write(msg + "\n")
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def finish_case_rows(rows: List[dict]) -> None:
    """Fill TFLOP/s, the floor and "x floor" in the rows of one case (in place)."""
    floors = {r["precision"]: r for r in rows if r["family"] == "cublas" and r.get("median_ms")}
    for r in rows:
        t = r.get("median_ms")
        r["tflops"] = (r["flops"] / (t * 1e-3) / 1e12) if t else None
        f = floors.get(r["precision"]) or floors.get(r["dtype"])
        if f is not None and t:
            r["floor_ms"], r["floor_contender"] = f["median_ms"], f["contender"]
            r["x_floor"] = t / f["median_ms"]
        else:
            r["floor_ms"] = r["floor_contender"] = r["x_floor"] = None


# ----------------------------------------------------------------------------------------------------------------
# GPU part
# ----------------------------------------------------------------------------------------------------------------

def _torch_dtype(name):
    import torch
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


@contextlib.contextmanager
def matmul_precision(precision: str):
    """ieee -> 'highest' (allow_tf32=False), tf32 -> 'high' (allow_tf32=True); fp16/bf16 -> 'highest'.
    Uses only torch.set_float32_matmul_precision (mixing it with the allow_tf32 setter makes newer torch raise)."""
    import torch
    try:
        old = torch.get_float32_matmul_precision()
    except RuntimeError:  # raised by newer torch after a mix of the legacy and new precision APIs
        old = "highest"
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def composite(op):
    """fusedops.reference.composite for one op, as f(x, w, b, mean, var, gamma, beta): a function of its own, which
    with_own_code can copy (torch.compile keeps one cache per code object)."""
    def fn(x, w, b, mean=None, var=None, gamma=None, beta=None):
        return reference.composite(op, x, w, b, mean, var, gamma, beta)
    fn.__name__ = op
    return fn


class CaseData:
    """Input sets and epilogue vectors of one case, on the GPU."""

    def __init__(self, case: Case):
        import torch
        from bench.timing import l2_bytes, rotation_count
        dev = torch.device("cuda")
        dt = _torch_dtype(case.dtype)
        g = torch.Generator(device=dev)
        g.manual_seed(zlib.crc32(f"{case.op} {case.M} {case.N} {case.K}".encode()))
        M, N, K = case.M, case.N, case.K
        elt = torch.empty((), dtype=dt).element_size()
        per_set = (M * K + N * K) * elt
        n_sets = rotation_count(per_set, l2=l2_bytes(), budget_bytes=INPUT_BUDGET_BYTES)
        wscale = K ** -0.5
        self.native = []
        for _ in range(n_sets):
            x = torch.randn(M, K, device=dev, generator=g, dtype=torch.float32).to(dt)
            w = (torch.randn(N, K, device=dev, generator=g, dtype=torch.float32) * wscale).to(dt)
            self.native.append((x, w))
        self.vec32 = dict(
            b=torch.randn(N, device=dev, generator=g) * 0.1,
            mean=torch.randn(N, device=dev, generator=g) * 0.1,
            var=torch.rand(N, device=dev, generator=g) * 0.5 + 0.5,
            gamma=torch.randn(N, device=dev, generator=g) * 0.2 + 1.0,
            beta=torch.randn(N, device=dev, generator=g) * 0.1,
        )
        self.vec = {k: v.to(dt) for k, v in self.vec32.items()}          # a model in the input dtype
        self.vec16 = {k: v.to(torch.float16) for k, v in self.vec32.items()}
        self._from_fp32 = None

    def from_fp32(self):
        """(x32, x16, w16) sets for fp16 math on fp32 inputs (weights cast once, beforehand)."""
        import torch
        if self._from_fp32 is None:
            self._from_fp32 = [(x, x.to(torch.float16), w.to(torch.float16)) for x, w in self.native]
        return self._from_fp32

    def sets(self, variant):
        return self.native if variant == "native" else self.from_fp32()

    def reference(self, op):
        """The eager composite in fp32 at 'highest' precision on the first input set."""
        import torch
        x, w = self.native[0]
        v = self.vec32
        with matmul_precision("ieee"), torch.no_grad():
            return composite(op)(x.float(), w.float(), *(v[k] for k in VECTORS))


def with_own_code(fn, tag: str):
    """fn with a code object of its own (named <name>_<tag>): torch.compile keeps one dynamo cache per code
    object, so two compiled copies (fp32 'ieee' and 'tf32' compile differently) never share or evict entries."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def make_callables(spec: Spec, case: Case, data: CaseData, seeds: Dict[str, dict], state: dict):
    """[(label, fn)]: the callables to time for this row; more than one for the floor (mm and addmm), the faster
    wins. fn takes one rotation item, splatted."""
    import torch
    comp = composite(case.op)
    v32, vd, v16 = data.vec32, data.vec, data.vec16
    fam, p = spec.family, spec.precision
    relu = case.op == "linear_relu"

    if fam == "cublas":
        if spec.variant == "from_fp32":
            b16 = v16["b"]
            return [("mm", lambda x32, x16, w16: torch.mm(x16, w16.t())),
                    ("addmm", lambda x32, x16, w16: torch.addmm(b16, x16, w16.t()))]
        b = vd["b"]
        return [("mm", lambda x, w: torch.mm(x, w.t())), ("addmm", lambda x, w: torch.addmm(b, x, w.t()))]

    if fam == "fusedops":
        import fusedops
        kw = {"precision": p} if case.dtype == "fp32" else {}
        b, mean, var, gamma, beta = (v32[k] for k in VECTORS)
        if relu:
            return [("", lambda x, w: fusedops.linear_relu(x, w, b, **kw))]
        return [("", lambda x, w: fusedops.linear_bn_gelu_relu(x, w, b, mean, var, gamma, beta, reference.EPS, **kw))]

    if fam == "eager":
        if spec.variant == "from_fp32":
            a = tuple(v16[k] for k in VECTORS)
            return [("", lambda x32, x16, w16: comp(x32.to(torch.float16), w16, *a))]
        a = tuple(vd[k] for k in VECTORS)
        return [("", lambda x, w: comp(x, w, *a))]

    if fam == "cublaslt":
        if spec.variant == "from_fp32":
            b16 = v16["b"]
            return [("", lambda x32, x16, w16: torch._addmm_activation(b16, x32.to(torch.float16), w16.t(),
                                                                       use_gelu=False))]
        b = vd["b"]
        return [("", lambda x, w: torch._addmm_activation(b, x, w.t(), use_gelu=False))]

    if fam == "compile":
        # the rows of one problem stay compiled side by side through the interleaved timing rounds
        compiled = torch.compile(with_own_code(comp, p), mode="max-autotune-no-cudagraphs", dynamic=False)
        a = tuple(vd[k] for k in VECTORS)
        return [("", lambda x, w: compiled(x, w, *a))]

    if fam == "seed":
        entry = seeds[case.op]
        if entry["wrapper"] is None:
            raise RuntimeError(entry["error"] or "seed code not loaded")
        fn = entry["wrapper"]
        if case.op == "linear_bn_gelu_relu":
            bn = types.SimpleNamespace(running_mean=v32["mean"], running_var=v32["var"], weight=v32["gamma"],
                                       bias=v32["beta"], eps=reference.EPS)
            b32 = v32["b"]
            return [("", lambda x, w: fn(x, types.SimpleNamespace(weight=w, bias=b32), bn))]
        b = vd["b"]  # ModelNew keeps the bias as a parameter of the model's dtype
        return [("", lambda x, w: fn(x, w, b))]

    raise ValueError(f"unknown family {fam}")


def base_row(case: Case, spec: Spec) -> dict:
    """The fields every result row has: which case, which contender, and (until timed) no time."""
    return dict(problem=case.problem, op=case.op, dtype=case.dtype, M=case.M, N=case.N, K=case.K,
                contender=spec.name, family=spec.family, precision=spec.precision, variant=spec.variant,
                flops=case.flops, median_ms=None)


def prepare_contender(spec: Spec, case: Case, data: CaseData, ref, seeds, state) -> tuple:
    """(row, callables): the row with its correctness check filled in, and its callables after one untimed call
    each (compile / autotune happen there). callables is empty where the contender raised."""
    import torch
    row = dict(base_row(case, spec), rel_err=None, tol=None, check="", note="", error=None, timing=None,
               alternatives=None, compile_s=None, n_inputs=len(data.native))
    try:
        with matmul_precision(spec.precision), torch.no_grad():
            callables = make_callables(spec, case, data, seeds, state)
            sets = data.sets(spec.variant)
            for label, fn in callables:
                t0 = time.perf_counter()
                out = fn(*sets[0])
                torch.cuda.synchronize()
                first_s = time.perf_counter() - t0
                if spec.family == "compile":
                    row["compile_s"] = first_s
                    row["note"] = f"compile+autotune {first_s:.0f} s"
                if spec.family != "cublas" and label == callables[0][0]:
                    err = reference.rel_err(out, ref)
                    tol = TOLERANCE[spec.precision]
                    row["rel_err"], row["tol"] = err, tol
                    row["check"] = "ok" if (math.isfinite(err) and err <= tol) else "FAIL"
                    if tuple(out.shape) != tuple(ref.shape):
                        row["note"] = f"output shape {tuple(out.shape)} != {tuple(ref.shape)}"
                del out
        return row, callables
    except Exception as e:  # noqa: BLE001 - record, never abort
        record_error(row, e)
        return row, []


def record_error(row, e):
    import torch
    msg = f"{type(e).__name__}: {e}"
    row["error"] = msg[:4000]
    row["traceback"] = traceback.format_exc()[-4000:]
    row["check"] = "ERROR"
    if isinstance(e, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()


def time_contenders(prepared, specs: Sequence[Spec], data: CaseData, timing_kw, rounds: int):
    """Times every prepared contender of one case in `rounds` interleaved rounds (A B C, B C A, ...), each round
    with 1/rounds of the per-contender budget, and pools the per-call times: a contender timed while the GPU
    sat at a lower clock (power limit, thermal) no longer owes its row to where it fell in the order."""
    import statistics
    import torch
    from bench.timing import Timing, round_order, time_cuda
    kw = dict(timing_kw)
    if rounds > 1:
        kw["reps"] = max(1, math.ceil(kw["reps"] / rounds))
        kw["min_reps"] = max(1, math.ceil(kw["min_reps"] / rounds))
        if kw.get("budget_ms") is not None:
            kw["budget_ms"] = kw["budget_ms"] / rounds
    pooled = [{label: [] for label, _ in callables} for _, callables in prepared]
    after_idle = [{label: 0 for label, _ in callables} for _, callables in prepared]
    last = [{} for _ in prepared]
    for r in range(rounds):
        for i in round_order(len(prepared), r):
            (row, callables), spec = prepared[i], specs[i]
            if row["error"]:
                continue
            try:
                with matmul_precision(spec.precision), torch.no_grad():
                    for label, fn in callables:
                        t = time_cuda(fn, rotate_inputs=data.sets(spec.variant), **kw)
                        pooled[i][label].extend(t.times_ms)
                        after_idle[i][label] += t.calls_after_idle
                        last[i][label] = t
            except Exception as e:  # noqa: BLE001
                record_error(row, e)
    for i, (row, callables) in enumerate(prepared):
        if row["error"] or not callables:
            continue
        medians = {label: statistics.median(times) for label, times in pooled[i].items()}
        best = min(medians, key=medians.get)
        t = last[i][best]
        timing = Timing.from_times(pooled[i][best], warmup=t.warmup, n_inputs=t.n_inputs,
                                   host_ms_per_call=t.host_ms_per_call, hid_host_overhead=t.hid_host_overhead,
                                   calls_after_idle=after_idle[i][best])
        row["median_ms"] = timing.median_ms
        row["timing"] = dict(timing.as_dict(), rounds=rounds)
        if len(callables) > 1:
            alts = {(label or row["family"]): m for label, m in medians.items()}
            row["alternatives"] = alts
            row["note"] = f"{best} (" + ", ".join(f"{k} {v:.4f}" for k, v in alts.items()) + ")"


def run_case_contenders(case: Case, specs: Sequence[Spec], data: CaseData, ref, seeds, state, timing_kw,
                        rounds: int, progress=None) -> List[dict]:
    """Every contender of one case: untimed first calls and checks, then interleaved timing rounds."""
    prepared = []
    compiles = any(spec.family == "compile" for spec in specs)
    try:
        if compiles:
            import torch._dynamo
            torch._dynamo.reset()  # nothing compiled for an earlier problem is reused or kept
            for knob in ("recompile_limit", "cache_size_limit"):
                if hasattr(torch._dynamo.config, knob):
                    setattr(torch._dynamo.config, knob, 1024)
        for spec in specs:
            if progress:
                progress.set(f"{case.label}: {spec.name} (first call)")
            prepared.append(prepare_contender(spec, case, data, ref, seeds, state))
        if progress:
            progress.set(f"{case.label}: timing {len(specs)} contenders x {rounds} rounds")
        time_contenders(prepared, specs, data, timing_kw, rounds)
    finally:
        if compiles:
            try:
                import torch._dynamo
                torch._dynamo.reset()
            except Exception:  # noqa: BLE001
                pass
    return [row for row, _ in prepared]


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
    p.add_argument("--seeds", default=None, help="seed document folder (default: <repo>/shared/seeds, then "
                   "<repo>/../shared/seeds)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (same as --compile none)")
    p.add_argument("--compile", choices=COMPILE_SCOPES, default=None, dest="compile_scope",
                   help="where to time torch.compile: none, seed-fp16 (seed problems, fp16 input), seed-half (seed "
                   "problems, fp16 and bf16 inputs), seed (seed "
                   "problems, all dtypes), all (default: seed-fp16 with --quick, else all)")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES),
                   help="contender families to run (cublas is the floor for 'x floor')")
    p.add_argument("--ms", nargs="+", type=int, default=None, help="sweep M values (override)")
    p.add_argument("--nk", nargs="+", type=parse_nk, default=None, help="sweep (N, K) pairs as NxK (override)")
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

    cases = build_cases(quick=args.quick, ops=args.ops, dtypes=args.dtypes, ms=args.ms, nks=args.nk,
                        seed_problems=not args.no_seed_problems, sweep=not args.seed_problems_only)
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
