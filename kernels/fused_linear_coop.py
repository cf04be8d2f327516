"""Hopper main loop with a loader warpgroup and two consumer warpgroups sharing each tile (warp-specialised,
cooperative), in Gluon (build-time only, like fused_linear.py).

    y = EPILOGUE(x @ W^T + bias)    x, W, y: fp16, bf16 (DOT "native") or fp32 on TF32 tensor cores (DOT "tf32")

Why: cuBLAS's TF32 kernel has the same 128x256x32 tile as the TMA kernel in fused_linear.py but a different
structure: one warpgroup only issues TMA loads, two only run wgmma and the epilogue (in the TMA kernel both warpgroups
issue the loads and every warp waits on the barriers). Measured: with TMA stores the tuner
picks it for TF32 at big M, both ops (TF32 BN at K 1024 5% over its register stores, relu level with the TMA
kernel); fp16 / bf16 keep the TMA kernel (level with it at best).

Partitions (gl.warp_specialize), in each persistent program:
  loader      the kernel's 4 warps (the default partition): TMA loads of x's and W's tiles for every k-step of the
              program's tiles, in tile order, into one STAGES-deep ring (it runs ahead across the epilogues)
  consumer    twice, 4 more warps each: rows 0..BLOCK_M/2 of every tile (WHICH 0), and the other half (WHICH 1)
A slot's `ready` barrier completes when its bytes have landed; its `empty` barrier when both consumers have retired
the wgmma that read it (two arrivals). The consumers store the epilogue's result straight from their registers, or
(TMA_STORE) a column quarter at a time through a shared-memory buffer each and a TMA store: for fp16 / bf16 outputs
the register stores write half-sectors and made this kernel 25-35% slower than the TMA kernel.
(The consumers are worker partitions because triton 3.6 cannot lower a tensor store in the default partition.)
Partition arguments travel as IR values: a constexpr among them arrives as a runtime tensor (triton 3.6 and 3.8), so
the partitions read the kernel's compile-time choices from the shape of `choices`, a tiny shared-memory buffer
(choices_buffer), as they read the tile sizes from the buffers' shapes.
"""
from kernels import fused_linear
from kernels.fused_linear_gluon import epilogue_store_by_quarters, tile_origin
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma_wait

# Registers per thread: compiled with maxnreg 168 (aot/spec.py: KERNELS' "options") for its three warpgroups
# (168 x 384 threads <= 64K); each consumer takes CONSUMER_REGS and the loader is left 3 x 168 - 2 x CONSUMER_REGS = 40.
CONSUMER_REGS = gl.constexpr(232)


@gluon.jit
def choices_buffer(GROUP_M: gl.constexpr, IS_BN: gl.constexpr, TMA_STORE: gl.constexpr, WHICH: gl.constexpr):
    """A [GROUP_M, 1 + IS_BN, 1 + TMA_STORE, 1 + WHICH] int8 buffer whose shape carries these constexprs into a
    partition (read back as choices.type.shape[i]; a jit function's return value would be a tensor again). WHICH:
    the consumer's half of the tile (the loader gets either)."""
    layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[3, 2, 1, 0])
    return gl.allocate_shared_memory(gl.int8, [GROUP_M, 1 + IS_BN, 1 + TMA_STORE, 1 + WHICH], layout)


@gluon.jit
def loader(x_desc, w_desc, x_bufs, w_bufs, ready, empty, choices, y_desc, y_bufs, y_ptr, bias_ptr, mean_ptr, var_ptr,
           gamma_ptr, beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles,
           k_steps):
    GROUP_M: gl.constexpr = choices.type.shape[0]
    STAGES: gl.constexpr = x_bufs.type.shape[0]
    BLOCK_M: gl.constexpr = x_bufs.type.shape[1]
    BLOCK_K: gl.constexpr = x_bufs.type.shape[2]
    BLOCK_N: gl.constexpr = w_bufs.type.shape[1]
    for t in range(my_tiles):
        off_m, off_n = tile_origin(first_tile + t * num_sms, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        for kk in range(k_steps):
            step = t * k_steps + kk
            slot = step % STAGES
            mbarrier.wait(empty.index(slot), ((step // STAGES) & 1) ^ 1)  # (a fresh barrier: its "phase -1" is done)
            mbarrier.expect(ready.index(slot), x_desc.block_type.nbytes + w_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(x_desc, [off_m, kk * BLOCK_K], ready.index(slot), x_bufs.index(slot))
            tma.async_copy_global_to_shared(w_desc, [off_n, kk * BLOCK_K], ready.index(slot), w_bufs.index(slot))


@gluon.jit
def consumer_rows(x_bufs, w_bufs, ready, empty, y_desc, y_buf, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr,
                  beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
                  EPILOGUE: gl.constexpr, GROUP_M: gl.constexpr, WHICH: gl.constexpr, TMA_STORE: gl.constexpr):
    """Consumer WHICH: rows WHICH * BLOCK_M / 2 onwards of each of the program's tiles. TMA_STORE: the epilogue
    stores through y_buf, this consumer's buffer of one column quarter, and TMA; otherwise from the registers."""
    STAGES: gl.constexpr = x_bufs.type.shape[0]
    BLOCK_M: gl.constexpr = x_bufs.type.shape[1]
    BLOCK_N: gl.constexpr = w_bufs.type.shape[1]
    HALF: gl.constexpr = BLOCK_M // 2
    # fp32 operands run as TF32 (the compile default; wgmma has no full-fp32 mode), 8 deep per instruction
    K_WIDTH: gl.constexpr = 8 if x_bufs.type.element_ty == gl.float32 else 16
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[gl.num_warps(), 1],
                                                         instr_shape=[16, BLOCK_N, K_WIDTH])
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
        # the tile's last k-step has retired too (none when K is 0: then no slot was read and none is released)
        mbarrier.arrive(empty.index((first_step + k_steps + STAGES - 1) % STAGES), count=1, pred=k_steps > 0)
        off_m, off_n = tile_origin(first_tile + t * num_sms, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        epilogue_store_by_quarters(acc, y_ptr, y_desc, y_buf, stride_ym, off_m + WHICH * HALF, off_n, M, N, bias_ptr,
                                   mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta, eps, EPILOGUE,
                                   False, TMA_STORE)
    if TMA_STORE:
        tma.store_wait(0)  # the last store has read the buffer before the program ends


@gluon.jit
def consumer(x_desc, w_desc, x_bufs, w_bufs, ready, empty, choices, y_desc, y_bufs, y_ptr, bias_ptr, mean_ptr, var_ptr,
             gamma_ptr, beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles,
             k_steps):
    GROUP_M: gl.constexpr = choices.type.shape[0]
    IS_BN: gl.constexpr = choices.type.shape[1] == 2
    TMA_STORE: gl.constexpr = choices.type.shape[2] == 2
    WHICH: gl.constexpr = choices.type.shape[3] - 1
    y_buf = y_bufs  # (a placeholder without TMA_STORE)
    if TMA_STORE:
        y_buf = y_bufs.index(WHICH)
    rest = (x_bufs, w_bufs, ready, empty, y_desc, y_buf, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M, N,
            stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps)
    if IS_BN:
        consumer_rows(*rest, "bn_gelu_relu", GROUP_M, WHICH, TMA_STORE)
    else:
        consumer_rows(*rest, "relu", GROUP_M, WHICH, TMA_STORE)


@gluon.jit(**fused_linear.JIT_LIKE_AOT)
def fused_linear_coop_kernel(
    x_ptr, w_ptr, y_ptr,
    bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_ym,  # inner strides are 1; rows 16-byte aligned (TMA's rule)
    has_bias, has_gamma, has_beta,
    eps,
    num_sms,
    EPILOGUE: gl.constexpr, DOT: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, GROUP_M: gl.constexpr,
    STAGES: gl.constexpr, TMA_STORE: gl.constexpr = False,
):
    dtype: gl.constexpr = x_ptr.dtype.element_ty
    gl.static_assert((DOT == "native" and dtype != gl.float32) or (DOT == "tf32" and dtype == gl.float32),
                     "fused_linear_coop_kernel serves fp16/bf16 (DOT native) and fp32 on TF32")
    gl.static_assert(gl.num_warps() == 4, "the loader is one warpgroup: num_warps must be 4")
    gl.static_assert(BLOCK_M == 128, "two consumer warpgroups of 64 rows each")
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
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)  # one per consumer
    fence_async_shared()

    # TMA_STORE: one [BLOCK_M / 2, BLOCK_N / 4] store buffer per consumer (else placeholders: the consumers store from
    # their registers)
    y_desc = 0
    y_bufs = 0
    if TMA_STORE:
        y_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M // 2, BLOCK_N // 4], dtype)
        y_desc = tma.make_tensor_descriptor(y_ptr, shape=[M, N], strides=[stride_ym, 1],
                                            block_shape=[BLOCK_M // 2, BLOCK_N // 4], layout=y_layout)
        y_bufs = gl.allocate_shared_memory(dtype, [2, BLOCK_M // 2, BLOCK_N // 4], y_layout)
    top_choices = choices_buffer(GROUP_M, EPILOGUE == "bn_gelu_relu", TMA_STORE, 0)
    bottom_choices = choices_buffer(GROUP_M, EPILOGUE == "bn_gelu_relu", TMA_STORE, 1)

    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    first_tile = gl.program_id(0)
    my_tiles = gl.cdiv(num_tiles - first_tile, num_sms)
    k_steps = gl.cdiv(K, BLOCK_K)
    # one argument list; the two consumers' differ only in their choices (which half of the tile)
    ring = (x_desc, w_desc, x_bufs, w_bufs, ready, empty)
    rest = (y_desc, y_bufs, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M, N, stride_ym, has_bias,
            has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps)
    top = ring + (top_choices, ) + rest
    bottom = ring + (bottom_choices, ) + rest
    gl.warp_specialize([(loader, top), (consumer, top), (consumer, bottom)], [4, 4], [CONSUMER_REGS, CONSUMER_REGS])
