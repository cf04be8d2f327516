"""Two GPUs in one process: the ops follow their tensors' device (as ATen does, whatever torch.cuda.set_device says),
each device loads its own modules in its own primary context, and streams, threads and CUDA graphs work per device.
Marked `gpu`; skipped with fewer than two GPUs. Each scenario runs in a fresh process, so a device's first call is
really its first."""
import pytest
import torch

from test_robustness import CUDA_DRIVER_SETUP, FAMILY_SETUP, assert_clean, run_python

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (device kind "
                                 "nvidia-h200-x2)")]

# FAMILY_SETUP's problem(i) on a given device, and a check of one family call's result
TWO_DEVICES = FAMILY_SETUP + """
    def on(i, device):
        p = problem(i)
        return {key: None if t is None else t.to(device) for key, t in p.items()}

    def run_checked(i, device):
        p = on(i, device)
        out = run(i, p)
        assert out.device == torch.device(device), (CALLS[i], out.device, device)
        torch.cuda.synchronize(device)
        assert close_to_reference(i, p, out), (CALLS[i], device, torch.ops.fusedops._last_launch())
        return out
"""


def test_ops_follow_the_tensors_device_not_the_current_one():
    """Every kernel family on cuda:1 first (the current device being cuda:0), then on cuda:0 (current: cuda:1), then
    alternating: each result on its tensors' device and right."""
    out = assert_clean(run_python(TWO_DEVICES + """
    torch.cuda.set_device(0)
    for i in range(len(CALLS)):
        run_checked(i, "cuda:1")
    torch.cuda.set_device(1)
    for i in range(len(CALLS)):
        run_checked(i, "cuda:0")
    for round in range(3):
        for device in ("cuda:1", "cuda:0"):
            torch.cuda.set_device(1 - int(device[-1]))
            for i in range(len(CALLS)):
                run_checked(i, device)
    print("ok")
    """))
    assert out.strip().endswith("ok"), out


def test_threads_pinned_to_different_devices_run_concurrently():
    """Two threads, one per device, each making every family's first call on its device at the same time."""
    out = assert_clean(run_python(TWO_DEVICES + """
    import threading
    errors = []
    start = threading.Barrier(2)

    def worker(index):
        try:
            torch.cuda.set_device(index)
            start.wait()
            for round in range(3):
                for i in range(len(CALLS)):
                    run_checked(i, f"cuda:{index}")
        except Exception as e:  # reported below, with the thread's device
            errors.append((index, repr(e)))

    threads = [threading.Thread(target=worker, args=(index,)) for index in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    print("ok")
    """))
    assert out.strip().endswith("ok"), out


def test_non_default_streams_and_a_cuda_graph_on_the_second_device():
    """Calls on a side stream of each device give the eager results; a CUDA graph captured on cuda:1 replays to them."""
    out = assert_clean(run_python(TWO_DEVICES + """
    for index in (1, 0):
        device = f"cuda:{index}"
        stream = torch.cuda.Stream(device=device)
        for i in range(len(CALLS)):
            p = on(i, device)
            want = run(i, p)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                got = run(i, p)
            stream.synchronize()
            assert torch.equal(got, want), (CALLS[i], device)
    torch.cuda.set_device(0)
    with torch.cuda.device(1):
        problems = {i: on(i, "cuda:1") for i in range(len(CALLS))}
        eager = {i: run(i, p) for i, p in problems.items()}  # also warms cuBLAS's handle on cuda:1 before capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            captured = {i: run(i, p) for i, p in problems.items()}
        graph.replay()
        torch.cuda.synchronize()
        for i in problems:
            assert captured[i].device == torch.device("cuda:1")
            assert torch.equal(captured[i], eager[i]), CALLS[i]
    print("ok")
    """))
    assert out.strip().endswith("ok"), out


def test_inputs_on_two_devices_are_a_clear_error():
    x = torch.randn(4, 8, device="cuda:0", dtype=torch.float16)
    w = torch.randn(8, 8, device="cuda:1", dtype=torch.float16)
    with pytest.raises(RuntimeError, match="'weight' is on cuda:1 but x is on cuda:0"):
        torch.ops.fusedops.linear_relu(x, w, None)
    b = torch.randn(8, device="cuda:1")
    with pytest.raises(RuntimeError, match="'bias' is on cuda:1 but x is on cuda:0"):
        torch.ops.fusedops.linear_relu(x, w.to("cuda:0"), b)


def test_a_module_loaded_under_another_context_of_the_second_device_serves_its_primary_one():
    """The first call on cuda:1 runs while a context of the caller's own (on device 1) is current: the kernels load
    into cuda:1's primary context all the same, later calls there (in torch's context) use them, and cuda:0's cache is
    untouched by it."""
    out = assert_clean(run_python(TWO_DEVICES + CUDA_DRIVER_SETUP + """
    problems = {i: on(i, "cuda:1") for i in range(len(CALLS))}
    torch.cuda.synchronize("cuda:1")
    ctx = push_own_context(1)
    first = {i: run(i, p) for i, p in problems.items()}
    check(cuda.cuCtxSynchronize(), "cuCtxSynchronize (the other context)")
    popped = ctypes.c_void_p()
    check(cuda.cuCtxPopCurrent_v2(ctypes.byref(popped)), "cuCtxPopCurrent")
    assert popped.value == ctx.value
    for i, p in problems.items():
        again = run(i, p)
        torch.cuda.synchronize("cuda:1")
        assert torch.equal(again, first[i]) and close_to_reference(i, p, again), CALLS[i]
    check(cuda.cuCtxDestroy_v2(ctx), "cuCtxDestroy")  # the other context gone: cuda:1's kernels must not be in it
    for i in range(len(CALLS)):
        run_checked(i, "cuda:1")
        run_checked(i, "cuda:0")
    print("ok")
    """))
    assert out.strip().endswith("ok"), out
