"""GPU timing with CUDA events, reusable outside the benchmark (a tuner, a test).

    from bench.timing import time_cuda, rotation_count
    sets = [(torch.randn(m, k, device="cuda"), w) for _ in range(rotation_count(m * k * 4))]
    t = time_cuda(lambda x, w: x @ w.t(), warmup=10, reps=100, rotate_inputs=sets)
    print(t.median_ms)

Method (time_cuda):
  1. One call, then synchronize (module load, autotuning, lazy init stay out of the numbers).
  2. `warmup` more calls, wall-clocked: the enqueue loop alone gives the host cost per call, the loop
     plus a synchronize gives max(host, GPU) per call. With `budget_ms`, `reps` is reduced so that the
     timed calls take about that long (never below `min_reps`).
  3. Timed calls, each bracketed by its own pair of CUDA events on the current stream; the result is
     the median (and quantiles) of the per-call event times.
  4. Host overhead is hidden (hide_host_overhead=True, the default): the timed calls go in chunks, and
     before each chunk a spin kernel (torch.cuda._sleep) is queued that lasts longer than the host
     needs to enqueue that chunk. The GPU therefore always has the chunk's work queued, and the event
     pairs measure GPU execution (for a multi-kernel callable: its kernels plus the GPU-side gaps
     between them), not Python/dispatcher/launch latency. Set it False to measure what a caller who
     launches one call at a time would see when the GPU outruns the host.
     Each call's start is also checked against the previous call's end: a call that began on an idle GPU
     (the host fell behind, e.g. a stall in the process) is counted in Timing.calls_after_idle.
  5. settle_ms: after the warm-up, about this much GPU time of untimed calls (at most SETTLE_MAX_CALLS)
     runs right before the timed ones. Under a power limit the SM clock follows what ran in the last
     tens of milliseconds; settling times each contender at the clock its own work sustains, not at
     the clock the previous contender left behind. When the calls are GPU-bound, the settle calls also
     keep the GPU busy while the host enqueues the first timed chunk, so that chunk needs no spin kernel
     (an idle gap) before it; host-bound calls keep theirs.
  6. rotate_inputs: call i uses rotate_inputs[i % len]; an item that is a tuple is splatted as
     positional arguments, a dict as keyword arguments, anything else passed as the one argument.
     Rotating among sets whose bytes exceed the L2 cache (see rotation_count) keeps repeated calls
     from reading inputs that the previous call left in L2.
"""
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, List, Optional, Sequence

DEFAULT_L2_BYTES = 50 * 1024 * 1024  # H100 SXM
_SLEEP_CYCLES_PER_MS = {}  # device index -> calibrated torch.cuda._sleep cycles per millisecond
SETTLE_MAX_CALLS = 2000
# A timed call whose start event the GPU reached more than this long after the previous call's end event began on an
# idle GPU: the host had not queued it in time, so its event pair may hold host latency, not only GPU time. Calls
# queued back to back show 1-5 us between the two events on the H100.
IDLE_GAP_MS = 0.01


@dataclass
class Timing:
    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    warmup: int
    n_inputs: int
    host_ms_per_call: float  # enqueue cost per call, measured during warm-up
    hid_host_overhead: bool
    times_ms: List[float] = field(default_factory=list, repr=False)
    # timed calls that began on an idle GPU (IDLE_GAP_MS; the first call of each chunk, behind its spin kernel, is
    # not counted): a median that moves with them is the host's, not the kernel's
    calls_after_idle: int = 0

    @classmethod
    def from_times(cls, times: List[float], **fields) -> "Timing":
        """The statistics of these per-call times; fields: the rest (warmup, n_inputs, host cost, ...)."""
        ordered = sorted(times)
        return cls(median_ms=statistics.median(times), mean_ms=statistics.fmean(times), min_ms=ordered[0],
                   max_ms=ordered[-1], p20_ms=_quantile(ordered, 0.2), p80_ms=_quantile(ordered, 0.8),
                   reps=len(times), times_ms=list(times), **fields)

    def as_dict(self, with_times=False):
        d = asdict(self)
        if not with_times:
            d.pop("times_ms")
        return d


def _calls(fn: Callable, rotate_inputs: Optional[Sequence[Any]]) -> List[Callable[[], Any]]:
    if rotate_inputs is None:
        return [fn]
    if len(rotate_inputs) == 0:
        raise ValueError("rotate_inputs is empty")
    calls = []
    for item in rotate_inputs:
        if isinstance(item, tuple):
            calls.append(lambda item=item: fn(*item))
        elif isinstance(item, dict):
            calls.append(lambda item=item: fn(**item))
        else:
            calls.append(lambda item=item: fn(item))
    return calls


def _quantile(sorted_vals: List[float], q: float) -> float:
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = q * (len(sorted_vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def sleep_cycles_per_ms() -> Optional[float]:
    """Calibrate torch.cuda._sleep on the current device (once); None where it is unavailable."""
    import torch
    if not hasattr(torch.cuda, "_sleep"):
        return None
    dev = torch.cuda.current_device()
    if dev not in _SLEEP_CYCLES_PER_MS:
        cycles = 2_000_000
        torch.cuda._sleep(cycles)  # warm-up (module load)
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(3):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            torch.cuda._sleep(cycles)
            e.record()
            e.synchronize()
            best = min(best, s.elapsed_time(e))
        _SLEEP_CYCLES_PER_MS[dev] = cycles / max(best, 1e-3)
    return _SLEEP_CYCLES_PER_MS[dev]


def time_cuda(fn: Callable, *, warmup: int = 10, reps: int = 100, rotate_inputs: Optional[Sequence[Any]] = None,
              budget_ms: Optional[float] = None, min_reps: int = 5, hide_host_overhead: bool = True,
              max_chunk_sleep_ms: float = 20.0, settle_ms: float = 0.0) -> Timing:
    """Median GPU time of fn (see the module docstring for the method). Needs a CUDA device."""
    import torch
    calls = _calls(fn, rotate_inputs)
    n = len(calls)
    warmup = max(int(warmup), 0)
    reps = max(int(reps), 1)

    calls[0]()
    torch.cuda.synchronize()
    idx = 1
    host_ms = gpu_ms = None
    if warmup:
        t0 = time.perf_counter()
        for _ in range(warmup):
            calls[idx % n]()
            idx += 1
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        host_ms = (t1 - t0) * 1e3 / warmup
        gpu_ms = (t2 - t0) * 1e3 / warmup  # max(host, GPU) per call
    if budget_ms is not None and gpu_ms is not None:
        reps = max(min(reps, int(budget_ms / max(gpu_ms, 1e-3))), min(min_reps, reps))

    cycles_per_ms = sleep_cycles_per_ms() if hide_host_overhead else None
    hide = cycles_per_ms is not None and host_ms is not None
    if hide:
        per_call = max(host_ms, 0.005) * 1.5 + 0.01  # generous: the event records cost host time too
        chunk = max(1, min(reps, int(max_chunk_sleep_ms / per_call)))
    else:
        chunk = reps
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    queued_ms = 0.0  # GPU work queued ahead of the first timed chunk by settling
    if settle_ms > 0 and gpu_ms is not None:
        settle_calls = min(math.ceil(settle_ms / max(gpu_ms, 1e-3)), SETTLE_MAX_CALLS)
        for _ in range(settle_calls):
            calls[idx % n]()
            idx += 1
        # Only GPU-bound calls build a queue: when the host is the slower side (small kernels), the GPU keeps
        # up with the settle calls and the first chunk still needs its spin kernel.
        gpu_bound = host_ms is not None and gpu_ms > 2 * host_ms
        queued_ms = settle_calls * gpu_ms if gpu_bound else 0.0
    done = 0
    while done < reps:
        this = min(chunk, reps - done)
        if hide and not (done == 0 and queued_ms > 2 * this * per_call):
            torch.cuda._sleep(int(cycles_per_ms * (this * per_call + 0.05)))
        for j in range(done, done + this):
            starts[j].record()
            calls[idx % n]()
            ends[j].record()
            idx += 1
        done += this
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    after_idle = sum(1 for j in range(1, reps) if j % chunk and ends[j - 1].elapsed_time(starts[j]) > IDLE_GAP_MS)
    return Timing.from_times(times, warmup=warmup + 1, n_inputs=n,
                             host_ms_per_call=host_ms if host_ms is not None else float("nan"),
                             hid_host_overhead=hide, calls_after_idle=after_idle)


def round_order(count: int, round_index: int) -> List[int]:
    """The order of `count` contenders in interleaved timing round `round_index`: each round starts one contender
    later (A B C, B C A, C A B, ...), so no contender always runs right after the same one."""
    return [(round_index + j) % count for j in range(count)]


def l2_bytes(device=None) -> int:
    """The device's L2 size in bytes (DEFAULT_L2_BYTES where torch does not say)."""
    try:
        import torch
        props = torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device())
        size = int(getattr(props, "L2_cache_size", 0) or 0)
        return size if size > 0 else DEFAULT_L2_BYTES
    except Exception:
        return DEFAULT_L2_BYTES


def rotation_count(bytes_per_set: int, *, l2: Optional[int] = None, factor: float = 2.0, max_sets: int = 32,
                   budget_bytes: int = 8 << 30) -> int:
    """How many distinct input sets to rotate through: enough that together they exceed factor x L2,
    at most max_sets, and never more than budget_bytes in all (at least one)."""
    l2 = DEFAULT_L2_BYTES if l2 is None else l2
    bytes_per_set = max(int(bytes_per_set), 1)
    want = math.ceil(factor * l2 / bytes_per_set)
    fit = budget_bytes // bytes_per_set
    return int(max(1, min(want, max_sets, fit)))
