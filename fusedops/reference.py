"""What the fused ops compute, in plain PyTorch, and the problems every check and benchmark draws.

One source for the demo (`python -m fusedops demo`), the tests, the bench, the tuner and the probe:

    from fusedops.reference import make_problem, reference, run_fused, rel_err, TOLERANCE, precision_name
    p = make_problem((64,), 4096, 4096, torch.float16, device="cuda")
    assert rel_err(run_fused("linear_relu", p), reference("linear_relu", p)) < TOLERANCE["fp16"].norm
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

EPS = 1e-5
# The epilogue vectors, in the ops' argument order.
VECTORS = ("bias", "running_mean", "running_var", "bn_weight", "bn_bias")
# KernelBench level-2 problems the ops come from (the seed documents): name, op, M, K, N.
SEED_PROBLEMS = (
    ("problem 41", "linear_bn_gelu_relu", 16384, 4096, 4096),
    ("problem 76", "linear_relu", 1024, 8192, 8192),
)


class Tolerance(NamedTuple):
    norm: float       # bound on ||out - ref|| / ||ref||, fused op against the fp64 composite of the same inputs
    max: float        # bound on max |out - ref| / max |ref|, likewise
    contender: float  # bound on ||out - ref|| / ||ref|| for any implementation at this precision (the bench's check
    #                   of cuBLAS, eager, torch.compile and the seed kernels beside fusedops)


# Per precision, by the names aot/spec.py gives them (input dtype and the tensor-core arithmetic).
TOLERANCE = {
    "fp32_ieee": Tolerance(2e-6, 2e-5, 1e-4),
    "fp32_tf32": Tolerance(2e-3, 1e-2, 1e-2),
    "fp32_fp16": Tolerance(2e-3, 1e-2, 1e-2),  # operands rounded to fp16, fp32 accumulation and output
    "fp16": Tolerance(1e-3, 4e-3, 1e-2),
    "bf16": Tolerance(8e-3, 3e-2, 1e-2),
}


def precision_name(dtype, precision=None, allow_tf32=None):
    """The precision a call with this input dtype and `precision` argument runs on CUDA (a TOLERANCE key): fp16 /
    bf16 inputs have their own; for float32, None / "auto" follows torch's TF32 setting as the op does."""
    if dtype in (torch.float16, torch.bfloat16):
        return "fp16" if dtype == torch.float16 else "bf16"
    if precision in (None, "auto"):
        allow = torch.backends.cuda.matmul.allow_tf32 if allow_tf32 is None else allow_tf32
        precision = "tf32" if allow else "ieee"
    return f"fp32_{precision}"


def make_problem(m_shape, n, k, dtype, device="cpu", bias=True, bn_affine=True, vec_dtype=torch.float32, seed=0,
                 generator=None):
    """x [*m_shape, k], weight [n, k] and the epilogue vectors, scaled like an nn.Linear layer and a trained
    BatchNorm. Drawn on the CPU from `seed`, or from `generator` on its own device (a CUDA generator draws large
    problems where they are used)."""
    g = generator if generator is not None else torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g, device=g.device) * scale + shift

    p = dict(
        x=rand(*m_shape, k).to(dtype),
        weight=rand(n, k, scale=max(k, 1) ** -0.5).to(dtype),
        bias=rand(n, scale=0.1).to(vec_dtype) if bias else None,
        running_mean=rand(n, scale=0.1).to(vec_dtype),
        running_var=(torch.rand(n, generator=g, device=g.device) * 0.5 + 0.5).to(vec_dtype),
        bn_weight=rand(n, scale=0.2, shift=1.0).to(vec_dtype) if bn_affine else None,
        bn_bias=rand(n, scale=0.1).to(vec_dtype) if bn_affine else None,
    )
    return {key: (t.to(device) if t is not None else None) for key, t in p.items()}


def composite(op, x, weight, bias=None, running_mean=None, running_var=None, bn_weight=None, bn_bias=None, eps=EPS):
    """The op as eager PyTorch computes it: F.linear, then (linear_bn_gelu_relu) F.batch_norm in eval mode and the
    exact-erf GELU, then ReLU, in the inputs' own dtype and torch's current matmul precision."""
    y = F.linear(x, weight, bias)
    if op == "linear_relu":
        return torch.relu(y)
    if op != "linear_bn_gelu_relu":
        raise ValueError(f"op must be 'linear_relu' or 'linear_bn_gelu_relu'; got {op!r}")
    # BatchNorm1d's channels are dim 1 of a 2-D input: other ranks go through [rows, N] (not reshape(-1, N): that is
    # ambiguous when N is 0)
    flat = y if y.dim() == 2 else y.reshape(math.prod(y.shape[:-1]), y.shape[-1])
    y = F.batch_norm(flat, running_mean, running_var, bn_weight, bn_bias, training=False, eps=eps).reshape(y.shape)
    return torch.relu(F.gelu(y, approximate="none"))


def reference(op, p, eps=EPS, dtype=torch.float64):
    """composite() of a problem's tensors upcast to `dtype` (fp64: the reference every tolerance is measured from)."""
    return composite(op, *(None if p.get(key) is None else p[key].to(dtype) for key in ("x", "weight", *VECTORS)),
                     eps=eps)


def run_fused(op, p, eps=EPS, **kw):
    """The fused op on a problem's tensors (kw: precision=...)."""
    import fusedops
    if op == "linear_relu":
        return fusedops.linear_relu(p["x"], p["weight"], p["bias"], **kw)
    return fusedops.linear_bn_gelu_relu(p["x"], p["weight"], *(p[key] for key in VECTORS), eps, **kw)


def rel_err(out, ref):
    """||out - ref|| / ||ref|| in fp64; NaN where out has a NaN or the shapes differ."""
    if tuple(out.shape) != tuple(ref.shape):
        return float("nan")
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()
