"""Hopper main loop for fp16/bf16 whose two consumer warpgroups take turns (ping-pong), written in Gluon (build-time
only, like fused_linear.py).

    y = EPILOGUE(x @ W^T + bias)    x, W, y: fp16 or bf16

Why: in the persistent TMA kernel both warpgroups share one 128x256 tile, so the tensor cores idle while they run its
epilogue (BN + GELU: ~17 instructions per element, a quarter of a K-1024 tile's main loop; PERF_NOTES.md v36). Here
each warpgroup owns whole tiles (BLOCK_M x BLOCK_N, one accumulator each) and the two alternate: one runs a tile's main
loop while the other runs the epilogue of the tile before.

Partitions (gl.warp_specialize), in each persistent program:
  loader      the kernel's 4 warps (the default partition): TMA loads of every k-step of the program's tiles, in tile
              order, into one STAGES-deep ring
  consumer 0  4 more warps: the program's even tiles;  consumer 1: 4 more, its odd tiles
(The consumers are worker partitions because triton 3.6 cannot lower a tensor store in the default partition.)
A consumer waits for a k-step's slot (`ready`), starts its wgmma, and frees the slot of the k-step before (`empty`) once
that wgmma has retired. The `turns` barriers hand the ring from one consumer to the other: a consumer starts a tile's
main loop only after the other has started the last k-step of the tile before. That keeps one main loop at a time on
the tensor cores, and keeps every wait on a slot at most one phase ahead (a parity wait cannot tell phases two apart).
"""
from kernels import fused_linear
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma_wait

# Registers per thread: the kernel is compiled with maxnreg 168 (aot/spec.py) for its 3 warpgroups (168 x 384 threads
# <= 64K); the consumers take CONSUMER_REGS each and the loader is left the rest, (168 x 3 - 2 x 232) = 40.
CONSUMER_REGS = gl.constexpr(232)


@gluon.jit
def loader(x_desc, w_desc, x_bufs, w_bufs, ready, empty, turns, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
           M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
           IS_BN: gl.constexpr, GROUP_M: gl.constexpr):
    STAGES: gl.constexpr = x_bufs.type.shape[0]
    BLOCK_M: gl.constexpr = x_bufs.type.shape[1]
    BLOCK_K: gl.constexpr = x_bufs.type.shape[2]
    BLOCK_N: gl.constexpr = w_bufs.type.shape[1]
    for t in range(my_tiles):
        pid_m, pid_n = fused_linear.grouped_tile(first_tile + t * num_sms, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        for kk in range(k_steps):
            step = t * k_steps + kk
            slot = step % STAGES
            mbarrier.wait(empty.index(slot), ((step // STAGES) & 1) ^ 1)  # (a fresh barrier: its "phase -1" is done)
            mbarrier.expect(ready.index(slot), x_desc.block_type.nbytes + w_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(x_desc, [pid_m * BLOCK_M, kk * BLOCK_K], ready.index(slot),
                                            x_bufs.index(slot))
            tma.async_copy_global_to_shared(w_desc, [pid_n * BLOCK_N, kk * BLOCK_K], ready.index(slot),
                                            w_bufs.index(slot))


@gluon.jit
def store_slice(acc, scale, shift, y_ptr, stride_ym, off_m, off_n, M, N, EPILOGUE: gl.constexpr):
    """EPILOGUE on one column slice of a tile (its vectors given one column per thread), stored from the registers."""
    BLOCK_M: gl.constexpr = acc.shape[0]
    COLS: gl.constexpr = acc.shape[1]
    columns: gl.constexpr = gl.SliceLayout(0, acc.type.layout)
    out = fused_linear.apply_epilogue(acc, gl.convert_layout(scale, columns), gl.convert_layout(shift, columns),
                                      EPILOGUE)
    rows = gl.expand_dims((off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, acc.type.layout))).to(gl.int64), 1)
    cols = gl.expand_dims(off_n + gl.arange(0, COLS, layout=columns), 0)
    gl.store(y_ptr + rows * stride_ym + cols, out.to(y_ptr.dtype.element_ty), mask=(rows < M) & (cols < N))


@gluon.jit
def consumer(x_desc, w_desc, x_bufs, w_bufs, ready, empty, turns, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr,
             beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
             IS_BN: gl.constexpr, GROUP_M: gl.constexpr, WHICH: gl.constexpr):
    # (partition arguments travel as a tuple, which holds no strings: the epilogue comes as a flag)
    if IS_BN:
        consumer_tiles(x_bufs, w_bufs, ready, empty, turns, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M,
                       N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
                       "bn_gelu_relu", GROUP_M, WHICH)
    else:
        consumer_tiles(x_bufs, w_bufs, ready, empty, turns, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M,
                       N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
                       "relu", GROUP_M, WHICH)


@gluon.jit
def consumer_tiles(x_bufs, w_bufs, ready, empty, turns, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M, N,
                   stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
                   EPILOGUE: gl.constexpr, GROUP_M: gl.constexpr, WHICH: gl.constexpr):
    """Consumer WHICH's tiles: the program's tiles WHICH, WHICH + 2, ..."""
    STAGES: gl.constexpr = x_bufs.type.shape[0]
    BLOCK_M: gl.constexpr = x_bufs.type.shape[1]
    BLOCK_N: gl.constexpr = w_bufs.type.shape[1]
    QUARTER: gl.constexpr = BLOCK_N // 4
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BLOCK_N, 16])
    one_per_thread: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    vectors = (N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta, eps)
    turn = 0
    for t in range(WHICH, my_tiles, 2):
        pid_m, pid_n = fused_linear.grouped_tile(first_tile + t * num_sms, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        # The epilogue's vectors, one column per thread (a register each), by quarters of the tile: loaded while the
        # other consumer's main loop still runs.
        s0, h0 = fused_linear.epilogue_vectors(off_n + gl.arange(0, QUARTER, layout=one_per_thread), *vectors,
                                               EPILOGUE)
        s1, h1 = fused_linear.epilogue_vectors(off_n + QUARTER + gl.arange(0, QUARTER, layout=one_per_thread),
                                               *vectors, EPILOGUE)
        s2, h2 = fused_linear.epilogue_vectors(off_n + 2 * QUARTER + gl.arange(0, QUARTER, layout=one_per_thread),
                                               *vectors, EPILOGUE)
        s3, h3 = fused_linear.epilogue_vectors(off_n + 3 * QUARTER + gl.arange(0, QUARTER, layout=one_per_thread),
                                               *vectors, EPILOGUE)
        # our turn: consumer 0's first tile goes at once (parity 1 is a fresh barrier's finished "phase -1");
        # otherwise the other consumer's turn-th arrival (consumer 1) or (turn - 1)-th (consumer 0)
        mbarrier.wait(turns.index(WHICH), (turn & 1) ^ (1 - WHICH))
        first_step = t * k_steps
        acc = gl.zeros((BLOCK_M, BLOCK_N), gl.float32, acc_layout)
        for kk in range(k_steps):
            step = first_step + kk
            slot = step % STAGES
            mbarrier.wait(ready.index(slot), (step // STAGES) & 1)
            acc = warpgroup_mma(x_bufs.index(slot), w_bufs.index(slot).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=1, deps=[acc])
            # the k-step before has retired: its slot may be refilled
            mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), count=1, pred=kk > 0)
        mbarrier.arrive(turns.index(1 - WHICH), count=1)  # every k-step started: the other consumer's turn
        acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
        mbarrier.arrive(empty.index((first_step + k_steps - 1) % STAGES), count=1)
        q0, q1, q2, q3 = fused_linear.split_quarters(acc, BLOCK_M, BLOCK_N)
        store_slice(q0, s0, h0, y_ptr, stride_ym, off_m, off_n, M, N, EPILOGUE)
        store_slice(q1, s1, h1, y_ptr, stride_ym, off_m, off_n + QUARTER, M, N, EPILOGUE)
        store_slice(q2, s2, h2, y_ptr, stride_ym, off_m, off_n + 2 * QUARTER, M, N, EPILOGUE)
        store_slice(q3, s3, h3, y_ptr, stride_ym, off_m, off_n + 3 * QUARTER, M, N, EPILOGUE)
        turn += 1


@gluon.jit
def even_consumer(x_desc, w_desc, x_bufs, w_bufs, ready, empty, turns, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr,
                  beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles,
                  k_steps, IS_BN: gl.constexpr, GROUP_M: gl.constexpr):
    consumer(x_desc, w_desc, x_bufs, w_bufs, ready, empty, turns, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr,
             beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
             IS_BN, GROUP_M, 0)


@gluon.jit
def odd_consumer(x_desc, w_desc, x_bufs, w_bufs, ready, empty, turns, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr,
                 beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
                 IS_BN: gl.constexpr, GROUP_M: gl.constexpr):
    consumer(x_desc, w_desc, x_bufs, w_bufs, ready, empty, turns, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr,
             beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
             IS_BN, GROUP_M, 1)


@gluon.jit(**fused_linear.JIT_LIKE_AOT)
def fused_linear_pingpong_kernel(
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
    gl.static_assert(DOT == "native", "fused_linear_pingpong_kernel serves fp16/bf16 inputs")
    gl.static_assert(gl.num_warps() == 4, "one warpgroup per consumer: num_warps must be 4")
    dtype: gl.constexpr = x_ptr.dtype.element_ty
    x_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], dtype)
    w_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], dtype)
    x_desc = tma.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[stride_xm, 1], block_shape=[BLOCK_M, BLOCK_K],
                                        layout=x_layout)
    w_desc = tma.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[stride_wn, 1], block_shape=[BLOCK_N, BLOCK_K],
                                        layout=w_layout)
    x_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, BLOCK_K], x_layout)
    w_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, BLOCK_K], w_layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    for i in gl.static_range(2):
        mbarrier.init(turns.index(i), count=1)
    fence_async_shared()

    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    first_tile = gl.program_id(0)
    args = (x_desc, w_desc, x_bufs, w_bufs, ready, empty, turns, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr,
            beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms,
            gl.cdiv(num_tiles - first_tile, num_sms), gl.cdiv(K, BLOCK_K), EPILOGUE == "bn_gelu_relu", GROUP_M)
    gl.warp_specialize([(loader, args), (even_consumer, args), (odd_consumer, args)], [4, 4],
                       [CONSUMER_REGS, CONSUMER_REGS])
