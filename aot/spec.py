"""What gets built: the single source of truth for ops, precisions, layouts and archs.

The AOT build (aot/build.py) turns this plus the per-arch tuning tables (aot/tuning/sm_*.json)
into compile jobs and a generated C++ variant table; the runtime and the tests read that table
back out of the built library (torch.ops.fusedops._build_info), never a second copy of it.
"""
import os

# main-loop kind (a tuning-table config's "KERNEL", default "tiled") -> its source file, function and limits.
# "knobs": extra constexprs a config may set, with their defaults (values: KNOB_VALUES, else 0/1).
# "dots": the DOT values it serves (None: all); "max_arch": newest arch it runs on (None: any);
# "stages_constexpr": the config's num_stages goes to the kernel as STAGES (Gluon kernels pipeline by hand);
# "requires": launcher knobs (LAUNCHER_KNOBS) a config of this kernel must set to these values;
# "cublas_gemm": the launcher has cuBLAS (at::mm) write x @ W^T into y first and the kernel only applies the epilogue;
# "options" (optional): compile options beyond num_warps / num_stages.
KERNELS = {
    "tiled": {"source": "kernels/fused_linear.py", "function": "fused_linear_kernel",
              "layouts": ("aligned", "generic"), "min_arch": 80, "max_arch": None, "dots": None,
              "persistent": False, "stages_constexpr": False, "knobs": {"SPLIT_K": 1, "VECTORS_FIRST": 0},
              "requires": {}, "cublas_gemm": False},
    "tma": {"source": "kernels/fused_linear.py", "function": "fused_linear_tma_kernel", "layouts": ("aligned",),
            "min_arch": 90, "max_arch": None, "dots": None, "persistent": True, "stages_constexpr": False,
            "knobs": {}, "requires": {},
            "cublas_gemm": False},
    # fp32 x on fp16 tensor cores with explicit wgmma waits (Hopper's wgmma only; the weight arrives in fp16)
    "wgmma": {"source": "kernels/fused_linear_gluon.py", "function": "fused_linear_wgmma_kernel",
              "layouts": ("aligned",), "min_arch": 90, "max_arch": 90, "dots": ("fp16",), "persistent": True,
              "stages_constexpr": True, "knobs": {}, "requires": {"WEIGHT_FP16": 1}, "cublas_gemm": False},
    # fp16/bf16/TF32 with a loader warpgroup and two consumer warpgroups sharing each tile (warp-specialised, Hopper
    # wgmma); maxnreg spreads the registers over its three warpgroups (see the kernel). TMA_STORE: the epilogue
    # stores through shared memory and TMA instead of from the registers
    "coop": {"source": "kernels/fused_linear_coop.py", "function": "fused_linear_coop_kernel", "layouts": ("aligned",),
             "min_arch": 90, "max_arch": 90, "dots": ("native", "tf32"), "persistent": True, "stages_constexpr": True,
             "knobs": {"TMA_STORE": 0}, "requires": {}, "cublas_gemm": False, "options": {"maxnreg": 168}},
    # cuBLAS's GEMM into y, then the epilogue in place (one read and write of y more than a fused kernel). fp32 'ieee':
    # cuBLAS's SGEMM gives exact fp32 products at ~2x Triton's FMA main loop. fp16/bf16: cuBLAS's own kernels for the
    # shapes the Triton kernels serve worse (x or W not 16-aligned, and the shape regions in the tables' notes). Where
    # cuBLAS cannot take a call (fp32 'ieee' while torch runs cuBLAS in TF32; operands of 2^31 elements or more), the
    # launcher takes the table's fallback kernel (aot/tables.py).
    "cublas": {"source": "kernels/fused_linear.py", "function": "fused_epilogue_kernel",
               "layouts": ("aligned", "generic"), "min_arch": 80, "max_arch": None, "dots": ("ieee", "native"),
               "persistent": False, "stages_constexpr": False, "knobs": {}, "requires": {}, "cublas_gemm": True},
}


def kernel_function(kind):
    """The (Triton or Gluon) function behind a KERNELS entry (imports its source: build time and tuning only)."""
    import importlib
    return getattr(importlib.import_module(KERNELS[kind]["source"][:-3].replace("/", ".")), KERNELS[kind]["function"])


def pipeline_constexprs(kind, config):
    """Constexprs a config's num_stages becomes for this kernel: STAGES for kernels that pipeline by hand."""
    return {"STAGES": config["num_stages"]} if KERNELS[kind]["stages_constexpr"] else {}

# op name (= torch.ops.fusedops.<name>) -> the kernel's EPILOGUE constexpr
OPS = {
    "linear_relu": "relu",
    "linear_bn_gelu_relu": "bn_gelu_relu",
}

# precision name -> (element type of x, W and y; the kernel's DOT constexpr; the tuning-table key)
PRECISIONS = {
    "fp16": ("fp16", "native", "half"),
    "bf16": ("bf16", "native", "half"),
    "fp32_ieee": ("fp32", "ieee", "fp32_ieee"),  # true fp32 products (torch 'highest')
    "fp32_tf32": ("fp32", "tf32", "fp32_tf32"),  # TF32 tensor cores (torch 'high')
    "fp32_fp16": ("fp32", "fp16", "fp32_fp16"),  # fp32 in/out, operands rounded to fp16 in registers
}

# Layouts: "aligned" bakes in unit inner strides and 16-divisible sizes/strides/16-byte-aligned
# pointers (wide vector loads); "generic" takes any strides. The runtime picks "aligned" only when
# the call satisfies every assumption below and K > 0 (the TMA kernels' descriptors need non-empty
# extents; csrc/dispatch.cpp: is_aligned_call).
LAYOUTS = {
    "aligned": {
        "unit_strides": ["stride_xk", "stride_wk", "stride_yn"],
        "divisible_by_16": ["x_ptr", "w_ptr", "y_ptr", "N", "K", "stride_xm", "stride_wn", "stride_ym"],
    },
    "generic": {"unit_strides": [], "divisible_by_16": []},
}

# The kernel's runtime arguments and their Triton types (pointers are filled in per precision).
ARG_TYPES = {
    "x_ptr": "*X", "w_ptr": "*X", "y_ptr": "*X",
    "bias_ptr": "*fp32", "mean_ptr": "*fp32", "var_ptr": "*fp32", "gamma_ptr": "*fp32", "beta_ptr": "*fp32",
    "M": "i32", "N": "i32", "K": "i32",
    "stride_xm": "i64", "stride_xk": "i64", "stride_wn": "i64", "stride_wk": "i64",
    "stride_ym": "i64", "stride_yn": "i64",
    "has_bias": "i32", "has_gamma": "i32", "has_beta": "i32",
    "eps": "fp32",
    "num_sms": "i32",
    "partials_ptr": "*fp32", "tile_counters_ptr": "*i32",
}
TILE_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")  # kernel constexprs
CONFIG_KEYS = TILE_KEYS + ("num_warps", "num_stages")  # plus the compile options
# Config switches (0/1) that change what the launcher hands the kernel rather than the kernel source.
# WEIGHT_FP16 (precisions whose DOT is "fp16" only): the launcher rounds the weight to fp16 once per call
# (one pass over W: 6 bytes per element) and the kernel converts only x's tiles in registers; pays off once
# M is large enough that every W tile would otherwise be converted M / BLOCK_M times.
LAUNCHER_KNOBS = {"WEIGHT_FP16": 0}
# Knobs that take a count rather than 0/1.
KNOB_VALUES = {"SPLIT_K": (1, 2, 3, 4, 6, 8)}


def knob_constexpr(name, value):
    """A knob's value as the kernel's constexpr: a count stays an int, a 0/1 switch becomes a bool."""
    return int(value) if name in KNOB_VALUES else bool(value)

DEFAULT_ARCHS = (89, 90)
# Largest dynamic shared memory one block may opt into, per arch (CUDA programming guide).
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 120: 101376}
# Arch that must not spill registers or exceed its limit: the product's target GPU (RTX 4090).
STRICT_ARCHS = (89,)


def cuda_archs():
    """Archs to build: FUSEDOPS_CUDA_ARCHS="80;86;89;90" overrides the default."""
    raw = os.environ.get("FUSEDOPS_CUDA_ARCHS", "").replace(",", ";").strip()
    if not raw:
        return list(DEFAULT_ARCHS)
    archs = []
    for item in raw.split(";"):
        item = item.strip().lower().removeprefix("sm_").replace(".", "")
        if not item:
            continue
        if not item.isdigit() or int(item) not in SHARED_MEMORY_LIMIT:
            raise SystemExit(f"FUSEDOPS_CUDA_ARCHS: unsupported arch {item!r}; "
                             f"supported: {sorted(SHARED_MEMORY_LIMIT)}")
        archs.append(int(item))
    return sorted(set(archs))
