"""Time candidate kernel configs (Triton JIT, the same source the AOT build compiles) on the seed problems.

    python -m bench.probe                  # every group below
    python -m bench.probe --groups p41_half p76_tf32 --out /tmp/probe

A development tool for docs/perf-log.md (needs a GPU and triton), complementary to bench.tune: tune.py picks
table entries over whole shape buckets; this one answers one question at a time on one shape, and times
each candidate twice, the two ways that disagreed in the past:
  back_to_back  bench.timing.time_cuda: calls queued back to back, median of per-call CUDA events
                (what bench/bench.py reports; the GPU never idles between calls)
  do_bench      triton.testing.do_bench median: the L2 is flushed (a 256 MB memset) before every call
Candidates with WEIGHT_FP16 (fp32 in, fp16 tensor cores) round the weight to fp16 inside the timed call, as
the AOT launcher does.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.contenders import composite  # noqa: E402
from fusedops.reference import EPS, SEED_PROBLEMS, rel_err  # noqa: E402
from bench.timing import round_order, time_cuda  # noqa: E402
from bench.tune import cfg, coop, jit_runner, tma, wgmma  # noqa: E402


AOT = None  # the built op itself, through torch.ops.fusedops (whatever the tables pick)
P41, P76 = ((m, n, k) for _, _, m, k, n in SEED_PROBLEMS)  # the seed problems' (M, N, K), as the bench defines them
# group -> (op, M, N, K, dtype of x, DOT, [(label, config)])
GROUPS = {
    "p41_half": ("linear_bn_gelu_relu", *P41, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("AOT op (torch.ops.fusedops)", AOT),
        ("tma 128x256x64 s3 2 slices", tma(128, 256, 64, 8, 3, slices=2)),
        ("tma 128x256x64 s4 2 slices", tma(128, 256, 64, 8, 4, slices=2)),
        ("tma 256x128x64 s3", tma(256, 128, 64, 8, 3)),
        ("tma 128x128x64 w4 s2 (2 CTA/SM)", tma(128, 128, 64, 4, 2)),
        ("tma 128x128x32 w4 s4 (2 CTA/SM)", tma(128, 128, 32, 4, 4)),
        ("tma 128x256x64 s3 g16", tma(128, 256, 64, 8, 3, group=16)),
    ]),
    # the same kernel through the AOT op and through the JIT, timed interleaved (--rounds): is there a gap?
    "p41_aot_vs_jit": ("linear_bn_gelu_relu", *P41, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("AOT op (torch.ops.fusedops)", AOT),
    ]),
    # two programs per SM, one warpgroup each: one's epilogue overlaps the other's main loop (session 3)
    "p41_ctas": ("linear_bn_gelu_relu", *P41, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("AOT op (torch.ops.fusedops)", AOT),
        ("tma 128x128x64 w4 s3 2 slices 2/SM", tma(128, 128, 64, 4, 3, slices=2, ctas=2)),
        ("tma 128x128x64 w4 s2 2/SM", tma(128, 128, 64, 4, 2, ctas=2)),
        ("tma 128x128x32 w4 s5 2 slices 2/SM", tma(128, 128, 32, 4, 5, slices=2, ctas=2)),
        ("tma 128x128x64 w4 s3 4 slices 2/SM", tma(128, 128, 64, 4, 3, slices=4, ctas=2)),
        ("tma 64x256x64 w4 s2 2/SM", tma(64, 256, 64, 4, 2, ctas=2)),
        ("tma 128x256x64 s4 4 slices", tma(128, 256, 64, 8, 4, slices=4)),
    ]),
    "p41_relu_ctas": ("linear_relu", *P41, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("tma 128x128x64 w4 s3 2 slices 2/SM", tma(128, 128, 64, 4, 3, slices=2, ctas=2)),
        ("tma 128x128x64 w4 s2 2/SM", tma(128, 128, 64, 4, 2, ctas=2)),
    ]),
    "p76_tf32_slices": ("linear_relu", *P76, torch.float32, "tf32", [
        ("tma 128x256x32 s3 2 slices (table)", tma(128, 256, 32, 8, 3, slices=2)),
        ("AOT op (torch.ops.fusedops)", AOT),
        ("tma 128x256x32 s4 4 slices", tma(128, 256, 32, 8, 4, slices=4)),
        ("tma 128x256x32 s3 4 slices", tma(128, 256, 32, 8, 3, slices=4)),
        ("tma 128x128x32 w4 s3 4 slices 2/SM", tma(128, 128, 32, 4, 3, slices=4, ctas=2)),
    ]),
    "p41_tf32_ctas": ("linear_bn_gelu_relu", *P41, torch.float32, "tf32", [
        ("tma 256x128x32 s3 2 slices (table)", tma(256, 128, 32, 8, 3, slices=2)),
        ("tma 128x256x32 s4 4 slices", tma(128, 256, 32, 8, 4, slices=4)),
        ("tma 128x128x32 w4 s3 4 slices 2/SM", tma(128, 128, 32, 4, 3, slices=4, ctas=2)),
    ]),
    "p41_fp32_fp16_ctas": ("linear_bn_gelu_relu", *P41, torch.float32, "fp16", [
        ("tma 128x256x32 s3, w16 (table)", tma(128, 256, 32, 8, 3, w16=True)),
        ("tma 128x128x32 w4 s3 2 slices 2/SM, w16", tma(128, 128, 32, 4, 3, slices=2, w16=True, ctas=2)),
        ("tma 128x128x64 w4 s2 4 slices 2/SM, w16", tma(128, 128, 64, 4, 2, slices=4, w16=True, ctas=2)),
        ("tma 128x256x32 s4 4 slices, w16", tma(128, 256, 32, 8, 4, slices=4, w16=True)),
    ]),
    "p76_aot_vs_jit": ("linear_relu", *P76, torch.float32, "tf32", [
        ("tma 128x256x32 s3 2 slices (table)", tma(128, 256, 32, 8, 3, slices=2)),
        ("AOT op (torch.ops.fusedops)", AOT),
    ]),
    "p41_bf16": ("linear_bn_gelu_relu", *P41, torch.bfloat16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("tma 128x256x64 s3 2 slices", tma(128, 256, 64, 8, 3, slices=2)),
    ]),
    "p41_relu_half": ("linear_relu", *P41, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
    ]),
    "p76_half": ("linear_relu", *P76, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
    ]),
    # the tile order's row-group height: W is re-read from DRAM once per group of GROUP_M row blocks (v23)
    "p41_group_m": ("linear_bn_gelu_relu", *P41, torch.float16, "native", [
        ("tma 128x256x64 s3 g8 (table)", tma(128, 256, 64, 8, 3)),
        ("tma 128x256x64 s3 g16", tma(128, 256, 64, 8, 3, group=16)),
        ("tma 128x256x64 s3 g32", tma(128, 256, 64, 8, 3, group=32)),
        ("tma 128x256x64 s3 g4", tma(128, 256, 64, 8, 3, group=4)),
    ]),
    "p76_group_m": ("linear_relu", *P76, torch.float16, "native", [
        ("tma 128x256x64 s3 g8 (table)", tma(128, 256, 64, 8, 3)),
        ("tma 128x256x64 s3 g4", tma(128, 256, 64, 8, 3, group=4)),
        ("tma 128x256x64 s3 g2", tma(128, 256, 64, 8, 3, group=2)),
    ]),
    "p41_fp32_fp16": ("linear_bn_gelu_relu", *P41, torch.float32, "fp16", [
        ("tiled 256x128x32 w8 s3 (table)", cfg(256, 128, 32, 8, 3)),
        ("AOT op (torch.ops.fusedops)", AOT),
        ("tma 128x128x32 s4, w fp32", tma(128, 128, 32, 8, 4)),
        ("tma 128x256x32 s3, w16", tma(128, 256, 32, 8, 3, w16=True)),
        ("tma 128x256x32 s4 2 slices, w16", tma(128, 256, 32, 8, 4, slices=2, w16=True)),
        ("tma 128x128x64 s3, w16", tma(128, 128, 64, 8, 3, w16=True)),
        ("tma 128x128x32 s4, w16", tma(128, 128, 32, 8, 4, w16=True)),
        ("tma 256x128x32 s3 2 slices, w16", tma(256, 128, 32, 8, 3, slices=2, w16=True)),
        ("tiled 128x256x32 w8 s3, w16", cfg(128, 256, 32, 8, 3, WEIGHT_FP16=1)),
        ("tiled 128x128x32 w8 s4, w16", cfg(128, 128, 32, 8, 4, WEIGHT_FP16=1)),
    ]),
    "p76_tf32": ("linear_relu", *P76, torch.float32, "tf32", [
        ("tma 128x128x32 s4 (table)", tma(128, 128, 32, 8, 4)),
        ("AOT op (torch.ops.fusedops)", AOT),
        ("tma 128x128x32 s5", tma(128, 128, 32, 8, 5)),
        ("tma 128x256x32 s3 2 slices", tma(128, 256, 32, 8, 3, slices=2)),
        ("tma 128x256x16 s4", tma(128, 256, 16, 8, 4)),
        ("tma 256x128x32 s3 2 slices", tma(256, 128, 32, 8, 3, slices=2)),
        ("tma 128x128x64 s3 2 slices", tma(128, 128, 64, 8, 3, slices=2)),
        ("tma 128x128x32 w4 s4", tma(128, 128, 32, 4, 4)),
        ("tma 128x256x32 s3 2 slices g4", tma(128, 256, 32, 8, 3, group=4, slices=2)),
    ]),
    # FLATTEN=0 (session 4): the persistent loop nest without flattening, on the shared-memory-operand paths
    "p76_tf32_flat": ("linear_relu", *P76, torch.float32, "tf32", [
        ("tma 128x256x32 s3 2 slices (table)", tma(128, 256, 32, 8, 3, slices=2)),
        ("tma 128x256x32 s3 2 slices, not flattened", tma(128, 256, 32, 8, 3, slices=2, FLATTEN=0)),
        ("tma 128x256x32 s3 2 slices g4", tma(128, 256, 32, 8, 3, slices=2, group=4)),
        ("tma 128x256x32 s3 2 slices g16", tma(128, 256, 32, 8, 3, slices=2, group=16)),
    ]),
    "p41_half_flat": ("linear_bn_gelu_relu", *P41, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("tma 128x256x64 s3, not flattened", tma(128, 256, 64, 8, 3, FLATTEN=0)),
    ]),
    # fp32 in, fp16 tensor cores, on the pointer-load kernel: its wgmma waits for each one (ptxas-checked safe)
    "p41_fp32_fp16_tiled": ("linear_bn_gelu_relu", *P41, torch.float32, "fp16", [
        ("tiled 128x256x32 w8 s3, w16 (table)", cfg(128, 256, 32, 8, 3, WEIGHT_FP16=1)),
        ("AOT op (torch.ops.fusedops)", AOT),
        ("tiled 128x256x32 w8 s4, w16", cfg(128, 256, 32, 8, 4, WEIGHT_FP16=1)),
        ("tma 128x256x32 s3, w16 (previous table)", tma(128, 256, 32, 8, 3, w16=True)),
    ]),
    # one candidate each, for ncu's limiter sections (session 13): is problem 41's fp32-in kernel bound by shared memory
    # or by L2-to-SM bytes, against the fp16 kernel and cuBLAS at the same shape?
    "p41_fp32_fp16_limiter": ("linear_bn_gelu_relu", *P41, torch.float32, "fp16", [
        ("wgmma 128x256x64 w8 s3 (table)", wgmma(128, 256, 64, 8, 3)),
    ]),
    "p41_half_limiter": ("linear_bn_gelu_relu", *P41, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
    ]),
    # the Gluon kernel: explicit wgmma waits, two A register sets (kernels/fused_linear_gluon.py; session 5)
    "p41_fp32_fp16_wgmma": ("linear_bn_gelu_relu", *P41, torch.float32, "fp16", [
        ("tiled 128x256x32 w8 s3, w16 (previous table)", cfg(128, 256, 32, 8, 3, WEIGHT_FP16=1)),
        ("wgmma 128x256x64 w8 s3 (table)", wgmma(128, 256, 64, 8, 3)),
        ("AOT op (torch.ops.fusedops)", AOT),
        ("wgmma 128x256x64 w8 s3 g4", wgmma(128, 256, 64, 8, 3, group=4)),
        ("wgmma 128x256x64 w8 s3 g16", wgmma(128, 256, 64, 8, 3, group=16)),
        ("wgmma 128x256x32 w8 s4", wgmma(128, 256, 32, 8, 4)),
        ("wgmma 128x256x32 w8 s5", wgmma(128, 256, 32, 8, 5)),
        ("wgmma 128x256x32 w8 s6", wgmma(128, 256, 32, 8, 6)),
        ("wgmma 128x256x32 w8 s6 g16", wgmma(128, 256, 32, 8, 6, group=16)),
    ]),
    "p41_relu_fp32_fp16_wgmma": ("linear_relu", *P41, torch.float32, "fp16", [
        ("tiled 128x256x32 w8 s3, w16 (previous table)", cfg(128, 256, 32, 8, 3, WEIGHT_FP16=1)),
        ("wgmma 128x256x64 w8 s3 (table)", wgmma(128, 256, 64, 8, 3)),
        ("AOT op (torch.ops.fusedops)", AOT),
        ("wgmma 128x256x32 w8 s4", wgmma(128, 256, 32, 8, 4)),
        ("wgmma 128x256x32 w8 s6", wgmma(128, 256, 32, 8, 6)),
    ]),
    # the mid bucket's worst sweep points (M 256, session 5): one table rule serves every N there
    "m256_n8192_half": ("linear_relu", 256, 8192, 8192, torch.float16, "native", [
        ("tiled 128x64x64 w4 s4 (table mid)", cfg(128, 64, 64, 4, 4)),
        ("tiled 128x128x64 w8 s4", cfg(128, 128, 64, 8, 4)),
        ("tiled 128x128x64 w4 s4", cfg(128, 128, 64, 4, 4)),
        ("tiled 64x256x64 w4 s4", cfg(64, 256, 64, 4, 4)),
        ("tiled 128x256x64 w8 s3", cfg(128, 256, 64, 8, 3)),
        ("tma 128x128x64 w8 s4", tma(128, 128, 64, 8, 4)),
        ("tma 128x256x64 w8 s3 (table big)", tma(128, 256, 64, 8, 3)),
        ("tma 64x256x64 w4 s3", tma(64, 256, 64, 4, 3)),
    ]),
    "m256_n4096_half": ("linear_relu", 256, 4096, 4096, torch.float16, "native", [
        ("tiled 128x64x64 w4 s4 (table mid)", cfg(128, 64, 64, 4, 4)),
        ("tiled 64x128x64 w4 s4", cfg(64, 128, 64, 4, 4)),
        ("tiled 128x128x64 w4 s4 split 2", cfg(128, 128, 64, 4, 4, SPLIT_K=2)),
        ("tiled 128x64x64 w4 s4 split 2", cfg(128, 64, 64, 4, 4, SPLIT_K=2)),
        ("tiled 64x64x64 w4 s4", cfg(64, 64, 64, 4, 4)),
        ("tma 64x128x64 w4 s4", tma(64, 128, 64, 4, 4)),
        ("tma 128x128x64 w8 s4", tma(128, 128, 64, 8, 4)),
    ]),
    # deeper pipelines on the big rules (session 6, after v30): smaller store-staging slices make room for a stage
    "p76_tf32_deep": ("linear_relu", *P76, torch.float32, "tf32", [
        ("tma 128x256x32 s3 2 slices (table)", tma(128, 256, 32, 8, 3, slices=2)),
        ("AOT op (torch.ops.fusedops)", AOT),
        ("tma 128x256x32 s4 4 slices", tma(128, 256, 32, 8, 4, slices=4)),
        ("tma 256x128x32 s4 4 slices", tma(256, 128, 32, 8, 4, slices=4)),
        ("tma 128x128x32 s6 2 slices", tma(128, 128, 32, 8, 6, slices=2)),
    ]),
    "k1024_bn_half": ("linear_bn_gelu_relu", 4096, 4096, 1024, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("tma 128x256x64 s4 2 slices", tma(128, 256, 64, 8, 4, slices=2)),
        ("tma 128x128x64 w8 s6", tma(128, 128, 64, 8, 6)),
        ("tiled 64x128x64 w4 s8", cfg(64, 128, 64, 4, 8)),
        ("tma 128x128x64 w4 s3 4 slices 2 CTAs/SM", tma(128, 128, 64, 4, 3, slices=4, ctas=2)),
    ]),
    # a loader warpgroup and two consumer warpgroups per tile (kernels/fused_linear_coop.py; session 10)
    "p76_tf32_coop": ("linear_relu", *P76, torch.float32, "tf32", [
        ("tma 128x256x32 s4 4 slices (table)", tma(128, 256, 32, 8, 4, slices=4)),
        ("coop 128x256x32 s4", coop(128, 256, 32, 4)),
    ]),
    "p41_tf32_coop": ("linear_bn_gelu_relu", *P41, torch.float32, "tf32", [
        ("tma 256x128x32 s4 4 slices (table)", tma(256, 128, 32, 8, 4, slices=4)),
        ("coop 128x256x32 s4", coop(128, 256, 32, 4)),
    ]),
    "p41_half_coop": ("linear_bn_gelu_relu", *P41, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("coop 128x256x64 s4", coop(128, 256, 64, 4)),
        ("coop 128x256x64 s3", coop(128, 256, 64, 3)),
    ]),
    "p76_half_coop": ("linear_relu", *P76, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("coop 128x256x64 s4", coop(128, 256, 64, 4)),
    ]),
    "k1024_bn_half_coop": ("linear_bn_gelu_relu", 4096, 4096, 1024, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("coop 128x256x64 s4", coop(128, 256, 64, 4)),
    ]),
    # coop's epilogue through shared memory and TMA (TMA_STORE) against its register stores (session 11)
    "p41_tf32_coop_store": ("linear_bn_gelu_relu", *P41, torch.float32, "tf32", [
        ("coop 128x256x32 s4 TMA store (table)", coop(128, 256, 32, 4, TMA_STORE=1)),
        ("coop 128x256x32 s4", coop(128, 256, 32, 4)),
    ]),
    "k1024_bn_half_coop_store": ("linear_bn_gelu_relu", 4096, 4096, 1024, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("coop 128x256x64 s4", coop(128, 256, 64, 4)),
        ("coop 128x256x64 s4 TMA store", coop(128, 256, 64, 4, TMA_STORE=1)),
    ]),
    # BN at K 1024 with the L2 flushed (do_bench; the sweep rotates inputs past the L2, where the table's 3-stage TMA
    # kernel lost more than cuBLAS did, v38): does coop's deeper ring with TMA stores win there? (session 12)
    "k1024_bn_half_cold": ("linear_bn_gelu_relu", 4096, 4096, 1024, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("coop 128x256x64 s4 TMA store", coop(128, 256, 64, 4, TMA_STORE=1)),
        ("coop 128x256x64 s3 TMA store", coop(128, 256, 64, 3, TMA_STORE=1)),
        ("tma 128x256x32 s5", tma(128, 256, 32, 8, 5)),
    ]),
    "m1024_k1024_bn_half_cold": ("linear_bn_gelu_relu", 1024, 4096, 1024, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("coop 128x256x64 s4 TMA store", coop(128, 256, 64, 4, TMA_STORE=1)),
        ("coop 128x256x64 s3 TMA store", coop(128, 256, 64, 3, TMA_STORE=1)),
        ("tma 128x128x64 w4 s3 4 slices 2/SM", tma(128, 128, 64, 4, 3, slices=4, ctas=2)),
    ]),
    # one wave of 128x256 tiles (M 1024 x N 4096 x K 1024): the store of the first half of the tile under the second
    # half's epilogue (EPILOGUE_SLICES) shortens every program's tail (session 12)
    "m1024_k1024_bn_half_slices": ("linear_bn_gelu_relu", 1024, 4096, 1024, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("tma 128x256x64 s3 2 slices", tma(128, 256, 64, 8, 3, slices=2)),
        ("tma 128x256x64 s3 4 slices", tma(128, 256, 64, 8, 3, slices=4)),
        ("tma 128x256x64 s4 4 slices", tma(128, 256, 64, 8, 4, slices=4)),
    ]),
    "m1024_k1024_bn_bf16_slices": ("linear_bn_gelu_relu", 1024, 4096, 1024, torch.bfloat16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("tma 128x256x64 s3 2 slices", tma(128, 256, 64, 8, 3, slices=2)),
        ("tma 128x256x64 s3 4 slices", tma(128, 256, 64, 8, 3, slices=4)),
    ]),
    "m1024_k1024_relu_half_slices": ("linear_relu", 1024, 4096, 1024, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("tma 128x256x64 s3 2 slices", tma(128, 256, 64, 8, 3, slices=2)),
        ("tma 128x256x64 s3 4 slices", tma(128, 256, 64, 8, 3, slices=4)),
    ]),
    # coop's main loop against the TMA kernel's where the epilogue is cheap (relu, K 1024): what costs coop 4-6% in
    # half precision? (session 12, for ncu)
    "k1024_relu_half_coop_store": ("linear_relu", 4096, 4096, 1024, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("coop 128x256x64 s4 TMA store", coop(128, 256, 64, 4, TMA_STORE=1)),
    ]),
    # v51's lead: does a shallower ring (the loader's lead) or another tile order bring coop's L2 hit rate back?
    "k1024_relu_half_coop_lead": ("linear_relu", 4096, 4096, 1024, torch.float16, "native", [
        ("tma 128x256x64 s3 (table)", tma(128, 256, 64, 8, 3)),
        ("coop 128x256x64 s4 TMA store", coop(128, 256, 64, 4, TMA_STORE=1)),
        ("coop 128x256x64 s3 TMA store", coop(128, 256, 64, 3, TMA_STORE=1)),
        ("coop 128x256x64 s2 TMA store", coop(128, 256, 64, 2, TMA_STORE=1)),
        ("coop 128x256x64 s4 TMA store g4", coop(128, 256, 64, 4, TMA_STORE=1, group=4)),
        ("coop 128x256x64 s4 TMA store g16", coop(128, 256, 64, 4, TMA_STORE=1, group=16)),
    ]),
    # problem 76 TF32 cold (do_bench flushes the L2; the bench rotates W, 256 MB, through DRAM): warm probes have the
    # table level with or ahead of cuBLASLt, the bench 7% behind. More slack in the ring? (session 12)
    "p76_tf32_cold": ("linear_relu", *P76, torch.float32, "tf32", [
        ("coop 128x256x32 s4 TMA store (table)", coop(128, 256, 32, 4, TMA_STORE=1)),
        ("coop 128x256x16 s8 TMA store", coop(128, 256, 16, 8, TMA_STORE=1)),
        ("coop 128x256x32 s4", coop(128, 256, 32, 4)),
        ("tma 128x256x32 s4 4 slices", tma(128, 256, 32, 8, 4, slices=4)),
    ]),
    "p41_tf32": ("linear_bn_gelu_relu", *P41, torch.float32, "tf32", [
        ("tiled 128x256x32 s3 (table)", cfg(128, 256, 32, 8, 3)),
        ("tma 128x128x32 s4", tma(128, 128, 32, 8, 4)),
        ("tma 128x256x32 s3 2 slices", tma(128, 256, 32, 8, 3, slices=2)),
    ]),
}
REFERENCES = {  # group -> what the issue compares against, timed the same two ways
    "p41_half": "mm", "p41_aot_vs_jit": "mm", "p41_bf16": "mm", "p41_relu_half": "mm", "p41_fp32_fp16": "mm16",
    "p76_tf32": "lt_relu", "p41_tf32": "mm", "p41_ctas": "mm", "p41_relu_ctas": "mm", "p76_tf32_slices": "lt_relu",
    "p41_tf32_ctas": "mm", "p41_fp32_fp16_ctas": "mm16", "p76_aot_vs_jit": "lt_relu",
    "p76_tf32_flat": "lt_relu", "p41_half_flat": "mm",
    "p41_fp32_fp16_tiled": "mm16", "p76_half": "mm", "p41_group_m": "mm", "p76_group_m": "mm",
    "p41_fp32_fp16_wgmma": "mm16", "p41_relu_fp32_fp16_wgmma": "mm16", "m256_n8192_half": "mm",
    "p41_fp32_fp16_limiter": "mm16", "p41_half_limiter": "mm",
    "m256_n4096_half": "mm", "p76_tf32_deep": "lt_relu", "k1024_bn_half": "mm",
    "p76_tf32_coop": "lt_relu", "p41_tf32_coop": "mm", "p41_half_coop": "mm", "p76_half_coop": "mm",
    "k1024_bn_half_coop": "mm",
    "p41_tf32_coop_store": "mm", "k1024_bn_half_coop_store": "mm",
    "k1024_bn_half_cold": "mm", "m1024_k1024_bn_half_cold": "mm",
    "m1024_k1024_bn_half_slices": "mm", "m1024_k1024_bn_bf16_slices": "mm", "m1024_k1024_relu_half_slices": "mm",
    "k1024_relu_half_coop_store": "mm", "k1024_relu_half_coop_lead": "mm", "p76_tf32_cold": "lt_relu",
}


def make_runner(op, M, N, K, dtype, dot, config):
    g = torch.Generator(device="cuda")
    g.manual_seed(0)
    x = torch.randn(M, K, device="cuda", dtype=torch.float32, generator=g).to(dtype)
    w = (torch.randn(N, K, device="cuda", dtype=torch.float32, generator=g) * K ** -0.5).to(dtype)
    y = torch.empty(M, N, device="cuda", dtype=dtype)
    b, mean, beta = (torch.randn(N, device="cuda", generator=g) * 0.1 for _ in range(3))
    var = torch.rand(N, device="cuda", generator=g) * 0.5 + 0.5
    gamma = torch.randn(N, device="cuda", generator=g) * 0.2 + 1.0

    def reference():  # the bench's eager composite, in fp64
        with torch.no_grad():
            return composite(op)(*(t.double() for t in (x, w, b, mean, var, gamma, beta)))

    if config is AOT:
        import fusedops
        kw = {"precision": dot} if dtype == torch.float32 else {}
        if op == "linear_relu":
            def run():
                return fusedops.linear_relu(x, w, b, **kw)
        else:
            def run():
                return fusedops.linear_bn_gelu_relu(x, w, b, mean, var, gamma, beta, EPS, **kw)
    else:
        run = jit_runner(op, dot, config, x, w, y, (b, mean, var, gamma, beta))
    return run, reference, (x, w, b)


def reference_runner(kind, x, w, b):
    if kind == "mm":
        return lambda: torch.mm(x, w.t())
    if kind == "mm16":
        x16, w16 = x.to(torch.float16), w.to(torch.float16)
        return lambda: torch.mm(x16, w16.t())
    if kind == "lt_relu":
        return lambda: torch._addmm_activation(b, x, w.t(), use_gelu=False)
    raise ValueError(kind)


def both_timings(fn):
    import triton
    t = time_cuda(fn, warmup=10, reps=100, budget_ms=300.0, min_reps=20)
    d = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    return t.median_ms, d


def interleaved(group, rounds, out):
    """Every candidate of a group and its reference, timed back to back in `rounds` interleaved rounds
    (A B C, B C A, ...: timing.round_order, as the bench); medians over the pooled calls, so a power-limit clock
    dip lands on all of them alike."""
    import statistics
    op, M, N, K, dtype, dot, candidates = GROUPS[group]
    runners, ref, errors = [], None, {}
    for label, config in candidates:
        run, reference, tensors = make_runner(op, M, N, K, dtype, dot, config)
        try:
            y = run()
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - e.g. out of shared memory on this GPU: report, time the rest
            print(f"{group:<14} {label:<36} ERROR {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
            continue
        if ref is None:  # every candidate gets the same seeded inputs: one fp64 reference serves them all
            ref = reference()
        errors[label] = rel_err(y, ref)
        runners.append((label, run))
    runners.append((f"reference {REFERENCES[group]}", reference_runner(REFERENCES[group], *tensors)))
    pooled = {label: [] for label, _ in runners}
    for r in range(rounds):
        for i in round_order(len(runners), r):
            label, run = runners[i]
            pooled[label] += time_cuda(run, warmup=5, reps=60, budget_ms=150.0, min_reps=10).times_ms
    rows = [dict(group=group, label=label, rounds=rounds, median_ms=statistics.median(t), calls=len(t),
                 rel_err=errors.get(label)) for label, t in pooled.items()]
    for r in rows:
        err = "" if r["rel_err"] is None else f"  err {r['rel_err']:.1e}"
        print(f"{group:<14} {r['label']:<36} interleaved x{rounds}: {r['median_ms']:.4f} ms ({r['calls']} calls)"
              f"{err}", flush=True)
    (out / f"probe_{group}_interleaved.json").write_text(json.dumps(rows, indent=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", nargs="*", default=list(GROUPS))
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new candidates after this")
    parser.add_argument("--rounds", type=int, default=1, help="> 1: time each group's candidates interleaved, "
                        "back to back only")
    parser.add_argument("--calls", type=int, default=0, help="> 0: only run each candidate, then the reference, this "
                        "many times, untimed (for a profiler such as ncu to time the kernels themselves)")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 references (mm, cuBLASLt) on TF32, as the TF32 targets
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.calls > 0:
        for group in args.groups:
            op, M, N, K, dtype, dot, candidates = GROUPS[group]
            for label, config in candidates:
                run, _, operands = make_runner(op, M, N, K, dtype, dot, config)
                torch.cuda.nvtx.range_push(label)
                for _ in range(args.calls):
                    run()
                torch.cuda.synchronize()
                torch.cuda.nvtx.range_pop()
                print(f"{group:<14} {label:<36} ran {args.calls} times", flush=True)
            reference = reference_runner(REFERENCES[group], *operands)  # the library kernel it is judged against
            for _ in range(args.calls):
                reference()
            torch.cuda.synchronize()
            print(f"{group:<14} reference {REFERENCES[group]:<26} ran {args.calls} times", flush=True)
        return
    if args.rounds > 1:
        for group in args.groups:
            interleaved(group, args.rounds, out)
        return
    start = time.time()
    rows = []
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu",
                            "--format=csv,noheader", "-lms", "200"], stdout=open(out / "smi.csv", "w"),
                           stderr=subprocess.DEVNULL) if shutil.which("nvidia-smi") else None
    try:
        for group in args.groups:
            op, M, N, K, dtype, dot, candidates = GROUPS[group]
            flop = 2.0 * M * N * K
            for label, config in candidates:
                if time.time() - start > args.budget_s:
                    print(f"budget spent; skipping {group} / {label}", flush=True)
                    continue
                row = dict(group=group, label=label, config=config)
                try:
                    run, reference, tensors = make_runner(op, M, N, K, dtype, dot, config)
                    y = run()
                    torch.cuda.synchronize()
                    ref = reference()
                    row["rel_err"] = rel_err(y, ref)
                    row["b2b_ms"], row["do_bench_ms"] = both_timings(run)
                    if label.endswith("(table)") or label == candidates[0][0]:
                        ref_fn = reference_runner(REFERENCES[group], *tensors)
                        r_b2b, r_db = both_timings(ref_fn)
                        rows.append(dict(group=group, label=f"reference {REFERENCES[group]}", b2b_ms=r_b2b,
                                         do_bench_ms=r_db))
                        print(f"{group:<14} {'reference ' + REFERENCES[group]:<36} b2b {r_b2b:.4f} ms  "
                              f"do_bench {r_db:.4f} ms", flush=True)
                except Exception as e:  # noqa: BLE001 - report and go on
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                rows.append(row)
                if "error" in row:
                    print(f"{group:<14} {label:<36} ERROR {row['error']}", flush=True)
                else:
                    print(f"{group:<14} {label:<36} b2b {row['b2b_ms']:.4f} ms  do_bench {row['do_bench_ms']:.4f} ms"
                          f"  {flop / row['b2b_ms'] / 1e9:.0f} TFLOP/s  err {row['rel_err']:.1e}", flush=True)
                (out / "probe.json").write_text(json.dumps(rows, indent=1))
    finally:
        if smi:
            smi.terminate()
    print("\nsummary (ms, back-to-back / do_bench)")
    for r in rows:
        if "error" not in r:
            print(f"  {r['group']:<14} {r['label']:<36} {r['b2b_ms']:.4f} / {r['do_bench_ms']:.4f}")


if __name__ == "__main__":
    main()
