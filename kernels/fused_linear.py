"""The Triton kernels behind every fusedops op (build-time only: users never import this).

    y = EPILOGUE(x @ W^T + bias)        x: [M, K], W: [N, K] exactly as nn.Linear stores it

Two main loops share one epilogue:
  fused_linear_kernel      one output tile per program, pointer loads; any strides (all archs)
  fused_linear_tma_kernel  persistent programs walking the tiles, TMA tensor-descriptor loads and
                           stores (Hopper); unit inner strides and 16-byte-aligned rows only
Each reads top to bottom: program id -> grouped tile order -> pointers -> K loop -> epilogue -> store.
The epilogue is a compile-time choice (cuBLASLt-style): adding one is one branch in `epilogue`
plus one line in aot/spec.py OPS.
"""
import triton
import triton.language as tl
from triton.language.extra import libdevice

INV_SQRT2 = tl.constexpr(0.7071067811865476)
# erf(z) = 1 - t*(A1 + t*(A2 + t*(A3 + t*(A4 + t*A5)))) * exp(-z^2), t = 1 / (1 + P*z), z >= 0
# (Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7): a third of libdevice erff's instructions.
ERF_P = tl.constexpr(0.3275911)
ERF_A1 = tl.constexpr(0.254829592)
ERF_A2 = tl.constexpr(-0.284496736)
ERF_A3 = tl.constexpr(1.421413741)
ERF_A4 = tl.constexpr(-1.453152027)
ERF_A5 = tl.constexpr(1.061405429)


@triton.jit
def relu_gelu(v):
    """relu(gelu_erf(v)). Only v > 0 survives the relu, so erf is needed on z >= 0 only; worst
    relative error 6.3e-7 against fp64 (torch's own fp32 gelu: 3.6e-7). NaN stays NaN, as in torch."""
    z = tl.maximum(v, 0.0) * INV_SQRT2
    # Hardware approximations (MUFU.RCP, MUFU.EX2, flush-to-zero) instead of IEEE division and denormal-safe
    # exp: a few ulp, far below the formula's own 1.5e-7. Flushing is exact here: a denominator past 2^126 or
    # an exponent below -126 only happens where erfc(z) < 1e-30 is 0 in fp32 anyway.
    t = libdevice.fast_dividef(1.0, 1.0 + ERF_P * z)
    erfc = t * (ERF_A1 + t * (ERF_A2 + t * (ERF_A3 + t * (ERF_A4 + t * ERF_A5)))) * libdevice.fast_expf(-z * z)
    return tl.where(v > 0, v * (1.0 - 0.5 * erfc), v * 0.0)  # v * 0.0: 0, or NaN for NaN/-inf as torch


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
def epilogue(acc, offs_n, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta, eps,
             EPILOGUE: tl.constexpr):
    """EPILOGUE(acc + bias) in fp32. Per-column vectors are folded into one scale and one shift
    first, so only two of them stay live beside the accumulator (register pressure)."""
    col_ok = offs_n < N
    bias = tl.load(bias_ptr + offs_n, mask=col_ok & (has_bias != 0), other=0.0)
    if EPILOGUE == "bn_gelu_relu":
        mean = tl.load(mean_ptr + offs_n, mask=col_ok, other=0.0)
        var = tl.load(var_ptr + offs_n, mask=col_ok, other=1.0)
        gamma = tl.load(gamma_ptr + offs_n, mask=col_ok & (has_gamma != 0), other=1.0)
        beta = tl.load(beta_ptr + offs_n, mask=col_ok & (has_beta != 0), other=0.0)
        scale = tl.div_rn(gamma, tl.sqrt_rn(var + eps))
        shift = beta + (bias - mean) * scale  # batch_norm(acc + bias) = acc * scale + shift
        acc = relu_gelu(acc * scale[None, :] + shift[None, :])
    else:
        acc += bias[None, :]
    # relu; NaN propagates as in torch.relu
    return tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def fused_linear_kernel(
    x_ptr, w_ptr, y_ptr,
    bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,  # fp32 [N] vectors; unused ones may be 0
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    has_bias, has_gamma, has_beta,  # runtime 0/1: an optional vector that is absent is never read
    eps,
    EPILOGUE: tl.constexpr,  # "relu" | "bn_gelu_relu"
    DOT: tl.constexpr,  # "native" (fp16/bf16 in), "ieee" | "tf32" (fp32 in), "fp16" (fp32 in, fp16 tensor cores)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Out-of-range rows/cols wrap onto valid ones so the K loop needs no M/N mask; the store masks.
    # Row offsets go through int64 so tensors past 2^31 elements address correctly.
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + cols[None, :] * stride_wn + offs_k[:, None] * stride_wk  # W^T tile, read in place

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        b = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = mma(a, b, acc, DOT)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    acc = epilogue(acc, offs_n, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma, has_beta,
                   eps, EPILOGUE)
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def fused_linear_tma_kernel(
    x_ptr, w_ptr, y_ptr,
    bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_ym,  # inner strides are 1; rows 16-byte aligned (TMA's rule)
    has_bias, has_gamma, has_beta,
    eps,
    num_sms,  # programs launched (<= number of SMs); each walks tiles num_sms apart
    EPILOGUE: tl.constexpr, DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    FLATTEN: tl.constexpr = True, WARP_SPECIALIZE: tl.constexpr = False, EPILOGUE_SUBTILE: tl.constexpr = False,
):
    # Descriptors are built on the device (in the launcher-provided global scratch); the TMA unit
    # zero-fills out-of-range reads and clips out-of-range writes, so no masks anywhere.
    # w may be fp16 while x is fp32 (DOT "fp16" with a weight the launcher rounded once per call).
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[stride_xm, 1], block_shape=[BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[stride_wn, 1], block_shape=[BLOCK_N, BLOCK_K])
    # EPILOGUE_SUBTILE: the epilogue and the store go in two [BLOCK_M, BLOCK_N / 2] halves, which halves
    # the shared-memory staging buffer of the store (what lets 128x256 fp32 tiles fit).
    STORE_N: tl.constexpr = BLOCK_N // 2 if EPILOGUE_SUBTILE else BLOCK_N
    y_desc = tl.make_tensor_descriptor(y_ptr, shape=[M, N], strides=[stride_ym, 1], block_shape=[BLOCK_M, STORE_N])
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    # FLATTEN lets the software pipeline run the next tile's loads under this tile's epilogue;
    # WARP_SPECIALIZE splits producer and consumer warps (the tuning table picks).
    for tile_id in tl.range(tl.program_id(0), num_tiles, num_sms, flatten=FLATTEN, warp_specialize=WARP_SPECIALIZE):
        pid_m, pid_n = grouped_tile(tile_id, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, k_tiles):
            a = x_desc.load([off_m, k * BLOCK_K])
            b = w_desc.load([off_n, k * BLOCK_K])
            acc = mma(a, b.T, acc, DOT)
        if EPILOGUE_SUBTILE:
            left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, STORE_N)), (0, 2, 1)))
            offs_n = off_n + tl.arange(0, STORE_N)
            left = epilogue(left, offs_n, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma,
                            has_beta, eps, EPILOGUE)
            y_desc.store([off_m, off_n], left.to(y_desc.dtype))
            right = epilogue(right, offs_n + STORE_N, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias,
                             has_gamma, has_beta, eps, EPILOGUE)
            y_desc.store([off_m, off_n + STORE_N], right.to(y_desc.dtype))
        else:
            offs_n = off_n + tl.arange(0, BLOCK_N)
            acc = epilogue(acc, offs_n, N, bias_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, has_bias, has_gamma,
                           has_beta, eps, EPILOGUE)
            y_desc.store([off_m, off_n], acc.to(y_desc.dtype))
