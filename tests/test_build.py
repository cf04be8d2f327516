"""Properties of the build itself: no driver link, compile cache, generated code outside git."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fusedops

REPO = Path(__file__).resolve().parent.parent


def test_library_does_not_link_the_cuda_driver():
    """libcuda is reached lazily (dlopen), so the library loads on machines without a driver."""
    out = subprocess.run(["readelf", "-d", fusedops.library_path], capture_output=True, text=True, check=True).stdout
    needed = [line for line in out.splitlines() if "(NEEDED)" in line]
    assert needed, out
    assert not any("libcuda.so" in line for line in needed), needed
    assert not any("libtorch_python" in line for line in needed), "a C++ process must be able to load it"


def test_rebuild_without_changes_compiles_nothing(tmp_path):
    cache = REPO / "build" / "aot-cache"
    if not cache.is_dir():
        pytest.skip("no AOT cache: the library was not built from this checkout")
    proc = subprocess.run([sys.executable, "-m", "aot.build", "--out", str(tmp_path / "aot"), "--cache", str(cache),
                           "--jobs", "2"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, FUSEDOPS_CUDA_ARCHS=";".join(
                              str(a) for a in fusedops.build_info()["manifest"]["archs"])))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(0 compiled," in proc.stdout, proc.stdout[-2000:]


def test_generated_code_is_not_tracked():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    files = tracked.stdout.split()
    assert not [f for f in files if f.endswith((".cubin", ".ptx", ".so")) or f.startswith("build/")
                or f.endswith("fusedops_kernels.cpp")]


@pytest.mark.parametrize("out,degree,bound", [("FP32", 5, 4.0e-7), ("FP16", 4, 8.5e-6), ("BF16", 3, 9.6e-5)])
def test_gelu_tail_constants_meet_their_bound(out, degree, bound):
    """Each output dtype's GELU polynomial (kernels/fused_linear.py `GELU_TAIL_<out>_*`), run through the kernel's
    arithmetic in fp32 by scripts/fit_gelu_tail.py with an exact 2^x, stays within the bound its fit reached
    (ex2.approx's 2 ulp add ~0.6e-7 on the GPU; the GPU tests check the compiled epilogue value by value)."""
    pytest.importorskip("triton")
    import importlib.util
    sys.path.insert(0, str(REPO))
    from kernels import fused_linear
    spec = importlib.util.spec_from_file_location("fit_gelu_tail", REPO / "scripts" / "fit_gelu_tail.py")
    fit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit)
    constants = [getattr(fused_linear, f"GELU_TAIL_{out}_C{i}").value for i in range(degree + 1)]
    assert not hasattr(fused_linear, f"GELU_TAIL_{out}_C{degree + 1}"), "a new term: update this test's degree"
    clamp = getattr(fused_linear, f"GELU_TAIL_{out}_MAX").value
    assert fit.fp32_worst_error(constants, clamp) < bound
    assert fit.fp32_worst_error(constants[:-1] + [0.0], clamp) > 2 * bound  # it can fail
