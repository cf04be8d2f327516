"""Tune the tile configs of one arch on a real GPU and write its table, aot/tuning/sm_<arch>.json.

    python -m bench.tune                 # on the GPU whose arch is being tuned (needs triton: a dev tool)
    python -m bench.tune --dry-run       # print the table instead of writing it

For each tuning key (half, fp32_tf32, fp32_fp16) and op, every candidate config of a shape bucket
is compiled from kernels/fused_linear.py (Triton JIT, which specialises unit strides and 16-divisible
sizes just as the AOT 'aligned' layout does) and timed on that bucket's shapes with
triton.testing.do_bench (median, L2 flushed before each run). A bucket's winner is the config with
the best geometric mean of time / best time over its shapes. fp32_ieee and the 'generic' layout keep
the table's existing entries: they are correctness fallbacks, not the fast path.

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

from aot import spec  # noqa: E402

# bucket -> (max_m or None, shapes (M, N, K) timed for it)
BUCKETS = [
    (64, [(16, 4096, 4096), (64, 4096, 4096), (16, 8192, 8192), (64, 1024, 4096), (1, 4096, 4096)]),
    (512, [(256, 4096, 4096), (256, 8192, 8192), (512, 4096, 1024)]),
    (None, [(16384, 4096, 4096), (1024, 8192, 8192), (4096, 4096, 4096), (4096, 1024, 4096), (16384, 4096, 1024)]),
]


def cfg(bm, bn, bk, warps, stages, group=8, kernel="tiled"):
    config = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, "num_warps": warps, "num_stages": stages}
    return config if kernel == "tiled" else dict(config, KERNEL=kernel)


def tma(*args, ws=False, **kw):
    config = cfg(*args, kernel="tma", **kw)
    return dict(config, FLATTEN=0, WARP_SPECIALIZE=1) if ws else config


SKINNY = [cfg(64, 64, 128, 4, 4), cfg(64, 32, 128, 4, 4), cfg(64, 32, 256, 4, 3), cfg(32, 32, 256, 4, 3),
          cfg(16, 64, 256, 4, 3)]
# 128x128 with one warpgroup and <= 96 KB shared memory fits two CTAs per SM, so one CTA's epilogue
# (erf over its whole tile) overlaps the other's main loop; the big tiles win on the main loop alone.
HALF_BIG = [cfg(128, 256, 64, 8, 3), cfg(128, 128, 64, 8, 4), cfg(128, 128, 64, 4, 3), cfg(256, 128, 64, 8, 3),
            cfg(64, 256, 64, 4, 4), cfg(128, 256, 64, 8, 4), cfg(128, 128, 64, 4, 4),
            tma(128, 256, 64, 8, 3), tma(128, 128, 64, 8, 4), tma(128, 256, 64, 8, 4), tma(128, 128, 64, 4, 3),
            tma(128, 256, 64, 8, 3, ws=True), tma(128, 128, 64, 8, 4, ws=True)]
FP32_BIG = [cfg(128, 128, 32, 8, 4), cfg(128, 256, 32, 8, 3), cfg(128, 128, 64, 8, 3), cfg(64, 256, 32, 4, 4),
            cfg(256, 128, 32, 8, 3), cfg(128, 128, 32, 4, 3), cfg(128, 128, 32, 4, 4),
            tma(128, 128, 32, 8, 3), tma(128, 128, 32, 8, 4), tma(128, 128, 64, 8, 2)]
SKINNY_FP32 = [cfg(64, 64, 64, 4, 4), cfg(64, 32, 128, 4, 3), cfg(64, 32, 64, 4, 4), cfg(32, 32, 128, 4, 3)]
CANDIDATES = {  # key -> (dtype of x, precision, skinny candidates, big candidates)
    "half": (torch.float16, "native", SKINNY, HALF_BIG),
    "fp32_tf32": (torch.float32, "tf32", SKINNY_FP32, FP32_BIG),
    "fp32_fp16": (torch.float32, "fp16", SKINNY_FP32, FP32_BIG),
}


def time_config(op, dtype, dot, config, shape):
    import triton
    from kernels import fused_linear

    M, N, K = shape
    x = torch.randn(M, K, device="cuda", dtype=dtype)
    w = torch.randn(N, K, device="cuda", dtype=dtype) * K ** -0.5
    y = torch.empty(M, N, device="cuda", dtype=dtype)
    vec = [torch.rand(N, device="cuda") + 0.5 for _ in range(5)]
    tiles = triton.cdiv(M, config["BLOCK_M"]) * triton.cdiv(N, config["BLOCK_N"])
    kernel = spec.KERNELS[config.get("KERNEL", "tiled")]
    meta = dict({k: config[k] for k in spec.CONFIG_KEYS}, EPILOGUE=spec.OPS[op], DOT=dot,
                **{k: bool(config.get(k, default)) for k, default in kernel["knobs"].items()})
    if config.get("KERNEL", "tiled") == "tma":
        # device-side TMA descriptors live in global scratch that the launcher provides
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
        grid = (min(tiles, torch.cuda.get_device_properties(0).multi_processor_count),)

        def run():
            fused_linear.fused_linear_tma_kernel[grid](x, w, y, *vec, M, N, K, x.stride(0), w.stride(0), y.stride(0),
                                                       1, 1, 1, 1e-5, grid[0], **meta)
    else:
        def run():
            fused_linear.fused_linear_kernel[(tiles,)](x, w, y, *vec, M, N, K, x.stride(0), x.stride(1), w.stride(0),
                                                       w.stride(1), y.stride(0), y.stride(1), 1, 1, 1, 1e-5, **meta)
    try:
        run()
        torch.cuda.synchronize()
        return triton.testing.do_bench(run, warmup=10, rep=40, return_mode="median")
    except Exception as e:  # out of resources etc.: not a candidate on this GPU
        print(f"    {config} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
        return math.inf


def pick(op, key, max_m, shapes, candidates):
    dtype, dot, _, _ = CANDIDATES[key]
    times = {i: [time_config(op, dtype, dot, c, s) for s in shapes] for i, c in enumerate(candidates)}
    best_per_shape = [min(times[i][j] for i in times) for j in range(len(shapes))]
    score = {i: math.exp(sum(math.log(t / b) for t, b in zip(times[i], best_per_shape)) / len(shapes))
             for i in times}
    winner = min(score, key=score.get)
    for i, c in enumerate(candidates):
        ms = " ".join(f"{t:.4f}" for t in times[i])
        print(f"  {op:<20} {key:<9} m<={max_m or 'inf':<4} {'*' if i == winner else ' '} score {score[i]:.3f} "
              f"{json.dumps(c)} ms [{ms}]", flush=True)
    return candidates[winner], {"shapes": shapes, "ms": times[winner]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--keys", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--ops", nargs="*", default=list(spec.OPS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.tune measures on a GPU; none is visible")
    major, minor = torch.cuda.get_device_capability()
    arch = major * 10 + minor
    path = ROOT / "aot" / "tuning" / f"sm_{arch}.json"
    table = json.loads(path.read_text()) if path.exists() else json.loads(
        (ROOT / "aot" / "tuning" / "sm_90.json").read_text())
    import triton
    evidence = {}
    for key in args.keys:
        _, _, skinny, big = CANDIDATES[key]
        rules = []
        for op in args.ops:
            for max_m, shapes in BUCKETS:
                candidates = skinny if max_m == 64 else big if max_m is None else skinny + big
                best, seen = pick(op, key, max_m, shapes, candidates)
                evidence[f"{key}/{op}/m<={max_m}"] = seen
                rule = {"ops": [op], "config": best}
                if max_m is not None:
                    rule = {"ops": [op], "max_m": max_m, "config": best}
                if rules and rules[-1]["ops"] == [op] and rules[-1]["config"] == best and max_m is None:
                    rules[-1] = rule  # the previous bucket's winner also wins here: widen it
                else:
                    rules.append(rule)
        table["rules"][key] = rules
    table["arch"] = arch
    table["source"] = (f"measured by `python -m bench.tune` on {torch.cuda.get_device_name()} on "
                       f"{datetime.date.today()} (torch {torch.__version__}, triton {triton.__version__}); "
                       f"fp32_ieee and 'generic' entries are hand-set fallbacks")
    table["evidence_ms"] = evidence
    text = json.dumps(table, indent=1) + "\n"
    if args.dry_run:
        print(text)
    else:
        path.write_text(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
