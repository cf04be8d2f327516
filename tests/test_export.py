"""Models using the ops through TorchScript (script and trace), torch.compile, torch.export and
AOTInductor; the saved forms load in a fresh process that has torch and the extension library only
(torch.ops.load_library, no `import fusedops`, no Triton)."""
import shutil
import warnings

import pytest
import torch

import fusedops
from deploy_helpers import (ASSERT_NO_TRITON, check, client_input, eager_reference, make_deploy_model,
                            run_cpp_client, run_python, scripted)
from fusedops.nn import LinearBNGeluReLU, LinearReLU

FUSEDOPS_OVERLOADS = {torch.ops.fusedops.linear_relu.default, torch.ops.fusedops.linear_relu.precision,
                      torch.ops.fusedops.linear_bn_gelu_relu.default}


def fresh_process_check(tmp_path, device, load_lines, inputs, expected, tol=None):
    """Runs load_lines (which set `run`, a callable) in a fresh, Triton-less process with only torch and
    the library, and compares run(*inputs) with expected."""
    torch.save({"inputs": [t.cpu() for t in inputs], "expected": expected.cpu()}, tmp_path / "io.pt")
    rtol, atol = tol or (1.3e-6, 1e-5)
    code = ASSERT_NO_TRITON + f"""
import sys
import torch
torch.ops.load_library({fusedops.library_path!r})
device = {device!r}
{load_lines}
io = torch.load({str(tmp_path / "io.pt")!r})
with torch.no_grad():
    out = run(*[t.to(device) for t in io["inputs"]])
torch.testing.assert_close(out.cpu(), io["expected"], rtol={rtol!r}, atol={atol!r})
assert "fusedops" not in sys.modules and sys.modules.get("triton") is None
print("ok")
"""
    assert check(run_python(code, cwd=tmp_path)).strip() == "ok"


# --- TorchScript ----------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", [None, "tf32", "ieee"])
def test_script_fusedops_nn_modules(precision):
    torch.manual_seed(0)
    for module in (LinearReLU(12, 7, precision=precision), LinearBNGeluReLU(12, 7, eps=1e-3, precision=precision),
                   LinearReLU(12, 7, bias=False, precision=precision)):
        module.eval()
        with torch.no_grad():
            for buf in module.buffers():
                if buf.is_floating_point():
                    buf.uniform_(0.5, 1.5)
        script = scripted(module)
        x = torch.randn(2, 3, 12)
        torch.testing.assert_close(script(x), module(x))
        code = script.code
        assert "ops.fusedops." in code and (precision is None) == ("precision=" not in code), code
        # The scripted module keeps the training branch (exact PyTorch composite) too.
        script.train()
        module.train()
        torch.testing.assert_close(script(x), module(x))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_torchscript_script_and_trace_load_in_a_fresh_process(device, tmp_path):
    model = make_deploy_model(seed=1).to(device)
    x = client_input((4, 16)).to(device)
    with torch.no_grad():
        expected = model(x)
        script = scripted(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(model, x)
        torch.testing.assert_close(script(x), expected)
        torch.testing.assert_close(traced(x), expected)
        torch.testing.assert_close(traced(x[:3] + 1), model(x[:3] + 1))  # the trace is not shape-specialized
    if device == "cpu":
        torch.testing.assert_close(expected, eager_reference(model, x))
    script.save(str(tmp_path / "scripted.pt"))
    traced.save(str(tmp_path / "traced.pt"))
    # On CUDA, precision "auto" follows torch.backends.cuda.matmul.allow_tf32, which other tests may set.
    tol = None if device == "cpu" else (5e-3, 5e-3)
    for name in ("scripted.pt", "traced.pt"):
        fresh_process_check(tmp_path, device, f"run = torch.jit.load({str(tmp_path / name)!r}, map_location=device)",
                            [x], expected, tol)


# --- torch.compile, torch.export, AOTInductor ----------------------------------------------------------

def test_torch_compile_fullgraph_matches_eager():
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    model = make_deploy_model(seed=2)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    x = client_input((6, 16))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
        torch.testing.assert_close(compiled(x * 2), model(x * 2))  # same shapes: no recompile
    assert counter.frame_count == 1, "graph break or recompile"
    targets = {str(node.target) for gm in counter.graphs for node in gm.graph.nodes if node.op == "call_function"}
    assert sum("fusedops" in t for t in targets) >= 2, targets


def exported(model, x, **kw):
    with torch.no_grad():
        return torch.export.export(model, (x,), **kw)


def test_torch_export_graph_holds_the_ops():
    model = make_deploy_model(seed=3)
    x = client_input((5, 16))
    ep = exported(model, x)
    targets = {node.target for node in ep.graph.nodes if node.op == "call_function"}
    assert FUSEDOPS_OVERLOADS <= targets, targets
    assert "torch.ops.fusedops.linear_relu.precision(" in ep.graph_module.code
    assert "precision = 'tf32'" in ep.graph_module.code and "precision = 'ieee'" in ep.graph_module.code
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x))


def test_exported_program_saves_and_loads_in_a_fresh_process(tmp_path):
    model = make_deploy_model(seed=4)
    x = client_input((3, 16))
    torch.export.save(exported(model, x), str(tmp_path / "model.pt2"))
    with torch.no_grad():
        expected = model(x)
    fresh_process_check(tmp_path, "cpu", f"run = torch.export.load({str(tmp_path / 'model.pt2')!r}).module()",
                        [x], expected)


def test_torch_export_dynamic_batch():
    model = make_deploy_model(seed=5)
    batch = torch.export.Dim("batch")
    ep = exported(model, client_input((3, 16)), dynamic_shapes={"x": {0: batch}})
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(client_input((7, 16))), model(client_input((7, 16))))


@pytest.fixture(scope="module")
def aoti_package(tmp_path_factory):
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("AOTInductor needs a C++ compiler")
    model = make_deploy_model(seed=6)
    x = client_input((4, 16))
    path = tmp_path_factory.mktemp("aoti") / "model.pt2"
    with torch.no_grad():
        package = torch._inductor.aoti_compile_and_package(exported(model, x), package_path=str(path))
        expected = model(x)
    return package, x, expected


def test_aoti_package_runs_in_process(aoti_package):
    package, x, expected = aoti_package
    runner = torch._inductor.aoti_load_package(package)
    torch.testing.assert_close(runner(x), expected)


def test_aoti_package_runs_in_a_fresh_process(aoti_package, tmp_path):
    package, x, expected = aoti_package
    fresh_process_check(tmp_path, "cpu", f"run = torch._inductor.aoti_load_package({package!r})", [x], expected)


def test_aoti_package_runs_in_the_cpp_client(aoti_package, cpp_client):
    package, x, expected = aoti_package
    got = run_cpp_client(cpp_client, fusedops.library_path, package, tuple(x.shape))
    assert got["shape"] == tuple(expected.shape)
    assert abs(got["sum"] - expected.double().sum().item()) < 1e-9 + 1e-6 * expected.abs().sum().item()
    assert abs(got["abs_sum"] - expected.double().abs().sum().item()) < 1e-9 + 1e-6 * expected.abs().sum().item()
