"""A small op suite for deployment checks, run as a script in a subprocess (see test_deploy.py):

    python tests/deploy_suite.py --device cpu|cuda

Imports fusedops (whichever one the interpreter finds: the in-place build or an installed wheel), runs
both ops through the Python wrappers and through torch.ops (default and .precision overloads) and
compares them with the PyTorch composites of fusedops.reference. Prints where fusedops came from and whether
triton got imported; exits 1 on any mismatch.
"""
import argparse
import sys

import torch

import fusedops
from fusedops.reference import TOLERANCE, make_problem, precision_name, reference, rel_err, run_fused

OPS = ["linear_relu", "linear_bn_gelu_relu"]
# (x dtype, precision argument) pairs; each is held to fusedops.reference.TOLERANCE's norm bound against an fp64
# reference: on CUDA the bound of the precision the call runs, on the CPU (the fp32 ATen composite for every
# precision) the fp32 'ieee' one.
CASES = [(torch.float32, p) for p in (None, "auto", "ieee", "tf32", "fp16")] + [(torch.float16, None),
                                                                                 (torch.bfloat16, None)]
SHAPES = [((3,), 17, 5), ((2, 5), 48, 64), ((130,), 96, 200)]


def direct_call(op, p, eps, precision):
    """The same op through torch.ops, without the Python wrappers."""
    args = [p["x"], p["weight"], p["bias"]]
    if op == "linear_bn_gelu_relu":
        args += [p["running_mean"], p["running_var"], p["bn_weight"], p["bn_bias"], eps]
    packet = getattr(torch.ops.fusedops, op)
    return packet(*args) if precision is None else packet(*args, precision=precision)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    device = parser.parse_args().device
    print(f"fusedops {fusedops.__version__} from {fusedops.__file__}")
    failures, cases = 0, 0
    for dtype, precision in CASES:
        tol = TOLERANCE[precision_name(dtype, "ieee" if device.startswith("cpu") else precision)].norm
        kw = {} if precision is None else {"precision": precision}
        for op in OPS:
            for i, (m_shape, n, k) in enumerate(SHAPES):
                p = make_problem(m_shape, n, k, dtype, device=device, seed=i)
                ref = reference(op, p)
                outs = (("wrapper", run_fused(op, p, **kw)), ("torch.ops", direct_call(op, p, 1e-5, precision)))
                for how, out in outs:
                    cases += 1
                    err = rel_err(out, ref)
                    ok = (out.shape == ref.shape and out.dtype == dtype and out.device == p["x"].device
                          and err < tol)
                    if not ok:
                        failures += 1
                        print(f"FAIL {op} {how} {dtype} precision={precision} shape={m_shape}x{k}->{n}: "
                              f"rel err {err:.2e} (bound {tol:.0e}), got {tuple(out.shape)} {out.dtype} {out.device}")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    print(f"{cases - failures}/{cases} cases ok on {device}")
    print(f"triton imported: {sys.modules.get('triton') is not None}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
