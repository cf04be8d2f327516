"""The ops on the CPU (ATen reference path) and Meta: semantics, shapes, opcheck, bad input."""
import random

import pytest
import torch
from torch.library import opcheck

import fusedops
from fusedops.reference import TOLERANCE, make_problem, precision_name, reference, rel_err, run_fused

OPS = ["linear_relu", "linear_bn_gelu_relu"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def random_shapes(count, seed):
    rng = random.Random(seed)
    shapes = [((1,), 1, 1), ((1,), 17, 33), ((7,), 5, 3)]  # M = 1, tiny N/K
    while len(shapes) < count:
        lead = tuple(rng.choice([1, 2, 3, 5, 13, 64, 100]) for _ in range(rng.choice([1, 1, 2, 3])))
        shapes.append((lead, rng.choice([1, 7, 31, 64, 100, 129]), rng.choice([1, 5, 16, 33, 130])))
    return shapes


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m_shape,n,k", random_shapes(12, seed=1))
def test_matches_composite(op, dtype, m_shape, n, k):
    p = make_problem(m_shape, n, k, dtype, seed=hash((op, m_shape, n, k)) % 1000)
    out = run_fused(op, p)
    ref = reference(op, p, dtype=torch.float32)  # fp32 composite on the same (rounded) inputs
    assert out.shape == (*m_shape, n) and out.dtype == dtype
    tol = TOLERANCE[precision_name(dtype, "ieee")].norm  # the CPU path: fp32 throughout, rounded at the end
    if ref.norm() > 0:
        assert rel_err(out, ref) < tol
    torch.testing.assert_close(out.float(), ref.to(dtype).float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("op", OPS)
def test_optional_vectors_and_vector_dtype(op):
    # bias / bn_weight / bn_bias absent, and vectors given in x's dtype instead of fp32
    p = make_problem((9,), 12, 10, torch.bfloat16, bias=False, bn_affine=False, vec_dtype=torch.bfloat16)
    torch.testing.assert_close(run_fused(op, p), reference(op, p, dtype=torch.float32).to(torch.bfloat16))


def test_eps_is_used():
    p = make_problem((4,), 8, 8, torch.float32)
    p["running_var"] = torch.zeros(8)
    for eps in (1e-5, 0.5):
        torch.testing.assert_close(run_fused("linear_bn_gelu_relu", p, eps=eps),
                                   reference("linear_bn_gelu_relu", p, eps=eps, dtype=torch.float32))


@pytest.mark.parametrize("op", OPS)
def test_empty_batch_and_empty_k(op):
    p = make_problem((0,), 6, 4, torch.float32)
    out = run_fused(op, p)
    assert out.shape == (0, 6)
    p = make_problem((2, 0, 3), 6, 4, torch.float32)
    assert run_fused(op, p).shape == (2, 0, 3, 6)
    p = make_problem((3,), 6, 0, torch.float32)  # K = 0: the product is all zeros, epilogue of bias
    torch.testing.assert_close(run_fused(op, p), reference(op, p, dtype=torch.float32))
    for m_shape in ((5,), (0,), (2, 3)):  # N = 0: an empty result, as F.linear gives (F.batch_norm raises there)
        p = make_problem(m_shape, 0, 4, torch.float32)
        out = run_fused(op, p)
        assert out.shape == (*m_shape, 0) and out.dtype == torch.float32


def test_nan_propagates_like_torch():
    p = make_problem((2,), 4, 3, torch.float32)
    p["x"][0, 0] = float("nan")
    out = run_fused("linear_relu", p)
    assert out[0].isnan().all() and not out[1].isnan().any()


@pytest.mark.parametrize("precision", ["auto", "ieee", "tf32", "fp16"])
def test_precision_overload_on_cpu_is_the_fp32_reference(precision):
    p = make_problem((5,), 6, 7, torch.float32)
    for op in OPS:
        torch.testing.assert_close(run_fused(op, p, precision=precision), reference(op, p, dtype=torch.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_meta_shapes(dtype):
    p = make_problem((2, 3), 10, 7, dtype, device="meta")
    for op in OPS:
        out = run_fused(op, p)
        assert out.device.type == "meta" and out.shape == (2, 3, 10) and out.dtype == dtype
    x = torch.empty(4, 7, device="meta", dtype=dtype)
    with pytest.raises(RuntimeError, match="weight"):
        torch.ops.fusedops.linear_relu(x, torch.empty(10, 6, device="meta", dtype=dtype), None)


def opcheck_cases():
    for dtype in DTYPES:
        for op in OPS:
            p = make_problem((3, 5), 9, 6, dtype, seed=3)
            if op == "linear_relu":
                args = (p["x"], p["weight"], p["bias"])
            else:
                args = (p["x"], p["weight"], p["bias"], p["running_mean"], p["running_var"], p["bn_weight"],
                        p["bn_bias"], 1e-5)
            yield pytest.param(op, "default", args, {}, id=f"{op}-{dtype}-default")
            yield pytest.param(op, "precision", args, {"precision": "tf32"}, id=f"{op}-{dtype}-precision")


@pytest.mark.parametrize("op,overload,args,kwargs", list(opcheck_cases()))
def test_opcheck(op, overload, args, kwargs):
    opcheck(getattr(getattr(torch.ops.fusedops, op), overload), args, kwargs)


def test_schemas_are_exact():
    assert str(torch.ops.fusedops.linear_relu.default._schema) == \
        "fusedops::linear_relu(Tensor x, Tensor weight, Tensor? bias) -> Tensor"
    schema = str(torch.ops.fusedops.linear_bn_gelu_relu.default._schema)
    assert schema.startswith("fusedops::linear_bn_gelu_relu(Tensor x, Tensor weight, Tensor? bias, "
                             "Tensor running_mean, Tensor running_var, Tensor? bn_weight, Tensor? bn_bias, "
                             "float eps=1")
    assert schema.endswith(") -> Tensor")


def bad_input_cases():
    h = torch.float16
    x, w, b = torch.randn(4, 8), torch.randn(6, 8), torch.randn(6)
    v = torch.rand(6) + 0.5
    relu = torch.ops.fusedops.linear_relu
    bn = torch.ops.fusedops.linear_bn_gelu_relu
    yield "x 0-D", lambda: relu(torch.tensor(1.0), w, b), "'x'.*at least 1-D"
    yield "weight 1-D", lambda: relu(x, torch.randn(8), b), "'weight' must be 2-D"
    yield "weight 3-D", lambda: relu(x, torch.randn(1, 6, 8), b), "'weight' must be 2-D"
    yield "K mismatch", lambda: relu(x, torch.randn(6, 9), b), "'weight'.*K = x.size\\(-1\\) = 8"
    yield "bias length", lambda: relu(x, w, torch.randn(5)), "'bias'.*size N = 6"
    yield "bias 2-D", lambda: relu(x, w, torch.randn(1, 6)), "'bias'.*1-D"
    yield "int dtype", lambda: relu(x.long(), w.long(), None), "'x' must be float16, bfloat16 or float32"
    yield "float64", lambda: relu(x.double(), w.double(), None), "'x' must be float16, bfloat16 or float32"
    yield "mixed dtype", lambda: relu(x.to(h), w, None), "'weight' must have x's dtype"
    yield "vector dtype", lambda: relu(x.to(h), w.to(h), b.double()), "'bias' must be float32 or x's dtype"
    yield "mean length", lambda: bn(x, w, b, torch.randn(7), v, None, None, 1e-5), "'running_mean'.*size N = 6"
    yield "var length", lambda: bn(x, w, b, v, torch.rand(2), None, None, 1e-5), "'running_var'.*size N = 6"
    yield "bn_weight", lambda: bn(x, w, b, v, v, torch.randn(3), None, 1e-5), "'bn_weight'.*size N = 6"
    yield "bn_bias", lambda: bn(x, w, b, v, v, None, torch.randn(6, 1), 1e-5), "'bn_bias'.*1-D"
    yield "negative eps", lambda: bn(x, w, b, v, v, None, None, -1.0), "'eps' must be >= 0"
    yield "precision", lambda: fusedops.linear_relu(x, w, b, precision="fast"), "'precision' must be 'auto'"
    yield "device", lambda: relu(x, w.to("meta"), b), "'weight' is on meta but x is on cpu"
    yield "vector device", lambda: relu(x, w, b.to("meta")), "'bias' is on meta but x is on cpu"
    yield "arch not built", lambda: torch.ops.fusedops._arch_for_capability(75), "this build holds sm_"
    # a Python None where the schema says Tensor arrives in C++ as an undefined tensor
    yield "x None", lambda: relu(None, w, b), "'x' must be a tensor; got None"
    yield "weight None", lambda: relu(x, None, b), "'weight' must be a tensor; got None"
    yield "running_mean None", lambda: bn(x, w, b, None, v, None, None, 1e-5), "'running_mean' must be a tensor"
    yield "running_var None", lambda: bn(x, w, b, v, None, None, None, 1e-5), "'running_var' must be a tensor"
    yield "eps NaN", lambda: bn(x, w, b, v, v, None, None, float("nan")), "'eps' must be >= 0; got nan"


@pytest.mark.parametrize("case,call,message", list(bad_input_cases()), ids=[c[0] for c in bad_input_cases()])
def test_bad_input_gives_clear_error(case, call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


def test_precision_given_by_position_names_the_keyword():
    x, w, b, v = torch.randn(4, 8), torch.randn(6, 8), torch.randn(6), torch.rand(6) + 0.5
    message = r"precision is a keyword argument, e.g. linear_relu\(\.\.\., precision='fp16'\)"
    with pytest.raises(TypeError, match=message):
        fusedops.linear_relu(x, w, b, "fp16")
    with pytest.raises(TypeError, match="fusedops.linear_bn_gelu_relu: precision is a keyword argument"):
        fusedops.linear_bn_gelu_relu(x, w, b, v, v, None, None, 1e-5, "tf32")
