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
