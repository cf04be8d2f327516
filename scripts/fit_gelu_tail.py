"""Fit the GELU tail polynomials of kernels/fused_linear.py (`GELU_TAIL_<OUT>_*`).

    python3 scripts/fit_gelu_tail.py --out FP16 --degree 4 [--clamps 4.5 5.5 0.0625]   (numpy, scipy, torch; no GPU)

relu(gelu(v)) = v * (1 - h(v)) for v > 0, h(v) = erfc(v / sqrt2) / 2. The kernel computes v - t * 2^p(t) with
t = min(v, clamp), p a polynomial. For each clamp this fits p to log2(h) on [0, clamp], minimising the largest
relative error of the *result* (an error e in log2 h moves the result by h ln2 e / (1 - h)), by linear programming on
a dense grid. Then it evaluates the kernel's arithmetic in fp32 over [0, 12] (past the clamp too) and prints the best
fit's constants, named for the output dtype they serve (the kernel picks the set by the output's dtype).
"""
import argparse

import numpy as np


def result_error_weight(x):
    from scipy.special import erfc
    h = 0.5 * erfc(x / np.sqrt(2))
    return np.log2(h), h * np.log(2) / (1 - h)


def fit(degree, clamp, points=4000):
    from scipy.optimize import linprog
    x = np.linspace(0, clamp, points)
    target, weight = result_error_weight(x)
    powers = np.vander(x, degree + 1, increasing=True)
    # variables: the coefficients, then the bound b; minimise b subject to |weight * (powers @ c - target)| <= b
    rows = weight[:, None] * powers
    a_ub = np.vstack([np.hstack([rows, -np.ones((points, 1))]), np.hstack([-rows, -np.ones((points, 1))])])
    b_ub = np.concatenate([weight * target, -weight * target])
    cost = np.zeros(degree + 2)
    cost[-1] = 1
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * (degree + 1) + [(0, None)], method="highs")
    return np.float32(res.x[:-1])


def fp32_worst_error(coefficients, clamp):
    """The kernel's arithmetic in fp32 (min, Horner, 2^, one fused v - t * h) against fp64, over v in (0, 12], with
    an exact 2^x: the GPU's ex2.approx (2 ulp) adds up to ~0.6e-7 (4.2e-7 measured on the H100 for the fp32 set).
    Uses torch only, so the CPU tests can check the kernel's constants with it."""
    import torch
    v = torch.linspace(0, 12, 400001, dtype=torch.float32)[1:]
    t = v.clamp(max=clamp)
    log2_h = torch.full_like(t, float(coefficients[-1]))
    for c in coefficients[-2::-1]:
        log2_h = float(c) + t * log2_h
    # the FFMA rounds once: t * h is exact in fp64 (24 + 24 bits), the difference rounded to fp32
    result = (v.double() - t.double() * torch.exp2(log2_h).double()).float()
    exact = v.double() * (1 - 0.5 * torch.special.erfc(v.double() / 2 ** 0.5))
    return ((result.double() - exact).abs() / exact).max().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="FP32", help="the output dtype the constants serve: FP32, FP16 or BF16")
    parser.add_argument("--degree", type=int, default=5)
    parser.add_argument("--clamps", type=float, nargs=3, default=(4.5, 5.5, 0.0625), metavar=("FROM", "TO", "STEP"))
    args = parser.parse_args()
    fits = []
    for clamp in np.arange(*args.clamps):
        clamp = float(np.float32(round(clamp, 4)))
        coefficients = fit(args.degree, clamp)
        fits.append((fp32_worst_error(coefficients, clamp), clamp, coefficients))
    error, clamp, coefficients = min(fits, key=lambda f: f[0])
    print(f"# degree {args.degree}: worst relative error {error:.2e} (fp32 arithmetic, v in (0, 12])")
    print(f"GELU_TAIL_{args.out}_MAX = tl.constexpr({clamp!r})")
    for i, c in enumerate(coefficients):
        print(f"GELU_TAIL_{args.out}_C{i} = tl.constexpr({float(c)!r})")


if __name__ == "__main__":
    main()
