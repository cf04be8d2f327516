"""Tune the tile configs of one arch on a real GPU and write its table: the rules to aot/tuning/sm_<arch>.json, the
runs and timings behind them to aot/tuning/evidence/sm_<arch>.json (aot/tables.py).

    python -m bench.tune                 # on the GPU whose arch is being tuned (needs triton: a dev tool)
    python -m bench.tune --dry-run       # print the table instead of writing it

    python -m bench.tune --keys half --buckets narrow mid   # re-measure some buckets, keep the others
    python -m bench.tune --keys half --shape-set random     # learn the rules from a random training set instead

For each tuning key (half, fp32_tf32, fp32_fp16, fp32_ieee) and op, every candidate config of a shape bucket
(BUCKETS: skinny M, with narrow N or short K apart; few output tiles; mid M; big) is compiled from
kernels/fused_linear.py (Triton JIT, which specialises unit strides and 16-divisible sizes just as the AOT 'aligned'
layout does) and timed on that bucket's shapes with triton.testing.do_bench (median, L2 flushed before each run),
after its output is checked against an fp64 reference and its SASS against the AOT build's wgmma rule (a wrong or
refused candidate is dropped, not timed). A bucket's winner is the config with the best geometric mean of time / best
time over its shapes; the configs the table gives those shapes now are timed beside the candidates. The 'generic'
layout keeps the table's existing entries: a correctness fallback, not the fast path.

--shape-set random: each op's rules are learnt (bench/rules.py) from every candidate of the key, cuBLAS's GEMM + the
epilogue among them, timed on a seeded random training set (N and K rounded to 16) plus the bench's model shapes, and
reported on a held-out random set as time over cuBLAS's GEMM alone (median, p90, worst), in the evidence's
shape_set_runs.

The same command retunes sm_89 when run on an RTX 4090; candidates that exceed the arch's shared
memory or spill are dropped by the AOT build's own limits afterwards (it fails loudly).
"""
import argparse
import datetime
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aot import plan, spec, tables  # noqa: E402
from bench.contenders import TOLERANCE, composite  # noqa: E402
from fusedops.reference import rel_err  # noqa: E402

# Shape buckets, in rule order (the first rule whose bounds hold wins at run time):
# name -> (bounds: max_m / max_n / max_k, each absent = unbounded; shapes (M, N, K) timed for it)
BUCKETS = {
    # skinny M with few output columns (few W tiles to share out: deeper split-K) or a short K (a short loop per
    # program: no split) apart from the rest (TF32 M 1 x N 1024 x K 4096 1.61x, M 64 x N 4096 x K 1024 1.55x under
    # one skinny rule)
    "skinny_narrow": (dict(max_m=64, max_n=1024), [(1, 1024, 4096), (16, 1024, 4096), (64, 1024, 4096)]),
    # ... and at K <= 1024 the GEMV-like M <= 16 apart from M <= 64 (TF32 M 1 x N 4096 x K 1024: 1.6x under one rule)
    "tiny_short": (dict(max_m=16, max_k=1024), [(1, 4096, 1024), (16, 4096, 1024), (1, 8192, 1024)]),
    "skinny_short": (dict(max_m=64, max_k=1024), [(64, 4096, 1024), (32, 4096, 1024), (64, 8192, 1024)]),
    "skinny": (dict(max_m=64), [(16, 4096, 4096), (64, 4096, 4096), (16, 8192, 8192), (1, 4096, 4096)]),
    # few output tiles (M x N small, K long): big tiles would leave most of the SMs idle. M 256 has a quarter of
    # M 1024's tiles, so the two get rules of their own
    "narrow_short": (dict(max_m=256, max_n=1024), [(256, 1024, 4096), (128, 1024, 4096), (256, 1024, 1024)]),
    "narrow": (dict(max_m=1024, max_n=1024), [(1024, 1024, 4096), (512, 1024, 1024), (768, 1024, 4096)]),
    "mid": (dict(max_m=512, max_n=4096), [(256, 4096, 4096), (256, 4096, 1024), (512, 4096, 1024)]),
    # wide N at mid M: enough output tiles for bigger ones (M 256 x N 8192: 128x64 tiles 1.41x cuBLAS, 128x128
    # 1.17x on the H200)
    "mid_wide": (dict(max_m=512), [(256, 8192, 8192), (128, 8192, 8192), (512, 8192, 8192)]),
    # M <= 1024 at K <= 1024 (in effect M 513-1024 x N > 1024: the buckets above take the rest): about one wave of the
    # big rule's 128x256 tiles (M 1024 x N 4096: 128 tiles on 132 SMs), each a short loop, so neither the epilogue nor
    # the pipeline fill is amortised (fp16 BN 1.27x there under the big rule)
    "short": (dict(max_m=1024, max_k=1024), [(1024, 4096, 1024), (1024, 8192, 1024), (768, 4096, 1024)]),
    "big": (dict(), [(16384, 4096, 4096), (1024, 8192, 8192), (4096, 4096, 4096), (4096, 1024, 4096),
                     (16384, 4096, 1024)]),
}
BOUNDS = ("max_m", "max_n", "max_k")


def cfg(bm, bn, bk, warps, stages, group=8, kernel="tiled", **switches):
    """A tuning-table config; switches: knobs such as WEIGHT_FP16=1 (aot/spec.py)."""
    config = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, "num_warps": warps, "num_stages": stages}
    config.update(switches)
    return config if kernel == "tiled" else dict(config, KERNEL=kernel)


def wgmma(bm, bn, bk, warps, stages, **kw):
    """A config of the Gluon kernel for fp32 x on fp16 tensor cores (its weight is rounded to fp16 per call)."""
    return cfg(bm, bn, bk, warps, stages, kernel="wgmma", WEIGHT_FP16=1, **kw)


def coop(bm, bn, bk, stages, **kw):
    """A config of the warp-specialised Gluon kernel (a loader warpgroup, two consumer warpgroups per tile; num_warps 4
    per warpgroup)."""
    return cfg(bm, bn, bk, 4, stages, kernel="coop", **kw)


def tma(*args, w16=False, **kw):
    """A persistent TMA-kernel config; w16: the weight rounded to fp16 once per call."""
    config = cfg(*args, kernel="tma", **kw)
    if w16:
        config.update(WEIGHT_FP16=1)
    return config


def vectors_first(config):
    """The config with the epilogue's vectors loaded before the K loop (tiled kernel, no split-K): their latency
    hides under the loop, for the registers they hold across it."""
    return dict(config, VECTORS_FIRST=1)


# SPLIT_K=n: n programs per output tile over slices of K, for shapes with fewer tiles than SMs
SKINNY = [cfg(64, 64, 128, 4, 4), cfg(64, 32, 128, 4, 4), cfg(64, 32, 256, 4, 3), cfg(32, 32, 256, 4, 3),
          cfg(16, 64, 256, 4, 3), cfg(16, 64, 256, 4, 3, SPLIT_K=2), cfg(16, 64, 128, 4, 4, SPLIT_K=4),
          cfg(32, 32, 128, 4, 4, SPLIT_K=4), vectors_first(cfg(16, 64, 256, 4, 3)),
          vectors_first(cfg(64, 32, 128, 4, 4)), vectors_first(cfg(32, 32, 256, 4, 3))]
HALF_BIG = [cfg(128, 256, 64, 8, 3), cfg(128, 128, 64, 8, 4), cfg(128, 128, 64, 4, 3), cfg(256, 128, 64, 8, 3),
            cfg(64, 256, 64, 4, 4), cfg(128, 256, 64, 8, 4), cfg(128, 128, 64, 4, 4),
            tma(128, 256, 64, 8, 3), tma(128, 128, 64, 8, 4), tma(128, 256, 64, 8, 4), tma(128, 128, 64, 4, 3),
            # the same shared memory as 64 x 3 in finer stages: more of it in flight while one is consumed
            tma(128, 256, 32, 8, 5), tma(128, 256, 32, 8, 6)]
FP32_BIG = [cfg(128, 128, 32, 8, 4), cfg(128, 256, 32, 8, 3), cfg(128, 128, 64, 8, 3), cfg(64, 256, 32, 4, 4),
            cfg(256, 128, 32, 8, 3), cfg(128, 128, 32, 4, 3), cfg(128, 128, 32, 4, 4),
            tma(128, 128, 32, 8, 3), tma(128, 128, 32, 8, 4), tma(128, 128, 64, 8, 2),
            # a loader warpgroup and two consumers per tile, as cuBLAS's TF32 kernel; its epilogue from the registers
            # or through shared memory and TMA
            coop(128, 256, 32, 4), coop(128, 256, 32, 4, TMA_STORE=1)]
# fp32 in, fp16 tensor cores: with the weight rounded once per call the kernel converts x's tiles only. Candidates
# whose register-A wgmma stay in flight across the conversions are refused (undefined results: NaN seen on the H100):
# with triton 3.8 that is every TMA one here; the Gluon kernel keeps one in flight safely.
FP32_FP16_BIG = FP32_BIG + [tma(128, 256, 32, 8, 3, w16=True), tma(128, 128, 64, 8, 3, w16=True),
                            cfg(128, 256, 32, 8, 3, WEIGHT_FP16=1),
                            cfg(128, 256, 32, 8, 4, WEIGHT_FP16=1), wgmma(128, 256, 64, 8, 3),
                            wgmma(128, 256, 32, 8, 4), wgmma(128, 256, 32, 8, 5)]
SKINNY_FP32 = [cfg(64, 64, 64, 4, 4), cfg(64, 32, 128, 4, 3), cfg(64, 32, 64, 4, 4), cfg(32, 32, 128, 4, 3),
               cfg(32, 32, 128, 4, 3, SPLIT_K=2), cfg(32, 32, 64, 4, 4, SPLIT_K=4), cfg(16, 64, 64, 4, 4, SPLIT_K=4)]
# N <= 1024 (32 columns of 32) or K <= 1024 (a short loop per program): more programs per W tile, or none split
SKINNY_FP32_FEW = SKINNY_FP32 + [
    cfg(32, 32, 64, 4, 4, SPLIT_K=8), cfg(16, 32, 64, 4, 4, SPLIT_K=8), cfg(16, 64, 64, 4, 4, SPLIT_K=8),
    cfg(16, 32, 128, 4, 3, SPLIT_K=4), cfg(32, 32, 64, 4, 6), cfg(16, 32, 64, 4, 6), cfg(32, 64, 64, 4, 4, SPLIT_K=2),
    vectors_first(cfg(32, 32, 64, 4, 6)), vectors_first(cfg(64, 32, 64, 4, 4)), vectors_first(cfg(16, 32, 64, 4, 6))]
# Few output tiles (M 256 x N 4096 x K 4096: 128 programs of 128x64) stream operands at ~45 GB/s per SM against
# ~21 us for cuBLAS: neither tensor- nor DRAM-bound, so latency-bound (bytes in flight per SM); deep pipelines keep
# ~190 KB in flight instead of 72-96 KB (wide tiles split over K lose: the tile's last program adds up every partial
# alone).
DEEP_HALF = [cfg(128, 64, 64, 4, 8), cfg(128, 64, 128, 4, 4), cfg(64, 128, 64, 4, 8), cfg(128, 128, 64, 8, 6),
             tma(128, 64, 64, 4, 8), tma(128, 128, 64, 8, 6)]
DEEP_FP32 = [cfg(128, 64, 32, 4, 8), cfg(64, 128, 32, 4, 8), cfg(128, 128, 32, 8, 6), tma(128, 128, 32, 8, 5)]
HALF_NARROW = [cfg(64, 64, 64, 4, 4), cfg(64, 64, 128, 4, 3), cfg(64, 32, 128, 4, 4), cfg(128, 64, 64, 4, 4),
               cfg(64, 128, 64, 4, 4), cfg(64, 64, 128, 4, 3, SPLIT_K=2), cfg(128, 64, 64, 4, 4, SPLIT_K=4),
               cfg(64, 64, 128, 4, 6), cfg(64, 64, 128, 4, 6, SPLIT_K=2), cfg(64, 32, 128, 4, 8), cfg(64, 64, 64, 4, 8),
               cfg(128, 64, 64, 4, 8), cfg(64, 128, 64, 4, 8), cfg(128, 64, 64, 4, 8, SPLIT_K=2),
               cfg(64, 128, 64, 4, 8, SPLIT_K=2), cfg(128, 128, 64, 8, 6, SPLIT_K=2),
               # one tile per SM: the epilogue follows the loop; its vectors' latency and 8 warps to hide
               # its arithmetic latency
               vectors_first(cfg(64, 32, 128, 4, 8)), vectors_first(cfg(64, 128, 64, 4, 8)),
               vectors_first(cfg(64, 64, 128, 4, 6)), cfg(64, 128, 64, 8, 8), vectors_first(cfg(64, 128, 64, 8, 8))]
HALF_MID = [cfg(128, 128, 64, 4, 4), cfg(128, 128, 64, 8, 4), cfg(64, 128, 64, 4, 4), cfg(64, 64, 64, 4, 4),
            cfg(64, 256, 64, 4, 4), cfg(128, 64, 64, 4, 4), cfg(64, 128, 64, 4, 4, SPLIT_K=2),
            cfg(128, 128, 64, 4, 4, SPLIT_K=2), cfg(128, 128, 64, 8, 4, SPLIT_K=3),
            # M 256 x N >= 4096 reads W once through 128 programs: TMA's bulk loads instead of per-thread ones
            tma(64, 128, 64, 4, 4), tma(64, 256, 64, 4, 3), tma(64, 128, 128, 4, 3), tma(128, 128, 64, 8, 4),
            *DEEP_HALF, vectors_first(cfg(64, 128, 64, 4, 8)), vectors_first(cfg(128, 64, 64, 4, 8)),
            cfg(64, 128, 64, 8, 8), vectors_first(cfg(64, 128, 64, 8, 8))]
FP32_NARROW = [cfg(64, 64, 32, 4, 4), cfg(64, 64, 64, 4, 3), cfg(32, 64, 64, 4, 4), cfg(64, 32, 64, 4, 4),
               cfg(128, 64, 32, 4, 4), cfg(64, 64, 32, 4, 4, SPLIT_K=4), cfg(64, 64, 64, 4, 3, SPLIT_K=2),
               cfg(128, 64, 32, 4, 4, SPLIT_K=4), cfg(64, 64, 64, 4, 6), cfg(64, 64, 64, 4, 6, SPLIT_K=2),
               cfg(128, 64, 32, 4, 8), cfg(64, 128, 32, 4, 8), cfg(128, 64, 32, 4, 8, SPLIT_K=2),
               cfg(64, 128, 32, 4, 8, SPLIT_K=2), vectors_first(cfg(64, 128, 32, 4, 8)),
               vectors_first(cfg(64, 64, 64, 4, 6)), vectors_first(cfg(128, 64, 32, 4, 8))]
FP32_MID = [cfg(128, 128, 32, 4, 4), cfg(128, 128, 32, 8, 4), cfg(64, 128, 32, 4, 4), cfg(64, 64, 32, 4, 4),
            cfg(64, 64, 64, 4, 3), cfg(64, 128, 32, 4, 4, SPLIT_K=2), cfg(128, 128, 32, 4, 4, SPLIT_K=2),
            cfg(128, 128, 32, 8, 4, SPLIT_K=3),
            tma(64, 128, 32, 4, 4), tma(64, 128, 64, 4, 3), tma(128, 128, 32, 8, 4), *DEEP_FP32,
            vectors_first(cfg(64, 128, 32, 4, 8)), vectors_first(cfg(128, 64, 32, 4, 8))]
# fp32 'ieee' on the FMA units (no tensor cores): register tiles of 16..128 accumulators per thread; or cuBLAS's SGEMM
# and then the epilogue kernel in place (the tuner times it with TF32 off, as the op runs it)
CUBLAS_THEN_EPILOGUE = cfg(32, 128, 32, 4, 1, kernel="cublas")
IEEE_SKINNY = [cfg(64, 64, 32, 4, 3), cfg(16, 64, 128, 4, 3), cfg(32, 64, 64, 4, 3), cfg(16, 128, 64, 4, 3),
               cfg(16, 64, 128, 4, 3, SPLIT_K=4), cfg(16, 64, 64, 4, 3, SPLIT_K=8), cfg(32, 64, 64, 4, 3, SPLIT_K=4),
               CUBLAS_THEN_EPILOGUE]
IEEE_NARROW = [cfg(64, 64, 32, 4, 3), cfg(32, 64, 32, 4, 3), cfg(64, 32, 32, 4, 3), CUBLAS_THEN_EPILOGUE]
IEEE_FMA_BIG = [cfg(64, 64, 32, 4, 3), cfg(128, 128, 32, 8, 3), cfg(128, 128, 16, 8, 3), cfg(128, 64, 32, 4, 3),
                cfg(64, 128, 32, 4, 3), cfg(128, 256, 16, 8, 2)]
IEEE_BIG = IEEE_FMA_BIG + [CUBLAS_THEN_EPILOGUE]
IEEE_MID = IEEE_NARROW + IEEE_FMA_BIG[1:]  # (the first big tile is IEEE_NARROW's first)
# one wave of tiles at K <= 1024: the big tiles, the deep pipelines, and 2-CTA/SM tiles whose epilogues overlap
HALF_SHORT = HALF_BIG + [c for c in DEEP_HALF if c not in HALF_BIG] + [
    vectors_first(cfg(128, 128, 64, 4, 3)), vectors_first(cfg(128, 128, 64, 8, 4)), vectors_first(cfg(64, 128, 64, 4, 8))]
FP32_SHORT = FP32_BIG + [c for c in DEEP_FP32 if c not in FP32_BIG] + [
    vectors_first(cfg(128, 128, 32, 4, 3)), vectors_first(cfg(64, 128, 32, 4, 8))]
CANDIDATES = {  # key -> (dtype of x, the kernel's DOT, {bucket: candidate configs})
    "half": (torch.float16, "native", dict(skinny_narrow=SKINNY, tiny_short=SKINNY, skinny_short=SKINNY, skinny=SKINNY,
                                           narrow_short=HALF_NARROW, narrow=HALF_NARROW, mid=HALF_MID,
                                           mid_wide=HALF_MID, short=HALF_SHORT, big=HALF_BIG)),
    "fp32_tf32": (torch.float32, "tf32", dict(skinny_narrow=SKINNY_FP32_FEW, tiny_short=SKINNY_FP32_FEW,
                                              skinny_short=SKINNY_FP32_FEW,
                                              skinny=SKINNY_FP32, narrow_short=FP32_NARROW, narrow=FP32_NARROW,
                                              mid=FP32_MID, mid_wide=FP32_MID, short=FP32_SHORT, big=FP32_BIG)),
    "fp32_fp16": (torch.float32, "fp16", dict(skinny_narrow=SKINNY_FP32_FEW, tiny_short=SKINNY_FP32_FEW,
                                              skinny_short=SKINNY_FP32_FEW,
                                              skinny=SKINNY_FP32, narrow_short=FP32_NARROW, narrow=FP32_NARROW,
                                              mid=FP32_MID, mid_wide=FP32_MID, short=FP32_FP16_BIG,
                                              big=FP32_FP16_BIG)),
    "fp32_ieee": (torch.float32, "ieee", dict(skinny_narrow=IEEE_SKINNY, tiny_short=IEEE_SKINNY,
                                              skinny_short=IEEE_SKINNY, skinny=IEEE_SKINNY,
                                              narrow_short=IEEE_NARROW, narrow=IEEE_NARROW,
                                              mid=IEEE_MID, mid_wide=IEEE_MID,
                                              short=IEEE_BIG, big=IEEE_BIG)),
}


def jit_runner(op, dot, config, x, w, y, vectors):
    """A no-argument callable launching one candidate config through Triton's JIT exactly as the AOT launcher
    would: same kernel, constexprs, grid, scratch, and (WEIGHT_FP16) the per-call fp16 rounding of w."""
    import triton

    M, K = x.shape
    N = w.shape[0]
    kind = config.get("KERNEL", "tiled")
    kernel = spec.KERNELS[kind]
    meta = dict({k: config[k] for k in spec.CONFIG_KEYS}, EPILOGUE=spec.OPS[op], DOT=dot,
                **{k: spec.knob_constexpr(k, config.get(k, default)) for k, default in kernel["knobs"].items()})
    meta.update(spec.pipeline_constexprs(kind, config))
    function = spec.kernel_function(kind)
    weight_fp16 = bool(config.get("WEIGHT_FP16", spec.LAUNCHER_KNOBS["WEIGHT_FP16"]))
    tiles = triton.cdiv(M, config["BLOCK_M"]) * triton.cdiv(N, config["BLOCK_N"])
    if kernel["persistent"]:
        # device-side TMA descriptors live in global scratch that the launcher provides
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
        grid = (min(tiles, torch.cuda.get_device_properties(x.device).multi_processor_count),)  # one per SM

    split_k = int(config.get("SPLIT_K", 1))
    # split-K, as the AOT launcher: a partial-sum workspace each call, and per-tile counters zeroed once (the kernel
    # leaves them zero). Without split-K the two are unused placeholders.
    counters = torch.zeros(tiles if split_k > 1 else 1, device=x.device, dtype=torch.int32)
    unused = torch.empty(1, device=x.device, dtype=torch.float32)

    def run():
        wk = w.to(torch.float16) if weight_fp16 else w
        if kernel["cublas_gemm"]:  # as the AOT launcher: cuBLAS writes x @ W^T, the kernel applies the epilogue
            if dot == "ieee" and torch.backends.cuda.matmul.allow_tf32:
                raise RuntimeError("a cuBLAS-GEMM config runs 'ieee' only with TF32 off (the op's contract)")
            torch.mm(x, w.t(), out=y)
        vec32 = [v.float() for v in vectors]  # as the launcher, which converts vectors given in x's dtype per call
        if kernel["persistent"]:  # (the TMA and the Gluon kernel take the same arguments)
            run.compiled = function[grid](
                x, wk, y, *vec32, M, N, K, x.stride(0), wk.stride(0), y.stride(0), 1, 1, 1, 1e-5, grid[0], **meta,
                **kernel.get("options", {}))
        else:
            partials = torch.empty(split_k * M * N, device=x.device, dtype=torch.float32) if split_k > 1 else unused
            run.compiled = function[(tiles * split_k,)](
                x, wk, y, *vec32, M, N, K, x.stride(0), x.stride(1), wk.stride(0), wk.stride(1), y.stride(0),
                y.stride(1), 1, 1, 1, 1e-5, partials, counters, **meta)
        return y
    return run  # run.compiled: the kernel Triton compiled for it, once it has run


def tuning_inputs(op, dtype, shape):
    """One shape's inputs and their fp64 reference output, shared by every candidate timed on it."""
    M, N, K = shape
    g = torch.Generator(device="cuda").manual_seed(M * 7 + N * 3 + K)
    x = torch.randn(M, K, device="cuda", generator=g).to(dtype)
    w = (torch.randn(N, K, device="cuda", generator=g) * K ** -0.5).to(dtype)
    vec = [(torch.rand(N, device="cuda", generator=g) + 0.5).to(dtype) for _ in range(5)]  # as a model holds them
    with torch.no_grad():
        ref = composite(op)(*(t.double() for t in (x, w, *vec)))
    return x, w, vec, ref


def time_config(op, dot, config, inputs):
    """do_bench median of one candidate, or inf when it cannot run here, computes a wrong result, or is a kernel the
    AOT build would refuse (register-A wgmma left in flight: the result may be right by luck)."""
    import tempfile

    import triton

    from aot import sass

    x, w, vec, ref = inputs
    y = torch.full(ref.shape, float("nan"), device="cuda", dtype=x.dtype)
    try:
        run = jit_runner(op, dot, config, x, w, y, vec)
        run()
        torch.cuda.synchronize()
    except Exception as e:  # out of resources etc.: not a candidate on this GPU
        print(f"    {config} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
        return math.inf
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(run.compiled.asm["cubin"])
        hazard = sass.read_wgmma_register_hazard(cubin, run.compiled.asm["ptx"])
    if hazard:
        print(f"    {config} refused: {hazard}", flush=True)
        return math.inf
    err = rel_err(y, ref)
    precision = dot if dot != "native" else {torch.float16: "fp16", torch.bfloat16: "bf16"}[x.dtype]
    tolerance = TOLERANCE[precision]
    if not err <= tolerance:  # (NaN fails too)
        print(f"    {config} at {tuple(ref.shape)} is wrong: relative error {err:.1e} > {tolerance:.0e}", flush=True)
        return math.inf
    return triton.testing.do_bench(run, warmup=10, rep=40, return_mode="median")


def pick(op, key, bucket, shapes, candidates):
    dtype, dot, _ = CANDIDATES[key]
    times = {i: [] for i in range(len(candidates))}
    for shape in shapes:  # shape by shape: one set of inputs and one fp64 reference in memory at a time
        inputs = tuning_inputs(op, dtype, shape)
        for i, c in enumerate(candidates):
            times[i].append(time_config(op, dot, c, inputs))
        del inputs
    best_per_shape = [min(times[i][j] for i in times) for j in range(len(shapes))]
    score = {i: math.exp(sum(math.log(t / b) for t, b in zip(times[i], best_per_shape)) / len(shapes))
             for i in times}
    winner = min(score, key=score.get)
    for i, c in enumerate(candidates):
        ms = " ".join(f"{t:.4f}" for t in times[i])
        print(f"  {op:<20} {key:<9} {bucket:<6} {'*' if i == winner else ' '} score {score[i]:.3f} "
              f"{json.dumps(c)} ms [{ms}]", flush=True)
    return candidates[winner], {"shapes": shapes, "ms": times[winner]}


def current_config(key, op, shape):
    """The config the built library's rule matcher (the one dispatch runs) gives this aligned shape, in table form."""
    from fusedops._ops import _selected_variant
    precision = next(name for name, (_, _, table_key) in spec.PRECISIONS.items() if table_key == key)
    v = _selected_variant(op, precision, "aligned", *shape)
    return plan.table_form(v["kernel"], v["config"])


def with_incumbents(candidates, key, op, shapes):
    """The bucket's candidates plus every config the current table gives one of its shapes: a re-measured bucket then
    moves only to a config that beat, over its shapes, what they ran before."""
    out = [plan.table_form(c.get("KERNEL", "tiled"), c) for c in candidates]
    for shape in shapes:
        config = current_config(key, op, shape)
        if config not in out:
            out.append(config)
    return out


def check_library_matches_checkout():
    """current_config asks the installed library: it must be built from this checkout's kernels and tables."""
    import fusedops
    from aot.build import kernel_source_digest
    built, here = fusedops.build_info()["manifest"]["source_digest"], kernel_source_digest()
    if built != here:
        raise SystemExit(f"bench.tune: the installed fusedops was built from other kernels or tables (source digest "
                         f"{built}, this checkout {here}); rebuild it first (pip install --no-build-isolation -e .)")


def rules_for(op, configs):
    """Rules for one op from {bucket: config}, in bucket order. A rule is dropped where the next one has the same
    config and bounds that hold it (e.g. narrow_short inside narrow, anything inside the catch-all): every shape it
    matched then goes to that next rule, so the choice is unchanged."""
    rules = [dict({"ops": [op]}, **bounds, config=configs[name]) for name, (bounds, _) in BUCKETS.items()]

    def within(inner, outer):
        return all(outer.get(b) is None or (inner.get(b) is not None and inner[b] <= outer[b]) for b in BOUNDS)

    for i in reversed(range(len(rules) - 1)):
        if rules[i]["config"] == rules[i + 1]["config"] and within(rules[i], rules[i + 1]):
            del rules[i]
    return rules


# cuBLAS's GEMM, then the epilogue kernel: a candidate wherever the key's DOT is one the kernel serves
CUBLAS_EPILOGUE = cfg(32, 128, 32, 4, 1, kernel="cublas")


def aligned(shapes):
    """The shapes with N and K rounded up to multiples of 16: the aligned layout the rules serve."""
    return [(m, -(-n // 16) * 16, -(-k // 16) * 16) for m, n, k in shapes]


def shape_set_candidates(key, op, shapes):
    """Every candidate of the key's buckets, once, with the configs the table gives the shapes now and, where the key's
    DOT allows it, cuBLAS's GEMM + the epilogue."""
    _, dot, by_bucket = CANDIDATES[key]
    out = []
    for configs in by_bucket.values():
        out += [c for c in configs if c not in out]
    if dot in spec.KERNELS["cublas"]["dots"] and CUBLAS_EPILOGUE not in out:
        out.append(CUBLAS_EPILOGUE)
    return with_incumbents(out, key, op, shapes)


def cublas_ms(dtype, shape):
    """The floor: cuBLAS's GEMM alone on the shape (do_bench median)."""
    import triton
    m, n, k = shape
    x, w = torch.randn(m, k, device="cuda", dtype=dtype), torch.randn(n, k, device="cuda", dtype=dtype)
    return triton.testing.do_bench(lambda: torch.mm(x, w.t()), warmup=10, rep=40, return_mode="median")


def tune_on_shapes(op, key, train, held_out, candidates, time_fn, floor_fn):
    """Rules for one op learnt on `train` (every candidate timed on every shape: time_fn(config, shape)), and how they
    do on `held_out` (the chosen config's time over floor_fn(shape), cuBLAS's GEMM alone). Returns the table rules and
    a summary for the evidence."""
    from bench import report, rules as rule_learning
    times = [[time_fn(c, shape) for c in candidates] for shape in train]
    learnt = rule_learning.induce(train, times)
    fit = rule_learning.evaluate(learnt, train, times)
    ratios = []
    for shape in held_out:
        ratios.append(time_fn(candidates[rule_learning.choice(learnt, shape)], shape) / floor_fn(shape))
    finite = [r for r in ratios if math.isfinite(r)]
    worst = max(range(len(held_out)), key=lambda i: ratios[i])
    summary = dict(op=op, key=key, train_shapes=len(train), candidates=len(candidates), rules=len(learnt),
                   train_geomean_regret=round(fit["geomean_regret"], 4),
                   train_worst_regret=round(fit["worst_regret"], 4), held_out_shapes=len(held_out),
                   held_out_x_floor=dict(median=round(report.percentile(finite, 50), 3),
                                         p90=round(report.percentile(finite, 90), 3),
                                         worst=round(ratios[worst], 3), worst_shape=list(held_out[worst])) if finite
                   else None)
    return rule_learning.as_table_rules(learnt, candidates, op), summary


def tune_key_on_shape_sets(args, key, evidence):
    """--shape-set random for one key: each op's rules from tune_on_shapes on the GPU, its summary printed and kept in
    the evidence's shape_set_runs."""
    from bench.cases import model_shapes, random_shapes
    dtype, dot, _ = CANDIDATES[key]
    floor_dtype = torch.float16 if dot == "fp16" else dtype  # fp32 in, fp16 math: the fp16 GEMM is the floor
    train = aligned(random_shapes(args.shape_count, args.train_seed) + model_shapes())
    held_out = aligned(random_shapes(args.shape_count, args.holdout_seed))
    rules = []
    for op in args.ops:
        inputs = {}  # one shape's inputs, kept while its candidates run (tune_on_shapes goes shape by shape)

        def time_fn(config, shape):
            if shape not in inputs:
                inputs.clear()
                inputs[shape] = tuning_inputs(op, dtype, shape)
            return time_config(op, dot, config, inputs[shape])

        op_rules, summary = tune_on_shapes(op, key, train, held_out, shape_set_candidates(key, op, train),
                                           time_fn, lambda shape: cublas_ms(floor_dtype, shape))
        print(f"  {op:<20} {key:<9} {json.dumps(summary)}", flush=True)
        evidence.setdefault("shape_set_runs", []).append(dict(summary, date=str(datetime.date.today()),
                                                              device=torch.cuda.get_device_name()))
        rules += op_rules
    return rules


def record_run(runs, run):
    """Append one key's run to the table's record (oldest first). A run that differs from the last one only in its
    keys (the next key of the same invocation, or a later invocation over the same buckets that day) adds its keys
    to that entry instead of replacing it."""
    if runs and {k: v for k, v in runs[-1].items() if k != "keys"} == {k: v for k, v in run.items() if k != "keys"}:
        runs[-1]["keys"] += [k for k in run["keys"] if k not in runs[-1]["keys"]]
    else:
        runs.append(run)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--keys", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--ops", nargs="*", default=list(spec.OPS))
    parser.add_argument("--buckets", nargs="*", default=["all"], choices=["all", *BUCKETS],
                        help="buckets to measure; the others keep the config the current table gives them")
    parser.add_argument("--shape-set", choices=["buckets", "random"], default="buckets",
                        help="random: learn each op's rules from every candidate timed on a random training set "
                        "(--shape-count shapes, --train-seed) plus the bench's model shapes, and report them on a "
                        "held-out random set (--holdout-seed) against cuBLAS's GEMM alone (bench/rules.py)")
    parser.add_argument("--shape-count", type=int, default=32)
    parser.add_argument("--train-seed", type=int, default=1)
    parser.add_argument("--holdout-seed", type=int, default=2)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.tune measures on a GPU; none is visible")
    check_library_matches_checkout()
    major, minor = torch.cuda.get_device_capability()
    arch = major * 10 + minor
    _, table = tables.load_rules(arch)  # (a new arch starts from the nearest arch's table)
    evidence = dict(tables.load_evidence(arch), arch=arch)
    import triton
    measure = list(BUCKETS) if "all" in args.buckets else args.buckets
    timings = evidence.setdefault("evidence_ms", {})
    for key in args.keys:
        _, _, candidates = CANDIDATES[key]
        rules = [r for r in table["rules"].get(key, []) if not set(r.get("ops", spec.OPS)) & set(args.ops)]
        if args.shape_set == "random":
            rules += tune_key_on_shape_sets(args, key, evidence)
        else:
            for op in args.ops:
                configs = {}
                for name, (_, shapes) in BUCKETS.items():
                    if name in measure:
                        configs[name], timings[f"{key}/{op}/{name}"] = pick(
                            op, key, name, shapes, with_incumbents(candidates[name], key, op, shapes))
                    else:
                        configs[name] = current_config(key, op, shapes[0])
                rules += rules_for(op, configs)
        table["rules"][key] = rules
        table["arch"] = arch
        record_run(evidence.setdefault("runs", []), dict(
            date=str(datetime.date.today()), device=torch.cuda.get_device_name(), torch=torch.__version__,
            triton=triton.__version__, keys=[key], ops=args.ops,
            **(dict(buckets=measure) if args.shape_set == "buckets" else dict(
                shape_set=dict(count=args.shape_count, train_seed=args.train_seed,
                               holdout_seed=args.holdout_seed)))))
        if args.dry_run:
            print(tables.rules_text(table))
        else:  # after every key, so an interrupted run keeps what it finished
            tables.write(arch, table, evidence)
            print(f"wrote {tables.rules_path(arch)} and {tables.evidence_path(arch)} ({key})", flush=True)


if __name__ == "__main__":
    main()
