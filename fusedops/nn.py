"""Drop-in modules. Eval mode calls the fused op; training mode runs the exact PyTorch composite so
BatchNorm keeps updating its running statistics. Parameter names match nn.Linear / the seed models,
so their state dicts load unchanged."""
from typing import Optional

import torch
from torch import Tensor, nn


def _mode(module: nn.Module) -> str:
    return "training: runs the PyTorch composite" if module.training else "eval: runs the fused op"


class LinearReLU(nn.Module):
    """relu(linear(x)). State dict keys: weight, bias (as nn.Linear)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 precision: Optional[str] = None):
        super().__init__()
        linear = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.precision = precision

    @classmethod
    def from_linear(cls, linear: nn.Linear, precision: Optional[str] = None) -> "LinearReLU":
        """Wraps an existing nn.Linear, sharing (not copying) its parameters, in the linear's mode: a fresh nn.Linear
        is in training mode, where this module runs the PyTorch composite; call .eval() to run the fused op."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta",
                     precision=precision)
        module.weight = linear.weight
        module.bias = linear.bias
        return module.train(linear.training)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return torch.relu(nn.functional.linear(x, self.weight, self.bias))
        if self.precision is None:
            return torch.ops.fusedops.linear_relu(x, self.weight, self.bias)
        return torch.ops.fusedops.linear_relu(x, self.weight, self.bias, precision=self.precision)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, precision={self.precision}, {_mode(self)}")


class LinearBNGeluReLU(nn.Module):
    """relu(gelu(batch_norm(linear(x)))). Submodules gemm (nn.Linear) and batch_norm (nn.BatchNorm1d),
    named as in the seed model, so its state dict loads as is."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, eps: float = 1e-5,
                 momentum: float = 0.1, device=None, dtype=None, precision: Optional[str] = None):
        super().__init__()
        self.gemm = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.batch_norm = nn.BatchNorm1d(out_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.precision = precision

    @classmethod
    def from_modules(cls, linear: nn.Linear, batch_norm: nn.BatchNorm1d,
                     precision: Optional[str] = None) -> "LinearBNGeluReLU":
        """Wraps existing modules, sharing (not copying) their parameters and buffers, in the linear's mode (training
        mode runs the PyTorch composite; call .eval() to run the fused op)."""
        if batch_norm.num_features != linear.out_features:
            raise ValueError(f"batch_norm.num_features ({batch_norm.num_features}) must equal "
                             f"linear.out_features ({linear.out_features})")
        if not batch_norm.track_running_stats:
            raise ValueError("batch_norm must track running stats: the fused op uses running_mean/running_var")
        module = cls(linear.in_features, linear.out_features, device="meta", precision=precision)
        module.gemm = linear
        module.batch_norm = batch_norm
        return module.train(linear.training)

    def forward(self, x: Tensor) -> Tensor:
        bn = self.batch_norm
        if self.training:
            y = self.gemm(x)
            y = bn(y.reshape(-1, y.shape[-1])).reshape(y.shape)
            return torch.relu(nn.functional.gelu(y))
        mean, var = bn.running_mean, bn.running_var
        assert mean is not None and var is not None, "batch_norm must track running stats"
        if self.precision is None:
            return torch.ops.fusedops.linear_bn_gelu_relu(x, self.gemm.weight, self.gemm.bias, mean, var, bn.weight,
                                                          bn.bias, bn.eps)
        return torch.ops.fusedops.linear_bn_gelu_relu(x, self.gemm.weight, self.gemm.bias, mean, var, bn.weight,
                                                      bn.bias, bn.eps, precision=self.precision)

    def extra_repr(self) -> str:
        return f"precision={self.precision}, {_mode(self)}"
