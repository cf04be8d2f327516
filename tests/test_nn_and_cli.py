"""fusedops.nn modules, the Python wrappers and `python -m fusedops`."""
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import fusedops
from fusedops.nn import LinearBNGeluReLU, LinearReLU


def seed_model_41(k, n):
    """The seed's model for problem 41, as KernelBench writes it."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.gemm = nn.Linear(k, n)
            self.batch_norm = nn.BatchNorm1d(n)

        def forward(self, x):
            return torch.relu(nn.functional.gelu(self.batch_norm(self.gemm(x))))
    return Model()


def trained_bn(model, k):
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, k) * 2 + 1)  # running stats move away from 0/1
    return model.eval()


def test_linear_bn_gelu_relu_module_loads_seed_state_dict_and_matches():
    torch.manual_seed(0)
    seed = trained_bn(seed_model_41(24, 16), 24)
    fused = LinearBNGeluReLU(24, 16)
    fused.load_state_dict(seed.state_dict())
    fused.eval()
    x = torch.randn(5, 24)
    torch.testing.assert_close(fused(x), seed(x))
    assert fused.batch_norm.running_var.ne(1).any()


def test_from_modules_shares_parameters_and_training_updates_stats():
    torch.manual_seed(1)
    lin, bn = nn.Linear(8, 6), nn.BatchNorm1d(6)
    fused = LinearBNGeluReLU.from_modules(lin, bn)
    assert fused.gemm.weight is lin.weight and fused.batch_norm is bn
    before = bn.running_mean.clone()
    fused.train()
    y = fused(torch.randn(10, 8) + 3)
    assert not torch.equal(before, bn.running_mean), "training mode must update BatchNorm's running stats"
    y.sum().backward()
    assert lin.weight.grad is not None
    fused.eval()
    x = torch.randn(2, 3, 8)
    ref = torch.relu(nn.functional.gelu(bn(lin(x).reshape(-1, 6)).reshape(2, 3, 6)))
    torch.testing.assert_close(fused(x), ref)
    with pytest.raises(ValueError, match="num_features"):
        LinearBNGeluReLU.from_modules(nn.Linear(8, 6), nn.BatchNorm1d(5))


def test_modules_say_which_path_they_run():
    """A module made from a fresh nn.Linear is in training mode (the PyTorch composite): its repr says so."""
    m = LinearReLU.from_linear(nn.Linear(4, 3))
    assert m.training and "training: runs the PyTorch composite" in repr(m)
    assert "eval: runs the fused op" in repr(m.eval())
    bn = LinearBNGeluReLU.from_modules(nn.Linear(4, 3), nn.BatchNorm1d(3)).eval()
    assert "eval: runs the fused op" in repr(bn)


def test_linear_relu_module():
    torch.manual_seed(2)
    lin = nn.Linear(9, 4)
    fused = LinearReLU.from_linear(lin).eval()
    assert fused.weight is lin.weight
    x = torch.randn(3, 9)
    torch.testing.assert_close(fused(x), torch.relu(lin(x)))
    other = LinearReLU(9, 4, precision="tf32").eval()
    other.load_state_dict(lin.state_dict())  # same keys as nn.Linear
    torch.testing.assert_close(other(x), torch.relu(lin(x)))
    assert "precision=tf32" in repr(other)


def test_wrappers_pick_the_precision_overload():
    x, w = torch.randn(2, 3), torch.randn(4, 3)
    torch.testing.assert_close(fusedops.linear_relu(x, w, precision="ieee"), torch.relu(x @ w.T))


def run_module(*args):
    return subprocess.run([sys.executable, "-m", "fusedops", *args], capture_output=True, text=True, timeout=600)


def test_info_cli():
    """The summary first (version, this machine's GPU and how it is served, archs), the variants behind a flag."""
    out = run_module("info")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert fusedops.__version__ in lines[0]
    assert lines[1].startswith("GPU") and ("served" if torch.cuda.is_available() else "no CUDA GPU") in lines[1]
    assert "sm_89" in out.stdout and "sm_90" in out.stdout and "kernel variants" in out.stdout
    assert "linear_bn_gelu_relu__fp16__sm89" not in out.stdout and len(lines) < 10
    listed = run_module("info", "--variants")
    assert listed.returncode == 0 and "linear_bn_gelu_relu__fp16__sm89" in listed.stdout


def test_info_cli_json():
    out = run_module("info", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["manifest"]["variants"]


def test_demo_cli_cpu_small():
    out = run_module("demo", "--device", "cpu", "--scale", "64")
    assert out.returncode == 0, out.stderr
    assert "problem 41" in out.stdout and "problem 76" in out.stdout
    assert "FAIL" not in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("problem") and "linear" in line]
    assert len(rows) == 2 and "speedup" not in out.stdout, out.stdout  # one row per problem, no speed claim
    assert "docs/PERF.md" in out.stdout


@pytest.mark.parametrize("args,message", [
    (("--scale", "0"), "argument --scale: must be an integer >= 1; got 0"),
    (("--repeats", "0"), "argument --repeats: must be an integer >= 1; got 0"),
    (("--device", "tpu"), "argument --device"),
    (("--device", "meta"), "argument --device: the demo runs on cpu or cuda"),
] + ([] if torch.cuda.is_available() else [(("--device", "cuda"), "torch sees no CUDA GPU here")]))
def test_demo_cli_refuses_bad_arguments_clearly(args, message):
    out = run_module("demo", *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_no_triton_import_in_package():
    """Nothing under fusedops/ imports triton (the build needs it, users do not)."""
    code = ("import sys, fusedops, fusedops.nn, fusedops.__main__; "
            "print('triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_info_cli_survives_a_closed_pipe():
    """`python -m fusedops info | head -3` under `set -o pipefail` must not fail."""
    proc = subprocess.run(f"set -o pipefail; {sys.executable} -m fusedops info | head -3", shell=True,
                          executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "BrokenPipeError" not in proc.stderr
    assert len(proc.stdout.splitlines()) == 3
