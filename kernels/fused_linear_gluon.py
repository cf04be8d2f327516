"""Hopper main loop for fp32 x on fp16 tensor cores, written in Gluon (build-time only, like fused_linear.py).

    y = EPILOGUE(x @ W^T + bias)    x: fp32 [M, K], W: fp16 [N, K] (the launcher rounds it once per call), y: fp32

Why Gluon: x's tiles must be rounded to fp16 on their way to the tensor cores, so wgmma takes A from registers.
PTX forbids writing those registers while a wgmma that reads them is in flight, and Triton's own pipeliner either
waits for every wgmma (ptxas serialises: tensor cores idle between k-steps) or lets the next k-step overwrite them
(undefined: NaN seen on the H100). Here the waits are explicit: IN_FLIGHT + 1 k-steps per
loop turn, each rounding its x tile into its own register set, and `wait(IN_FLIGHT)` after each wgmma, so IN_FLIGHT
wgmmas stay in flight while the next k-step's tile is loaded and rounded into a set none of them reads.

Persistent programs walk the output tiles num_sms apart; TMA loads run STAGES - IN_FLIGHT k-steps ahead across tile
boundaries, so the next tile's first tiles land while this tile's epilogue runs.
"""
from kernels import fused_linear
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma_wait

# Named gl.thread_barrier in triton 3.6, gl.barrier in 3.8: a CTA-wide bar.sync either way.
cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
# wgmmas left running while the next k-step's x tile is rounded. 2 (three register sets) makes ptxas serialise every
# wgmma on triton 3.6 and 3.8 ("non wgmma instructions defining input registers of a wgmma between start and end of
# the pipeline stage"), which is slower still.
IN_FLIGHT = gl.constexpr(1)


@gluon.jit
def epilogue_store(acc, y_ptr, y_desc, y_buf, stride_ym, off_m, off_n, M, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr,
                   beta_ptr, has_bias, has_gamma, has_beta, eps, EPILOGUE: gl.constexpr, REORDERED_ROWS: gl.constexpr,
                   TMA_STORE: gl.constexpr):
    """fused_linear's epilogue arithmetic on one column slice of the accumulator, stored at (off_m, off_n): straight
    from the registers (REORDERED_ROWS: its rows come in conflict_free_rows' order, and tile_rows maps them back), or
    (TMA_STORE) through y_buf, a shared-memory buffer of the slice's shape, and a TMA store of y_desc (the TMA unit
    clips rows and columns past the output's edge; the buffer is refilled once the previous store has read it);
    without TMA_STORE, y_desc and y_buf are unused placeholders. The per-column vectors are loaded and folded one
    column per thread, then spread to the accumulator's layout (whose threads each hold a slice's worth of columns): a
    vector load per accumulator column would be 8x the loads, and the compiler would hoist them all above the first
    slice's arithmetic (spills)."""
    ROWS: gl.constexpr = acc.shape[0]
    COLS: gl.constexpr = acc.shape[1]
    columns: gl.constexpr = gl.SliceLayout(0, acc.type.layout)
    row_layout: gl.constexpr = gl.SliceLayout(1, acc.type.layout)
    one_per_thread: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
    scale, shift = fused_linear.epilogue_vectors(off_n + gl.arange(0, COLS, layout=one_per_thread), N, bias_ptr,
                                                 mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta,
                                                 eps, EPILOGUE)
    out = fused_linear.apply_epilogue(acc, gl.convert_layout(scale, columns), gl.convert_layout(shift, columns),
                                      EPILOGUE, y_ptr.dtype.element_ty)
    if TMA_STORE:
        gl.static_assert(not REORDERED_ROWS, "a TMA store writes the slice's rows in order")
        tma.store_wait(0)
        y_buf.store(out.to(y_ptr.dtype.element_ty))
        fence_async_shared()
        tma.async_copy_shared_to_global(y_desc, [off_m, off_n], y_buf)
    else:
        if REORDERED_ROWS:
            y_rows = tile_rows(off_m, ROWS, row_layout)
        else:
            y_rows = off_m + gl.arange(0, ROWS, layout=row_layout)
        rows = gl.expand_dims(y_rows.to(gl.int64), 1)
        cols = gl.expand_dims(off_n + gl.arange(0, COLS, layout=columns), 0)
        gl.store(y_ptr + rows * stride_ym + cols, out.to(y_ptr.dtype.element_ty), mask=(rows < M) & (cols < N))


@gluon.jit
def epilogue_store_by_quarters(acc, y_ptr, y_desc, y_buf, stride_ym, off_m, off_n, M, N, bias_ptr, mean_ptr, var_ptr,
                               gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta, eps, EPILOGUE: gl.constexpr,
                               REORDERED_ROWS: gl.constexpr, TMA_STORE: gl.constexpr):
    """epilogue_store on an accumulator from wgmma, by quarters of its columns: a whole row of per-column vectors (5
    loaded, 2 folded) beside a 128-register accumulator spills (1.5 GB of local-memory traffic at problem 41)."""
    ROWS: gl.constexpr = acc.shape[0]
    COLS: gl.constexpr = acc.shape[1]
    QUARTER: gl.constexpr = COLS // 4
    target = (y_ptr, y_desc, y_buf, stride_ym)
    vectors = (M, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta, eps)
    q0, q1, q2, q3 = fused_linear.split_quarters(acc, ROWS, COLS)
    epilogue_store(q0, *target, off_m, off_n, *vectors, EPILOGUE, REORDERED_ROWS, TMA_STORE)
    epilogue_store(q1, *target, off_m, off_n + QUARTER, *vectors, EPILOGUE, REORDERED_ROWS, TMA_STORE)
    epilogue_store(q2, *target, off_m, off_n + 2 * QUARTER, *vectors, EPILOGUE, REORDERED_ROWS, TMA_STORE)
    epilogue_store(q3, *target, off_m, off_n + 3 * QUARTER, *vectors, EPILOGUE, REORDERED_ROWS, TMA_STORE)


@gluon.jit
def tile_origin(tile_id, M, N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr):
    """The tile's first row and column (fused_linear.grouped_tile's order). The producer asks for one tile past its
    last (its loads are predicated off then): clamped, so the tile order never divides by an empty group."""
    tile_id = gl.minimum(tile_id, gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N) - 1)
    pid_m, pid_n = fused_linear.grouped_tile(tile_id, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@gluon.jit
def load_step(step, k, off_m, off_n, tile_id, total_steps, k_extent, num_sms, M, N, x_desc, w_desc, x_bufs, w_bufs,
              ready, STAGES: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
              GROUP_M: gl.constexpr):
    """TMA-load this program's k-step `step` (at k of the tile at off_m, off_n) into its ring slot (nothing past the
    last), and return the next k-step's position: the producer walks ahead of the consumer across tile boundaries,
    carrying its tile origin so that the tile order is computed once per tile, not once per k-step."""
    slot = step % STAGES
    live = step < total_steps
    mbarrier.expect(ready.index(slot), x_desc.block_type.nbytes + w_desc.block_type.nbytes, pred=live)
    tma.async_copy_global_to_shared(x_desc, [off_m, k], ready.index(slot), x_bufs.index(slot), pred=live)
    tma.async_copy_global_to_shared(w_desc, [off_n, k], ready.index(slot), w_bufs.index(slot), pred=live)
    k += BLOCK_K
    if k >= k_extent:
        k = 0
        tile_id += num_sms
        off_m, off_n = tile_origin(tile_id, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    return step + 1, k, off_m, off_n, tile_id


@gluon.jit
def conflict_free_rows(x_tile):
    """x_tile [BLOCK_M, BLOCK_K] viewed with its rows reordered so that the wgmma A layout's shared loads are free of
    bank conflicts: within each 16-row slab, A-layout row 8h + l reads tile row 2l + h. In tile order, the 64-bit
    loads of a half warp (A rows l = 0..3) hit rows 0-3, whose 128-byte swizzle pairs them on the same banks (2-way
    conflicts, half the x loads' wavefronts wasted); rows 0, 2, 4, 6 land on distinct banks.
    The accumulator's rows come out in the same order: tile_rows gives each one's row of x and y."""
    BLOCK_M: gl.constexpr = x_tile.shape[0]
    BLOCK_K: gl.constexpr = x_tile.shape[1]
    return x_tile.reshape([BLOCK_M // 16, 8, 2, BLOCK_K]).permute([0, 2, 1, 3]).reshape([BLOCK_M, BLOCK_K])


@gluon.jit
def tile_rows(off_m, BLOCK_M: gl.constexpr, layout: gl.constexpr):
    """The row of x (and y) behind each accumulator row, for conflict_free_rows' order."""
    i = gl.arange(0, BLOCK_M, layout=layout)
    return off_m + (i // 16) * 16 + (i % 8) * 2 + (i % 16) // 8


@gluon.jit
def mma_step(step, acc, x_bufs, w_bufs, ready, STAGES: gl.constexpr, a_layout: gl.constexpr):
    """Wait for k-step `step`'s tiles, round x's to fp16 into registers, start its wgmma, and return once at most
    IN_FLIGHT wgmmas are still running (none of them reads the registers the next k-step will write)."""
    slot = step % STAGES
    mbarrier.wait(ready.index(slot), (step // STAGES) & 1)
    a = conflict_free_rows(x_bufs.index(slot)).load(a_layout).to(gl.float16)
    acc = warpgroup_mma(a, w_bufs.index(slot).permute((1, 0)), acc, is_async=True)
    return warpgroup_mma_wait(num_outstanding=IN_FLIGHT, deps=[acc])


@gluon.jit(**fused_linear.JIT_LIKE_AOT)
def fused_linear_wgmma_kernel(
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
    gl.static_assert(DOT == "fp16", "fused_linear_wgmma_kernel serves fp32 x on fp16 tensor cores only")
    gl.static_assert(IN_FLIGHT < STAGES, "each wgmma in flight holds a pipeline slot")
    SETS: gl.constexpr = IN_FLIGHT + 1  # A register sets, one per k-step of a loop turn
    num_warps: gl.constexpr = gl.num_warps()
    # Accumulator: wgmma's layout, warps stacked along M (one warpgroup per 64 rows).
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, BLOCK_N, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    x_smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], gl.float32)
    w_smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], gl.float16)
    x_desc = tma.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[stride_xm, 1], block_shape=[BLOCK_M, BLOCK_K],
                                        layout=x_smem_layout)
    w_desc = tma.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[stride_wn, 1], block_shape=[BLOCK_N, BLOCK_K],
                                        layout=w_smem_layout)
    x_bufs = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M, BLOCK_K], x_smem_layout)
    w_bufs = gl.allocate_shared_memory(gl.float16, [STAGES, BLOCK_N, BLOCK_K], w_smem_layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
    fence_async_shared()
    cta_barrier()

    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    first_tile = gl.program_id(0)
    my_tiles = gl.cdiv(num_tiles - first_tile, num_sms)
    # k-steps per tile, rounded up to a whole loop turn; TMA zero-fills the extra ones past K.
    k_steps = gl.cdiv(K, SETS * BLOCK_K) * SETS
    k_extent = k_steps * BLOCK_K
    total_steps = my_tiles * k_steps
    # the producer's position (loads run STAGES - IN_FLIGHT k-steps ahead of the wgmmas)
    p_off_m, p_off_n = tile_origin(first_tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    zero = first_tile * 0  # (a runtime 0: the producer's fields are loop-carried values)
    producer = (zero, zero, p_off_m, p_off_n, first_tile)
    for _prologue in gl.static_range(STAGES - IN_FLIGHT):
        producer = load_step(*producer, total_steps, k_extent, num_sms, M, N, x_desc, w_desc, x_bufs, w_bufs, ready,
                             STAGES, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)

    step = 0
    for t in range(my_tiles):
        acc = gl.zeros((BLOCK_M, BLOCK_N), gl.float32, acc_layout)
        for _turn in range(k_steps // SETS):
            # unrolled: each k-step's A is its own value, which ptxas keeps in its own registers while its wgmma runs
            # (not guaranteed by anything here: the build's SASS check verifies it for every variant)
            for j in gl.static_range(SETS):
                acc = mma_step(step + j, acc, x_bufs, w_bufs, ready, STAGES, a_layout)
                # Every warpgroup has now retired the wgmma of step + j - IN_FLIGHT and every warp has read its x
                # tile: that slot may be refilled.
                cta_barrier()
                producer = load_step(*producer, total_steps, k_extent, num_sms, M, N, x_desc, w_desc, x_bufs,
                                     w_bufs, ready, STAGES, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
            step += SETS
        acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
        off_m, off_n = tile_origin(first_tile + t * num_sms, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        epilogue_store_by_quarters(acc, y_ptr, 0, 0, stride_ym, off_m, off_n, M, N, bias_ptr, mean_ptr, var_ptr,
                                   gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta, eps, EPILOGUE, True, False)

    for i in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(i))
