"""`torch.compile(model, backend="fusedops")`: Inductor, with the fused ops' chains rewritten into op calls first.

The backend hands the graph torch.compile captured to Inductor with one custom pass, run on the aten-level graph
after decomposition (Inductor's post-grad custom pre-pass). Its patterns are the ops' composites traced through
Inductor's own decompositions by Inductor's pattern matcher, so a chain matches however the model wrote it: modules
or functional calls, ReLU in place or not, any batch size (dynamic shapes included). What the ops do not compute
does not match: the tanh GELU, a BatchNorm using batch statistics, a chain whose intermediate value is also used
elsewhere. Inductor compiles everything else as usual. (Inductor turns a product with a single row of x, e.g. a
[1, 1, K] input, into pointwise code before the pass runs: such a chain stays unfused.)

The pass's `uuid()` (a hash of this file and the library's version) is part of Inductor's cache keys, so a graph
compiled earlier by plain Inductor is never handed back unfused from the on-disk cache.

Graphs that autograd may differentiate (grad enabled and an input that requires grad) go to plain Inductor: the
ops have no backward yet. The backend is found through the "torch_dynamo_backends" entry point, so it needs no
import of fusedops; `fusedops.backend.compile_backend` is the same function, to pass directly.
"""
import functools
import inspect

import torch
import torch.nn.functional as F

import fusedops  # noqa: F401  (loads the library: torch.ops.fusedops)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_EXAMPLE_EPS = 1e-5  # a stand-in while tracing: the matched graph's own eps is passed on


def _linear_relu(x, weight, bias):
    return torch.relu(F.linear(x, weight, bias))


def _linear_relu_no_bias(x, weight):
    return torch.relu(F.linear(x, weight))


def _fused_linear_relu(x, weight, bias):
    return torch.ops.fusedops.linear_relu(x, weight, bias)


def _fused_linear_relu_no_bias(x, weight):
    return torch.ops.fusedops.linear_relu(x, weight, None)


def _linear_bn_gelu_relu(x, weight, bias, mean, var, gamma, beta, eps):
    return torch.relu(F.gelu(F.batch_norm(F.linear(x, weight, bias), mean, var, gamma, beta, False, 0.0, eps)))


def _fused_linear_bn_gelu_relu(x, weight, bias, mean, var, gamma, beta, eps):
    return torch.ops.fusedops.linear_bn_gelu_relu(x, weight, bias, mean, var, gamma, beta, eps)


def _linear_bn_gelu_relu_no_bias(x, weight, mean, var, gamma, beta, eps):
    return _linear_bn_gelu_relu(x, weight, None, mean, var, gamma, beta, eps)


def _fused_linear_bn_gelu_relu_no_bias(x, weight, mean, var, gamma, beta, eps):
    return torch.ops.fusedops.linear_bn_gelu_relu(x, weight, None, mean, var, gamma, beta, eps)


def _linear_bn_gelu_relu_no_affine(x, weight, bias, mean, var, eps):
    return _linear_bn_gelu_relu(x, weight, bias, mean, var, None, None, eps)


def _fused_linear_bn_gelu_relu_no_affine(x, weight, bias, mean, var, eps):
    return torch.ops.fusedops.linear_bn_gelu_relu(x, weight, bias, mean, var, None, None, eps)


def _linear_bn_gelu_relu_bare(x, weight, mean, var, eps):
    return _linear_bn_gelu_relu(x, weight, None, mean, var, None, None, eps)


def _fused_linear_bn_gelu_relu_bare(x, weight, mean, var, eps):
    return torch.ops.fusedops.linear_bn_gelu_relu(x, weight, None, mean, var, None, None, eps)


def _supported(match) -> bool:
    """A match the op takes as it stands: x and weight of one dtype the kernels have, vectors in it or fp32, one device
    (anything else keeps torch's ops, so a float64 model compiles as before)."""
    values = {name: node.meta.get("val") for name, node in match.kwargs.items() if isinstance(node, torch.fx.Node)}
    if any(not isinstance(v, torch.Tensor) for v in values.values()):
        return False
    x, weight = values["x"], values["weight"]
    vectors = [v for name, v in values.items() if name not in ("x", "weight")]
    return (x.dtype in DTYPES and weight.dtype == x.dtype and all(v.dtype in (x.dtype, torch.float32) for v in vectors)
            and len({v.device for v in values.values()}) == 1 and x.device.type in ("cpu", "cuda"))


def _known(condition) -> bool:
    from torch.fx.experimental.symbolic_shapes import statically_known_true
    return bool(statically_known_true(condition))


def _flattened_linear_matches(match) -> bool:
    """reshape(x, [M, K]) -> addmm / mm -> reshape to x's leading dims + [N]: F.linear on an input of rank > 2, as
    Inductor's graph has it (the reshape sizes symbolic under dynamic shapes)."""
    if not _supported(match):
        return False
    x, weight = match.kwargs["x"].meta["val"], match.kwargs["weight"].meta["val"]
    out = match.output_node().meta.get("val")
    if x.dim() < 3 or weight.dim() != 2 or not isinstance(out, torch.Tensor) or out.dim() != x.dim():
        return False
    want = (*x.shape[:-1], weight.shape[0])
    return _known(x.shape[-1] == weight.shape[1]) and all(_known(a == b) for a, b in zip(out.shape, want))


def _register_flattened_linear_relu(patterns):
    """linear_relu on inputs of rank > 2. Traced patterns cannot express it: the trace reads the reshapes as views
    of the traced sizes, while Inductor's graph keeps reshape nodes."""
    from torch._inductor.pattern_matcher import CallFunction, Ignored, KeywordArg, register_graph_pattern
    aten = torch.ops.aten
    for bias in (True, False):
        rows = CallFunction(aten.reshape.default, KeywordArg("x"), Ignored())
        weight_t = CallFunction(aten.permute.default, KeywordArg("weight"), Ignored())
        product = (CallFunction(aten.addmm.default, KeywordArg("bias"), rows, weight_t) if bias
                   else CallFunction(aten.mm.default, rows, weight_t))
        pattern = CallFunction(aten.relu.default, CallFunction(aten.reshape.default, product, Ignored()))

        @register_graph_pattern(pattern, extra_check=_flattened_linear_matches, pass_dict=patterns)
        def replace(match, x, weight, bias=None):
            match.replace_by_example(_fused_linear_relu, [x, weight, bias])


def _trace_as_inductor_sees(fn, args, **kwargs):
    """fwd_only's trace, then the joint-graph patterns Inductor applies to a model's graph before the post-grad passes
    (torch 2.11's, for one, drop an fp16 round trip between two fp32 ops there: the rounding between a half
    BatchNorm's output and the GELU): the search pattern then reads as the graph it is matched against."""
    from torch._inductor.fx_passes import joint_graph
    from torch._inductor.pattern_matcher import fwd_only
    gm = fwd_only(fn, args, **kwargs)
    joint_graph.patterns.apply(gm.graph)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


@functools.cache
def _patterns():
    """The PatternMatcherPass holding every (op, bias, BatchNorm affine, input rank, dtype) pattern, traced once."""
    from torch._inductor.pattern_matcher import PatternMatcherPass, fwd_only, register_replacement
    patterns = PatternMatcherPass(pass_name="fusedops")
    m, k, n = 4, 8, 16  # any sizes: the matcher ignores the traced ints

    # a dtype whose decomposition reads the same as another's adds no pattern (older torch raises on the duplicate)
    skips = "skip_duplicates" in inspect.signature(register_replacement).parameters

    def register(search, replace, inputs, **kw):
        for trace in (fwd_only, _trace_as_inductor_sees):  # (the same pattern twice where the passes change nothing)
            try:
                register_replacement(search, replace, inputs, trace, [patterns], extra_check=_supported,
                                     **(dict(skip_duplicates=True) if skips else {}), **kw)
            except RuntimeError as e:
                if skips or "Duplicate pattern" not in str(e):
                    raise

    for dtype in DTYPES:
        def t(*shape):
            return torch.empty(*shape, dtype=dtype)
        def vectors(count):  # distinct tensors: the tracer would merge one tensor passed twice into one argument
            return [t(n) for _ in range(count)]
        x, weight = t(m, k), t(n, k)
        register(_linear_relu, _fused_linear_relu, [x, weight, *vectors(1)])
        register(_linear_relu_no_bias, _fused_linear_relu_no_bias, [x, weight])
        eps = {"eps": _EXAMPLE_EPS}
        register(_linear_bn_gelu_relu, _fused_linear_bn_gelu_relu, [x, weight, *vectors(5)], scalar_workaround=eps)
        register(_linear_bn_gelu_relu_no_bias, _fused_linear_bn_gelu_relu_no_bias, [x, weight, *vectors(4)],
                 scalar_workaround=eps)
        register(_linear_bn_gelu_relu_no_affine, _fused_linear_bn_gelu_relu_no_affine, [x, weight, *vectors(3)],
                 scalar_workaround=eps)
        register(_linear_bn_gelu_relu_bare, _fused_linear_bn_gelu_relu_bare, [x, weight, *vectors(2)],
                 scalar_workaround=eps)
    _register_flattened_linear_relu(patterns)
    return patterns


@functools.cache
def fusion_pass():
    """The Inductor custom graph pass that rewrites the chains (one instance: its uuid is a cache key)."""
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class FusedOpsPass(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            _patterns().apply(graph)

        def uuid(self):
            return get_hash_for_files((__file__,)) + fusedops.__version__.encode()

    return FusedOpsPass()


def _may_need_grad(example_inputs) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs)


def compile_backend(gm: torch.fx.GraphModule, example_inputs, **kwargs):
    """The "fusedops" torch.compile backend: Inductor with the fusion pass (see the module's doc)."""
    from torch._inductor.compile_fx import compile_fx
    if _may_need_grad(example_inputs):
        return compile_fx(gm, example_inputs, **kwargs)
    return compile_fx(gm, example_inputs, config_patches={"post_grad_custom_pre_pass": fusion_pass()}, **kwargs)
