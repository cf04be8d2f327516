"""Hopper main loop with a loader warpgroup and two consumer warpgroups sharing each tile (warp-specialised,
cooperative), in Gluon (build-time only, like fused_linear.py).

    y = EPILOGUE(x @ W^T + bias)    x, W, y: fp16, bf16 (DOT "native") or fp32 on TF32 tensor cores (DOT "tf32")

Why: cuBLAS's TF32 kernel has the same 128x256x32 tile as the TMA kernel in fused_linear.py but a different
structure: one warpgroup only issues TMA loads, two only run wgmma and the epilogue (in the TMA kernel both warpgroups
issue the loads and every warp waits on the barriers). Measured (PERF_NOTES.md v44): the tuner picks it for TF32
linear_bn_gelu_relu at big M (2-11% over the TMA kernel there); TF32 relu and fp16 / bf16 keep the TMA kernel.

Partitions (gl.warp_specialize), in each persistent program:
  loader      the kernel's 4 warps (the default partition): TMA loads of x's and W's tiles for every k-step of the
              program's tiles, in tile order, into one STAGES-deep ring (it runs ahead across the epilogues)
  consumer 0  4 more warps: rows 0..BLOCK_M/2 of every tile;  consumer 1: the other half
A slot's `ready` barrier completes when its bytes have landed; its `empty` barrier when both consumers have retired
the wgmma that read it (two arrivals). The consumers store the epilogue's result straight from their registers.
(The consumers are worker partitions because triton 3.6 cannot lower a tensor store in the default partition.)
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
def loader(x_desc, w_desc, x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
           M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
           IS_BN: gl.constexpr, GROUP_M: gl.constexpr):
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
def consumer_rows(x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M, N,
                  stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
                  EPILOGUE: gl.constexpr, GROUP_M: gl.constexpr, WHICH: gl.constexpr):
    """Consumer WHICH: rows WHICH * BLOCK_M / 2 onwards of each of the program's tiles."""
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
        mbarrier.arrive(empty.index((first_step + k_steps - 1) % STAGES), count=1)
        off_m, off_n = tile_origin(first_tile + t * num_sms, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        epilogue_store_by_quarters(acc, y_ptr, stride_ym, off_m + WHICH * HALF, off_n, M, N, bias_ptr, mean_ptr,
                                   var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta, eps, EPILOGUE, False)


@gluon.jit
def consumer(x_desc, w_desc, x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
             M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
             IS_BN: gl.constexpr, GROUP_M: gl.constexpr, WHICH: gl.constexpr):
    # (partition arguments travel as a tuple, which holds no strings: the epilogue comes as a flag)
    rest = (x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M, N, stride_ym,
            has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps)
    if IS_BN:
        consumer_rows(*rest, "bn_gelu_relu", GROUP_M, WHICH)
    else:
        consumer_rows(*rest, "relu", GROUP_M, WHICH)


@gluon.jit
def top_consumer(x_desc, w_desc, x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
                 M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps,
                 IS_BN: gl.constexpr, GROUP_M: gl.constexpr):
    consumer(x_desc, w_desc, x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M,
             N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps, IS_BN, GROUP_M,
             0)


@gluon.jit
def bottom_consumer(x_desc, w_desc, x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr,
                    beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles,
                    k_steps, IS_BN: gl.constexpr, GROUP_M: gl.constexpr):
    consumer(x_desc, w_desc, x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M,
             N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps, IS_BN, GROUP_M,
             1)


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
    STAGES: gl.constexpr,
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

    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    first_tile = gl.program_id(0)
    args = (x_desc, w_desc, x_bufs, w_bufs, ready, empty, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
            M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms,
            gl.cdiv(num_tiles - first_tile, num_sms), gl.cdiv(K, BLOCK_K), EPILOGUE == "bn_gelu_relu", GROUP_M)
    gl.warp_specialize([(loader, args), (top_consumer, args), (bottom_consumer, args)], [4, 4],
                       [CONSUMER_REGS, CONSUMER_REGS])
