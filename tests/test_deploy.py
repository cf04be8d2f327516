"""Shipping fusedops: the wheel, installed where Triton cannot be imported; the ops without Triton and
without the Python package; a C++ (libtorch) client built with CMake.

The wheel: $FUSEDOPS_WHEEL, or dist/fusedops-<version>-*.whl when it is newer than the sources
(tools/build_wheel.sh), or else built here into a temporary directory (about a minute).
"""
import email.parser
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import zipfile

import pytest
import torch

import fusedops
from deploy_helpers import (ASSERT_NO_TRITON, REPO, TESTS, TORCH_MAJOR_MINOR, Venv, check, client_input,
                            eager_reference, expected_version, find_or_build_wheel, make_deploy_model, run_cpp_client,
                            run_python, run_script, scripted)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return find_or_build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel):
    return Venv(tmp_path_factory.mktemp("deploy") / "venv", wheel)


# --- the wheel ----------------------------------------------------------------------------------

def test_wheel_name_tags_and_metadata(wheel):
    # {name}-{version}-{python tag}-{abi tag}-{platform tag}.whl; py_limited_api: one wheel for CPython >= 3.9
    name, version, python_tag, abi_tag, platform_tag = wheel.name[: -len(".whl")].split("-")
    assert name == "fusedops"
    assert version == expected_version() and f"+torch{TORCH_MAJOR_MINOR}" in version
    assert (python_tag, abi_tag, platform_tag) == ("cp39", "abi3", "linux_x86_64")

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = f"fusedops-{version}.dist-info"
        metadata = email.parser.Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
        wheel_meta = email.parser.Parser().parsestr(zf.read(f"{dist_info}/WHEEL").decode())
        build_info = json.loads(zf.read("fusedops/_build_info.json"))

    requires = metadata.get_all("Requires-Dist") or []
    assert not [r for r in requires if "triton" in r.lower()], requires
    torch_requires = [r.replace(" ", "") for r in requires if re.match(r"torch(?![\w.-])", r)]
    assert torch_requires == [f"torch=={TORCH_MAJOR_MINOR}.*"], requires
    assert metadata["Version"] == version
    assert wheel_meta.get_all("Tag") == ["cp39-abi3-linux_x86_64"]
    assert wheel_meta["Root-Is-Purelib"] == "false"

    # The package and its binary; no build-time sources (kernels, AOT scripts, C++, tests).
    packaged = {n for n in names if not n.startswith(dist_info + "/")}
    assert all(n.startswith("fusedops/") for n in packaged), packaged
    python_sources = {f"fusedops/{p.name}" for p in (REPO / "fusedops").glob("*.py")}
    assert python_sources | {"fusedops/_build_info.json", "fusedops/_C.abi3.so"} <= packaged, packaged
    assert not [n for n in packaged if n.endswith((".cpp", ".h", ".cu", ".ptx", ".cubin"))], packaged
    assert build_info["version"] == version and build_info["torch"] == torch.__version__
    assert {89, 90} <= set(build_info["archs"]), build_info
    size_mb = wheel.stat().st_size / 2**20
    print(f"{wheel.name}: {size_mb:.1f} MiB")
    assert size_mb < 64, f"the wheel grew to {size_mb:.1f} MiB"


def test_wheel_installs_and_imports_from_site_packages_without_triton(venv):
    code = ASSERT_NO_TRITON + (
        "import sys, fusedops, fusedops.nn\n"
        "print(fusedops.__file__)\nprint(fusedops.library_path)\nprint(fusedops.__version__)\n"
        "print('triton' in sys.modules and sys.modules['triton'] is not None)\n")
    file, library, version, triton_loaded = check(venv.run(code)).split()
    assert file == str(venv.package / "__init__.py"), "fusedops did not come from the venv's site-packages"
    assert os.path.dirname(library) == str(venv.package)
    assert version == fusedops.__version__
    assert triton_loaded == "False"


def test_wheel_info_cli(venv):
    out = check(venv.run_module("fusedops", "info"))
    assert expected_version() in out
    assert "sm_89" in out and "sm_90" in out
    variants = json.loads(check(venv.run_module("fusedops", "info", "--json")))["manifest"]["variants"]
    assert variants and f"{len(variants)} kernel variants" in out
    assert str(venv.package) in out  # "library: <path>"
    listed = check(venv.run_module("fusedops", "info", "--variants"))
    assert all(v["name"] in listed for v in variants)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_wheel_ops_match_reference(venv, device):
    # block_triton=False: the venv's .pth blocks it
    out = check(run_script(TESTS / "deploy_suite.py", "--device", device, cwd=venv.root, python=venv.python,
                           block_triton=False))
    assert f"from {venv.package / '__init__.py'}" in out
    assert "triton imported: False" in out


def test_wheel_refuses_another_torch_with_a_clear_error(venv, tmp_path):
    """fusedops/__init__.py compares _build_info.json's torch with the running one (major.minor)."""
    copy = tmp_path / "other_torch"
    shutil.copytree(venv.package, copy / "fusedops")
    info_path = copy / "fusedops" / "_build_info.json"
    info = json.loads(info_path.read_text())
    info["torch"] = "1.0.0"
    info_path.write_text(json.dumps(info))
    # cwd first on sys.path: the modified copy shadows the installed package.
    proc = venv.run("import fusedops\nprint(fusedops.__file__)", cwd=copy)
    assert proc.returncode != 0, proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: "), proc.stderr
    assert "torch 1.0.0" in last and f"torch {torch.__version__}" in last, last
    assert "rebuild" in last or "install torch 1.0" in last, last
    # The same copy with the real torch version imports fine (only the version was changed).
    info["torch"] = torch.__version__
    info_path.write_text(json.dumps(info))
    assert check(venv.run("import fusedops\nprint(fusedops.__file__)", cwd=copy)).strip() == \
        str(copy / "fusedops" / "__init__.py")


# --- no Triton at run time ------------------------------------------------------------------------

def test_the_triton_blocker_blocks(tmp_path):
    proc = run_python("import triton", cwd=tmp_path)
    assert proc.returncode == 1 and "ModuleNotFoundError: No module named 'triton'" in proc.stderr
    # as where Triton is not installed: find_spec says None (torch's CUDA init asks it; raising breaks CUDA)
    assert check(run_python("import importlib.util; print(importlib.util.find_spec('triton'))",
                            cwd=tmp_path)).strip() == "None"
    proc = run_python("from triton import language", cwd=tmp_path)
    assert proc.returncode == 1 and "No module named 'triton'" in proc.stderr
    if importlib.util.find_spec("triton") is not None:  # installed here (the build needs it): the blocker matters
        assert run_python("import triton", cwd=tmp_path, block_triton=False).returncode == 0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_op_suite_without_triton(device, tmp_path):
    out = check(run_script(TESTS / "deploy_suite.py", "--device", device, cwd=tmp_path, in_place=True))
    assert f"from {REPO / 'fusedops' / '__init__.py'}" in out
    assert "triton imported: False" in out
    assert " 0/" not in out and "FAIL" not in out


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_library_alone_registers_and_runs_the_ops(device, tmp_path):
    """torch.ops.load_library(<the .so>) without `import fusedops` (as a TorchScript/AOTI deployment does)."""
    code = ASSERT_NO_TRITON + f"""
import sys
import torch
import torch.nn.functional as F
torch.ops.load_library({fusedops.library_path!r})
assert "fusedops" not in sys.modules
ops = torch.ops.fusedops
assert set(ops.linear_relu.overloads()) == {{"default", "precision"}}, ops.linear_relu.overloads()
assert set(ops.linear_bn_gelu_relu.overloads()) == {{"default", "precision"}}
g = torch.Generator().manual_seed(0)
x, w, b = torch.randn(5, 24, generator=g), torch.randn(12, 24, generator=g) / 5, torch.randn(12, generator=g)
mean, var = torch.randn(12, generator=g) / 10, torch.rand(12, generator=g) + 0.5
gamma, beta = torch.randn(12, generator=g) / 5 + 1, torch.randn(12, generator=g) / 10
dev = {device!r}
x, w, b, mean, var, gamma, beta = (t.to(dev) for t in (x, w, b, mean, var, gamma, beta))
ref1 = torch.relu(F.linear(x.double(), w.double(), b.double()))
ref2 = torch.relu(F.gelu(F.batch_norm(F.linear(x.double(), w.double(), b.double()), mean.double(), var.double(),
                                      gamma.double(), beta.double(), False, 0.0, 1e-4)))
outs = [(ops.linear_relu(x, w, b), ref1), (ops.linear_relu(x, w, b, precision="ieee"), ref1),
        (ops.linear_bn_gelu_relu(x, w, b, mean, var, gamma, beta, 1e-4), ref2),
        (ops.linear_bn_gelu_relu(x, w, b, mean, var, gamma, beta, 1e-4, precision="ieee"), ref2)]
for out, ref in outs:
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
print("ok", len(outs), "fusedops" in sys.modules)
"""
    assert check(run_python(code, cwd=tmp_path)).split() == ["ok", "4", "False"]


# --- the C++ client -------------------------------------------------------------------------------

def client_check(client, library, tmp_path, device, shape=(2, 3, 16)):
    model = make_deploy_model(seed=3)
    path = tmp_path / "model.pt"
    scripted(model).save(str(path))
    x = client_input(shape)
    with torch.no_grad():
        expected = model.to(device)(x.to(device)).double().cpu()
        tol = 1e-5 if device == "cpu" else 5e-3  # the model has a precision="tf32" layer
        torch.testing.assert_close(expected, eager_reference(model, x.to(device)).double().cpu(), rtol=tol, atol=tol)
    got = run_cpp_client(client, library, path, shape, device)
    assert got["shape"] == (*shape[:-1], model.n)
    assert got["device"].startswith(device)
    # On CUDA, precision "auto" follows torch.backends.cuda.matmul.allow_tf32, which other tests may set.
    rel_tol = 1e-6 if device == "cpu" else 5e-3
    for key, value in (("sum", expected.sum().item()), ("abs_sum", expected.abs().sum().item())):
        assert math.isclose(got[key], value, rel_tol=rel_tol, abs_tol=1e-9), (key, got[key], value)


def test_cpp_client_runs_torchscript_model_cpu(cpp_client, tmp_path):
    client_check(cpp_client, fusedops.library_path, tmp_path, "cpu")


def test_cpp_client_with_the_wheels_library(cpp_client, venv, tmp_path):
    client_check(cpp_client, venv.library(), tmp_path, "cpu", shape=(5, 16))


@pytest.mark.gpu
def test_cpp_client_runs_torchscript_model_cuda(cpp_client, tmp_path):
    client_check(cpp_client, fusedops.library_path, tmp_path, "cuda")


def test_cpp_client_reports_a_bad_library(cpp_client, tmp_path):
    bogus = tmp_path / "not_a_library.so"
    bogus.write_text("nope")
    proc = subprocess.run([str(cpp_client), str(bogus), str(tmp_path / "model.pt"), "3"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "cannot load" in proc.stderr, proc.stderr
