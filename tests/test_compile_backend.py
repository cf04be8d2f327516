"""torch.compile(model, backend="fusedops"): the chains fuse.fuse finds are rewritten in the aten graph Inductor
compiles (modules and functional forms, any batch size), nothing the ops do not compute is, training graphs are left
to plain Inductor, and Inductor's on-disk cache never hands back an unfused graph. CPU here (the ops' ATen path); the
same models on the GPU where there is one."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from fusedops.fusion import fuse
from test_fuse import (FunctionalChains, KernelBench41, MustStayUnfused, SequentialChains, assert_same,
                       fused_op_calls, vgg_classifier)

HERE = Path(__file__).resolve().parent
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def compiled(model, **kw):
    torch._dynamo.reset()
    return torch.compile(model, backend="fusedops", **kw)


def warm_calls(model, *inputs):
    """fused_op_calls of a call after the first (the first compiles, and compiling runs the ops on fake tensors)."""
    with torch.no_grad():
        model(*inputs)
    return fused_op_calls(model, *inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make,inputs", [
    (SequentialChains, lambda d: (torch.randn(10, 16, device=d),)),
    (FunctionalChains, lambda d: (torch.randn(6, 16, device=d), torch.randn(2, 5, 16, device=d))),
    (vgg_classifier, lambda d: (torch.randn(4, 512, device=d),)),
    (KernelBench41, lambda d: (torch.randn(8, 64, device=d),)),
], ids=["sequential", "functional", "vgg-classifier", "kernelbench-41"])
def test_backend_fuses_what_fuse_finds(device, make, inputs):
    """Every chain fusedops.fuse finds in the model is one fused call in the compiled graph, with the same result."""
    model = make().to(device).eval()
    x = inputs(device)
    _, report = fuse(model, return_report=True)
    f = compiled(model)
    assert warm_calls(f, *x) == len(report.fused) > 0
    with torch.no_grad():
        assert_same(f(*x), model(*x))


@pytest.mark.parametrize("device", DEVICES)
def test_backend_leaves_what_the_ops_do_not_compute(device):
    """MustStayUnfused's tanh GELU, BatchNorm without running statistics and escaping intermediate stay torch's ops;
    its Linear -> Dropout -> ReLU fuses once the Dropout is in eval mode (the identity), not while it trains."""
    model = MustStayUnfused().to(device).eval()
    x = torch.randn(4, 8, device=device)
    f = compiled(model)
    assert warm_calls(f, x) == 1  # Linear -> Dropout(eval) -> ReLU
    with torch.no_grad():
        assert_same(f(x), model(x))
    model.dropout_training[1].train()  # a Dropout in training mode between Linear and ReLU (random: no comparison)
    assert warm_calls(compiled(model), x) == 0


def test_float64_models_keep_torchs_ops():
    model = KernelBench41().double().eval()
    x = torch.randn(8, 64, dtype=torch.double)
    f = compiled(model)
    assert warm_calls(f, x) == 0
    with torch.no_grad():
        assert_same(f(x), model(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_models(device, dtype):
    model = SequentialChains().to(device, dtype).eval()
    x = torch.randn(10, 16, device=device, dtype=dtype)
    f = compiled(model)
    assert warm_calls(f, x) == 2
    with torch.no_grad():
        torch.testing.assert_close(f(x), model(x), rtol=2e-2, atol=2e-2)


def test_dynamic_batch_sizes():
    """One graph for every batch size (dynamic=True): the rewrite holds with symbolic sizes, for 2-D and 3-D inputs
    (a size of 1 is specialised by torch.compile: a graph of its own, fused too)."""
    model = FunctionalChains().eval()
    f = compiled(model, dynamic=True)
    for rows, batch, tokens in ((6, 2, 5), (11, 3, 7), (2, 1, 3)):
        x, seq = torch.randn(rows, 16), torch.randn(batch, tokens, 16)
        assert warm_calls(f, x, seq) == 3, (rows, batch, tokens)
        with torch.no_grad():
            assert_same(f(x, seq), model(x, seq))


def test_training_graphs_go_to_plain_inductor():
    """With grad enabled and parameters that require grad, nothing is fused (the ops have no backward yet), and the
    compiled model trains as the original."""
    model = KernelBench41().eval()
    x = torch.randn(8, 64)
    f = compiled(model)
    out = f(x)
    out.sum().backward()
    want = torch.autograd.grad(model(x).sum(), model.gemm.weight)[0]
    torch.testing.assert_close(model.gemm.weight.grad, want)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        f(x)
    assert not any(e.key.startswith("fusedops::") for e in prof.key_averages())


CACHE_RUN = """
    import json, torch
    import torch._dynamo.utils
    from test_fuse import KernelBench41, fused_op_calls
    torch.manual_seed(0)
    model = KernelBench41().eval()
    x = torch.randn(8, 64)
    f = torch.compile(model, backend={backend!r})
    with torch.no_grad():
        f(x)
    counters = torch._dynamo.utils.counters["inductor"]
    print(json.dumps(dict(calls=fused_op_calls(f, x), hits=counters["fxgraph_cache_hit"],
                          misses=counters["fxgraph_cache_miss"])))
"""


def test_inductors_disk_cache_never_returns_an_unfused_graph(tmp_path):
    """Fresh processes sharing one Inductor cache: plain Inductor compiles the model first (its graph is cached); the
    fusedops backend then compiles it fused (a cache miss: the pass's uuid is in the key), and a second fusedops run
    is served that fused graph from the cache."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), TORCHINDUCTOR_FX_GRAPH_CACHE="1")

    def run(backend):
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CACHE_RUN.format(backend=backend))],
                              capture_output=True, text=True, timeout=600, cwd=HERE, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    plain = run("inductor")
    assert plain["calls"] == 0 and plain["misses"] >= 1
    cold = run("fusedops")
    assert cold["calls"] == 1 and cold["misses"] >= 1 and cold["hits"] == 0, cold
    warm = run("fusedops")
    assert warm["calls"] == 1 and warm["hits"] >= 1, warm
