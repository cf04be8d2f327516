"""Python conveniences over torch.ops.fusedops (the ops themselves live in the C++ library)."""
import json
from typing import Optional

import torch
from torch import Tensor

PRECISIONS = ("auto", "ieee", "tf32", "fp16")


def _keyword_only(name, extra):
    """A TypeError for precision given by position (it is keyword-only, like the op's .precision overload's)."""
    return TypeError(f"fusedops.{name}: precision is a keyword argument, e.g. {name}(..., precision={extra[0]!r}); "
                     f"got {len(extra)} positional argument(s) past the op's own")


def linear_relu(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *extra,
                precision: Optional[str] = None) -> Tensor:
    """relu(x @ weight.T + bias), fused. x: [..., K]; weight: [N, K] as nn.Linear stores it.

    precision (float32 inputs only; fp16/bf16 always use their own tensor cores):
      None / "auto"  follow torch.backends.cuda.matmul.allow_tf32, like F.linear
      "ieee"         full fp32 products
      "tf32"         TF32 tensor cores (~1e-3 relative error)
      "fp16"         operands rounded to fp16 in registers, fp32 accumulate and output (fastest)
    """
    if extra:
        raise _keyword_only("linear_relu", extra)
    op = torch.ops.fusedops.linear_relu
    if precision is None:
        return op.default(x, weight, bias)
    return op.precision(x, weight, bias, precision=precision)


def linear_bn_gelu_relu(x: Tensor, weight: Tensor, bias: Optional[Tensor], running_mean: Tensor,
                        running_var: Tensor, bn_weight: Optional[Tensor] = None, bn_bias: Optional[Tensor] = None,
                        eps: float = 1e-5, *extra, precision: Optional[str] = None) -> Tensor:
    """relu(gelu(batch_norm_eval(x @ weight.T + bias))), exact-erf GELU, fused. precision: see linear_relu."""
    if extra:
        raise _keyword_only("linear_bn_gelu_relu", extra)
    op = torch.ops.fusedops.linear_bn_gelu_relu
    if precision is None:
        return op.default(x, weight, bias, running_mean, running_var, bn_weight, bn_bias, eps)
    return op.precision(x, weight, bias, running_mean, running_var, bn_weight, bn_bias, eps, precision=precision)


def build_info() -> dict:
    """What this binary holds: version, the torch it was built with, and the full kernel manifest."""
    return json.loads(torch.ops.fusedops._build_info())


def _selected_variant(op: str, precision: str, layout: str, m: int, n: int, k: int,
                      arch: Optional[int] = None) -> dict:
    """The manifest entry of the variant the library's rule matcher (the one dispatch runs) picks for a call of this
    op, precision name (aot/spec.py PRECISIONS), layout and M, N, K on `arch` (default: the arch the current GPU runs,
    FUSEDOPS_FORCE_ARCH included). For the tuner, the probe and the tests, which ask it rather than copy the rules."""
    if arch is None:
        major, minor = torch.cuda.get_device_capability()
        arch = torch.ops.fusedops._arch_for_capability(major * 10 + minor)
    name = torch.ops.fusedops._select_variant(arch, op, precision, layout, m, n, k)
    return next(v for v in build_info()["manifest"]["variants"] if v["name"] == name)
