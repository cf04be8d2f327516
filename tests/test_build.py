"""Properties of the build itself: no driver link, compile cache, prebuilt kernels, generated code outside git."""
import json
import os
import shutil
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
    # torch's own C++ runtime, not a static copy (two copies crash when their streams meet: setup.py refuses that)
    assert any("libstdc++.so" in line for line in needed), needed


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


def test_prebuilt_kernels_relink_elsewhere_without_triton(tmp_path):
    """FUSEDOPS_PREBUILT_AOT's step: kernels built in one place relink in another, with no Triton importable, into
    the same C++ (only the .incbin paths move); kernels from other sources are refused, naming the reason."""
    built = REPO / "build" / "aot"
    moved = prebuilt_copy(tmp_path)
    no_triton = tmp_path / "no_triton"
    (no_triton / "triton").mkdir(parents=True)
    (no_triton / "triton" / "__init__.py").write_text("raise ImportError('triton is not installed')\n")
    env = dict(os.environ, PYTHONPATH=str(no_triton))

    def relink():
        return subprocess.run([sys.executable, "-m", "aot.build", "--relink", str(moved)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    proc = relink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    original = (built / "fusedops_kernels.cpp").read_text()
    relinked = (moved / "fusedops_kernels.cpp").read_text()
    assert str(moved.resolve() / "kernels") in relinked
    assert relinked.replace(str(moved.resolve()), str(built.resolve())) == original

    manifest = json.loads((moved / "manifest.json").read_text())
    (moved / "manifest.json").write_text(json.dumps(dict(manifest, source_digest="0" * 24)))
    proc = relink()
    assert proc.returncode != 0 and "built from other kernels/" in proc.stderr, proc.stderr[-2000:]
    (moved / "manifest.json").write_text(json.dumps(manifest))
    (moved / "kernels" / f"{manifest['variants'][0]['name']}.cubin").unlink()
    proc = relink()
    assert proc.returncode != 0 and "lacks 1 of the binaries" in proc.stderr, proc.stderr[-2000:]
    (moved / "manifest.json").unlink()
    proc = relink()
    assert proc.returncode != 0 and "holds no manifest.json" in proc.stderr, proc.stderr[-2000:]


def point_a_fallback_at_cublas(manifest):
    """Points the fp16 fallback rule of some arch and op at that arch and op's generic cuBLAS-GEMM variant."""
    for rule in manifest["rules"]:
        if rule["fallback"] and rule["precision"] == "fp16":
            for i, v in enumerate(manifest["variants"]):
                if (v["kernel"], v["layout"], v["arch"], v["op"], v["precision"]) == (
                        "cublas", "generic", rule["arch"], rule["op"], "fp16"):
                    rule["variant"] = i
                    return
    raise AssertionError("no generic fp16 cuBLAS-GEMM variant to point a fallback at")


MALICIOUS_EDITS = {
    # each: a field a manifest from elsewhere could carry, aimed at the generated C++ or assembler
    "code in cache_key": (lambda v, m: v.update(cache_key='0" */ }\n#include <cstdlib>\nint x = system("id");//'),
                          "cache_key must be 24 lowercase hex digits"),
    "quote in name": (lambda v, m: v.update(name='linear_relu"\n.incbin "/etc/passwd'), "name must be letters"),
    "code in runtime_args": (lambda v, m: v["runtime_args"].append("x_ptr)); system(\"id\"); ((void"),
                             r"runtime_args\[\d+\] must be one of"),
    "code in precision": (lambda v, m: v.update(precision="fp16, Layout::aligned}; int evil(){ return 0"),
                          "precision must be one of"),
    "code in entry_name": (lambda v, m: v.update(entry_name='f"; system("id'), "entry_name must be a C identifier"),
    "string for a number": (lambda v, m: v.update(shared_bytes="0); system(\"id\"); (0"),
                            "shared_bytes must be an integer"),
    "bool for a number": (lambda v, m: v["config"].update(BLOCK_M=True), "BLOCK_M must be an integer"),
    "rule out of range": (lambda v, m: m["rules"][0].update(variant=10**6), r"rules\[0\].variant must be"),
    "rule of another op": (lambda v, m: m["rules"][0].update(op="linear_bn_gelu_relu" if v["op"] == "linear_relu"
                                                             else "linear_relu", variant=0),
                           r"rules\[0\] must be for the arch, op"),
    "no sha256": (lambda v, m: v.pop("cubin_sha256"), "older aot/build.py"),
    "no fallback": (lambda v, m: [r.update(fallback=False) for r in m["rules"]],
                    "one fallback rule per arch, op and precision"),
    "cuBLAS fallback": (lambda v, m: point_a_fallback_at_cublas(m),
                        r"must be a fallback rule naming a generic-layout kernel of Triton's"),
}


@pytest.mark.parametrize("edit", list(MALICIOUS_EDITS))
def test_relink_refuses_a_malicious_manifest(tmp_path, edit):
    """Prebuilt kernels are untrusted: a manifest field that would reach the generated C++ or assembler unchecked is
    refused, naming the field, and no C++ is written."""
    from aot import build
    moved = prebuilt_copy(tmp_path)
    manifest = json.loads((moved / "manifest.json").read_text())
    change, message = MALICIOUS_EDITS[edit]
    change(manifest["variants"][0], manifest)
    (moved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match=message):
        build.relink(moved)
    assert not (moved / "fusedops_kernels.cpp").exists()


def test_relink_refuses_a_tampered_binary(tmp_path):
    """Every cubin and PTX file must have the sha256 the manifest records; one changed byte is refused."""
    from aot import build
    moved = prebuilt_copy(tmp_path)
    manifest = json.loads((moved / "manifest.json").read_text())
    build.relink(moved)  # untouched: relinks
    for kind in ("cubin", "ptx"):
        path = moved / "kernels" / f"{manifest['variants'][-1]['name']}.{kind}"
        original = path.read_bytes()
        path.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
        with pytest.raises(SystemExit, match="does not have the sha256 the manifest records"):
            build.relink(moved)
        path.write_bytes(original)


def test_relink_refuses_a_directory_the_assembler_cannot_quote(tmp_path):
    from aot import build
    moved = prebuilt_copy(tmp_path)
    odd = moved.rename(tmp_path / 'kernels "quoted"')
    with pytest.raises(SystemExit, match="has a character the assembler's .incbin cannot quote"):
        build.relink(odd)


def prebuilt_copy(tmp_path):
    """A copy of this checkout's build/aot without its generated C++, as prebuilt kernels arrive."""
    built = REPO / "build" / "aot"
    if not (built / "manifest.json").is_file() or \
            json.loads((built / "manifest.json").read_text()) != fusedops.build_info()["manifest"]:
        pytest.skip("build/aot is not the installed library's build")
    moved = tmp_path / "prebuilt"
    shutil.copytree(built, moved)
    (moved / "fusedops_kernels.cpp").unlink()
    return moved


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


def test_tuning_rules_apart_from_their_evidence(monkeypatch, tmp_path):
    """The build reads aot/tuning/sm_<arch>.json (one rule per line, as aot/tables.py writes it) and hashes it into
    the kernel source digest; the evidence beside it (aot/tuning/evidence/) is neither read nor hashed, so editing it
    leaves prebuilt kernels usable. A rules file that carries evidence keys is refused."""
    sys.path.insert(0, str(REPO))
    from aot import build, tables
    hashed = build.digest_files()
    for arch, path in tables.rule_files().items():
        _, table = tables.load_rules(arch)
        assert path.read_text() == tables.rules_text(table), f"{path} is not in the one-rule-per-line form"
        assert str(path.relative_to(REPO)) in hashed
        assert tables.evidence_path(arch).is_file()
        assert str(tables.evidence_path(arch).relative_to(REPO)) not in hashed
    rules = tmp_path / "tuning"
    shutil.copytree(tables.TUNING_DIR, rules)
    monkeypatch.setattr(tables, "TUNING_DIR", rules)
    _, table = tables.load_rules(90)
    (rules / "sm_90.json").write_text(json.dumps(dict(table, runs=[])))
    with pytest.raises(SystemExit, match=r"keys \['runs'\] belong in"):
        tables.load_rules(90)
    # the fallback (for calls cuBLAS cannot take) must be a Triton kernel
    (rules / "sm_90.json").write_text(json.dumps(dict(table, fallback={"half": table["generic"]["half"]})))
    from aot import plan
    with pytest.raises(SystemExit, match=r"the fallback for 'half' .* must not be a cuBLAS-GEMM kernel"):
        plan.plan_variants([90])
