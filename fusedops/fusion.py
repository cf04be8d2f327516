"""fuse(model): find the chains the fused ops compute in any eval-mode model and run them as one op each.

    model = fusedops.fuse(model)                    # the fused model; the original is left as it was
    model = fusedops.fuse(model, verbose=True)      # prints one line per fused chain
    fused, report = fusedops.fuse(model, return_report=True)

The model is traced with torch.fx (symbolic_trace). A chain is
    Linear -> [Dropout / Identity in eval]* -> ReLU                                      => linear_relu
    Linear -> [...]* -> BatchNorm1d (eval, running stats) -> [...]* -> GELU (erf) -> [...]* -> ReLU
                                                                                          => linear_bn_gelu_relu
written with modules (nn.Linear, nn.BatchNorm1d, nn.GELU, nn.ReLU(inplace=...), nn.Dropout, nn.Identity) or functions
(F.linear, F.batch_norm(training=False), F.gelu(approximate="none"), F.relu, torch.relu, x.relu(), F.dropout(training=
False)), with or without a bias, on inputs of any leading dims. A chain is left alone where an intermediate value
is used anywhere else, where the GELU is the tanh approximation, or where a BatchNorm is in training mode or has no
running statistics. A model (or submodule) that symbolic tracing cannot follow is fused submodule by submodule;
what cannot be traced stays as it was. fuse never raises for a model that ran before it.

The fused model shares the original's parameters and buffers (nothing is copied) and keeps the modules that hold
them, so the original state_dict() keys still load. With inplace=False (the default) the original model is left as it
was; with inplace=True the modules of it that had to be fused child by child are edited in place.

BatchNorm1d takes the channels from dim 1: the fused BN call checks at run time that its input is 2-D ([batch,
features], the only case where that is the last dim) and otherwise computes the original composite. The fused ops have
no autograd yet: fuse leaves a model in training mode as it is.
"""
import copy
import inspect
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ._ops import PRECISIONS

_RELU_FUNCTIONS = (torch.relu, torch.relu_, F.relu)
_SKIPPED_MODULES = (nn.Dropout, nn.Identity)


@dataclass
class FuseReport:
    """What fuse() did: one line per fused chain (its module path and nodes) and what it could not trace."""
    fused: List[str] = field(default_factory=list)
    untraced: List[str] = field(default_factory=list)

    def __str__(self):
        lines = [f"fused {line}" for line in self.fused] + [f"not traced: {name}" for name in self.untraced]
        return "\n".join(lines) if lines else "nothing fused"


@torch.fx.wrap
def linear_bn_gelu_relu_2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], running_mean: Tensor,
                           running_var: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], eps: float,
                           precision: str) -> Tensor:
    """The fused op where BatchNorm1d normalises the last dim (a 2-D input); else the original composite."""
    if x.dim() == 2:
        return torch.ops.fusedops.linear_bn_gelu_relu(x, weight, bias, running_mean, running_var, bn_weight, bn_bias,
                                                      eps, precision=precision)
    y = F.batch_norm(F.linear(x, weight, bias), running_mean, running_var, bn_weight, bn_bias, False, 0.0, eps)
    return torch.relu(F.gelu(y))


@torch.fx.wrap
def linear_relu(x: Tensor, weight: Tensor, bias: Optional[Tensor], precision: str) -> Tensor:
    return torch.ops.fusedops.linear_relu(x, weight, bias, precision=precision)


def fuse(model: nn.Module, *, precision: Optional[str] = None, inplace: bool = False, verbose: bool = False,
         return_report: bool = False):
    """The model with every chain the fused ops compute replaced by one op call (see the module's doc). precision:
    the fused ops' precision argument for float32 models ("auto", "ieee", "tf32", "fp16"; None: "auto")."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"fuse: precision must be None or one of {', '.join(map(repr, PRECISIONS))}; "
                         f"got {precision!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse: model must be an nn.Module; got {type(model).__name__}")
    report = FuseReport()
    if model.training:  # the ops have no autograd yet, and a BatchNorm in training mode uses batch statistics
        report.untraced.append("(model in training mode: nothing fused; call .eval() first)")
        fused = model
    else:
        fused = _fuse_module(model, "", precision or "auto", report, inplace)
    if verbose:
        print(report)
    return (fused, report) if return_report else fused


def _fuse_module(module: nn.Module, path: str, precision: str, report: FuseReport, inplace: bool) -> nn.Module:
    """module fused as one traced graph (a GraphModule sharing its parameters), else its children fused one by one
    into a shallow copy of it (or into it, inplace)."""
    try:
        graph_module = torch.fx.symbolic_trace(module)
    except Exception:  # noqa: BLE001  (tracing fails on data-dependent Python; then go one level down)
        graph_module = None
    if graph_module is not None:
        fused_before = len(report.fused)
        try:
            count = _fuse_graph(graph_module, path, precision, report)
        except Exception:  # noqa: BLE001  (a graph form this pass does not expect: leave it to the children)
            del report.fused[fused_before:]
            count = None
        if count == 0:
            return module
        if count:
            _keep_unused_state(module, graph_module)
            return graph_module
    if not list(module.children()):
        report.untraced.append(path or type(module).__name__)
        return module
    fused_children = {}
    for name, child in module.named_children():
        fused = _fuse_module(child, f"{path}.{name}" if path else name, precision, report, inplace)
        if fused is not child:
            fused_children[name] = fused
    if not fused_children:
        return module
    if not inplace:  # a new container holding the same parameters, buffers and untouched children
        module = copy.copy(module)
        module._modules = dict(module._modules)
    for name, fused in fused_children.items():
        setattr(module, name, fused)
    return module


def _keep_unused_state(module: nn.Module, graph_module: torch.fx.GraphModule) -> None:
    """Gives the traced module the original's children, parameters and buffers that its forward does not use (tracing
    leaves them out), so that the original state_dict() keys still load."""
    for name, child in module.named_children():
        if not hasattr(graph_module, name):
            graph_module.add_module(name, child)
    for name, param in module.named_parameters(recurse=False):
        if not hasattr(graph_module, name):
            graph_module.register_parameter(name, param)
    for name, buffer in module.named_buffers(recurse=False):
        if not hasattr(graph_module, name):
            graph_module.register_buffer(name, buffer, persistent=name not in module._non_persistent_buffers_set)


def _target_module(gm, node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _arguments(node, fn):
    """The call's arguments by parameter name (a traced function call's positional and keyword arguments)."""
    return inspect.signature(fn).bind(*node.args, **node.kwargs).arguments


def _passes_through(gm, node) -> bool:
    """Dropout in eval mode or Identity: the value passes unchanged."""
    module = _target_module(gm, node)
    if module is not None:
        return isinstance(module, _SKIPPED_MODULES) and not module.training
    if node.op == "call_function" and node.target is F.dropout:
        return _arguments(node, F.dropout).get("training", True) is False
    return False


def _is_relu(gm, node) -> bool:
    module = _target_module(gm, node)
    if module is not None:
        return isinstance(module, nn.ReLU)
    return (node.op == "call_function" and node.target in _RELU_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("relu", "relu_"))


def _is_exact_gelu(gm, node) -> bool:
    module = _target_module(gm, node)
    if module is not None:
        return isinstance(module, nn.GELU) and module.approximate == "none"
    if node.op == "call_function" and node.target is F.gelu:
        approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
        return approximate == "none"
    return False


def _linear_operands(gm, node):
    """(x, weight, bias) nodes of a Linear or F.linear call, else None."""
    module = _target_module(gm, node)
    graph = gm.graph
    if isinstance(module, nn.Linear):
        with graph.inserting_before(node):
            weight = graph.get_attr(f"{node.target}.weight")
            bias = graph.get_attr(f"{node.target}.bias") if module.bias is not None else None
        return node.args[0], weight, bias
    if node.op == "call_function" and node.target is F.linear:
        args = list(node.args) + [None] * (3 - len(node.args))
        return args[0], node.kwargs.get("weight", args[1]), node.kwargs.get("bias", args[2])
    return None


def _batch_norm_operands(gm, node):
    """(running_mean, running_var, weight, bias, eps) of an eval-mode BatchNorm with running statistics, else None."""
    module = _target_module(gm, node)
    graph = gm.graph
    if isinstance(module, nn.BatchNorm1d):
        if module.training or module.running_mean is None or module.running_var is None:
            return None
        with graph.inserting_before(node):
            get = lambda name: graph.get_attr(f"{node.target}.{name}")  # noqa: E731
            return (get("running_mean"), get("running_var"), get("weight") if module.affine else None,
                    get("bias") if module.affine else None, module.eps)
    if node.op == "call_function" and node.target is F.batch_norm:
        a = _arguments(node, F.batch_norm)
        if a.get("training", False) is not False or a.get("running_mean") is None or a.get("running_var") is None:
            return None
        eps = a.get("eps", 1e-5)
        if not isinstance(eps, float):
            return None
        return a["running_mean"], a["running_var"], a.get("weight"), a.get("bias"), eps
    return None


def _sole_user(node):
    users = list(node.users)
    return users[0] if len(users) == 1 and users[0].args and users[0].args[0] is node else None


def _next(gm, node):
    """The next node of a chain: node's only user, past pass-through nodes that have one user each."""
    nxt = _sole_user(node)
    while nxt is not None and _passes_through(gm, nxt):
        nxt = _sole_user(nxt)
    return nxt


def _fuse_graph(gm: torch.fx.GraphModule, path: str, precision: str, report: FuseReport) -> int:
    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        if node.op not in ("call_module", "call_function") or not (
                isinstance(_target_module(gm, node), nn.Linear) or node.target is F.linear):
            continue
        first = _next(gm, node)
        if first is None:
            continue
        if _is_relu(gm, first):
            chain_end, bn = first, None
        else:
            bn_node, gelu = first, _next(gm, first)
            relu = _next(gm, gelu) if gelu is not None and _is_exact_gelu(gm, gelu) else None
            if relu is None or not _is_relu(gm, relu):
                continue
            bn = _batch_norm_operands(gm, bn_node)
            if bn is None:
                continue
            chain_end = relu
        x, weight, bias = _linear_operands(gm, node)
        with graph.inserting_before(chain_end):
            if bn is None:
                fused = graph.call_function(linear_relu, (x, weight, bias, precision))
            else:
                fused = graph.call_function(linear_bn_gelu_relu_2d, (x, weight, bias, *bn, precision))
        chain = []
        step = node
        while step is not chain_end:
            chain.append(step)
            step = _sole_user(step)
        chain.append(chain_end)
        chain_end.replace_all_uses_with(fused)
        for step in reversed(chain):
            graph.erase_node(step)
        steps = " -> ".join(f"{s.target}" if s.op == "call_module" else f"{s.name}()" for s in chain)
        report.fused.append(f"{path or '<model>'}: {steps} => {'linear_bn_gelu_relu' if bn else 'linear_relu'}")
        count += 1
    if count:
        graph.eliminate_dead_code()
        graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return count
