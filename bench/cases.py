"""What the bench measures: the cases (problem, op, input dtype, shape) and the contenders each one is timed with."""
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
                seed_problems: bool = True, sweep: bool = True) -> List[Case]:
    """Seed problems first (fp32, fp16, bf16), then the sweep; a sweep point equal to a seed problem is kept once."""
    cases: Dict[tuple, Case] = {}
    if seed_problems:
        for name, op, m, k, n in SEED_PROBLEMS:
            if op not in ops:
                continue
            for dt in ("fp32", "fp16", "bf16"):
                if dt in dtypes:
                    cases[(op, dt, m, n, k)] = Case(op, dt, m, n, k, name)
    if sweep:
        s_ms = tuple(ms) if ms else (QUICK_M if quick else SWEEP_M)
        s_nks = tuple(nks) if nks else (QUICK_NK if quick else SWEEP_NK)
        s_dts = [d for d in (QUICK_DTYPES if quick else DTYPES) if d in dtypes]
        for op in ops:
            for dt in s_dts:
                for n, k in s_nks:
                    for m in s_ms:
                        cases.setdefault((op, dt, m, n, k), Case(op, dt, m, n, k))
    return list(cases.values())


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
