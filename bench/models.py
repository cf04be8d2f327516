"""Whole models, fused without rewiring: the eager original against fusedops.fuse(model), torch.compile (Inductor's
default) and torch.compile(backend="fusedops"), on a realistic MLP stack.

    python -m bench.models                          # 8 x (Linear 4096 -> BN -> GELU -> ReLU) and 8 x (Linear -> ReLU),
                                                    # batch 16384, fp16 and bf16
    python -m bench.models --layers 4 --width 2048 --batch 4096 --dtypes fp16

Each model runs under torch.no_grad() in eval mode (BatchNorm with trained-looking running statistics). The four
contenders of a model and dtype are timed in interleaved rounds (bench.timing: CUDA events, each round starting one
contender later, medians over the pooled calls), after one untimed call that compiles; every output is compared with
the eager original's (relative error, held to fusedops.reference.TOLERANCE's contender bound). Needs a CUDA GPU.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import round_order, time_cuda  # noqa: E402
from fusedops.reference import TOLERANCE, precision_name, rel_err  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def mlp_stack(width: int, layers: int, batch_norm: bool) -> nn.Sequential:
    """`layers` x (Linear(width, width) -> BatchNorm1d -> GELU -> ReLU), or x (Linear -> ReLU) without batch_norm."""
    blocks = []
    for _ in range(layers):
        blocks.append(nn.Linear(width, width))
        if batch_norm:
            norm = nn.BatchNorm1d(width)
            with torch.no_grad():
                norm.running_mean.normal_(0, 0.1)
                norm.running_var.uniform_(0.5, 1.5)
                norm.weight.normal_(1, 0.1)
                norm.bias.normal_(0, 0.1)
            blocks += [norm, nn.GELU()]
        blocks.append(nn.ReLU())
    return nn.Sequential(*blocks).eval()


def contenders(model: nn.Module):
    """(name, callable) for the four ways to run the model."""
    import fusedops
    torch._dynamo.reset()
    return [("eager", model), ("fusedops.fuse", fusedops.fuse(model)),
            ("torch.compile", torch.compile(model)), ("compile fusedops", torch.compile(model, backend="fusedops"))]


def bench_model(name: str, model: nn.Module, x: torch.Tensor, rounds: int, budget_ms: float) -> list:
    rows = []
    runners = contenders(model)
    with torch.no_grad():
        want = model(x)
        checked = []
        for label, fn in runners:
            start = time.perf_counter()
            out = fn(x)  # compiles where it compiles
            torch.cuda.synchronize()
            err = rel_err(out, want)
            bound = TOLERANCE[precision_name(x.dtype)].contender
            checked.append((label, fn, err, err <= bound, time.perf_counter() - start))
        pooled = {label: [] for label, *_ in checked}
        for r in range(rounds):
            for i in round_order(len(checked), r):
                label, fn = checked[i][:2]
                pooled[label] += time_cuda(lambda: fn(x), warmup=3, reps=50, budget_ms=budget_ms / rounds,
                                           min_reps=5).times_ms
    eager_ms = statistics.median(pooled["eager"])
    for label, _, err, ok, first_s in checked:
        ms = statistics.median(pooled[label])
        rows.append(dict(model=name, dtype=str(x.dtype).replace("torch.", ""), contender=label, ms=ms,
                         vs_eager=eager_ms / ms, rel_err=err, ok=ok, first_call_s=first_s))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp16", "bf16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget-ms", type=float, default=3000.0, help="timed GPU time per contender, all rounds")
    args = parser.parse_args(argv)
    for name in ("width", "layers", "batch", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1; got {getattr(args, name)}")
    if not torch.cuda.is_available():
        raise SystemExit("bench.models times CUDA kernels; no CUDA GPU is visible")
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        x = torch.randn(args.batch, args.width, device="cuda", dtype=dtype)
        for name, batch_norm in ((f"{args.layers} x Linear+BN+GELU+ReLU", True),
                                 (f"{args.layers} x Linear+ReLU", False)):
            torch.manual_seed(0)
            model = mlp_stack(args.width, args.layers, batch_norm).to("cuda", dtype)
            rows += bench_model(name, model, x, args.rounds, args.budget_ms)
    print(f"{'model':<28} {'dtype':<9} {'contender':<17} {'ms':>9} {'x eager':>8} {'rel err':>9} {'first call s':>12}")
    for r in rows:
        print(f"{r['model']:<28} {r['dtype']:<9} {r['contender']:<17} {r['ms']:9.3f} {r['vs_eager']:8.2f} "
              f"{r['rel_err']:9.1e}{'' if r['ok'] else ' FAIL'} {r['first_call_s']:12.1f}")
    return rows


if __name__ == "__main__":
    main()
