"""fusedops.fuse on a model written without fusedops in mind: a transformer-style MLP block stack with a
classification head, as one would find it in a model zoo (modules and functional calls mixed).

    python3 examples/fuse_model.py              # CUDA if there is a GPU (fp16), else the CPU reference path
    python3 examples/fuse_model.py --batch 64

fuse() traces the model, prints one line per chain it replaced, and the fused model is checked against the original.
"""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

import fusedops
from fusedops.reference import TOLERANCE, precision_name


class MLPBlock(nn.Module):
    """Linear -> BatchNorm1d -> GELU -> ReLU written out in forward, as many codebases do."""

    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width)

    def forward(self, x):
        return F.relu(F.gelu(self.norm(self.fc(x))))


class Classifier(nn.Module):
    def __init__(self, features=512, width=1024, blocks=4, classes=100):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(features, width), nn.ReLU(inplace=True), nn.Dropout(0.1))
        self.blocks = nn.ModuleList(MLPBlock(width) for _ in range(blocks))
        self.head = nn.Linear(width, classes)  # no activation after it: left as it is

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = Classifier().to(device, dtype).eval()
    with torch.no_grad():  # statistics as a trained model would have them
        for block in model.blocks:
            block.norm.running_mean.normal_(0, 0.1)
            block.norm.running_var.uniform_(0.5, 1.5)
    fused, report = fusedops.fuse(model, return_report=True)
    print(report)
    x = torch.randn(args.batch, 512, device=device, dtype=dtype)
    with torch.no_grad():
        want, got = model(x).float(), fused(x).float()
    error = ((got - want).norm() / want.norm()).item()
    print(f"{len(report.fused)} chains fused on {device} ({dtype}); relative difference from the original "
          f"{error:.1e}")
    bound = TOLERANCE[precision_name(dtype)].contender  # what the bench allows any contender against the composite
    if not error <= bound:
        raise SystemExit(f"the fused model differs from the original by more than {bound:.0e}")


if __name__ == "__main__":
    main()
