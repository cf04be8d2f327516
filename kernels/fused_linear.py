"""The Triton kernels behind every fusedops op (build-time only: users never import this).

    y = EPILOGUE(x @ W^T + bias)        x: [M, K], W: [N, K] exactly as nn.Linear stores it

Two main loops share one epilogue:
  fused_linear_kernel      one output tile per program (or SPLIT_K programs, each over a slice of K),
                           pointer loads; any strides (all archs)
  fused_linear_tma_kernel  persistent programs walking the tiles, TMA tensor-descriptor loads and
                           stores (Hopper); unit inner strides and 16-byte-aligned rows only
(Two more Hopper main loops are written in Gluon and use the epilogue and helpers here: fused_linear_gluon.py for
fp32 x on fp16 tensor cores, fused_linear_coop.py with a loader warpgroup beside two consumer warpgroups. And
fused_epilogue_kernel has no main loop: for fp32 'ieee' the launcher has cuBLAS write x @ W^T first and this kernel
applies the epilogue in place.)
Each reads top to bottom: program id -> grouped tile order -> pointers -> K loop -> epilogue -> store.
The epilogue is a compile-time choice (cuBLASLt-style): adding one is one branch in `epilogue_vectors` (its
per-column vectors) and one in `apply_epilogue` (its arithmetic), plus one line in aot/spec.py OPS.
"""
import triton
import triton.language as tl

# relu(gelu(v)) = v * (1 - h(v)) for v > 0, else 0, with h(v) = erfc(v / sqrt2) / 2, the Gaussian upper tail.
# log2(h) is smooth on [0, inf) (-1 at 0, then ~ -v^2 log2(e) / 2), so a polynomial p fits it on [0, MAX] and one
# MUFU.EX2 gives h. Abramowitz-Stegun 7.1.26 would take a MUFU.RCP besides, and MUFU runs at 16 lanes a clock per
# SM, an eighth of the FMA pipe. Each output dtype gets the lowest degree whose error stays far
# below its rounding: fp32 degree 5, 3.9e-7 (torch's own fp32 gelu: 3.6e-7); fp16 degree 4, 8.4e-6 (1/58 of
# half an ulp); bf16 degree 3, 9.5e-5 (1/41). Each term is one FFMA per element. Coefficients: minimax fits of the
# result's relative error by scripts/fit_gelu_tail.py (the CPU tests check each set against its bound). Past MAX
# the kernel takes v - MAX * 2^p(MAX), off the exact result by less than 2^p(MAX) relative.
GELU_TAIL_FP32_MAX = tl.constexpr(5.0)
GELU_TAIL_FP32_C0 = tl.constexpr(-1.0000003576278687)
GELU_TAIL_FP32_C1 = tl.constexpr(-1.1510951519012451)
GELU_TAIL_FP32_C2 = tl.constexpr(-0.45922791957855225)
GELU_TAIL_FP32_C3 = tl.constexpr(-0.052603527903556824)
GELU_TAIL_FP32_C4 = tl.constexpr(0.007421558722853661)
GELU_TAIL_FP32_C5 = tl.constexpr(-0.0005249511450529099)
GELU_TAIL_FP16_MAX = tl.constexpr(4.875)
GELU_TAIL_FP16_C0 = tl.constexpr(-1.000011920928955)
GELU_TAIL_FP16_C1 = tl.constexpr(-1.15064537525177)
GELU_TAIL_FP16_C2 = tl.constexpr(-0.461654394865036)
GELU_TAIL_FP16_C3 = tl.constexpr(-0.04850642755627632)
GELU_TAIL_FP16_C4 = tl.constexpr(0.004844989161938429)
GELU_TAIL_BF16_MAX = tl.constexpr(3.75)
GELU_TAIL_BF16_C0 = tl.constexpr(-1.0001369714736938)
GELU_TAIL_BF16_C1 = tl.constexpr(-1.1468887329101562)
GELU_TAIL_BF16_C2 = tl.constexpr(-0.47633323073387146)
GELU_TAIL_BF16_C3 = tl.constexpr(-0.03255284205079079)


@triton.jit
def fast_exp2(x):
    """2^x in one MUFU.EX2 (flush-to-zero approximation, 2 ulp)."""
    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def relu_gelu(v, OUT_DTYPE: tl.constexpr):
    """relu(gelu_erf(v)) for a result stored as OUT_DTYPE, in 9-11 instructions, one of them MUFU: only v > 0
    survives the relu, so the tail h is needed on v >= 0 only. Against fp64 on the H100 over 4M fp32 v in
    [2^-100, 12]: fp32 worst relative error 4.2e-7; fp16 / bf16 results at most 1 ulp from the correctly rounded
    value (0.23% / 1.2% of them off by that ulp). NaN and -inf give NaN, +inf gives +inf, v < 0 gives +0, as in
    torch."""
    # t = v on [0, MAX]; lanes with v <= 0 compute garbage that the select below drops
    if OUT_DTYPE == tl.bfloat16:
        t = tl.minimum(v, GELU_TAIL_BF16_MAX)
        log2_h = GELU_TAIL_BF16_C0 + t * (GELU_TAIL_BF16_C1 + t * (GELU_TAIL_BF16_C2 + t * GELU_TAIL_BF16_C3))
    elif OUT_DTYPE == tl.float16:
        t = tl.minimum(v, GELU_TAIL_FP16_MAX)
        log2_h = GELU_TAIL_FP16_C0 + t * (GELU_TAIL_FP16_C1 + t * (GELU_TAIL_FP16_C2 + t * (
            GELU_TAIL_FP16_C3 + t * GELU_TAIL_FP16_C4)))
    else:
        t = tl.minimum(v, GELU_TAIL_FP32_MAX)
        log2_h = GELU_TAIL_FP32_C0 + t * (GELU_TAIL_FP32_C1 + t * (GELU_TAIL_FP32_C2 + t * (GELU_TAIL_FP32_C3 + t * (
            GELU_TAIL_FP32_C4 + t * GELU_TAIL_FP32_C5))))
    # v - t * h in one FFMA (v * (1 - h) took two; written as a product and a difference, the compiler factors v out
    # of the select below and keeps both); t, not v, multiplies h so that +inf gives +inf, not inf - inf
    return tl.where(v > 0, tl.fma(-t, fast_exp2(log2_h), v), v - v)  # v - v: +0, or NaN for NaN and +-inf


@triton.jit
def grouped_tile(tile_id, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped order: GROUP_M row-blocks sweep the N tiles together, so the W tiles they share are
    still in L2 when the next row-block needs them."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    tiles_per_group = GROUP_M * num_pid_n
    first_pid_m = (tile_id // tiles_per_group) * GROUP_M
    group_rows = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (tile_id % tiles_per_group) % group_rows
    pid_n = (tile_id % tiles_per_group) // group_rows
    return pid_m, pid_n


@triton.jit
def mma(a, b, acc, DOT: tl.constexpr):
    """acc += a @ b with the operand precision DOT names."""
    if DOT == "fp16":  # fp32 operands rounded to fp16 in registers: no cast pass over x or W
        a = a.to(tl.float16)
        b = b.to(tl.float16)
    if DOT == "ieee":
        acc = tl.dot(a, b, acc, input_precision="ieee")
    elif DOT == "tf32":
        acc = tl.dot(a, b, acc, input_precision="tf32")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def epilogue_vectors(offs_n, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta, eps,
                     EPILOGUE: tl.constexpr):
    """The per-column vectors EPILOGUE needs, folded into one scale and one shift (bias-only epilogues: the shift is
    the bias, the scale unused), so only two of them stay live beside the accumulator (register pressure)."""
    col_ok = offs_n < N
    bias = tl.load(bias_ptr + offs_n, mask=col_ok & (has_bias != 0), other=0.0)
    if EPILOGUE == "bn_gelu_relu":
        mean = tl.load(mean_ptr + offs_n, mask=col_ok, other=0.0)
        var = tl.load(var_ptr + offs_n, mask=col_ok, other=1.0)
        gamma = tl.load(gamma_ptr + offs_n, mask=col_ok & (has_gamma != 0), other=1.0)
        beta = tl.load(beta_ptr + offs_n, mask=col_ok & (has_beta != 0), other=0.0)
        scale = tl.div_rn(gamma, tl.sqrt_rn(var + eps))
        return scale, beta + (bias - mean) * scale  # batch_norm(acc + bias) = acc * scale + shift
    return bias, bias


@triton.jit
def apply_epilogue(acc, scale, shift, EPILOGUE: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """EPILOGUE in fp32 on acc, given epilogue_vectors' scale and shift for its columns, for a result that will be
    stored as OUT_DTYPE (its precision sets the GELU polynomial's degree)."""
    if EPILOGUE == "bn_gelu_relu":
        return relu_gelu(acc * scale[None, :] + shift[None, :], OUT_DTYPE)  # its result is relu'd already
    # relu; NaN propagates as in torch.relu
    return tl.maximum(acc + shift[None, :], 0.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def epilogue(acc, offs_n, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta, eps,
             EPILOGUE: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """EPILOGUE(acc + bias) in fp32 for the columns offs_n, for a result stored as OUT_DTYPE."""
    scale, shift = epilogue_vectors(offs_n, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma,
                                    has_beta, eps, EPILOGUE)
    return apply_epilogue(acc, scale, shift, EPILOGUE, OUT_DTYPE)


# Under the JIT (bench.tune, bench.probe) M and the has_* flags stay runtime values, as in the AOT build: Triton
# would otherwise specialise a value of 1 into a constant and time code the library never runs (M = 1).
JIT_LIKE_AOT = dict(do_not_specialize=["M", "has_bias", "has_gamma", "has_beta"])


@triton.jit(**JIT_LIKE_AOT)
def fused_linear_kernel(
    x_ptr, w_ptr, y_ptr,
    bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,  # fp32 [N] vectors; unused ones may be 0
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    has_bias, has_gamma, has_beta,  # runtime 0/1: an optional vector that is absent is never read
    eps,
    partials_ptr, tile_counters_ptr,  # SPLIT_K > 1 only: fp32 [SPLIT_K, M, N] workspace; int32 [tiles], zero on entry
    EPILOGUE: tl.constexpr,  # "relu" | "bn_gelu_relu"
    DOT: tl.constexpr,  # "native" (fp16/bf16 in), "ieee" | "tf32" (fp32 in), "fp16" (fp32 in, fp16 tensor cores)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr = 1, VECTORS_FIRST: tl.constexpr = False,
):
    # SPLIT_K > 1 (few output tiles, long K): SPLIT_K programs per tile, each over a slice of K.
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    tile = tl.program_id(0) % num_tiles
    split = tl.program_id(0) // num_tiles
    pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    k_tiles = tl.cdiv(K, BLOCK_K)
    k_per_split = tl.cdiv(k_tiles, SPLIT_K)
    k_first = split * k_per_split
    k_end = tl.minimum(k_first + k_per_split, k_tiles)
    # Out-of-range rows/cols wrap onto valid ones so the K loop needs no M/N mask; the store masks.
    # Row offsets go through int64 so tensors past 2^31 elements address correctly.
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + (k_first * BLOCK_K + offs_k[None, :]) * stride_xk
    w_ptrs = w_ptr + cols[None, :] * stride_wn + (k_first * BLOCK_K + offs_k[:, None]) * stride_wk  # W^T, in place

    if VECTORS_FIRST:
        # the epilogue's per-column vectors loaded and folded before the K loop: their global-load latency hides
        # under it instead of following it, for the registers they hold across it
        tl.static_assert(SPLIT_K == 1, "VECTORS_FIRST: only one program per tile applies the epilogue")
        scale, shift = epilogue_vectors(offs_n, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias,
                                        has_gamma, has_beta, eps, EPILOGUE)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_first, k_end):
        k_left = K - k * BLOCK_K
        a = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        b = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = mma(a, b, acc, DOT)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    in_tile = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :] * stride_yn
    if SPLIT_K == 1:
        if not VECTORS_FIRST:
            scale, shift = epilogue_vectors(offs_n, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias,
                                            has_gamma, has_beta, eps, EPILOGUE)
        acc = apply_epilogue(acc, scale, shift, EPILOGUE, y_ptr.dtype.element_ty)
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=in_tile)
    else:
        # Every program leaves its partial sum in the workspace; the last of the tile's programs to arrive
        # (a per-tile counter) adds them all up in split order, so the result does not depend on who came
        # last, and applies the epilogue. The barrier before the counter and the counter's release/acquire
        # order every thread's stores before the last program's loads (CUTLASS's semaphore pattern).
        plane = tl.cast(M, tl.int64) * N  # (tl.cast: M may be a constexpr 1 under the JIT)
        part_ptrs = partials_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
        tl.store(part_ptrs + split * plane, acc, mask=in_tile)
        tl.debug_barrier()
        arrived = tl.atomic_add(tile_counters_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            # every program of the tile has arrived: reset its counter for the next launch on this stream (the
            # launcher zeroes a stream's counters once, not per call)
            tl.store(tile_counters_ptr + tile, 0)
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(SPLIT_K):  # a loop, not unrolled: one partial tile live at a time
                total += tl.load(part_ptrs + s * plane, mask=in_tile, other=0.0, cache_modifier=".cg")
            total = epilogue(total, offs_n, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias,
                             has_gamma, has_beta, eps, EPILOGUE, y_ptr.dtype.element_ty)
            tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=in_tile)


@triton.jit(**JIT_LIKE_AOT)
def fused_epilogue_kernel(
    x_ptr, w_ptr, y_ptr,  # x and W unused: y holds x @ W^T already, from the GEMM the launcher ran first
    bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    has_bias, has_gamma, has_beta,
    eps,
    partials_ptr, tile_counters_ptr,
    EPILOGUE: tl.constexpr, DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """EPILOGUE in place on y = x @ W^T written by cuBLAS: fp32 'ieee', where cuBLAS's SGEMM runs 1.3-5.7x faster than
    Triton's FMA main loop (H100 sweep), and the half-precision shapes the tables give cuBLAS (aot/spec.py). It takes
    fused_linear_kernel's arguments, so the launcher and the tuner drive both alike; one [BLOCK_M, BLOCK_N] block of y
    per program, rows in order."""
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    offs_m = (pid // num_pid_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid % num_pid_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_tile = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :] * stride_yn
    acc = tl.load(y_ptrs, mask=in_tile, other=0.0).to(tl.float32)
    acc = epilogue(acc, offs_n, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta,
                   eps, EPILOGUE, y_ptr.dtype.element_ty)
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=in_tile)


@triton.jit
def split_columns(t, ROWS: tl.constexpr, COLS: tl.constexpr):
    """[ROWS, COLS] -> its left and right [ROWS, COLS / 2] halves (a register renaming: each thread keeps its own)."""
    return tl.split(tl.permute(tl.reshape(t, (ROWS, 2, COLS // 2)), (0, 2, 1)))


@triton.jit
def split_quarters(t, ROWS: tl.constexpr, COLS: tl.constexpr):
    """[ROWS, COLS] -> its four [ROWS, COLS / 4] column quarters, left to right (register renaming, as split_columns)."""
    left, right = split_columns(t, ROWS, COLS)
    q0, q1 = split_columns(left, ROWS, COLS // 2)
    q2, q3 = split_columns(right, ROWS, COLS // 2)
    return q0, q1, q2, q3


@triton.jit
def epilogue_store(acc, y_desc, off_m, off_n, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias,
                   has_gamma, has_beta, eps, EPILOGUE: tl.constexpr, COLS: tl.constexpr):
    """EPILOGUE on one [BLOCK_M, COLS] slice of the output tile, stored at (off_m, off_n) through TMA."""
    offs_n = off_n + tl.arange(0, COLS)
    acc = epilogue(acc, offs_n, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta,
                   eps, EPILOGUE, y_desc.dtype)
    y_desc.store([off_m, off_n], acc.to(y_desc.dtype))


@triton.jit(**JIT_LIKE_AOT)
def fused_linear_tma_kernel(
    x_ptr, w_ptr, y_ptr,
    bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_ym,  # inner strides are 1; rows 16-byte aligned (TMA's rule)
    has_bias, has_gamma, has_beta,
    eps,
    num_sms,  # programs launched (at most one per SM); each walks tiles num_sms apart
    EPILOGUE: tl.constexpr, DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Descriptors are built on the device (in the launcher-provided global scratch); the TMA unit
    # zero-fills out-of-range reads and clips out-of-range writes, so no masks anywhere.
    # w may be fp16 while x is fp32 (DOT "fp16" with a weight the launcher rounded once per call).
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[stride_xm, 1], block_shape=[BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[stride_wn, 1], block_shape=[BLOCK_N, BLOCK_K])
    y_desc = tl.make_tensor_descriptor(y_ptr, shape=[M, N], strides=[stride_ym, 1], block_shape=[BLOCK_M, BLOCK_N])
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    # flatten: the software pipeline runs the next tile's loads under this tile's epilogue
    for tile_id in tl.range(tl.program_id(0), num_tiles, num_sms, flatten=True):
        pid_m, pid_n = grouped_tile(tile_id, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, k_tiles):
            a = x_desc.load([off_m, k * BLOCK_K])
            b = w_desc.load([off_n, k * BLOCK_K])
            acc = mma(a, b.T, acc, DOT)
        epilogue_store(acc, y_desc, off_m, off_n, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias,
                       has_gamma, has_beta, eps, EPILOGUE, BLOCK_N)
