"""A small op suite for deployment checks, run as a script in a subprocess (see test_deploy.py):

    python tests/deploy_suite.py --device cpu|cuda

Imports fusedops (whichever one the interpreter finds: the in-place build or an installed wheel), runs
both ops through the Python wrappers and through torch.ops (default and .precision overloads) and
compares them with the PyTorch composites in reference.py. Prints where fusedops came from and whether
triton got imported; exits 1 on any mismatch.
"""
import argparse
import sys

import torch

import fusedops
from reference import GPU_TOLERANCE, make_problem, rel_err, run_fused, run_ref

OPS = ["linear_relu", "linear_bn_gelu_relu"]
# (x dtype, precision) -> bound on ||out - ref|| / ||ref|| against an fp64 reference, per device.
# The CPU path is the fp32 ATen composite for every precision; CUDA runs the AOT kernels (the GPU suite's bounds).
TOLERANCE = {
    "cpu": {(torch.float32, p): 1e-6 for p in (None, "auto", "ieee", "tf32", "fp16")}
    | {(torch.float16, None): 1e-3, (torch.bfloat16, None): 8e-3},
    "cuda": {case: bounds[0] for case, bounds in GPU_TOLERANCE.items()},
}
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
    for (dtype, precision), tol in TOLERANCE[device.split(":")[0]].items():
        kw = {} if precision is None else {"precision": precision}
        for op in OPS:
            for i, (m_shape, n, k) in enumerate(SHAPES):
                p = make_problem(m_shape, n, k, dtype, device=device, seed=i)
                ref = run_ref(op, {key: None if t is None else t.double() for key, t in p.items()},
                              compute_dtype=torch.float64)
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
