"""Never crash, never hang a server: malformed calls, fresh threads, other contexts, graph capture, odd environment
settings and sizes at the edge of the kernels' int32 indexing. Where a crash or a thread's first call is the point,
the call runs in a fresh Python process, so a crash fails one test instead of ending the run."""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import bad_input_fuzz
import fusedops
from fusedops.reference import make_problem, reference, run_fused

HERE = Path(__file__).resolve().parent
OPS = ["linear_relu", "linear_bn_gelu_relu"]
gpu = pytest.mark.gpu


def run_python(code, env=None, timeout=300):
    """Runs code in a fresh interpreter (tests/ on its path); returns the finished process."""
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd=HERE, env=dict(os.environ, **(env or {})))


def assert_clean(proc):
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


# ---- malformed calls, random (CPU here; CUDA below) ----

def test_bad_input_fuzz_on_cpu():
    failures, summary = bad_input_fuzz.run("cpu", cases=240, seed=1, workers=2)
    assert not failures, json.dumps(failures[:5], indent=1)
    assert summary["raised"] == {"RuntimeError": 240}, summary


def test_fuzz_harness_reports_crashes_and_calls_that_raise_nothing():
    """The harness can fail: a worker that dies fails its case (and only that case: a new worker takes the rest), a
    call that raises nothing fails, and so does an error that names no defective argument."""
    failures, summary = bad_input_fuzz.run("cpu", cases=6, seed=1, workers=2, abort_at=3)
    assert [f["index"] for f in failures] == [3] and failures[0]["problem"].startswith("process crashed"), failures
    case = bad_input_fuzz.draw_case(1, 0)
    assert bad_input_fuzz.judge(case, None, "") == "no error raised"
    assert "names none of" in bad_input_fuzz.judge(case, "RuntimeError", "something went wrong")
    assert "not one of" in bad_input_fuzz.judge(case, "SystemError", "'x'")


@gpu
def test_bad_input_fuzz_on_cuda():
    """At least 200 malformed calls on CUDA tensors (ranks, sizes, dtypes, devices, None where a tensor goes, bad eps
    and precision), each raising a clear error that names a defective argument; none crashes a worker."""
    failures, summary = bad_input_fuzz.run("cuda", cases=240, seed=2, workers=4)
    assert not failures, json.dumps(failures[:5], indent=1)


# ---- the shape errors that crashed CUDA calls (each in a fresh process, as a first call) ----

SHAPE_ERRORS = {
    "weight 1-D": ("R(x, w[0], b)", "'weight' must be 2-D"),
    "weight 1-D, BN": ("B(x, w[0], b, v, v, v, v, 1e-5)", "'weight' must be 2-D"),
    "weight 3-D": ("R(x, w[None], b)", "'weight' must be 2-D"),
    "K mismatch": ("R(x[0, :5], w, b)", r"'weight' must be \[N, K\] with K = x.size\(-1\) = 5"),
    "bias 0-D": ("R(x, w, b[0])", "'bias' must be a 1-D tensor of size N = 32"),
    "running_mean 2-D": ("B(x, w, b, v[None], v, v, v, 1e-5)", "'running_mean' must be a 1-D tensor"),
    "running_mean None": ("B(x, w, b, None, v, v, v, 1e-5)", "'running_mean' must be a tensor; got None"),
}


@gpu
@pytest.mark.parametrize("case", list(SHAPE_ERRORS))
def test_shape_errors_on_cuda_raise_in_a_fresh_process(case):
    call, message = SHAPE_ERRORS[case]
    out = assert_clean(run_python(f"""
        import torch, fusedops
        h = torch.float16
        x = torch.randn(4, 64, device="cuda", dtype=h); w = torch.randn(32, 64, device="cuda", dtype=h)
        b = torch.randn(32, device="cuda", dtype=h); v = torch.ones(32, device="cuda", dtype=h)
        R, B = torch.ops.fusedops.linear_relu, torch.ops.fusedops.linear_bn_gelu_relu
        try:
            {call}
        except RuntimeError as e:
            print("raised:", e)
    """))
    assert "raised:" in out and re.search(message, out), out


# ---- FUSEDOPS_FORCE_ARCH ----

@gpu
@pytest.mark.parametrize("value", ["100", "0", "99999999999", "75", "sm_", "eighty-nine"])
def test_force_arch_values_that_are_no_built_arch_are_clear_errors(value):
    out = assert_clean(run_python("""
        import torch, fusedops
        x = torch.randn(4, 64, device="cuda", dtype=torch.float16)
        w = torch.randn(32, 64, device="cuda", dtype=torch.float16)
        for attempt in range(2):  # the error stays (the setting is read once)
            try:
                torch.ops.fusedops.linear_relu(x, w, None)
                print("no error", torch.ops.fusedops._last_launch())
            except RuntimeError as e:
                print("raised:", e)
    """, env={"FUSEDOPS_FORCE_ARCH": value}))
    built = ", ".join(f"sm_{a}" for a in sorted(fusedops.build_info()["manifest"]["archs"]))
    assert out.count(f"raised: fusedops: FUSEDOPS_FORCE_ARCH='{value}' is not an arch this build holds ({built})") \
        == 2, out


@gpu
def test_force_arch_accepts_the_spellings_of_a_built_arch():
    major, minor = torch.cuda.get_device_capability()
    built = [a for a in fusedops.build_info()["manifest"]["archs"] if a <= major * 10 + minor]
    arch = built[0]
    for value in (f"{arch}", f"sm_{arch}", f"{arch // 10}.{arch % 10}"):
        out = assert_clean(run_python("""
            import torch, fusedops
            x = torch.randn(4, 64, device="cuda", dtype=torch.float16)
            w = torch.randn(32, 64, device="cuda", dtype=torch.float16)
            torch.ops.fusedops.linear_relu(x, w, None)
            print(torch.ops.fusedops._last_launch())
        """, env={"FUSEDOPS_FORCE_ARCH": value}))
        assert f"__sm{arch}__" in out and "(ptx, " in out, (value, out)


# ---- threads and contexts ----

# one call per kernel family the sm_90 tables use, each on a shape its rules send there (checked below on sm_90)
FAMILY_CALLS = [("linear_relu", "float16", None, 4, 32, 64),               # tiled, split-K
                ("linear_relu", "float16", None, 200, 272, 512),           # tiled
                ("linear_relu", "float16", None, 2100, 2064, 512),         # persistent TMA
                ("linear_bn_gelu_relu", "float32", "fp16", 2100, 1024, 512),  # Gluon wgmma on an fp16 weight copy
                ("linear_bn_gelu_relu", "float32", "tf32", 4096, 4096, 1024),  # Gluon coop
                ("linear_relu", "float32", "ieee", 300, 272, 1040),        # cuBLAS's SGEMM, then the epilogue
                ("linear_bn_gelu_relu", "float16", None, 300, 272, 512)]   # cuBLAS's fp16 GEMM, then the epilogue
SM90_FAMILIES = ["split_k", "__aligned__m", "__aligned__tma_", "__aligned__wgmma_", "__aligned__coop_",
                 "after cuBLAS's GEMM", "after cuBLAS's GEMM"]

FAMILY_SETUP = f"""
    import torch, fusedops
    from fusedops.reference import make_problem, reference, rel_err, run_fused
    torch.backends.cuda.matmul.allow_tf32 = False
    CALLS = {FAMILY_CALLS!r}

    def problem(i):  # fp32 vectors: the op runs no cast kernel of torch's before its own launch
        op, dtype, precision, m, n, k = CALLS[i]
        return make_problem((m,), n, k, getattr(torch, dtype), device="cuda", seed=i)

    def run(i, p):
        op, dtype, precision, m, n, k = CALLS[i]
        return run_fused(op, p, **({{}} if precision is None else {{"precision": precision}}))

    def close_to_reference(i, p, out):
        return rel_err(out, reference(CALLS[i][0], p)) < 1e-2
"""


def assert_families_reached(out):
    """On sm_90 (no forced arch) the calls above reach every kernel family the tables use."""
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) == (9, 0) and not os.environ.get("FUSEDOPS_FORCE_ARCH"):
        launched = [line for line in out.splitlines() if line.startswith("ok ")]
        for family, line in zip(SM90_FAMILIES, launched):
            assert family in line, (family, line)


@gpu
def test_first_call_of_a_new_thread_after_another_thread_loaded_the_kernel():
    """A thread-pool server: the main thread's calls load every family's kernel; then a new thread whose first CUDA
    work is a fusedops call (no torch runtime call before it binds a context) runs each, and gets the same results."""
    out = assert_clean(run_python(FAMILY_SETUP + """
    import threading
    problems = [problem(i) for i in range(len(CALLS))]
    want, launched = [], []
    for i, p in enumerate(problems):
        want.append(run(i, p)); launched.append(torch.ops.fusedops._last_launch())
    torch.cuda.synchronize()
    results = {}

    def worker(i):
        try:
            results[i] = (run(i, problems[i]), torch.ops.fusedops._last_launch())
            torch.cuda.synchronize()
        except Exception as e:
            results[i] = e

    for i in range(len(CALLS)):
        t = threading.Thread(target=worker, args=(i,)); t.start(); t.join()
        got = results[i]
        assert not isinstance(got, Exception), (CALLS[i], got)
        assert torch.equal(got[0], want[i]) and got[1] == launched[i], (CALLS[i], got[1], launched[i])
        assert close_to_reference(i, problems[i], got[0]), CALLS[i]
        print("ok", got[1])
    """))
    assert out.count("ok ") == len(FAMILY_CALLS), out
    assert_families_reached(out)


CUDA_DRIVER_SETUP = """
    import ctypes
    cuda = ctypes.CDLL("libcuda.so.1")

    def check(result, what):
        assert result == 0, f"{what}: CUDA error {result}"

    def push_own_context(ordinal=0):
        # a context of the driver API's own (not the primary one) on device `ordinal`, made current on this thread
        ctx, dev = ctypes.c_void_p(), ctypes.c_int()
        check(cuda.cuDeviceGet(ctypes.byref(dev), ordinal), "cuDeviceGet")
        if hasattr(cuda, "cuCtxCreate_v2"):
            check(cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate_v2")
        else:
            check(cuda.cuCtxCreate_v4(ctypes.byref(ctx), None, 0, dev), "cuCtxCreate_v4")
        return ctx
"""


@gpu
def test_a_kernel_first_loaded_under_another_context_serves_the_primary_one():
    """Each family's first call runs while a context of the caller's own is current: the kernel loads into (and
    launches in) the device's primary context all the same, so later calls in torch's context use the cached kernel.
    torch's allocator is warmed first (a large and many small blocks, freed), so the calls under the other context
    take memory of the primary context's, as a server's would."""
    out = assert_clean(run_python(FAMILY_SETUP + CUDA_DRIVER_SETUP + """
    problems = [problem(i) for i in range(len(CALLS))]
    warm = [torch.empty(1 << 30, dtype=torch.uint8, device="cuda")] + [
        torch.empty(4096 * (1 + i % 64), dtype=torch.uint8, device="cuda") for i in range(512)]
    del warm
    torch.cuda.synchronize()
    ctx = push_own_context()
    first = [run(i, p) for i, p in enumerate(problems)]
    check(cuda.cuCtxSynchronize(), "cuCtxSynchronize (the other context)")
    popped = ctypes.c_void_p()
    check(cuda.cuCtxPopCurrent_v2(ctypes.byref(popped)), "cuCtxPopCurrent")
    assert popped.value == ctx.value
    torch.cuda.synchronize()
    for i, p in enumerate(problems):
        again = run(i, p)
        torch.cuda.synchronize()
        assert torch.equal(again, first[i]) and close_to_reference(i, p, again), CALLS[i]
        print("ok", torch.ops.fusedops._last_launch())
    """))
    assert out.count("ok ") == len(FAMILY_CALLS), out
    assert_families_reached(out)


# ---- CUDA graphs ----

@gpu
@pytest.mark.parametrize("mode", ["global", "thread_local", "relaxed"])
def test_first_call_made_inside_cuda_graph_capture(mode):
    """A process's first fusedops calls made during graph capture load their kernels then (the load runs in relaxed
    capture mode: it enqueues nothing), and the graph replays to the eager result."""
    out = assert_clean(run_python(FAMILY_SETUP + f"""
    indices = [0, 2, 3]  # split-K, TMA, Gluon wgmma: each kernel's first use is in the capture
    problems = {{i: problem(i) for i in indices}}
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side, capture_error_mode="{mode}"):
        captured = {{i: run(i, p) for i, p in problems.items()}}
    graph.replay()
    torch.cuda.synchronize()
    for i, p in problems.items():
        assert torch.equal(captured[i], run(i, p)) and close_to_reference(i, p, captured[i]), CALLS[i]
    print("replayed", len(captured))
    """))
    assert "replayed 3" in out, out


# ---- split-K counter buffers ----

@gpu
def test_split_k_counter_buffers_stay_bounded_over_many_streams():
    """A server that makes streams as it goes: split-K calls on 100 streams of its own keep at most 64 counter
    buffers, and every call stays right (a stream whose buffer was dropped gets a fresh one)."""
    out = assert_clean(run_python(FAMILY_SETUP + CUDA_DRIVER_SETUP + """
    p = problem(0)
    want = run(0, p)
    if "split_k" not in torch.ops.fusedops._last_launch():
        print("not split-K:", torch.ops.fusedops._last_launch())
        raise SystemExit(0)
    streams = []
    for _ in range(100):
        handle = ctypes.c_void_p()
        check(cuda.cuStreamCreate(ctypes.byref(handle), 1), "cuStreamCreate")  # non-blocking
        streams.append(torch.cuda.ExternalStream(handle.value))
    for round in range(2):
        for s in streams:
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                got = run(0, p)
            torch.cuda.current_stream().wait_stream(s)
            assert torch.equal(got, want)
            assert torch.ops.fusedops._tile_counter_buffers() <= 64
    torch.cuda.synchronize()
    print("buffers", torch.ops.fusedops._tile_counter_buffers())
    """))
    if "not split-K:" in out:
        pytest.skip(f"this GPU's tables run no split-K variant at that shape ({out.strip()})")
    assert "buffers 64" in out, out


# ---- sizes ----

@gpu
@pytest.mark.parametrize("m", [2**31 - 1, 2**31 + 5, 2**31 - 4096 + 1])
def test_rows_past_the_kernels_int32_range_are_refused_before_allocating(m):
    x = torch.randn(1, 1, device="cuda", dtype=torch.float16).expand(m, 1)  # (stride 0: no memory for m rows)
    w = torch.randn(8, 1, device="cuda", dtype=torch.float16)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with pytest.raises(RuntimeError, match=r"M \(rows of x\), N and K must each be at most 2\^31 - 4096"):
        torch.ops.fusedops.linear_relu(x, w, None)
    assert torch.cuda.memory_allocated() == before


@gpu
def test_the_largest_row_count_runs_right():
    """M = 2^31 - 4096, the largest the kernels take (N 1, K 16: a 4 GiB output), through the tiled kernel: each row
    is the same dot product, so every output element must equal the first."""
    m = 2**31 - 4096
    x = torch.randn(1, 16, device="cuda", dtype=torch.float16).expand(m, 16)
    w = torch.randn(1, 16, device="cuda", dtype=torch.float16)
    b = torch.tensor([0.5], device="cuda")
    y = torch.ops.fusedops.linear_relu(x, w, b)
    want = torch.relu(x[:1].float() @ w.float().t() + b).half()
    assert y.shape == (m, 1)
    assert torch.equal(y.min(), want[0, 0]) and torch.equal(y.max(), want[0, 0])
    del y


@gpu
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype,precision", [(torch.float16, None), (torch.bfloat16, None), (torch.float32, "tf32"),
                                             (torch.float32, "fp16"), (torch.float32, "ieee")],
                         ids=["fp16", "bf16", "tf32", "fp32_fp16", "ieee"])
def test_k_zero_in_every_size_bucket(op, dtype, precision):
    """K = 0: the product is all zeros and the output the epilogue of the vectors alone, in every bucket (big M and N
    included, where the aligned rules name TMA / Gluon kernels that need K > 0: such calls take the generic layout)."""
    kw = {} if precision is None else {"precision": precision}
    for m, n in ((16, 272), (300, 1024), (2100, 4096), (8192, 4096)):
        p = make_problem((m,), n, 0, dtype, device="cuda", seed=m)
        out = run_fused(op, p, **kw)
        torch.testing.assert_close(out, reference(op, p, dtype=torch.float32).to(dtype), rtol=2e-3, atol=2e-3)
        assert "__generic__" in torch.ops.fusedops._last_launch(), torch.ops.fusedops._last_launch()


# ---- tensors that require grad ----

@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype,precision", [(torch.float16, None), (torch.float32, "fp16"), (torch.float32, "ieee")],
                         ids=["fp16", "fp32_fp16", "ieee"])
def test_parameters_that_require_grad(device, op, dtype, precision):
    """A module's parameters require grad, and a model run without torch.no_grad() passes them as they are. The op
    has no backward yet, but the forward must still run every kernel family: the launcher's own ATen calls (cuBLAS's
    GEMM into the output for fp32 'ieee' while torch keeps matmuls in fp32, the fp16 copy of the weight, split-K's
    buffers) must not meet autograd."""
    kw = {} if precision is None else {"precision": precision}
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # 'ieee' then takes the cuBLAS-GEMM variants where the rules say so
    try:
        for m, n, k in ((300, 272, 1040), (64, 4096, 4096), (5, 33, 17)):
            p = make_problem((m,), n, k, dtype, device=device, seed=m)
            for key in ("weight", "bias", "bn_weight", "bn_bias"):
                p[key].requires_grad_(True)
            out = run_fused(op, p, **kw)
            with torch.no_grad():
                want = reference(op, p, dtype=torch.float32).to(dtype)
            torch.testing.assert_close(out.detach(), want, rtol=2e-2, atol=2e-2)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
