"""The PyTorch composites the fused ops must match, and random problem makers."""
import math

import torch
import torch.nn.functional as F


def make_problem(m_shape, n, k, dtype, device="cpu", bias=True, bn_affine=True, vec_dtype=torch.float32, seed=0):
    """x [*m_shape, k], weight [n, k] and the epilogue vectors, scaled like an nn.Linear layer."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift)

    p = dict(
        x=rand(*m_shape, k).to(dtype),
        weight=rand(n, k, scale=max(k, 1) ** -0.5).to(dtype),
        bias=rand(n, scale=0.1).to(vec_dtype) if bias else None,
        running_mean=rand(n, scale=0.1).to(vec_dtype),
        running_var=(torch.rand(n, generator=g) * 0.5 + 0.5).to(vec_dtype),
        bn_weight=rand(n, scale=0.2, shift=1.0).to(vec_dtype) if bn_affine else None,
        bn_bias=rand(n, scale=0.1).to(vec_dtype) if bn_affine else None,
    )
    return {key: (t.to(device) if t is not None else None) for key, t in p.items()}


def linear_relu_ref(p, compute_dtype=torch.float32):
    c = lambda t: None if t is None else t.to(compute_dtype)  # noqa: E731
    return torch.relu(F.linear(c(p["x"]), c(p["weight"]), c(p["bias"])))


def linear_bn_gelu_relu_ref(p, eps=1e-5, compute_dtype=torch.float32):
    c = lambda t: None if t is None else t.to(compute_dtype)  # noqa: E731
    y = F.linear(c(p["x"]), c(p["weight"]), c(p["bias"]))
    rows, n = math.prod(y.shape[:-1]), y.shape[-1]  # (not reshape(-1, n): ambiguous when N is 0)
    y = F.batch_norm(y.reshape(rows, n), c(p["running_mean"]), c(p["running_var"]), c(p["bn_weight"]),
                     c(p["bn_bias"]), training=False, eps=eps).reshape(y.shape)
    return torch.relu(F.gelu(y, approximate="none"))


def run_fused(op_name, p, eps=1e-5, **kw):
    import fusedops
    if op_name == "linear_relu":
        return fusedops.linear_relu(p["x"], p["weight"], p["bias"], **kw)
    return fusedops.linear_bn_gelu_relu(p["x"], p["weight"], p["bias"], p["running_mean"], p["running_var"],
                                        p["bn_weight"], p["bn_bias"], eps, **kw)


def run_ref(op_name, p, eps=1e-5, compute_dtype=torch.float32):
    if op_name == "linear_relu":
        return linear_relu_ref(p, compute_dtype)
    return linear_bn_gelu_relu_ref(p, eps, compute_dtype)


# CUDA kernels vs an fp64 reference: (x dtype, precision) -> (bound on ||out - ref|| / ||ref||,
# bound on max |out - ref| / max |ref|). precision None / "auto" on float32 may run TF32.
GPU_TOLERANCE = {
    (torch.float32, "ieee"): (2e-6, 2e-5),
    (torch.float32, "tf32"): (2e-3, 1e-2),
    (torch.float32, "fp16"): (2e-3, 1e-2),
    (torch.float32, "auto"): (2e-3, 1e-2),
    (torch.float32, None): (2e-3, 1e-2),
    (torch.float16, None): (1e-3, 4e-3),
    (torch.bfloat16, None): (8e-3, 3e-2),
}


def rel_err(out, ref):
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()
