"""Hopper main loop for fp32 x on fp16 tensor cores with x rounded by a warpgroup of its own, in Gluon (build-time only,
like fused_linear.py).
Experiment (PERF_NOTES.md v43): correct, but 25-30% slower than fused_linear_gluon.py; no table uses it.

    y = EPILOGUE(x @ W^T + bias)    x: fp32 [M, K], W: fp16 [N, K] (the launcher rounds it once per call), y: fp32

Why: fused_linear_gluon.py TMA-copies x's fp32 tiles into shared memory and reads them back into the wgmma A registers:
64 KB of shared-memory traffic per 64-deep k-step for x alone, 160 KB in all against 1024 clocks of tensor work, so the
tensor cores wait on shared memory (PERF_NOTES.md v25-v27). Here x never sits in shared memory as fp32: a converter
loads it from global memory into registers, rounds it to fp16 and stores that (16 KB per k-step), and wgmma reads it
from there (16 KB): 128 KB per k-step in all, as the fp16 kernel moves.

Partitions (gl.warp_specialize), in each persistent program:
  converter   the kernel's 4 warps (the default partition): per k-step of the program's tiles, in tile order, it waits
              for a free ring slot, TMA-loads W's tile into it, and stores x's tile rounded to fp16; x's next tile
              is loaded while it waits for the next slot
  consumer 0  4 more warps: rows 0..BLOCK_M/2 of every tile;  consumer 1: the other half
A slot's `ready` barrier completes when W's bytes have landed and the converter has stored x's tile (two arrivals); its
`empty` barrier when both consumers have retired the wgmma that read it (two arrivals).
(The consumers are worker partitions because triton 3.6 cannot lower a tensor store in the default partition.)
"""
from kernels import fused_linear
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma_wait

# Registers per thread: the kernel is compiled with maxnreg 168 (aot/spec.py: KERNELS' "options") for its three
# warpgroups (168 x 384 threads <= 64K); each consumer takes CONSUMER_REGS (its accumulator alone is 128) and the
# converter is left (3 x 168 - 2 x CONSUMER_REGS): one fp32 k-step of x in flight (64 registers at BLOCK_K 64).
CONSUMER_REGS = gl.constexpr(184)


@gluon.jit
def tile_origin(tile, first_tile, num_sms, M, N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr):
    """The first row and column of the program's tile number `tile` (fused_linear.grouped_tile's order)."""
    pid_m, pid_n = fused_linear.grouped_tile(first_tile + tile * num_sms, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@gluon.jit
def load_x_step(x_rows, k, K, live, rows_ok, cols, stride_xm, HALF: gl.constexpr):
    """One k-step of x at column k, fp32 in registers, as its two row halves (x_rows: the tile's first row of x);
    zeros past M, past K, and where not `live`."""
    c = gl.expand_dims(k + cols, 0)
    ok = (c < K) & live
    top = gl.load(x_rows + c, mask=gl.expand_dims(rows_ok[0], 1) & ok, other=0.0)
    bottom = gl.load(x_rows + HALF * stride_xm + c, mask=gl.expand_dims(rows_ok[1], 1) & ok, other=0.0)
    return top, bottom


@gluon.jit
def tile_rows_of_x(tile, x_ptr, stride_xm, M, N, first_tile, num_sms, rows, BLOCK_M: gl.constexpr,
                   BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr):
    """Where the program's tile number `tile` starts in x (one pointer per row of the top half), which rows of
    either half exist, and the tile's first column of W."""
    off_m, off_n = tile_origin(tile, first_tile, num_sms, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    r = off_m + rows
    x_rows = x_ptr + gl.expand_dims(r.to(gl.int64) * stride_xm, 1)
    return x_rows, (r < M, r + BLOCK_M // 2 < M), off_n


@gluon.jit
def converter(x_ptr, w_desc, x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
              M, N, K, stride_xm, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles,
              k_steps, IS_BN: gl.constexpr, GROUP_M: gl.constexpr):
    STAGES: gl.constexpr = x_bufs.type.shape[0]
    BLOCK_M: gl.constexpr = x_bufs.type.shape[1]
    BLOCK_K: gl.constexpr = x_bufs.type.shape[2]
    BLOCK_N: gl.constexpr = w_bufs.type.shape[1]
    HALF: gl.constexpr = BLOCK_M // 2
    # 4 consecutive fp32 per thread along K: each 16-byte load instruction of a warp reads whole 32-byte sectors (with
    # 8 per thread, as two loads, each instruction would read half of every sector it touches: 2x the L1 traffic)
    THREADS_K: gl.constexpr = BLOCK_K // 4
    layout: gl.constexpr = gl.BlockedLayout([1, 4], [32 // THREADS_K, THREADS_K], [gl.num_warps(), 1], [1, 0])
    rows = gl.arange(0, HALF, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, layout))
    total_steps = my_tiles * k_steps
    # the loads' position (one k-step ahead of the stores), and the stores' tile column
    x_rows, rows_ok, load_off_n = tile_rows_of_x(0, x_ptr, stride_xm, M, N, first_tile, num_sms, rows, BLOCK_M, BLOCK_N,
                                                 GROUP_M)
    top, bottom = load_x_step(x_rows, 0, K, total_steps > 0, rows_ok, cols, stride_xm, HALF)
    load_k = 0
    load_tile = 0
    for step in range(total_steps):
        # W's tile goes out first: its latency runs under the wait for x's loads below
        slot = step % STAGES
        mbarrier.wait(empty.index(slot), ((step // STAGES) & 1) ^ 1)  # (a fresh barrier: its "phase -1" is done)
        mbarrier.expect(ready.index(slot), w_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(w_desc, [load_off_n, load_k], ready.index(slot), w_bufs.index(slot))
        top16 = top.to(gl.float16)
        bottom16 = bottom.to(gl.float16)
        # the next k-step's x goes out before this one is stored: its latency runs under the stores and the next wait
        load_k += BLOCK_K
        if load_k >= K:
            load_k = 0
            load_tile += 1
            x_rows, rows_ok, load_off_n = tile_rows_of_x(load_tile, x_ptr, stride_xm, M, N, first_tile, num_sms, rows,
                                                         BLOCK_M, BLOCK_N, GROUP_M)
        top, bottom = load_x_step(x_rows, load_k, K, step + 1 < total_steps, rows_ok, cols, stride_xm, HALF)
        x_bufs.index(slot).slice(0, HALF, dim=0).store(top16)
        x_bufs.index(slot).slice(HALF, HALF, dim=0).store(bottom16)
        # the stores reach the async proxy (wgmma) before the arrival; Triton syncs the partition's warps before a
        # one-thread arrive
        fence_async_shared()
        mbarrier.arrive(ready.index(slot), count=1)


@gluon.jit
def store_quarter(acc, y_ptr, stride_ym, off_m, off_n, M, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
                  has_bias, has_gamma, has_beta, eps, EPILOGUE: gl.constexpr):
    """fused_linear's epilogue arithmetic on one column slice of a consumer's rows, stored straight from the registers
    (the per-column vectors loaded one column per thread, then spread to the accumulator's layout)."""
    ROWS: gl.constexpr = acc.shape[0]
    COLS: gl.constexpr = acc.shape[1]
    columns: gl.constexpr = gl.SliceLayout(0, acc.type.layout)
    one_per_thread: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
    scale, shift = fused_linear.epilogue_vectors(off_n + gl.arange(0, COLS, layout=one_per_thread), N, bias_ptr,
                                                 mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta,
                                                 eps, EPILOGUE)
    out = fused_linear.apply_epilogue(acc, gl.convert_layout(scale, columns), gl.convert_layout(shift, columns),
                                      EPILOGUE, y_ptr.dtype.element_ty)
    rows = gl.expand_dims((off_m + gl.arange(0, ROWS, layout=gl.SliceLayout(1, acc.type.layout))).to(gl.int64), 1)
    cols = gl.expand_dims(off_n + gl.arange(0, COLS, layout=columns), 0)
    gl.store(y_ptr + rows * stride_ym + cols, out, mask=(rows < M) & (cols < N))


@gluon.jit
def consumer_rows(x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M, N,
                  stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
                  EPILOGUE: gl.constexpr, GROUP_M: gl.constexpr, WHICH: gl.constexpr):
    """Consumer WHICH: rows WHICH * BLOCK_M / 2 onwards of each of the program's tiles."""
    STAGES: gl.constexpr = x_bufs.type.shape[0]
    BLOCK_M: gl.constexpr = x_bufs.type.shape[1]
    BLOCK_N: gl.constexpr = w_bufs.type.shape[1]
    HALF: gl.constexpr = BLOCK_M // 2
    QUARTER: gl.constexpr = BLOCK_N // 4
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[gl.num_warps(), 1],
                                                         instr_shape=[16, BLOCK_N, 16])
    vectors = (M, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta, eps)
    for t in range(my_tiles):
        first_step = t * k_steps
        acc = gl.zeros((HALF, BLOCK_N), gl.float32, acc_layout)
        for kk in range(k_steps):
            step = first_step + kk
            slot = step % STAGES
            mbarrier.wait(ready.index(slot), (step // STAGES) & 1)
            acc = warpgroup_mma(x_bufs.index(slot).slice(WHICH * HALF, HALF, dim=0),
                                w_bufs.index(slot).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=1, deps=[acc])
            # the k-step before has retired: this consumer is done with its slot
            mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), count=1, pred=kk > 0)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
        mbarrier.arrive(empty.index((first_step + k_steps - 1) % STAGES), count=1)
        off_m, off_n = tile_origin(t, first_tile, num_sms, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m += WHICH * HALF
        # by quarters of the columns: a whole row of per-column vectors beside the accumulator spills (v25)
        q0, q1, q2, q3 = fused_linear.split_quarters(acc, HALF, BLOCK_N)
        store_quarter(q0, y_ptr, stride_ym, off_m, off_n, *vectors, EPILOGUE)
        store_quarter(q1, y_ptr, stride_ym, off_m, off_n + QUARTER, *vectors, EPILOGUE)
        store_quarter(q2, y_ptr, stride_ym, off_m, off_n + 2 * QUARTER, *vectors, EPILOGUE)
        store_quarter(q3, y_ptr, stride_ym, off_m, off_n + 3 * QUARTER, *vectors, EPILOGUE)


@gluon.jit
def consumer(x_ptr, w_desc, x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
             M, N, K, stride_xm, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
             IS_BN: gl.constexpr, GROUP_M: gl.constexpr, WHICH: gl.constexpr):
    # (partition arguments travel as a tuple, which holds no strings: the epilogue comes as a flag)
    rest = (x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M, N, stride_ym,
            has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps)
    if IS_BN:
        consumer_rows(*rest, "bn_gelu_relu", GROUP_M, WHICH)
    else:
        consumer_rows(*rest, "relu", GROUP_M, WHICH)


@gluon.jit
def top_consumer(x_ptr, w_desc, x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
                 M, N, K, stride_xm, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles,
                 k_steps, IS_BN: gl.constexpr, GROUP_M: gl.constexpr):
    consumer(x_ptr, w_desc, x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M, N,
             K, stride_xm, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps, IS_BN,
             GROUP_M, 0)


@gluon.jit
def bottom_consumer(x_ptr, w_desc, x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr,
                    beta_ptr, M, N, K, stride_xm, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms,
                    my_tiles, k_steps, IS_BN: gl.constexpr, GROUP_M: gl.constexpr):
    consumer(x_ptr, w_desc, x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M, N,
             K, stride_xm, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps, IS_BN,
             GROUP_M, 1)


@gluon.jit(**fused_linear.JIT_LIKE_AOT)
def fused_linear_wgmma_ws_kernel(
    x_ptr, w_ptr, y_ptr,
    bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_ym,  # inner strides are 1; rows 16-byte aligned (TMA's rule)
    has_bias, has_gamma, has_beta,
    eps,
    num_sms,
    EPILOGUE: gl.constexpr, DOT: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, GROUP_M: gl.constexpr,
    STAGES: gl.constexpr,
):
    gl.static_assert(DOT == "fp16", "fused_linear_wgmma_ws_kernel serves fp32 x on fp16 tensor cores only")
    gl.static_assert(gl.num_warps() == 4, "the converter is one warpgroup: num_warps must be 4")
    gl.static_assert(BLOCK_M == 128, "two consumer warpgroups of 64 rows each")
    x_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], gl.float16)
    w_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], gl.float16)
    w_desc = tma.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[stride_wn, 1], block_shape=[BLOCK_N, BLOCK_K],
                                        layout=w_layout)
    x_bufs = gl.allocate_shared_memory(gl.float16, [STAGES, BLOCK_M, BLOCK_K], x_layout)
    w_bufs = gl.allocate_shared_memory(gl.float16, [STAGES, BLOCK_N, BLOCK_K], w_layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=2)  # W's expect-tx arrival + the converter's, after its x stores
        mbarrier.init(empty.index(i), count=2)  # one per consumer
    fence_async_shared()

    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    first_tile = gl.program_id(0)
    args = (x_ptr, w_desc, x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
            M, N, K, stride_xm, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms,
            gl.cdiv(num_tiles - first_tile, num_sms), gl.cdiv(K, BLOCK_K), EPILOGUE == "bn_gelu_relu", GROUP_M)
    gl.warp_specialize([(converter, args), (top_consumer, args), (bottom_consumer, args)], [4, 4],
                       [CONSUMER_REGS, CONSUMER_REGS])
