"""The one Triton kernel behind every fusedops op (build-time only: users never import this).

    y = EPILOGUE(x @ W^T + bias)        x: [M, K], W: [N, K] exactly as nn.Linear stores it

Reads top to bottom: program id -> grouped tile order -> pointers -> K loop -> epilogue -> store.
The epilogue is a compile-time choice (cuBLASLt-style), so adding one is one branch here plus
one line in aot/spec.py.
"""
import triton
import triton.language as tl

INV_SQRT2 = tl.constexpr(0.7071067811865476)


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
    # Grouped tile order: GROUP_M row-blocks sweep the N tiles together, so the W tiles they share
    # are still in L2 when the next row-block needs them.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pids_per_group = GROUP_M * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_M
    group_rows = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % pids_per_group) % group_rows
    pid_n = (pid % pids_per_group) // group_rows

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
        if DOT == "fp16":  # fp32 operands rounded to fp16 in registers: no cast pass over x or W
            a = a.to(tl.float16)
            b = b.to(tl.float16)
        if DOT == "ieee":
            acc = tl.dot(a, b, acc, input_precision="ieee")
        elif DOT == "tf32":
            acc = tl.dot(a, b, acc, input_precision="tf32")
        else:
            acc = tl.dot(a, b, acc)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # Epilogue, all in fp32 on the accumulator. Per-column vectors are loaded once per tile.
    col_ok = offs_n < N
    bias = tl.load(bias_ptr + offs_n, mask=col_ok & (has_bias != 0), other=0.0)
    acc += bias[None, :]
    if EPILOGUE == "bn_gelu_relu":
        mean = tl.load(mean_ptr + offs_n, mask=col_ok, other=0.0)
        var = tl.load(var_ptr + offs_n, mask=col_ok, other=1.0)
        gamma = tl.load(gamma_ptr + offs_n, mask=col_ok & (has_gamma != 0), other=1.0)
        beta = tl.load(beta_ptr + offs_n, mask=col_ok & (has_beta != 0), other=0.0)
        scale = tl.div_rn(gamma, tl.sqrt_rn(var + eps))
        shift = beta - mean * scale
        acc = acc * scale[None, :] + shift[None, :]
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * INV_SQRT2))  # exact (erf) GELU
    # relu; NaN propagates as in torch.relu
    acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)

    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & col_ok[None, :])
