"""fusedops.fuse(model): the chains are found however a model writes them, nothing else is touched, and the fused
model computes what the original did, keeps its state_dict and deploys (TorchScript, torch.export, torch.compile).
On the CPU here (the ops' ATen path); the same models run on the GPU where there is one."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusedops
from fusedops.fusion import fuse

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]  # (gpu: run by the GPU suite, skipped without one)


def trained_batch_norm(bn):
    """Running statistics and affine parameters away from their initial values (else BN would be the identity)."""
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 1.5)
        if bn.affine:
            bn.weight.normal_(1, 0.2)
            bn.bias.normal_(0, 0.1)
    return bn


class SequentialChains(nn.Module):
    """Modules in nn.Sequential: Linear -> BN -> Dropout -> GELU -> ReLU(inplace), then Linear (no bias) -> ReLU."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(16, 32), trained_batch_norm(nn.BatchNorm1d(32)), nn.Dropout(0.2),
                                   nn.GELU(), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Linear(32, 8, bias=False), nn.ReLU())

    def forward(self, x):
        return self.head(self.block(x))


class FunctionalChains(nn.Module):
    """Attributes used in forward and functional calls: F.linear, F.batch_norm(training=False), F.gelu, F.relu,
    torch.relu, x.relu(), F.dropout(training=False); leading batch dims on the linear_relu chains."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(24, 16) * 0.25)
        self.b1 = nn.Parameter(torch.randn(24) * 0.1)
        self.bn = trained_batch_norm(nn.BatchNorm1d(24, eps=1e-3))
        self.proj = nn.Linear(16, 12)
        self.out = nn.Linear(24, 12)

    def forward(self, x, seq):
        h = F.linear(x, self.w1, self.b1)
        h = F.batch_norm(h, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, training=False,
                         eps=self.bn.eps)
        h = F.relu(F.gelu(h, approximate="none"))
        a = torch.relu(self.out(h))
        b = F.dropout(self.proj(seq), 0.5, training=self.training).relu()  # seq: [batch, tokens, 16]
        return a, b


class MustStayUnfused(nn.Module):
    """Each chain here differs from what the ops compute, so none may be fused."""

    def __init__(self):
        super().__init__()
        self.tanh = nn.Sequential(nn.Linear(8, 8), trained_batch_norm(nn.BatchNorm1d(8)), nn.GELU("tanh"), nn.ReLU())
        self.no_stats = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.GELU(),
                                      nn.ReLU())
        self.escape = nn.Linear(8, 8)
        self.dropout_training = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.ReLU())

    def forward(self, x):
        e = self.escape(x)
        return self.tanh(x) + self.no_stats(x) + torch.relu(e) + e + self.dropout_training(x)


def fused_op_calls(model, *inputs):
    """How many fusedops op calls one forward makes (torch.profiler's fusedops:: events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.no_grad():
            model(*inputs)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("fusedops::"))


def assert_same(a, b):
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_sequential_chains_fuse_and_match(device):
    model = SequentialChains().to(device).eval()
    x = torch.randn(10, 16, device=device)
    fused, report = fuse(model, return_report=True)
    assert len(report.fused) == 2 and fused_op_calls(fused, x) == 2 and fused_op_calls(model, x) == 0, report
    assert_same(fused(x), model(x))
    assert sorted(fused.state_dict()) == sorted(model.state_dict())
    fused.load_state_dict(model.state_dict())
    assert fused.get_submodule("block.0").weight is model.block[0].weight  # shared, not copied


@pytest.mark.parametrize("device", DEVICES)
def test_functional_chains_fuse_and_match(device):
    model = FunctionalChains().to(device).eval()
    x, seq = torch.randn(6, 16, device=device), torch.randn(3, 5, 16, device=device)
    fused, report = fuse(model, return_report=True)
    assert len(report.fused) == 3 and fused_op_calls(fused, x, seq) == 3, report
    assert_same(fused(x, seq), model(x, seq))


def test_what_the_ops_do_not_compute_stays_unfused():
    model = MustStayUnfused().eval()
    model.dropout_training[1].train()  # a Dropout in training mode between Linear and ReLU
    x = torch.randn(4, 8)
    fused, report = fuse(model, return_report=True)
    assert report.fused == [] and fused is model and fused_op_calls(fused, x) == 0


def test_models_in_training_mode_are_returned_as_they_are():
    model = SequentialChains()
    fused, report = fuse(model, return_report=True)
    assert fused is model and "training mode" in str(report)


class Untraceable(nn.Module):
    """Python control flow on a tensor's value: symbolic tracing cannot follow the root, only its children."""

    def __init__(self):
        super().__init__()
        self.first = SequentialChains()
        self.second = nn.Sequential(nn.Linear(8, 8), nn.ReLU())

    def forward(self, x):
        y = self.first(x)
        if y.sum() > 0:
            y = y * 2
        return self.second(y)


def test_an_untraceable_model_is_fused_child_by_child_and_left_intact():
    model = Untraceable().eval()
    x = torch.randn(5, 16)
    want = model(x)
    fused, report = fuse(model, return_report=True)
    assert fused_op_calls(fused, x) == 3 and len(report.fused) == 3, report
    assert_same(fused(x), want)
    assert isinstance(model.first, SequentialChains) and fused_op_calls(model, x) == 0  # the original untouched
    assert fused.first.get_submodule("block.0").weight is model.first.block[0].weight
    in_place = fuse(model, inplace=True)
    assert in_place is model and fused_op_calls(model, x) == 3


def vgg_classifier(features=512, hidden=256, classes=10):
    """torchvision's VGG classifier head as published (Dropout, Linear, ReLU(True), twice, then Linear), narrower."""
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, hidden),
                         nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, classes))


class KernelBench41(nn.Module):
    """KernelBench level 2 problem 41 (the seed model): Gemm, BatchNorm, GELU, ReLU."""

    def __init__(self, in_features=64, out_features=32):
        super().__init__()
        self.gemm = nn.Linear(in_features, out_features)
        self.batch_norm = trained_batch_norm(nn.BatchNorm1d(out_features))

    def forward(self, x):
        x = self.gemm(x)
        x = self.batch_norm(x)
        x = torch.nn.functional.gelu(x)
        return torch.relu(x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make,shape,chains", [(vgg_classifier, (4, 512), 2), (KernelBench41, (8, 64), 1)],
                         ids=["vgg-classifier", "kernelbench-41"])
def test_published_architectures(device, make, shape, chains):
    model = make().to(device).eval()
    x = torch.randn(*shape, device=device)
    fused = fuse(model)
    assert fused_op_calls(fused, x) == chains
    assert_same(fused(x), model(x))


def test_bn_chain_on_3d_input_computes_the_original():
    """BatchNorm1d on [batch, channels, length] normalises dim 1, not the features: the fused call checks the rank at
    run time and computes the original composite there."""
    model = nn.Sequential(nn.Linear(6, 6), trained_batch_norm(nn.BatchNorm1d(4)), nn.GELU(), nn.ReLU()).eval()
    x = torch.randn(3, 4, 6)
    fused = fuse(model)
    assert_same(fused(x), model(x))
    assert fused_op_calls(fused, x) == 0


def test_fused_models_script_trace_export_and_compile(tmp_path):
    model = SequentialChains().eval()
    x = torch.randn(10, 16)
    fused = fuse(model, precision="ieee")
    want = model(x)
    scripted = torch.jit.script(fused)
    scripted.save(str(tmp_path / "m.pt"))
    assert_same(torch.jit.load(str(tmp_path / "m.pt"))(x), want)
    assert_same(torch.jit.trace(fused, x)(x), want)
    exported = torch.export.export(fused, (x,))
    assert "fusedops" in str(exported.graph)
    assert_same(exported.module()(x), want)
    assert_same(torch.compile(fused, backend="aot_eager", fullgraph=True)(x), want)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="precision must be"):
        fuse(SequentialChains().eval(), precision="fast")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        fuse(lambda x: x)


def test_verbose_names_each_chain(capsys):
    fuse(SequentialChains().eval(), verbose=True)
    out = capsys.readouterr().out
    assert "block.0 -> block.1 -> block.2 -> block.3 -> block.4 => linear_bn_gelu_relu" in out, out
    assert "head.0 -> head.1 => linear_relu" in out, out
    assert fusedops.fuse is fuse


def test_a_graph_the_pass_fails_on_falls_back_to_the_children(monkeypatch):
    """fuse never raises for a model that ran: where rewriting a traced graph fails, that module is left as it was
    and its children are fused one by one."""
    import fusedops.fusion as fuse_module
    real = fuse_module._fuse_graph

    def failing_at_the_root(gm, path, precision, report):
        if path == "":
            report.fused.append("half-done")
            raise RuntimeError("unexpected graph")
        return real(gm, path, precision, report)

    monkeypatch.setattr(fuse_module, "_fuse_graph", failing_at_the_root)
    model = SequentialChains().eval()
    x = torch.randn(3, 16)
    fused, report = fuse(model, return_report=True)
    assert "half-done" not in report.fused and len(report.fused) == 2 and fused_op_calls(fused, x) == 2
    assert_same(fused(x), model(x))


def test_the_example_fuses_a_model_written_without_fusedops():
    """examples/fuse_model.py (the README's example) runs, fuses its stem and four blocks, and matches the original."""
    example = Path(__file__).resolve().parent.parent / "examples" / "fuse_model.py"
    proc = subprocess.run([sys.executable, str(example), "--batch", "8"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("=> linear_bn_gelu_relu") == 4 and proc.stdout.count("=> linear_relu") == 1, proc.stdout
    assert "5 chains fused" in proc.stdout, proc.stdout
