"""What the bench measures: the cases (problem, op, input dtype, shape) and the contenders each one is timed with."""
import math
import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from fusedops.reference import SEED_PROBLEMS

OPS = ("linear_bn_gelu_relu", "linear_relu")
DTYPES = ("fp16", "bf16", "fp32")
SWEEP_M = (1, 16, 64, 256, 1024, 4096, 16384)
SWEEP_NK = ((4096, 4096), (8192, 8192), (1024, 4096), (4096, 1024))
QUICK_M = (16, 1024, 16384)
QUICK_NK = ((4096, 4096),)
QUICK_DTYPES = ("fp16",)
# Linear layers of well-known models, (N, K) = (out_features, in_features), for shape sets off the sweep's grid.
MODEL_NK = {
    "llama-7b attention": (4096, 4096), "llama-7b mlp up": (11008, 4096), "llama-7b mlp down": (4096, 11008),
    "bert-base ffn up": (3072, 768), "bert-base ffn down": (768, 3072),
    "gpt2-medium ffn up": (4096, 1024), "gpt2-medium ffn down": (1024, 4096),
    "vit-h ffn up": (5120, 1280), "vit-h ffn down": (1280, 5120),
    "vgg16 fc6": (4096, 25088), "vgg16 fc7": (4096, 4096), "resnet50 head": (1000, 2048),
}
MODEL_M = (1, 16, 128, 512, 2048, 8192)  # decode steps, small and large batches
# Random shapes: log-uniform M, N and K in these ranges (inclusive).
RANDOM_M, RANDOM_NK = (1, 16384), (256, 16384)
COMPILE_SCOPES = ("none", "seed-fp16", "seed-half", "seed", "all")
FAMILIES = ("cublas", "fusedops", "eager", "cublaslt", "compile", "seed")


@dataclass(frozen=True)
class Case:
    op: str
    dtype: str
    M: int
    N: int
    K: int
    problem: Optional[str] = None  # the seed problem's name where this is one

    @property
    def flops(self) -> float:
        return 2.0 * self.M * self.N * self.K

    @property
    def label(self) -> str:
        return f"{self.problem + ' ' if self.problem else ''}{self.op} {self.dtype} M{self.M} N{self.N} K{self.K}"


@dataclass(frozen=True)
class Spec:
    name: str        # the row's contender name
    family: str      # one of FAMILIES
    precision: str   # math class: ieee / tf32 / fp16 / bf16 (the floor with the same class is the reference)
    variant: str     # "native": inputs as given; "from_fp32": fp32 inputs into fp16 math


def build_cases(*, quick: bool, ops: Sequence[str] = OPS, dtypes: Sequence[str] = DTYPES,
                ms: Optional[Sequence[int]] = None, nks: Optional[Sequence[tuple]] = None,
                seed_problems: bool = True, sweep: bool = True, shapes: Optional[Sequence[tuple]] = None
                ) -> List[Case]:
    """Seed problems first (fp32, fp16, bf16), then the sweep (or, given `shapes`, those (M, N, K) instead of the
    sweep's grid); a point equal to a seed problem is kept once."""
    cases: Dict[tuple, Case] = {}
    if seed_problems:
        for name, op, m, k, n in SEED_PROBLEMS:
            if op not in ops:
                continue
            for dt in ("fp32", "fp16", "bf16"):
                if dt in dtypes:
                    cases[(op, dt, m, n, k)] = Case(op, dt, m, n, k, name)
    if shapes is not None:
        s_dts = [d for d in (QUICK_DTYPES if quick else DTYPES) if d in dtypes]
        for op in ops:
            for dt in s_dts:
                for m, n, k in shapes:
                    cases.setdefault((op, dt, m, n, k), Case(op, dt, m, n, k))
    elif sweep:
        s_ms = tuple(ms) if ms else (QUICK_M if quick else SWEEP_M)
        s_nks = tuple(nks) if nks else (QUICK_NK if quick else SWEEP_NK)
        s_dts = [d for d in (QUICK_DTYPES if quick else DTYPES) if d in dtypes]
        for op in ops:
            for dt in s_dts:
                for n, k in s_nks:
                    for m in s_ms:
                        cases.setdefault((op, dt, m, n, k), Case(op, dt, m, n, k))
    return list(cases.values())


def random_shapes(count: int, seed: int) -> List[tuple]:
    """`count` (M, N, K) drawn log-uniformly from RANDOM_M and RANDOM_NK with random.Random(seed): half of the N and
    K values rounded to a multiple of 64 (as layer widths usually are), the rest left as drawn (odd sizes, no powers
    of two). Two seeds give two independent sets: a tuner's training shapes and the held-out ones it is judged on."""
    rng = random.Random(seed)

    def draw(low, high, round_to=1):
        value = int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))
        if round_to > 1:
            value = max(round_to, value // round_to * round_to)
        return min(max(value, low), high)

    return [(draw(*RANDOM_M), draw(*RANDOM_NK, 64 if rng.random() < 0.5 else 1),
             draw(*RANDOM_NK, 64 if rng.random() < 0.5 else 1)) for _ in range(count)]


def model_shapes() -> List[tuple]:
    """(M, N, K) of every MODEL_NK layer at every MODEL_M."""
    return [(m, n, k) for n, k in MODEL_NK.values() for m in MODEL_M]


def compile_applies(case: Case, scope: str) -> bool:
    if scope == "all":
        return True
    if scope == "seed":
        return case.problem is not None
    if scope == "seed-half":
        return case.problem is not None and case.dtype in ("fp16", "bf16")
    if scope == "seed-fp16":
        return case.problem is not None and case.dtype == "fp16"
    return False


def plan_contenders(case: Case, *, families: Sequence[str] = FAMILIES, compile_scope: str = "all",
                    seed_label: Optional[str] = None) -> List[Spec]:
    """The rows a case gets, floors first. seed_label None: no seed row."""
    relu = case.op == "linear_relu"
    do_compile = compile_applies(case, compile_scope)
    specs: List[Spec] = []

    def add(family, name, precision, variant="native"):
        if family in families:
            specs.append(Spec(name, family, precision, variant))

    if case.dtype in ("fp16", "bf16"):
        p = case.dtype
        add("cublas", "cublas", p)
        add("fusedops", "fusedops", p)
        add("eager", "eager", p)
        if relu:
            add("cublaslt", "cublasLt+relu", p)
        if do_compile:
            add("compile", "compile", p)
    else:
        for p in ("ieee", "tf32"):
            add("cublas", f"cublas[{p}]", p)
        add("cublas", "cublas[fp16]", "fp16", "from_fp32")
        for p in ("ieee", "tf32"):
            add("fusedops", f"fusedops[{p}]", p)
        add("fusedops", "fusedops[fp16]", "fp16")
        for p in ("ieee", "tf32"):
            add("eager", f"eager[{p}]", p)
        add("eager", "eager[fp16]", "fp16", "from_fp32")
        if relu:
            for p in ("ieee", "tf32"):
                add("cublaslt", f"cublasLt+relu[{p}]", p)
            add("cublaslt", "cublasLt+relu[fp16]", "fp16", "from_fp32")
        if do_compile:
            for p in ("ieee", "tf32"):
                add("compile", f"compile[{p}]", p)
    if seed_label is not None:
        if case.op == "linear_bn_gelu_relu":
            p = "fp16"  # seed 000 always rounds x and the weight to fp16
        else:
            p = "tf32" if case.dtype == "fp32" else case.dtype  # seed 001: allow_tf32=True, or the input's type
        add("seed", seed_label, p)
    return specs
