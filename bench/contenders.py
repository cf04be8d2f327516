"""Running a case on the GPU: its input sets, each contender's callables and correctness check, and the interleaved
timing rounds."""
import contextlib
import math
import time
import traceback
import types
import zlib
from typing import Dict, List, Sequence

from bench.cases import Case, Spec
from fusedops import reference

# Relative-error bound of any contender against the fp32 'highest' composite, per precision class of a row.
TOLERANCE = {cls: reference.TOLERANCE[name].contender
             for cls, name in (("ieee", "fp32_ieee"), ("tf32", "fp32_tf32"), ("fp16", "fp16"), ("bf16", "bf16"))}
VECTORS = ("b", "mean", "var", "gamma", "beta")  # the epilogue vectors, in the composite's argument order
INPUT_BUDGET_BYTES = 8 << 30


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
        b, mean, var, gamma, beta = (vd[k] for k in VECTORS)  # a model's vectors, in its dtype (as eager's)
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
