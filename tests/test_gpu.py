"""The AOT kernels on a real GPU, against an fp64 reference. Marked `gpu`; skipped without one.

Run the whole file a second time with FUSEDOPS_FORCE_ARCH=89 to execute the sm_89 kernels (from
their PTX) on a newer GPU.
"""
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedops
from fusedops.reference import TOLERANCE, make_problem, precision_name, reference, rel_err, run_fused

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aot import spec  # noqa: E402

pytestmark = pytest.mark.gpu
OPS = ["linear_relu", "linear_bn_gelu_relu"]
FORCED_ARCH = os.environ.get("FUSEDOPS_FORCE_ARCH")
TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

CASES = [(torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float32, "fp16"),
         (torch.float16, None), (torch.bfloat16, None)]


def poison_allocator(numel, dtype):
    """Leave NaNs in the caching allocator's free blocks, so an output element the kernel fails to
    write shows up as NaN instead of a stale plausible value."""
    for size in (numel, numel * 2):
        torch.full((max(size, 1),), float("nan"), dtype=dtype, device="cuda")
    torch.cuda.synchronize()


def check(op, p, dtype, precision, eps=1e-5):
    kw = {} if precision is None else {"precision": precision}
    ref = reference(op, p, eps)
    poison_allocator(ref.numel(), dtype)
    out = run_fused(op, p, eps, **kw)
    torch.cuda.synchronize()
    assert out.shape == ref.shape and out.dtype == dtype and out.device == p["x"].device
    assert not out.isnan().any(), "unwritten (poisoned) or NaN output elements"
    norm_tol, max_tol, _ = TOLERANCE[precision_name(dtype, precision)]
    if ref.numel() and ref.abs().max() > 0:
        assert rel_err(out, ref) < norm_tol
        worst = ((out.double() - ref).abs().max() / ref.abs().max()).item()
        assert worst < max_tol, f"max error {worst:.2e} of max |ref|"
    else:
        assert out.eq(0).all()
    return out


def odd_shapes():
    return [((1,), 1, 1), ((1,), 64, 64), ((3,), 17, 5), ((17,), 33, 100), ((100,), 130, 96),
            ((257,), 10, 1000), ((2, 3, 5), 48, 64), ((64,), 256, 4096 + 8), ((300,), 512, 512),
            ((1000,), 96, 15),
            # 16-aligned N and K but ragged M/N tiles, in the big-M bucket (persistent TMA and Gluon kernels on sm_90)
            ((1000,), 272, 528), ((777,), 1040, 1024)]


@pytest.mark.parametrize("dtype,precision", CASES, ids=lambda c: str(c).replace("torch.", ""))
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("m_shape,n,k", odd_shapes())
def test_odd_shapes_against_fp64(op, dtype, precision, m_shape, n, k):
    p = make_problem(m_shape, n, k, dtype, device="cuda", seed=hash((m_shape, n, k)) % 997)
    check(op, p, dtype, precision)


@pytest.mark.parametrize("dtype,precision", CASES, ids=lambda c: str(c).replace("torch.", ""))
@pytest.mark.parametrize("op", OPS)
def test_aligned_and_generic_layouts(op, dtype, precision):
    """Contiguous 16-aligned inputs take the 'aligned' variants; strided / offset views the generic ones."""
    p = make_problem((256,), 128, 256, dtype, device="cuda", seed=5)
    check(op, p, dtype, precision)
    assert "__aligned__" in torch.ops.fusedops._last_launch()
    q = dict(p)
    q["x"] = p["x"].t().contiguous().t()  # column-major x
    q["weight"] = p["weight"].t().contiguous().t()  # weight with stride (1, N)
    check(op, q, dtype, precision)
    assert "__generic__" in torch.ops.fusedops._last_launch()
    r = dict(p)
    r["x"] = torch.empty(256 * 256 + 1, dtype=dtype, device="cuda")[1:].view(256, 256).copy_(p["x"])  # 2-byte offset
    check(op, r, dtype, precision)
    assert "__generic__" in torch.ops.fusedops._last_launch()


@functools.cache
def manifest():
    return fusedops.build_info()["manifest"]


def dispatch_arch():
    """The arch whose kernels the library runs on this GPU (FUSEDOPS_FORCE_ARCH included)."""
    major, minor = torch.cuda.get_device_capability()
    return torch.ops.fusedops._arch_for_capability(major * 10 + minor)


def output_tiles(m, n, config):
    return -(-m // config["BLOCK_M"]) * -(-n // config["BLOCK_N"])


def call_dtype_and_precision(precision_name):
    """A manifest precision name (aot/spec.py PRECISIONS) -> the input dtype and the op's `precision` argument."""
    elem, dot, _ = spec.PRECISIONS[precision_name]
    return TORCH_DTYPES[elem], (None if dot == "native" else dot)


def expected_variant(op, precision, layout, m, n, k):
    """The variant the library's rule matcher (the one dispatch uses) names for this call on this GPU."""
    return fusedops._ops._selected_variant(op, precision, layout, m, n, k)


@pytest.mark.parametrize("dtype,precision,name", [(torch.float32, "tf32", "fp32_tf32"),
                                                  (torch.float32, "fp16", "fp32_fp16"),
                                                  (torch.float16, None, "fp16")], ids=["tf32", "fp32_fp16", "fp16"])
@pytest.mark.parametrize("op", OPS)
def test_every_size_bucket_runs_its_table_variant(op, dtype, precision, name):
    """Three calls (M 16, 300, 2100 at N 272) that land in different rules of the tables (sm_90: skinny, few
    output tiles, big; tiled, persistent TMA, split-epilogue and fp16-weight variants alike), each checked against
    fp64 and against the variant the rules name. The weight is a row-strided view (16-aligned rows, not
    contiguous): variants that round it to fp16 copy it first."""
    n, k = 272, 512
    for m in (16, 300, 2100):
        p = make_problem((m,), n, k, dtype, device="cuda", seed=m)
        wide = torch.zeros(n, k + 16, dtype=dtype, device="cuda")
        wide[:, :k] = p["weight"]
        p["weight"] = wide[:, :k]
        check(op, p, dtype, precision)
        want = expected_variant(op, name, "aligned", m, n, k)
        assert torch.ops.fusedops._last_launch().startswith(want["name"] + " "), (m, want["name"])
        c = want["config"]
        tiles = output_tiles(m, n, c)
        if spec.KERNELS[want["kernel"]]["persistent"]:  # one program per SM, never more than tiles
            sms = torch.cuda.get_device_properties(0).multi_processor_count
            assert launched_grid() == min(tiles, sms), launched_grid()
        else:
            assert launched_grid() == tiles * c.get("SPLIT_K", 1)


@pytest.mark.parametrize("op", OPS)
def test_dispatch_follows_forced_arch_and_uses_the_right_binary(op):
    p = make_problem((32,), 64, 64, torch.float16, device="cuda")
    run_fused(op, p)
    launched = torch.ops.fusedops._last_launch()
    if FORCED_ARCH:
        assert f"__sm{FORCED_ARCH}__" in launched and "(ptx, grid " in launched, launched
    else:
        assert f"__sm{dispatch_arch()}__" in launched and "(cubin, grid " in launched, launched


def launched_grid():
    return int(torch.ops.fusedops._last_launch().rsplit("grid ", 1)[1].rstrip(")"))


# ragged M, 16-aligned N and K (the aligned layout), spanning every bound the tables use (M 64 / 256 / 512 / 1024,
# N 1024 / 1280 / 4096, K 1024 / 4096)
RULE_PROBE_SHAPES = [(m, n, k) for m in (5, 61, 200, 300, 1000, 2100) for n in (272, 1024, 1296, 2064, 4112)
                     for k in (512, 1040, 4112)]


@pytest.mark.parametrize("op", OPS)
def test_every_table_variant_runs_right(op):
    """Every aligned variant the tables route a call of op to on this GPU, reached through a call of its rule's
    bounds, against fp64 and the variant the rules name: a config only the tuner has run (a new knob such as
    VECTORS_FIRST, a bucket of its own) is checked here before any bench relies on it."""
    arch = dispatch_arch()
    wanted = {manifest()["variants"][r["variant"]]["name"]: r["precision"] for r in manifest()["rules"]
              if (r["arch"], r["op"], r["layout"]) == (arch, op, "aligned")}
    reached = {}
    for precision_key in sorted(set(wanted.values())):
        for m, n, k in RULE_PROBE_SHAPES:
            v = expected_variant(op, precision_key, "aligned", m, n, k)
            reached.setdefault(v["name"], (precision_key, m, n, k))
    assert set(wanted) <= set(reached), f"no probe shape reaches {sorted(set(wanted) - set(reached))}"
    for name, (precision_key, m, n, k) in sorted(reached.items()):
        dtype, precision = call_dtype_and_precision(precision_key)
        p = make_problem((m,), n, k, dtype, device="cuda", seed=m + n + k)
        check(op, p, dtype, precision)
        assert torch.ops.fusedops._last_launch().startswith(name + " "), (name, torch.ops.fusedops._last_launch())


def split_k_calls(op):
    """(variant, precision name, dtype, precision, m, n, k) for each split-K variant that an aligned call of op goes
    to on this GPU: a K that splits unevenly and one shorter than the splits (empty slices), where a call in its
    rule's bounds reaches it (an earlier rule may hold some of them: the first shape that reaches it is taken)."""
    arch = dispatch_arch()
    for rule in manifest()["rules"]:
        v = manifest()["variants"][rule["variant"]]
        if (rule["arch"], rule["op"], rule["layout"]) != (arch, op, "aligned") or v["config"].get("SPLIT_K", 1) == 1:
            continue
        dtype, precision = call_dtype_and_precision(rule["precision"])
        m = min(rule["max_m"], 300) if rule["max_m"] > 0 else 300
        for k in (1040, 48):
            for n in (272, 1040, 2064):
                if rule["max_n"] < 0 or n <= rule["max_n"]:
                    if expected_variant(op, rule["precision"], "aligned", m, n, k)["name"] == v["name"]:
                        yield v, rule["precision"], dtype, precision, m, n, k
                        break


@pytest.mark.parametrize("op", OPS)
def test_split_k_variants_are_right_and_deterministic(op):
    """Each split-K call against fp64, its grid (tiles x SPLIT_K), and bit-identical repeats (the partial sums are
    added in split order whoever arrives last; a repeat also fails if a launch left a tile counter non-zero)."""
    calls = list(split_k_calls(op))
    if not calls:
        pytest.skip(f"the sm_{dispatch_arch()} tables route no {op} shape to a split-K variant")
    for v, _, dtype, precision, m, n, k in calls:
        p = make_problem((m,), n, k, dtype, device="cuda", seed=k)
        out = check(op, p, dtype, precision)
        assert torch.ops.fusedops._last_launch().startswith(v["name"] + " "), v["name"]
        c = v["config"]
        assert launched_grid() == output_tiles(m, n, c) * c["SPLIT_K"]
        kw = {} if precision is None else {"precision": precision}
        for _ in range(3):
            assert torch.equal(run_fused(op, p, **kw), out), "split-K result changed between identical calls"


@pytest.mark.parametrize("op", OPS)
def test_split_k_counters_across_streams_and_cuda_graphs(op):
    """The launcher zeroes a stream's split-K tile counters once and each launch leaves them zero: calls with fewer
    and more tiles alternate on a side stream; a captured CUDA graph (given its own zeroed counters) replays three
    times; eager calls follow on the stream the graph was captured on. Every result against the first eager one."""
    calls = list(split_k_calls(op))
    if not calls:
        pytest.skip(f"the sm_{dispatch_arch()} tables route no {op} shape to a split-K variant")
    v, precision_name, dtype, precision, m, n, k = calls[0]
    kw = {} if precision is None else {"precision": precision}
    # a shape with fewer tiles that the same variant takes
    fm, fn = next((fm, fn) for fm, fn in ((m, n // 32 * 16), (m // 2, n), (m // 4, n))
                  if output_tiles(fm, fn, v["config"]) < output_tiles(m, n, v["config"])
                  and expected_variant(op, precision_name, "aligned", fm, fn, k)["name"] == v["name"])
    more = make_problem((m,), n, k, dtype, device="cuda", seed=1)
    fewer = make_problem((fm,), fn, k, dtype, device="cuda", seed=2)
    want_more, want_fewer = check(op, more, dtype, precision), check(op, fewer, dtype, precision)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            got_more, got_fewer = run_fused(op, more, **kw), run_fused(op, fewer, **kw)
            assert torch.ops.fusedops._last_launch().startswith(v["name"] + " "), v["name"]
            assert torch.equal(got_more, want_more) and torch.equal(got_fewer, want_fewer)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            captured = run_fused(op, more, **kw)
        for _ in range(3):
            captured.zero_()
            graph.replay()
            assert torch.equal(captured, want_more), "split-K result changed under CUDA graph replay"
            assert torch.equal(run_fused(op, fewer, **kw), want_fewer)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


@pytest.mark.parametrize("op", OPS)
def test_optional_vectors_and_half_vectors(op):
    p = make_problem((70,), 40, 48, torch.float16, device="cuda", bias=False, bn_affine=False,
                     vec_dtype=torch.float16)
    check(op, p, torch.float16, None)


def test_eps_and_zero_variance():
    p = make_problem((33,), 24, 40, torch.float32, device="cuda")
    p["running_var"] = torch.zeros_like(p["running_var"])
    for eps in (1e-5, 1e-1):
        check("linear_bn_gelu_relu", p, torch.float32, "ieee", eps=eps)


EPILOGUE_SPECIAL_VALUES = (float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-30, -1e-30, 3e38, -3e38)


@pytest.mark.parametrize("dtype,precision", CASES, ids=lambda c: str(c).replace("torch.", ""))
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("m,n", [(1, 1024), (100, 1024), (100, 4096), (2048, 4096)])
def test_epilogue_value_by_value_and_special_values(op, dtype, precision, m, n):
    """A zero weight makes every output element the epilogue of its column's bias alone (BatchNorm set to the
    identity), so the epilogue arithmetic (the GELU tail polynomial included) is checked value by value over
    [-12, 12], and at NaN, +-inf, +-0, tiny and huge values, in the variant the tables name for each call (checked;
    on sm_90 these shapes reach split-K, unsplit tiled and persistent TMA / Gluon kernels wherever a precision's
    table has them). fp32 outputs: within 1e-6 relative of fp64 (4.2e-7 was the worst seen on the H100); half outputs:
    within one unit in the last place of the rounded fp64 value (their polynomials are shorter). NaN where torch gives
    NaN, +0 for negative values."""
    k = 64
    grid = torch.linspace(-12, 12, n - len(EPILOGUE_SPECIAL_VALUES), dtype=torch.float64)
    pre = torch.cat([torch.tensor(EPILOGUE_SPECIAL_VALUES, dtype=torch.float64), grid]).float().double()
    p = make_problem((m,), n, k, dtype, device="cuda")
    p["weight"].zero_()
    p.update(bias=pre.float().cuda(), running_mean=torch.zeros(n, device="cuda"),
             running_var=torch.ones(n, device="cuda"), bn_weight=torch.ones(n, device="cuda"),
             bn_bias=torch.zeros(n, device="cuda"))
    want = torch.relu(pre) if op == "linear_relu" else torch.relu(torch.nn.functional.gelu(pre))
    out = run_fused(op, p, 0.0, **({} if precision is None else {"precision": precision}))
    variant = expected_variant(op, precision_name(dtype, precision), "aligned", m, n, k)["name"]
    assert torch.ops.fusedops._last_launch().startswith(variant + " "), (variant, torch.ops.fusedops._last_launch())
    out = out.double().cpu()
    assert torch.equal(out.isnan(), want.isnan().expand_as(out)), "NaN where torch has none, or none where it has"
    negative = (pre < 0) & ~want.isnan()
    assert not torch.signbit(out[:, negative]).any(), "negative values must give +0, as torch.relu does"
    if dtype == torch.float32:
        torch.testing.assert_close(out, want.expand_as(out), rtol=1e-6, atol=0, equal_nan=True)
    else:
        rounded = want.to(dtype).double()
        finfo = torch.finfo(dtype)
        _, exponent = torch.frexp(rounded)  # rounded = mantissa * 2^exponent, mantissa in [0.5, 1)
        ulp = torch.ldexp(torch.full_like(rounded, finfo.eps), exponent - 1).clamp(min=finfo.tiny * finfo.eps)
        ulp[rounded == 0] = finfo.tiny * finfo.eps  # (frexp gives zero the exponent 0)
        infinite, finite = rounded.isinf(), rounded.isfinite()
        assert torch.equal(out[:, infinite], rounded[infinite].expand(m, -1))
        off = (out[:, finite] - rounded[finite]).abs() / ulp[finite]
        assert off.max() <= 1, f"{off.max().item():.2f} ulp from the rounded fp64 value"


@pytest.mark.parametrize("op", OPS)
def test_ieee_takes_cublas_gemm_only_while_torch_keeps_it_fp32(op):
    """fp32 'ieee' rules run cuBLAS's GEMM, then the epilogue kernel in place. With TF32 on in torch, at::mm would run
    TF32, so an explicit precision="ieee" must take an FMA kernel instead: both held to the ieee tolerance (TF32's
    ~1e-3 fails it) and checked to run the variant dispatch should pick."""
    m, n, k = 300, 272, 1040
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for allow_tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = allow_tf32
            p = make_problem((m,), n, k, torch.float32, device="cuda", seed=7)
            check(op, p, torch.float32, "ieee")
            want = expected_variant(op, "fp32_ieee", "aligned", m, n, k)
            launched = torch.ops.fusedops._last_launch()
            assert launched.startswith(want["name"] + " "), (want["name"], launched)
            assert spec.KERNELS[want["kernel"]]["cublas_gemm"] == (not allow_tf32), want["name"]
            assert ("after cuBLAS's GEMM" in launched) == (not allow_tf32), launched
            assert launched_grid() == output_tiles(m, n, want["config"])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def test_precision_auto_follows_torch_setting():
    p = make_problem((64,), 64, 64, torch.float32, device="cuda")
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        run_fused("linear_relu", p)
        assert "__fp32_ieee__" in torch.ops.fusedops._last_launch()
        torch.backends.cuda.matmul.allow_tf32 = True
        run_fused("linear_relu", p)
        assert "__fp32_tf32__" in torch.ops.fusedops._last_launch()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    run_fused("linear_relu", p, precision="fp16")
    assert "__fp32_fp16__" in torch.ops.fusedops._last_launch()


@pytest.mark.parametrize("op", OPS)
def test_empty_inputs(op):
    for m_shape, n, k in [((0,), 16, 16), ((4,), 16, 0), ((3, 0), 8, 8)]:
        p = make_problem(m_shape, n, k, torch.float16, device="cuda")
        out = run_fused(op, p)
        assert out.shape == (*m_shape, n)
        torch.testing.assert_close(out, reference(op, p, dtype=torch.float32).half())


@pytest.mark.parametrize("op,m,k,n", [("linear_bn_gelu_relu", 16384, 4096, 4096), ("linear_relu", 1024, 8192, 8192)],
                         ids=["problem41", "problem76"])
@pytest.mark.parametrize("dtype,precision", CASES, ids=lambda c: str(c).replace("torch.", ""))
def test_seed_problem_shapes(op, m, k, n, dtype, precision):
    p = make_problem((m,), n, k, dtype, device="cuda", seed=41)
    check(op, p, dtype, precision)


def test_runs_on_the_current_stream():
    """The kernel must wait for work queued before it on the caller's stream."""
    p = make_problem((512,), 256, 512, torch.float16, device="cuda")
    expected = run_fused("linear_relu", p)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # ~25 ms of busy work ahead of us on `side`
        x = p["x"] * 1  # written only after the sleep
        out = fusedops.linear_relu(x, p["weight"], p["bias"])
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(out, expected)


def test_cuda_graph_capture_and_replay():
    p = make_problem((128,), 96, 160, torch.bfloat16, device="cuda")
    static_x = p["x"].clone()
    args = (p["weight"], p["bias"], p["running_mean"], p["running_var"], p["bn_weight"], p["bn_bias"], 1e-5)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fusedops.linear_bn_gelu_relu(static_x, *args)  # warm-up: loads the module outside capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fusedops.linear_bn_gelu_relu(static_x, *args)
    for seed in range(3):
        new_x = torch.randn(static_x.shape, generator=torch.Generator().manual_seed(seed)).to("cuda", torch.bfloat16)
        static_x.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(static_out, fusedops.linear_bn_gelu_relu(new_x, *args))


def test_device_mismatch_is_an_error():
    p = make_problem((4,), 8, 8, torch.float16, device="cuda")
    with pytest.raises(RuntimeError, match="'bias' is on cpu but x is on cuda"):
        torch.ops.fusedops.linear_relu(p["x"], p["weight"], p["bias"].cpu())
    with pytest.raises(RuntimeError, match="'weight' is on cpu but x is on cuda"):
        torch.ops.fusedops.linear_relu(p["x"], p["weight"].cpu(), None)


def test_modules_on_gpu():
    torch.manual_seed(0)
    m = fusedops.nn.LinearBNGeluReLU(64, 32).cuda().half()
    m.train()
    m(torch.randn(16, 64, device="cuda", dtype=torch.half))  # move the running stats
    m.eval()
    x = torch.randn(8, 64, device="cuda", dtype=torch.half)
    bn = m.batch_norm
    ref = torch.relu(torch.nn.functional.gelu(bn(m.gemm(x.float().half()))))
    torch.testing.assert_close(m(x), ref, atol=2e-3, rtol=2e-3)


@pytest.mark.skipif(shutil.which("compute-sanitizer") is None, reason="compute-sanitizer not on PATH")
def test_compute_sanitizer_memcheck_odd_shapes():
    script = Path(__file__).with_name("gpu_sweep.py")
    proc = subprocess.run(["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "3",
                           sys.executable, str(script)], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1"))
    tail = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert "ERROR SUMMARY: 0 errors" in proc.stdout + proc.stderr, tail
    assert "sweep ok" in proc.stdout, tail
