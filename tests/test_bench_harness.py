"""CPU-only checks of the benchmark harness's pure-Python pieces (bench/): seed code extraction and loading,
problem and contender planning, the floor ratio, tables, JSON, plot fallback, rotation sizing. No GPU needed."""
import json
import math

import pytest

from bench import bench as B
from bench import cases as C
from bench import contenders as K
from bench import report as R
from bench import rules as rule_learning
from bench import seeds as S
from bench import timing as T

SEED_DIR = S.find_seed_dir()


def test_extract_current_code_takes_the_block_after_the_marker():
    text = ("intro\n```python\nBEFORE = 1\n```\n[CURRENT CODE]\n```python\nimport torch\nX = 2\n```\n"
            "later\n```python\n# <optimized Triton code>\n```\n")
    code = S.extract_current_code(text)
    assert code == "import torch\nX = 2\n"
    with pytest.raises(ValueError):
        S.extract_current_code("```python\nX = 1\n```")
    with pytest.raises(ValueError):
        S.extract_current_code("[CURRENT CODE]\nno block here")


@pytest.mark.skipif(SEED_DIR is None, reason="seed documents (shared/seeds) not found")
@pytest.mark.parametrize("op", C.OPS)
def test_seed_documents_extract_and_exec(op):
    pytest.importorskip("triton")
    prefix, wrapper = S.SEED_FILES[op]
    path = S.seed_file(SEED_DIR, prefix)
    assert path is not None
    code = S.extract_current_code(path.read_text())
    assert f"def {wrapper}(" in code and "@triton.jit" in code and "<optimized Triton code>" not in code
    mod = S.load_seed_module(path)
    assert callable(getattr(mod, wrapper))
    kernel = getattr(mod, wrapper + "_kernel")
    # @triton.autotune over @triton.jit; the JIT function found its source through linecache.
    jit = getattr(kernel, "fn", kernel)
    assert "tl.dot" in jit.src
    seeds = S.load_seeds(SEED_DIR)
    assert seeds[op]["wrapper"] is not None and seeds[op]["error"] is None and len(seeds[op]["sha256"]) == 64


def test_load_seeds_without_a_folder_reports():
    seeds = S.load_seeds(None)
    assert set(seeds) == set(C.OPS)
    assert all(e["wrapper"] is None and "not found" in e["error"] for e in seeds.values())


def test_build_cases():
    quick = C.build_cases(quick=True)
    keys = [(c.op, c.dtype, c.M, c.N, c.K) for c in quick]
    assert len(keys) == len(set(keys)) == 11  # 6 seed problem rows + 6 sweep points, one shared
    assert [c.problem for c in quick[:6]] == ["problem 41"] * 3 + ["problem 76"] * 3
    assert ("linear_bn_gelu_relu", "fp16", 16384, 4096, 4096) in keys
    full = C.build_cases(quick=False)
    assert len(full) == 2 * 3 * 7 * 4  # the seed problems are sweep points
    assert sum(c.problem is not None for c in full) == 6
    only = C.build_cases(quick=False, ops=["linear_relu"], dtypes=["bf16"], seed_problems=False, ms=[1, 2],
                         nks=[(64, 32)])
    assert [(c.op, c.dtype, c.M, c.N, c.K) for c in only] == [("linear_relu", "bf16", 1, 64, 32),
                                                               ("linear_relu", "bf16", 2, 64, 32)]


def test_plan_contenders():
    fp32_relu = C.Case("linear_relu", "fp32", 1024, 8192, 8192, "problem 76")
    specs = C.plan_contenders(fp32_relu, compile_scope="seed", seed_label="seed 001")
    names = [s.name for s in specs]
    assert names[:3] == ["cublas[ieee]", "cublas[tf32]", "cublas[fp16]"]
    for n in ("fusedops[ieee]", "fusedops[tf32]", "fusedops[fp16]", "eager[fp16]", "cublasLt+relu[tf32]",
              "compile[ieee]", "compile[tf32]", "seed 001"):
        assert n in names
    assert {s.precision for s in specs if s.family == "seed"} == {"tf32"}
    half_bn = C.Case("linear_bn_gelu_relu", "bf16", 16, 4096, 4096)
    specs = C.plan_contenders(half_bn, compile_scope="seed-fp16", seed_label="seed 000")
    assert [s.name for s in specs] == ["cublas", "fusedops", "eager", "seed 000"]
    assert specs[-1].precision == "fp16"
    assert C.plan_contenders(half_bn, families=["fusedops"], seed_label=None)[0].name == "fusedops"
    assert C.compile_applies(C.Case("linear_relu", "fp16", 1, 2, 3, "p"), "seed-fp16")
    assert not C.compile_applies(C.Case("linear_relu", "bf16", 1, 2, 3, "p"), "seed-fp16")
    assert C.compile_applies(C.Case("linear_relu", "bf16", 1, 2, 3, "p"), "seed-half")
    assert not C.compile_applies(C.Case("linear_relu", "fp32", 1, 2, 3, "p"), "seed-half")
    assert not C.compile_applies(C.Case("linear_relu", "bf16", 1, 2, 3), "seed-half")
    assert not C.compile_applies(half_bn, "seed") and C.compile_applies(half_bn, "all")


def _row(contender, family, precision, ms, dtype="bf16", problem="problem 41", check="ok"):
    return dict(problem=problem, op="linear_bn_gelu_relu", dtype=dtype, M=16384, N=4096, K=4096,
                contender=contender, family=family, precision=precision, flops=2.0 * 16384 * 4096 * 4096,
                median_ms=ms, rel_err=1e-3 if family != "cublas" else None, check=check, note="", error=None)


def test_floor_ratio_and_tables():
    rows = [_row("cublas", "cublas", "bf16", 1.0), _row("fusedops", "fusedops", "bf16", 1.05),
            _row("eager", "eager", "bf16", 2.1), _row("seed 000", "seed", "fp16", 4.0),
            _row("compile", "compile", "bf16", None, check="ERROR")]
    rows[-1]["error"] = "RuntimeError: boom\nmore"
    R.finish_case_rows(rows)
    assert rows[0]["x_floor"] == 1.0 and math.isclose(rows[1]["x_floor"], 1.05)
    assert rows[3]["floor_contender"] == "cublas" and math.isclose(rows[3]["x_floor"], 4.0)  # dtype fallback
    assert rows[4]["x_floor"] is None and rows[4]["tflops"] is None
    assert math.isclose(rows[0]["tflops"], 2.0 * 16384 * 4096 * 4096 / 1e-3 / 1e12)
    table = R.results_table(rows)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["problem", "op", "dtype"] and "x floor" in lines[0]
    assert any("fusedops" in ln and "1.05" in ln for ln in lines)
    assert any("ERROR" in ln and "RuntimeError: boom ... more" in ln for ln in lines)  # first + last line
    summary = R.seed_summary_table(rows)
    fl = [ln for ln in summary.splitlines() if "fusedops" in ln][0]
    assert "met" in fl and "2.00x" in fl  # 2.1 / 1.05 over eager
    rows[1]["median_ms"] = 1.2
    R.finish_case_rows(rows)
    assert "MISSED" in R.seed_summary_table(rows)


def test_format_table_alignment():
    out = R.format_table(["a", "bb"], [["x", 1], ["yyy", 22]], "lr", separators=[1])
    assert out.splitlines() == ["a    bb", "---  --", "x     1", "", "yyy  22"]


def test_write_json(tmp_path):
    meta = {"device": "test", "nan": float("nan")}
    res = [dict(contender="fusedops", median_ms=float("inf"), timing={"median_ms": 1.5}, alt=(1, 2))]
    path = R.write_json(tmp_path / "sub" / "r.json", meta, res)
    data = json.loads(path.read_text())
    assert data["meta"] == {"device": "test", "nan": None}
    assert data["results"][0]["median_ms"] is None and data["results"][0]["alt"] == [1, 2]
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_plot_results(tmp_path, capsys):
    rows = [dict(_row("fusedops", "fusedops", "fp16", 1.0, dtype="fp16", problem=None), M=m, tflops=float(m))
            for m in (1, 16)]  # a sweep: lines against M
    rows += [dict(_row(name, family, "fp16", 1.0, dtype="fp16"), tflops=t)  # a seed problem: bars, floor dashed
             for name, family, t in (("cublas", "cublas", 700.0), ("fusedops", "fusedops", 650.0))]
    out = R.plot_results(rows, tmp_path / "p.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert out is None and "warning: no plot" in capsys.readouterr().err
    else:
        assert out is not None and out.exists() and out.stat().st_size > 0
    assert R.plot_results([], tmp_path / "q.png") is None


def test_timing_helpers():
    assert T.rotation_count(200 << 20, l2=50 << 20) == 1
    assert T.rotation_count(8 << 20, l2=50 << 20) == 13
    assert T.rotation_count(1, l2=50 << 20) == 32
    assert T.rotation_count(1 << 30, l2=2 << 30, budget_bytes=3 << 30) == 3  # 4 wanted, 3 fit
    assert T._quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0 and T._quantile([2.0], 0.8) == 2.0
    seen = []
    calls = T._calls(lambda *a, **k: seen.append((a, k)), [(1, 2), {"z": 3}, 4])
    for c in calls:
        c()
    assert seen == [((1, 2), {}), ((), {"z": 3}), ((4,), {})]
    with pytest.raises(ValueError):
        T._calls(lambda: None, [])


def test_cli_parses():
    args = B.build_parser().parse_args(["--quick", "--ops", "linear_relu", "--dtypes", "fp16", "bf16", "--nk",
                                        "4096x1024", "--no-compile"])
    assert args.quick and args.ops == ["linear_relu"] and args.nk == [(4096, 1024)] and args.no_compile
    with pytest.raises(SystemExit):
        B.build_parser().parse_args(["--nk", "4096"])


def test_time_contenders_interleaves_rounds_and_pools(monkeypatch):
    """Rounds interleave (A B, then B A: each round starts one contender later, never A A B B); each row's median
    is over the calls of all its rounds; budgets split."""
    order, budgets = [], []

    def fake_time_cuda(fn, rotate_inputs=None, **kw):
        name = fn()
        order.append(name)
        budgets.append(kw["budget_ms"])
        times = {"a": [1.0, 5.0, 6.0], "b1": [2.0, 2.0, 2.0], "b2": [3.0, 3.0, 3.0]}[name]
        if len(order) > 3:  # the second round runs faster: the pooled median must see both rounds
            times = [t / 2 for t in times]
        return T.Timing(median_ms=sorted(times)[1], mean_ms=sum(times) / 3, min_ms=min(times), max_ms=max(times),
                        p20_ms=min(times), p80_ms=max(times), reps=3, warmup=1, n_inputs=1, host_ms_per_call=0.0,
                        hid_host_overhead=False, times_ms=list(times))

    monkeypatch.setattr(T, "time_cuda", fake_time_cuda)

    class Data:
        def sets(self, variant):
            return [()]

    specs = [C.Spec("fusedops", "fusedops", "fp16", "native"), C.Spec("cublas", "cublas", "fp16", "native")]
    rows = [dict(error=None, family=s.family) for s in specs]
    prepared = [(rows[0], [("", lambda: "a")]), (rows[1], [("mm", lambda: "b1"), ("addmm", lambda: "b2")])]
    K.time_contenders(prepared, specs, Data(), dict(warmup=1, reps=10, min_reps=2, budget_ms=100.0), rounds=2)
    assert order == ["a", "b1", "b2", "b1", "b2", "a"]
    assert budgets == [50.0] * 6
    assert rows[0]["median_ms"] == 2.75 and rows[0]["timing"]["reps"] == 6 and rows[0]["timing"]["rounds"] == 2
    assert rows[1]["median_ms"] == 1.5 and rows[1]["note"].startswith("mm ")  # mm beats addmm over both rounds


def test_tuner_rules_follow_bucket_order_and_reuse_the_table():
    """bench.tune: rules come out in bucket order with their bounds; a bucket not re-measured keeps the config the
    current table gives its first shape (first-match, max_n and max_k included)."""
    from bench import tune
    a, b, c, d, e = ({"BLOCK_M": m} for m in (16, 64, 128, 256, 32))

    def bounds(rules):
        return [(r.get("max_m"), r.get("max_n"), r.get("max_k"), r["config"]) for r in rules]

    def skinny(config, narrow=None, short=None):
        return {"skinny_narrow": narrow or config, "tiny_short": short or config, "skinny_short": short or config,
                "skinny": config}

    rules = tune.rules_for("linear_relu", {**skinny(a), "narrow_short": b, "narrow": b, "mid": c, "mid_wide": c,
                                           "short": c, "big": c})
    assert bounds(rules) == [(64, None, None, a), (1024, 1024, None, b), (None, None, None, c)]
    rules = tune.rules_for("linear_relu", {**skinny(a, narrow=e, short=d), "narrow_short": d, "narrow": b, "mid": c,
                                           "mid_wide": b, "short": e, "big": c})
    assert bounds(rules) == [(64, 1024, None, e), (64, None, 1024, d), (64, None, None, a), (256, 1024, None, d),
                             (1024, 1024, None, b), (512, 4096, None, c), (512, None, None, b), (1024, None, 1024, e),
                             (None, None, None, c)]
    rules = tune.rules_for("linear_relu", {"skinny_narrow": a, "tiny_short": e, "skinny_short": d, "skinny": a,
                                           "narrow_short": b, "narrow": b, "mid": c, "mid_wide": c, "short": c, "big": c})
    # (skinny_narrow stays although skinny has its config: tiny_short, between them, would take M 16 x N 1024 x K 512)
    assert bounds(rules)[:4] == [(64, 1024, None, a), (16, None, 1024, e), (64, None, 1024, d), (64, None, None, a)]
    # a rule whose bounds the next one's do not hold stays, even with the same config (skinny: any N; skinny_short
    # and narrow_short: neither holds the other)
    rules = tune.rules_for("linear_relu", {**skinny(b, short=d), "narrow_short": d, "narrow": b, "mid": c,
                                           "mid_wide": c, "short": c, "big": c})
    assert bounds(rules) == [(64, 1024, None, b), (64, None, 1024, d), (64, None, None, b), (256, 1024, None, d),
                             (1024, 1024, None, b), (None, None, None, c)]
    assert all(r["ops"] == ["linear_relu"] for r in rules)
    assert list(tune.BUCKETS)[-1] == "big" and tune.BUCKETS["big"][0] == {}  # ends with a catch-all
    # every bucket's shapes reach its own rule under first-match (a table with one distinct config per bucket)
    own = [({b: r.get(b) for b in tune.BOUNDS}, r["config"]["bucket"])
           for r in tune.rules_for("linear_relu", {name: {"bucket": name} for name in tune.BUCKETS})]
    for name, (_, shapes) in tune.BUCKETS.items():
        for shape in shapes:
            assert rule_learning.choice(own, shape) == name, (shape, name)
    for key, (_, _, candidates) in tune.CANDIDATES.items():  # every key has candidates for every bucket
        assert set(candidates) == set(tune.BUCKETS), key


def test_tuner_times_what_the_table_runs_now(monkeypatch):
    """A re-measured bucket's candidates include the configs the built library gives its shapes now (once each, a
    candidate that spells out a knob's default counting as the same config), so a retune cannot replace them with
    something it never compared against them."""
    from bench import tune
    a, b, c = ({"BLOCK_M": m, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}
               for m in (16, 64, 128))
    now = {(16, 4096, 4096): a, (1024, 1024, 4096): b, (2048, 1024, 4096): c, (4096, 4096, 1024): c}
    monkeypatch.setattr(tune, "current_config", lambda key, op, shape: now[shape])
    assert tune.with_incumbents([dict(a, SPLIT_K=1)], "half", "linear_relu", list(now)) == [a, b, c]
    assert tune.with_incumbents([dict(c, KERNEL="tma")], "half", "linear_relu", [(4096, 4096, 1024)]) == \
        [dict(c, KERNEL="tma"), c]


def test_table_form_is_what_the_tables_write():
    """plan.table_form (how the tuner names a built variant's config) gives back every rule's config of the shipped
    tables as written: KERNEL unless tiled, knobs only off their defaults."""
    from aot import plan, spec, tables
    for arch in spec.DEFAULT_ARCHS:
        _, table = tables.load_rules(arch)
        configs = [r["config"] for rules in table["rules"].values() for r in rules] + \
            [config for section in ("generic", "fallback") for config in table.get(section, {}).values()]
        for config in configs:
            kernel = config.get("KERNEL", "tiled")
            full = {**spec.KERNELS[kernel]["knobs"], **spec.LAUNCHER_KNOBS, **config}
            full.pop("KERNEL", None)
            assert plan.table_form(kernel, full) == config, (arch, config)


def test_tuner_run_record_keeps_every_key():
    """bench.tune's record of what measured the table: the keys of one invocation, and of a second invocation over
    the same buckets on the same day (half, then fp32_tf32), end up in one entry; other buckets start a new one."""
    from bench import tune
    base = dict(date="2026-11-21", device="H100", torch="2.11", triton="3.6", ops=["linear_relu"], buckets=["mid"])
    runs = []
    tune.record_run(runs, dict(base, keys=["half"]))
    tune.record_run(runs, dict(base, keys=["fp32_tf32"]))
    tune.record_run(runs, dict(base, keys=["fp32_tf32"]))
    assert runs == [dict(base, keys=["half", "fp32_tf32"])]
    tune.record_run(runs, dict(base, keys=["half"], buckets=["narrow"]))
    assert [r["keys"] for r in runs] == [["half", "fp32_tf32"], ["half"]] and runs[1]["buckets"] == ["narrow"]


def test_compile_rows_keep_separate_dynamo_caches():
    """Two compiled copies of the composite (one per precision row) each compile once and stay compiled when
    called alternately, as the interleaved timing rounds do; one shared code object would not keep them apart."""
    import torch

    compiles = []

    def backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    comp = K.composite("linear_relu")
    a = torch.compile(K.with_own_code(comp, "ieee"), backend=backend)
    b = torch.compile(K.with_own_code(comp, "tf32"), backend=backend)
    x, w, bias = torch.randn(4, 8), torch.randn(3, 8), torch.randn(3)
    for _ in range(2):
        for f in (a, b):
            torch.testing.assert_close(f(x, w, bias), comp(x, w, bias))
    assert len(compiles) == 2
    assert K.with_own_code(comp, "ieee").__code__ is not comp.__code__


class FakeCuda:
    """Just enough of torch.cuda for time_cuda's control flow on a machine without a GPU: a log of what was
    queued, and a synchronize that can stand in for a slow GPU."""

    def __init__(self, sync_s):
        self.log, self.sync_s = [], sync_s
        log = self.log

        class Event:
            def __init__(self, enable_timing=False):
                pass

            def record(self):
                log.append("event")

            def elapsed_time(self, other):
                return 1.0

        self.Event = Event

    def synchronize(self):
        import time
        time.sleep(self.sync_s)

    def _sleep(self, cycles):
        self.log.append("spin")


@pytest.mark.parametrize("gpu_bound", [False, True])
@pytest.mark.parametrize("settle_ms", [0.0, 200.0])
def test_time_cuda_settles_and_keeps_the_spin_kernel_where_the_host_is_slower(monkeypatch, gpu_bound, settle_ms):
    """Settle calls run untimed before the timed ones; the spin kernel before the first timed chunk is dropped
    only when the settle calls queued GPU work ahead (GPU-bound calls); host-bound calls always keep it."""
    torch = pytest.importorskip("torch")
    import time
    # GPU-bound: instant enqueues, and the warm-up's synchronize waits 100 ms (20 ms of "GPU" per call);
    # host-bound: each enqueue takes 5 ms and the synchronize returns at once
    fake = FakeCuda(sync_s=0.1 if gpu_bound else 0.0)
    call_s = 0.0 if gpu_bound else 0.005

    def call():
        fake.log.append("call")
        time.sleep(call_s)

    for name in ("Event", "synchronize", "_sleep"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name), raising=False)
    monkeypatch.setattr(T, "sleep_cycles_per_ms", lambda: 1000.0)
    t = T.time_cuda(call, warmup=5, reps=4, settle_ms=settle_ms)
    assert t.reps == 4 and t.median_ms == 1.0
    before = fake.log[:fake.log.index("event")]  # up to the first timed call
    settle_calls = before.count("call") - 6  # minus the first call and the warm-up
    if settle_ms:  # 200 ms over ~20 ms (GPU-bound) or ~5 ms (host-bound) per call
        assert settle_calls == 10 if gpu_bound else 30 <= settle_calls <= 40
    else:
        assert settle_calls == 0
    assert ("spin" in before) == (not (settle_ms and gpu_bound))  # dropped only behind a queue of GPU work


def test_time_cuda_counts_calls_that_began_on_an_idle_gpu(monkeypatch):
    """A timed call whose start event the GPU reached well after the previous call ended (the host fell behind) is
    counted; back-to-back calls (a few us between the events) are not. The median stays the calls' own time."""
    torch = pytest.importorskip("torch")
    reps, clock, made = 8, [0.0], []
    idle_before = {3: 0.05, 5: 0.2, 6: 0.002}  # timed call -> GPU idle time before its start event (ms)

    class Event:  # a GPU timeline: calls take 1 ms, start events of the calls above come after idle time
        def __init__(self, enable_timing=False):
            self.index, self.t = len(made), None
            made.append(self)

        def record(self):
            clock[0] += idle_before.get(self.index, 0.0) if self.index < reps else 0.0
            self.t = clock[0]

        def elapsed_time(self, other):
            return other.t - self.t

    def call():
        clock[0] += 1.0

    fake = FakeCuda(sync_s=0.0)
    for name, value in (("Event", Event), ("synchronize", fake.synchronize), ("_sleep", fake._sleep)):
        monkeypatch.setattr(torch.cuda, name, value, raising=False)
    monkeypatch.setattr(T, "sleep_cycles_per_ms", lambda: 1000.0)
    t = T.time_cuda(call, warmup=2, reps=reps)
    assert t.reps == reps and t.median_ms == pytest.approx(1.0)
    assert t.calls_after_idle == 2  # 0.05 and 0.2 ms; 0.002 ms is back to back


def test_sweep_targets_flag_misses_whose_calls_began_on_an_idle_gpu():
    """bench.targets notes a miss when more than 5% of its timed calls began on an idle GPU (host-bound timing)."""
    from bench import targets
    assert "30 of its 100 timed calls" in targets.idle_note({"calls_after_idle": 30, "reps": 100})
    assert targets.idle_note({"calls_after_idle": 5, "reps": 100}) == ""
    assert targets.idle_note({}) == ""  # results files from before the count


def test_sweep_targets_count_misses_and_later_files_replace_points(tmp_path):
    """bench.targets: M >= 256 misses above 1.25x the floor's time, M <= 64 above 1.5x, M in between has no
    target; a point measured again in a later file replaces the earlier measurement."""
    from bench import targets

    def row(m, x_floor):
        return dict(problem=None, op="linear_relu", dtype="fp16", precision="fp16", M=m, N=4096, K=4096,
                    contender="fusedops", family="fusedops", x_floor=x_floor, median_ms=x_floor, floor_ms=1.0)

    first = [row(16, 1.49), row(64, 1.6), row(128, 3.0), row(256, 1.24), row(1024, 1.3)]
    assert [len(v[1]) for v in targets.misses(first).values()] == [2] and targets.misses(first)[
        ("linear_relu", "fp16", "fp16")][0] == 4
    (tmp_path / "a.json").write_text(json.dumps({"results": first}))
    (tmp_path / "b.json").write_text(json.dumps({"results": [row(1024, 1.1)]}))
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        targets.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert "1 of 4 points miss" in out.getvalue() and "M    64" in out.getvalue()


def test_sweep_targets_name_a_file_that_is_not_a_results_file(tmp_path, capsys):
    from bench import targets
    (tmp_path / "other.json").write_text('{"rows": []}')
    for path in (tmp_path / "missing.json", tmp_path / "other.json"):
        with pytest.raises(SystemExit) as exit_info:
            targets.main([str(path)])
        assert exit_info.value.code == 2
        assert f"{path}: not a bench results file" in capsys.readouterr().err


def test_random_and_model_shape_sets():
    """Random shapes: reproducible by seed, another seed another set, log-uniform over the documented ranges with odd
    sizes among them (not only powers of two); model shapes: every listed layer at every batch size. build_cases
    takes either in place of the sweep's grid, after the seed problems."""
    a, b = C.random_shapes(200, seed=0), C.random_shapes(200, seed=1)
    assert a == C.random_shapes(200, seed=0) and a != b and len(a) == 200
    assert all(C.RANDOM_M[0] <= m <= C.RANDOM_M[1] and all(C.RANDOM_NK[0] <= v <= C.RANDOM_NK[1] for v in (n, k))
               for m, n, k in a)
    sizes = [v for _, n, k in a for v in (n, k)]
    assert any(v % 64 for v in sizes) and any(v % 64 == 0 for v in sizes)
    ms = sorted(m for m, _, _ in a)
    assert ms[len(ms) // 4] < 64 and ms[3 * len(ms) // 4] > 512  # spread over the decades, not bunched at the top
    assert len(C.model_shapes()) == len(C.MODEL_NK) * len(C.MODEL_M)
    cases = C.build_cases(quick=False, ops=["linear_relu"], dtypes=["fp16"], shapes=a[:5])
    assert [c.problem for c in cases[:1]] == ["problem 76"] and [(c.M, c.N, c.K) for c in cases[1:]] == a[:5]
    args = B.build_parser().parse_args(["--shapes", "random", "--shape-count", "5", "--shape-seed", "3"])
    assert (args.shapes, args.shape_count, args.shape_seed) == ("random", 5, 3)


def test_ratio_summary_over_cases():
    """Per op / dtype / precision: fusedops over the floor and over eager, median, p90 and worst with its shape, and
    the count of cases where fusedops was slower than eager."""
    rows = []
    for i, (fused, eager) in enumerate([(1.0, 2.0), (1.1, 1.0), (1.2, 3.0), (3.0, 2.0)]):
        for contender, family, ms in (("cublas", "cublas", 1.0), ("fusedops", "fusedops", fused),
                                      ("eager", "eager", eager)):
            rows.append(dict(_row(contender, family, "fp16", ms, dtype="fp16", problem=None), M=i + 1))
    for case in range(4):
        R.finish_case_rows(rows[3 * case:3 * case + 3])
    assert R.percentile([3, 1, 2, 4], 50) == 2 and R.percentile([3, 1, 2, 4], 90) == 4
    text = R.ratio_summary_table(rows)
    line = next(l for l in text.splitlines() if l.startswith("linear_bn_gelu_relu"))
    cells = line.split()
    # x floor 1.0, 1.1, 1.2, 3.0: median 1.10, p90 3.00, worst 3.00 at M 4; x eager 0.5, 1.1, 0.4, 1.5: 2 slower
    assert cells[3:6] == ["4", "1.10", "3.00"] and "3.00 (4 4096 4096)" in line
    assert cells[-1] == "2" and "1.50 (4 4096 4096)" in line


def test_every_shape_targets():
    """bench.targets' SHAPE_TARGETS over a random / models run: each figure is the statistic of time / floor over the
    rows a target covers, a miss names the worst case, and the eager line counts the cases slower than eager."""
    from bench import targets

    def row(m, n, k, x_floor, dtype="fp16", precision="fp16", family="fusedops", ms=None):
        return dict(problem=None, op="linear_relu", dtype=dtype, precision=precision, M=m, N=n, K=k,
                    contender=family, family=family, x_floor=x_floor, median_ms=ms or x_floor, floor_ms=1.0)

    rows = [row(16, 4096, 4096, 1.08), row(64, 8192, 8192, 1.2), row(64, 1024, 1024, 5.0),  # the last: N K too small
            *(row(128 + i, 2048, 2048, 1.1) for i in range(9)), row(4096, 2048, 2048, 1.29),
            row(512, 1024, 1024, 1.3, dtype="fp32"),  # fp32 in, fp16 math: within 1.25x?
            row(16, 4096, 4096, None, family="eager", ms=1.0), row(4096, 2048, 2048, None, family="eager", ms=1.5)]
    got = {name: (cases, figure, met, (worst["M"], worst["N"], worst["K"]))
           for name, op, cases, figure, limit, met, worst in targets.shape_targets(rows)}
    assert got["half, M <= 64, N K >= 4096^2: each"] == (2, 1.2, False, (64, 8192, 8192))
    assert got["half, M >= 128: 90th percentile"] == (10, 1.1, True, (4096, 2048, 2048))
    assert got["half, M >= 128: worst"] == (10, 1.29, True, (4096, 2048, 2048))
    assert got["fp32 in, fp16 math, M <= 1024: each"] == (1, 1.3, False, (512, 1024, 1024))
    assert got["never slower than eager (worst 1.08x eager)"] == (2, 1, False, (16, 4096, 4096))


def test_model_bench_stacks_and_arguments(capsys):
    """bench.models: its MLP stacks are what fuse() fuses layer by layer, and bad arguments or a missing GPU are
    clear errors."""
    import torch

    import fusedops
    from bench import models
    for batch_norm in (True, False):
        stack = models.mlp_stack(32, 3, batch_norm)
        _, report = fusedops.fuse(stack, return_report=True)
        assert len(report.fused) == 3 and not stack.training
    with pytest.raises(SystemExit):
        models.main(["--layers", "0"])
    assert "--layers must be at least 1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA GPU is visible"):
            models.main(["--layers", "1", "--width", "16", "--batch", "4"])
