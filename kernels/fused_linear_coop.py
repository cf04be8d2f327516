"""Hopper main loop with a loader warpgroup and two consumer warpgroups sharing each tile (warp-specialised,
cooperative), in Gluon (build-time only, like fused_linear.py).

    y = EPILOGUE(x @ W^T + bias)    x, W, y: fp16, bf16 (DOT "native") or fp32 on TF32 tensor cores (DOT "tf32")

Why: cuBLAS's TF32 kernel has the same 128x256x32 tile as the TMA kernel in fused_linear.py but a different
structure: one warpgroup only issues TMA loads, two only run wgmma and the epilogue (in the TMA kernel both warpgroups
issue the loads and every warp waits on the barriers). Measured (PERF_NOTES.md v44, v46): with TMA stores the tuner
picks it for TF32 at big M, both ops (TF32 BN at K 1024 5% over its register stores, relu level with the TMA
kernel); fp16 / bf16 keep the TMA kernel (level with it at best).

Partitions (gl.warp_specialize), in each persistent program:
  loader      the kernel's 4 warps (the default partition): TMA loads of x's and W's tiles for every k-step of the
              program's tiles, in tile order, into one STAGES-deep ring (it runs ahead across the epilogues)
  consumer    twice, 4 more warps each: rows 0..BLOCK_M/2 of every tile (WHICH 0), and the other half (WHICH 1)
A slot's `ready` barrier completes when its bytes have landed; its `empty` barrier when both consumers have retired
the wgmma that read it (two arrivals). The consumers store the epilogue's result straight from their registers, or
(TMA_STORE) a column quarter at a time through a shared-memory buffer each and a TMA store: for fp16 / bf16 outputs
the register stores write half-sectors and made this kernel 25-35% slower than the TMA kernel (PERF_NOTES.md v46).
(The consumers are worker partitions because triton 3.6 cannot lower a tensor store in the default partition.)
Partition arguments travel as IR values: a constexpr among them arrives as a runtime tensor (triton 3.6 and 3.8), so
the partitions read the kernel's compile-time choices from the shape of `choices`, a tiny shared-memory buffer
(choices_buffer), as they read the tile sizes from the buffers' shapes.
"""
from kernels import fused_linear
from kernels.fused_linear_gluon import cta_barrier, epilogue_store_by_quarters, tile_origin
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma_wait

# Registers per thread: compiled with maxnreg 168 (aot/spec.py: KERNELS' "options") for its three warpgroups
# (168 x 384 threads <= 64K); each consumer takes CONSUMER_REGS and the loader is left 3 x 168 - 2 x CONSUMER_REGS = 40.
CONSUMER_REGS = gl.constexpr(232)
# EPILOGUE_WARPGROUP: the consumers (one of them the default partition), two epilogue warps and a one-warp loader in
# the third warpgroup, every warp at 168. ptxas compiles every partition within the kernel's maxnreg (setmaxnreg moves
# registers at run time only) and a consumer's 64x256 wgmma needs 154, so a fourth warpgroup (128 a thread) does not
# compile.
EPILOGUE_WARPS = gl.constexpr(2)
# Staging buffers of an eighth of a tile's columns (16 KB each for 128x256): the first four pieces of a tile go in
# without waiting for the epilogue warps, who hold one piece (64 values a thread) at a time.
STAGING_BUFFERS = gl.constexpr(4)


@gluon.jit
def choices_buffer(GROUP_M: gl.constexpr, IS_BN: gl.constexpr, TMA_STORE: gl.constexpr, WHICH: gl.constexpr,
                   EPILOGUE_WARPGROUP: gl.constexpr):
    """A [GROUP_M, 1 + IS_BN, 1 + TMA_STORE, 1 + WHICH, 1 + EPILOGUE_WARPGROUP] int8 buffer whose shape carries these
    constexprs into a partition (read back as choices.type.shape[i]; a jit function's return value would be a tensor
    again). WHICH: the consumer's half of the tile (the loader and the epilogue warpgroup get either)."""
    layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[4, 3, 2, 1, 0])
    return gl.allocate_shared_memory(gl.int8, [GROUP_M, 1 + IS_BN, 1 + TMA_STORE, 1 + WHICH, 1 + EPILOGUE_WARPGROUP],
                                     layout)


@gluon.jit
def loader(x_desc, w_desc, x_bufs, w_bufs, ready, empty, choices, y_desc, y_bufs, y_ptr, bias_ptr, mean_ptr, var_ptr,
           gamma_ptr, beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles,
           k_steps, staging, staged, freed):
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
                  staging, staged, freed, EPILOGUE: gl.constexpr, GROUP_M: gl.constexpr, WHICH: gl.constexpr,
                  TMA_STORE: gl.constexpr, EPILOGUE_WARPGROUP: gl.constexpr):
    """Consumer WHICH: rows WHICH * BLOCK_M / 2 onwards of each of the program's tiles. EPILOGUE_WARPGROUP: it hands
    the accumulator over to the epilogue warpgroup (hand_over); else TMA_STORE: the epilogue stores through y_buf,
    this consumer's buffer of one column quarter, and TMA; otherwise from the registers."""
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
        if EPILOGUE_WARPGROUP:
            hand_over(acc, staging, staged, freed, t, WHICH)
        else:
            off_m, off_n = tile_origin(first_tile + t * num_sms, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            epilogue_store_by_quarters(acc, y_ptr, y_desc, y_buf, stride_ym, off_m + WHICH * HALF, off_n, M, N,
                                       bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta,
                                       eps, EPILOGUE, False, TMA_STORE)
    if TMA_STORE:
        tma.store_wait(0)  # the last store has read the buffer before the program ends


@gluon.jit
def consumer(x_desc, w_desc, x_bufs, w_bufs, ready, empty, choices, y_desc, y_bufs, y_ptr, bias_ptr, mean_ptr, var_ptr,
             gamma_ptr, beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles,
             k_steps, staging, staged, freed):
    GROUP_M: gl.constexpr = choices.type.shape[0]
    IS_BN: gl.constexpr = choices.type.shape[1] == 2
    TMA_STORE: gl.constexpr = choices.type.shape[2] == 2
    WHICH: gl.constexpr = choices.type.shape[3] - 1
    EPILOGUE_WARPGROUP: gl.constexpr = choices.type.shape[4] == 2
    y_buf = y_bufs  # (a placeholder without TMA_STORE)
    if TMA_STORE:
        y_buf = y_bufs.index(WHICH)
    rest = (x_bufs, w_bufs, ready, empty, y_desc, y_buf, y_ptr, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M, N,
            stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, k_steps, staging, staged,
            freed)
    if IS_BN:
        consumer_rows(*rest, "bn_gelu_relu", GROUP_M, WHICH, TMA_STORE, EPILOGUE_WARPGROUP)
    else:
        consumer_rows(*rest, "relu", GROUP_M, WHICH, TMA_STORE, EPILOGUE_WARPGROUP)


@gluon.jit
def hand_over(acc, staging, staged, freed, t, WHICH: gl.constexpr):
    """Hand this consumer's rows of the program's tile t (fp32, as wgmma left them) over to the epilogue warps, by
    eighths of its columns (the staging buffers' width): each into staging buffer i % BUFFERS (i: the eighth's
    number in the program) once the epilogue warps have read what was there, said on its `staged` barrier."""
    HALF: gl.constexpr = acc.shape[0]
    BLOCK_N: gl.constexpr = acc.shape[1]
    gl.static_assert(staging.type.shape[2] * 8 == BLOCK_N, "the staging buffers hold an eighth of the tile's columns")
    q0, q1, q2, q3 = fused_linear.split_quarters(acc, HALF, BLOCK_N)
    e0, e1 = fused_linear.split_columns(q0, HALF, BLOCK_N // 4)
    e2, e3 = fused_linear.split_columns(q1, HALF, BLOCK_N // 4)
    e4, e5 = fused_linear.split_columns(q2, HALF, BLOCK_N // 4)
    e6, e7 = fused_linear.split_columns(q3, HALF, BLOCK_N // 4)
    stage_piece(e0, staging, staged, freed, 8 * t, WHICH)
    stage_piece(e1, staging, staged, freed, 8 * t + 1, WHICH)
    stage_piece(e2, staging, staged, freed, 8 * t + 2, WHICH)
    stage_piece(e3, staging, staged, freed, 8 * t + 3, WHICH)
    stage_piece(e4, staging, staged, freed, 8 * t + 4, WHICH)
    stage_piece(e5, staging, staged, freed, 8 * t + 5, WHICH)
    stage_piece(e6, staging, staged, freed, 8 * t + 6, WHICH)
    stage_piece(e7, staging, staged, freed, 8 * t + 7, WHICH)


@gluon.jit
def stage_piece(piece, staging, staged, freed, index, WHICH: gl.constexpr):
    HALF: gl.constexpr = piece.shape[0]
    BUFFERS: gl.constexpr = staging.type.shape[0]
    buffer = index % BUFFERS
    mbarrier.wait(freed.index(buffer), ((index // BUFFERS) & 1) ^ 1)  # (a fresh barrier: its "phase -1" is done)
    staging.index(buffer).slice(WHICH * HALF, HALF, dim=0).store(piece)
    cta_barrier()  # every warp's stores are in before the one arrival (bar.sync of this partition's warps)
    mbarrier.arrive(staged.index(buffer), count=1)


@gluon.jit
def epilogue_warps(x_desc, w_desc, x_bufs, w_bufs, ready, empty, choices, y_desc, y_bufs, y_ptr, bias_ptr, mean_ptr,
                   var_ptr, gamma_ptr, beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile,
                   num_sms, my_tiles, k_steps, staging, staged, freed):
    """The epilogue of every tile, an eighth of its columns at a time, while the consumers run the next tile's main
    loop: take the piece out of its staging buffer (handing that back at once), apply EPILOGUE in fp32, store the
    result through one of y_bufs and TMA."""
    GROUP_M: gl.constexpr = choices.type.shape[0]
    IS_BN: gl.constexpr = choices.type.shape[1] == 2
    BLOCK_M: gl.constexpr = x_bufs.type.shape[1]
    BLOCK_N: gl.constexpr = w_bufs.type.shape[1]
    rest = (staging, staged, freed, y_desc, y_bufs, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M, N, has_bias,
            has_gamma, has_beta, eps, first_tile, num_sms, my_tiles)
    if IS_BN:
        epilogue_pieces(*rest, "bn_gelu_relu", BLOCK_M, BLOCK_N, GROUP_M)
    else:
        epilogue_pieces(*rest, "relu", BLOCK_M, BLOCK_N, GROUP_M)


@gluon.jit
def epilogue_pieces(staging, staged, freed, y_desc, y_bufs, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, M, N,
                    has_bias, has_gamma, has_beta, eps, first_tile, num_sms, my_tiles, EPILOGUE: gl.constexpr,
                    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr):
    BUFFERS: gl.constexpr = staging.type.shape[0]
    PIECE: gl.constexpr = staging.type.shape[2]
    # 16-byte shared loads; a warp reads 128 / PIECE rows at a time
    layout: gl.constexpr = gl.BlockedLayout([1, 4], [32 * 4 // PIECE, PIECE // 4], [gl.num_warps(), 1], [1, 0])
    columns: gl.constexpr = gl.SliceLayout(0, layout)
    out_dtype: gl.constexpr = y_bufs.dtype
    for t in range(my_tiles):
        off_m, off_n = tile_origin(first_tile + t * num_sms, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        for e in range(8):
            index = 8 * t + e
            buffer = index % BUFFERS
            mbarrier.wait(staged.index(buffer), (index // BUFFERS) & 1)
            acc = staging.index(buffer).load(layout)
            cta_barrier()  # every warp has its values before the buffer is handed back
            mbarrier.arrive(freed.index(buffer), count=1)
            scale, shift = fused_linear.epilogue_vectors(off_n + e * PIECE + gl.arange(0, PIECE, layout=columns), N,
                                                         bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias,
                                                         has_gamma, has_beta, eps, EPILOGUE)
            out = fused_linear.apply_epilogue(acc, scale, shift, EPILOGUE, out_dtype)
            y_buf = y_bufs.index(index % 2)
            tma.store_wait(1)  # the store before last has read this y_buf
            y_buf.store(out.to(out_dtype))
            fence_async_shared()
            tma.async_copy_shared_to_global(y_desc, [off_m, off_n + e * PIECE], y_buf)
    tma.store_wait(0)


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
    STAGES: gl.constexpr, TMA_STORE: gl.constexpr = False, EPILOGUE_WARPGROUP: gl.constexpr = False,
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
    # EPILOGUE_WARPGROUP: STAGING_BUFFERS fp32 buffers of a [BLOCK_M, BLOCK_N / 8] column piece, through which the
    # consumers hand each tile over (`staged`: both consumers' rows are in; `freed`: the epilogue warps have read it),
    # and two output buffers of that shape for their TMA stores (else placeholders)
    staging = 0
    staged = 0
    freed = 0
    if EPILOGUE_WARPGROUP:
        gl.static_assert(not TMA_STORE, "the epilogue warps store through TMA themselves")
        gl.static_assert(dtype != gl.float32, "fp32 output buffers do not fit beside the staging buffers")
        piece_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_N // 8], dtype)
        y_desc = tma.make_tensor_descriptor(y_ptr, shape=[M, N], strides=[stride_ym, 1],
                                            block_shape=[BLOCK_M, BLOCK_N // 8], layout=piece_layout)
        y_bufs = gl.allocate_shared_memory(dtype, [2, BLOCK_M, BLOCK_N // 8], piece_layout)
        # 16-byte chunks XOR-swizzled by row: both the wgmma layout's writes (8 rows x 32 bytes a warp) and the
        # epilogue's 16-byte reads take the fewest wavefronts
        staging_layout: gl.constexpr = gl.SwizzledSharedLayout(4, 1, 8, order=[1, 0])
        staging = gl.allocate_shared_memory(gl.float32, [STAGING_BUFFERS, BLOCK_M, BLOCK_N // 8], staging_layout)
        staged = gl.allocate_shared_memory(gl.int64, [STAGING_BUFFERS, 1], mbarrier.MBarrierLayout())
        freed = gl.allocate_shared_memory(gl.int64, [STAGING_BUFFERS, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGING_BUFFERS):
            mbarrier.init(staged.index(i), count=2)  # one per consumer
            mbarrier.init(freed.index(i), count=1)
        fence_async_shared()
    top_choices = choices_buffer(GROUP_M, EPILOGUE == "bn_gelu_relu", TMA_STORE, 0, EPILOGUE_WARPGROUP)
    bottom_choices = choices_buffer(GROUP_M, EPILOGUE == "bn_gelu_relu", TMA_STORE, 1, EPILOGUE_WARPGROUP)

    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    first_tile = gl.program_id(0)
    my_tiles = gl.cdiv(num_tiles - first_tile, num_sms)
    k_steps = gl.cdiv(K, BLOCK_K)
    # one argument list; the two consumers' differ only in their choices (which half of the tile)
    top = (x_desc, w_desc, x_bufs, w_bufs, ready, empty, top_choices, y_desc, y_bufs, y_ptr, bias_ptr, mean_ptr,
           var_ptr, gamma_ptr, beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms,
           my_tiles, k_steps, staging, staged, freed)
    bottom = (x_desc, w_desc, x_bufs, w_bufs, ready, empty, bottom_choices, y_desc, y_bufs, y_ptr, bias_ptr, mean_ptr,
              var_ptr, gamma_ptr, beta_ptr, M, N, stride_ym, has_bias, has_gamma, has_beta, eps, first_tile, num_sms,
              my_tiles, k_steps, staging, staged, freed)
    if EPILOGUE_WARPGROUP:
        gl.warp_specialize([(consumer, top), (consumer, bottom), (epilogue_warps, top), (loader, top)],
                           [4, EPILOGUE_WARPS, 1], [168, 168, 168])
    else:
        gl.warp_specialize([(loader, top), (consumer, top), (consumer, bottom)], [4, 4],
                           [CONSUMER_REGS, CONSUMER_REGS])
