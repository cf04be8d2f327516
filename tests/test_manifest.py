"""The manifest compiled into the binary against the spec it was built from (aot/spec.py)."""
import subprocess
import sys
from pathlib import Path

import pytest

import fusedops

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from aot import spec  # noqa: E402

MANIFEST = fusedops.build_info()["manifest"]
ADA_SHARED_LIMIT = 99 * 1024  # RTX 4090: 99 KB per block


def test_archs_present():
    built = {v["arch"] for v in MANIFEST["variants"]}
    assert built == set(MANIFEST["archs"]) == set(spec.cuda_archs())
    assert 89 in built  # the product's target GPU


def test_every_op_precision_layout_is_served_on_every_arch():
    for arch in MANIFEST["archs"]:
        for op in spec.OPS:
            for precision in spec.PRECISIONS:
                for layout in spec.LAYOUTS:
                    rules = [r for r in MANIFEST["rules"] if (r["arch"], r["op"], r["precision"], r["layout"])
                             == (arch, op, precision, layout)]
                    assert rules, (arch, op, precision, layout)
                    last = rules[-1]
                    assert last["max_m"] == last["max_n"] == last["max_k"] == -1, "needs a catch-all rule"


def test_sm89_fits_ada_and_does_not_spill():
    sm89 = [v for v in MANIFEST["variants"] if v["arch"] == 89]
    assert sm89
    for v in sm89:
        assert v["shared_bytes"] <= ADA_SHARED_LIMIT, v["name"]
        assert not v["spills"] and v["stack_bytes"] == 0 and v["local_bytes"] == 0, v["name"]
        assert v["registers"] <= 255
        assert v["ptx_target"].startswith("sm_89")


def test_every_arch_within_its_shared_memory_limit():
    for v in MANIFEST["variants"]:
        assert v["shared_bytes"] <= spec.SHARED_MEMORY_LIMIT[v["arch"]], v["name"]


def test_variant_metadata_is_complete():
    for v in MANIFEST["variants"]:
        assert set(v["config"]) == (set(spec.CONFIG_KEYS) | set(spec.KERNELS[v["kernel"]]["knobs"])
                                    | set(spec.LAUNCHER_KNOBS))
        if v["config"]["WEIGHT_FP16"]:
            assert spec.PRECISIONS[v["precision"]][1] == "fp16", v["name"]
        assert v["op"] in spec.OPS and v["precision"] in spec.PRECISIONS and v["layout"] in spec.LAYOUTS
        assert v["entry_name"] == spec.KERNELS[v["kernel"]]["function"]


def test_binary_matches_tuning_tables():
    """The rules in the binary are exactly the tuning tables' rules (one source of truth)."""
    from aot.plan import plan_variants
    variants, rules = plan_variants(MANIFEST["archs"])
    assert [v["name"] for v in variants] == [v["name"] for v in MANIFEST["variants"]]
    assert rules == MANIFEST["rules"]


def test_build_info_names_versions():
    info = fusedops.build_info()
    import torch
    assert info["version"] == fusedops.__version__ or info["version"].startswith(fusedops.__version__ + "+")
    assert info["built_with_torch"] == torch.__version__


def test_sm89_build_gate_rejects_spills(monkeypatch):
    """The build's limit check fails with a message naming the variant and the table to fix."""
    from aot import compiler
    bad = dict(MANIFEST["variants"][0], arch=89, spills=True, registers=255, stack_bytes=112,
               static_shared_bytes=0, tuning_table="sm_89.json")
    with pytest.raises(SystemExit, match="spills registers on sm_89"):
        compiler.check_limits([bad])
    big = dict(bad, spills=False, shared_bytes=120 * 1024)
    with pytest.raises(SystemExit, match="allows 101376"):
        compiler.check_limits([big])


def test_knob_values_are_checked_and_named(monkeypatch):
    """A tuning-table knob outside its values, or on a kernel it does not apply to, fails the plan with the reason;
    a count knob is named by its value in the variant tag (e.g. _split_k2), a 0/1 switch by its name."""
    import json

    from aot import plan, tables
    source, original = tables.load_rules(90)

    def table_with(config_update, kernel="tiled"):
        """The sm_90 table with its first fp32_tf32 rule's config replaced, as plan_variants will read it."""
        table = json.loads(json.dumps(original))
        rule = table["rules"]["fp32_tf32"][0]
        rule["config"] = dict({k: rule["config"][k] for k in spec.CONFIG_KEYS}, **config_update)
        if kernel != "tiled":
            rule["config"]["KERNEL"] = kernel
        monkeypatch.setattr(tables, "load_rules", lambda arch: (source, table))

    # the variant the edited rule (the first fp32_tf32 one) gets with VECTORS_FIRST: not in the shipped table
    edited = "fp32_tf32__sm90__aligned__m{BLOCK_M}n{BLOCK_N}k{BLOCK_K}g{GROUP_M}w{num_warps}s{num_stages}".format(
        **original["rules"]["fp32_tf32"][0]["config"]) + "_vectors_first"
    assert not any(v["name"].endswith(edited) for v in plan.plan_variants([90])[0])
    table_with({"SPLIT_K": 2})
    variants, _ = plan.plan_variants([90])
    assert any(v["name"].endswith("_split_k2") and v["config"]["SPLIT_K"] == 2 for v in variants)
    table_with({"SPLIT_K": 5})
    with pytest.raises(SystemExit, match="SPLIT_K must be one of"):
        plan.plan_variants([90])
    table_with({"VECTORS_FIRST": 1})
    variants, _ = plan.plan_variants([90])
    assert any(v["name"].endswith(edited) and v["config"]["VECTORS_FIRST"] == 1 for v in variants)
    table_with({"VECTORS_FIRST": 1, "SPLIT_K": 2})
    with pytest.raises(SystemExit, match="VECTORS_FIRST applies only without split-K"):
        plan.plan_variants([90])
    table_with({"VECTORS_FIRST": 1}, kernel="tma")  # a knob of another kernel is refused, not ignored
    with pytest.raises(SystemExit, match=r"sets \['VECTORS_FIRST'\], which KERNEL 'tma' does not take"):
        plan.plan_variants([90])
    table_with({"SPLIT_K": 5})  # a count outside KNOB_VALUES
    with pytest.raises(SystemExit, match=r"SPLIT_K must be one of \(1, 2, 3, 4, 6, 8\)"):
        plan.plan_variants([90])
    table_with({"SPLIT_K": 4})
    variants, _ = plan.plan_variants([90])
    assert any(v["name"].endswith("_split_k4") for v in variants)
    # the Gluon kernel serves fp32 x on fp16 tensor cores only (this rule is TF32), with the weight rounded once
    table_with({"WEIGHT_FP16": 1}, kernel="wgmma")
    with pytest.raises(SystemExit, match="KERNEL 'wgmma' serves DOT"):
        plan.plan_variants([90])


def test_gluon_kernel_rules_are_checked():
    """The wgmma kernel needs WEIGHT_FP16=1 and Hopper's wgmma (sm_90 only): a table asking otherwise fails the plan."""
    import json

    from aot import plan, tables
    source, original = tables.load_rules(90)
    shipped = next(r for r in original["rules"]["fp32_fp16"] if r["config"].get("KERNEL") == "wgmma")

    def plan_with(config_update, arch=90):
        table = json.loads(json.dumps(original))
        rule = next(r for r in table["rules"]["fp32_fp16"] if r["config"].get("KERNEL") == "wgmma")
        rule["config"].update(config_update)
        build_tables = lambda a: (source, table)  # noqa: E731
        with pytest.MonkeyPatch.context() as m:
            m.setattr(tables, "load_rules", build_tables)
            return plan.plan_variants([arch])

    variants, _ = plan_with({})
    assert any(v["kernel"] == "wgmma" and v["config"]["BLOCK_K"] == shipped["config"]["BLOCK_K"] for v in variants)
    with pytest.raises(SystemExit, match="needs WEIGHT_FP16=1"):
        plan_with({"WEIGHT_FP16": 0})
    with pytest.raises(SystemExit, match="runs on sm_90 at most .* sm_120 needs a table of its own"):
        plan_with({}, arch=120)


def test_wgmma_serialisation_is_read_from_the_ptxas_report():
    """The build reads ptxas's own report (Triton's -v run) for the reason it serialises a kernel's wgmma."""
    from aot import compiler
    report = ("ptxas info    : (C7515) Potential Performance Loss: wgmma.mma_async instructions are serialized due to "
              "non wgmma instructions defining accumulator registers of a wgmma between start and end of the pipeline "
              "stage in the function 'fused_linear_tma_kernel'\nptxas info    : Used 255 registers\n")
    assert compiler.read_wgmma_serial_reason(report) == ("non wgmma instructions defining accumulator registers of a wgmma "
                                                      "between start and end of the pipeline stage")
    assert compiler.read_wgmma_serial_reason("ptxas info    : Used 168 registers, used 1 barriers\n") is None


def test_register_a_wgmma_left_in_flight_fails_the_build(tmp_path, monkeypatch):
    """A kernel whose wgmma reads A from registers and that waits with wgmmas still in flight may overwrite their
    A registers (undefined: NaN seen on the H100): the SASS reader names it and the build's limit check refuses it."""
    from aot import compiler, sass as sass_checks
    fake = tmp_path / "cuobjdump"
    monkeypatch.setattr(sass_checks, "cuobjdump", lambda: str(fake))

    def sass(*lines):
        fake.write_text("#!/bin/sh\ncat <<'EOF'\n" + "\n".join(f"        /*{16 * i:04x}*/  {line} ;" for i, line in
                                                              enumerate(lines)) + "\nEOF\n")
        fake.chmod(0o755)
        return sass_checks.read_wgmma_register_hazard(tmp_path / "k.cubin", "wgmma.mma_async.sync.aligned ...")

    convert = "F2FP.F16.F32.PACK_AB R{}, R1, R2"
    wgmma = "HGMMA.64x256x16.F32 R24, R{}, gdesc[UR4], R24, gsb0"
    one_in_flight, none_in_flight, loop_back = "WARPGROUP.DEPBAR.LE gsb0, 0x1", "WARPGROUP.DEPBAR.LE gsb0, 0x0", \
        "@P0 BRA 0x0"
    # Triton's pipelined loop: the next turn rounds new A values into the registers of the wgmma still in flight
    assert "overwrites before a wait retires it" in sass(convert.format(152), wgmma.format(152), one_in_flight,
                                                          loop_back, none_in_flight, "EXIT")
    # two register sets, each written only after the wait that retires the wgmma reading it (fused_linear_gluon)
    assert sass(convert.format(152), wgmma.format(152), one_in_flight, convert.format(160), wgmma.format(160),
                one_in_flight, loop_back, none_in_flight, "EXIT") is None
    # a conversion into the registers of the wgmma just issued, before any wait
    assert sass(convert.format(152), wgmma.format(152), convert.format(152), one_in_flight, loop_back,
                none_in_flight, "EXIT") is not None
    # writes the walk must see: after a predicate destination, wider than one register, inside a called function,
    # and on the fall-through of a branch whose condition sits among its operands
    assert sass(wgmma.format(152), "SHFL.IDX PT, R153, R3, 0x1, 0x1f", none_in_flight, "EXIT") is not None
    assert sass(wgmma.format(156), "LDSM.16.M88.4 R154, [R3]", none_in_flight, "EXIT") is not None
    assert sass(wgmma.format(152), "CALL.REL.NOINC 0x40", none_in_flight, "EXIT", convert.format(152), "RET.REL.NODEC "
                "R20 0x0") is not None
    assert sass(wgmma.format(152), "BRA.U !UP0, 0x30", convert.format(152), none_in_flight, "EXIT") is not None
    assert sass(wgmma.format(152), "ISETP.GE.AND P0, PT, R152, R3, PT", none_in_flight, "EXIT") is None  # reads only
    assert sass(convert.format(152), wgmma.format(152), none_in_flight, loop_back, "EXIT") is None  # serialised
    assert sass(convert.format(152), "HGMMA.64x256x16.F32 R24, gdesc[UR4], R24, gsb0", one_in_flight, loop_back,
                "EXIT") is None  # A from shared memory
    assert sass(wgmma.format(152), "BRX R4 -0x10", "EXIT").startswith("SASS not analysable")
    assert sass_checks.read_wgmma_register_hazard(tmp_path / "k.cubin", "mma.sync.aligned ...") is None  # no wgmma
    bad = dict(MANIFEST["variants"][0], arch=90, wgmma_register_hazard="register-A HGMMA at 0x10 reads R152-R155, "
               "which F2FP.F16.F32.PACK_AB at 0x0 overwrites before a wait retires it", spills=False,
               static_shared_bytes=0, tuning_table="sm_90.json")
    with pytest.raises(SystemExit, match="wrong results possible"):
        compiler.check_limits([bad])


def test_hazard_check_flags_real_compiler_output(tmp_path):
    """The SASS check on real output of the Triton here: Triton's persistent TMA kernel taking fp32 x rounded to fp16
    in registers, not flattened, keeps a register-A wgmma in flight across the next conversion (triton 3.6 and 3.8
    alike); the Gluon kernel the sm_90 table ships for the same op keeps one in flight too, but
    rounds the next k-step into the other register set, and passes."""
    pytest.importorskip("triton")
    from aot import compiler, sass as sass_checks
    shipped = next(v for v in MANIFEST["variants"] if (v["arch"], v["op"], v["precision"], v["layout"], v["kernel"])
                   == (90, "linear_relu", "fp32_fp16", "aligned", "wgmma"))
    assert shipped["wgmma_serial_reason"] is None  # ptxas pipelines it
    # the built binary has register-A wgmma (so the walk has something to check) and passes it
    cubin = REPO / "build" / "aot" / "kernels" / f"{shipped['name']}.cubin"
    if not cubin.exists():
        pytest.skip(f"{cubin} is not here (the library was built elsewhere)")
    sass = subprocess.run([sass_checks.cuobjdump(), "--dump-sass", str(cubin)], check=True, capture_output=True,
                          text=True).stdout
    assert sass_checks.HGMMA_REGISTER_A.search(sass)
    assert sass_checks.find_wgmma_register_hazard(sass) is None
    pipelined = dict(shipped, kernel="tma", name="hazard_probe",
                     config=dict(shipped["config"], num_stages=3))
    built = compiler.compile_variant(pipelined, str(tmp_path))
    assert "overwrites before a wait retires it" in built["wgmma_register_hazard"]
    assert built["wgmma_serial_reason"] is None  # ptxas's report came through: it pipelines this one


@pytest.mark.parametrize("allow_tf32", [False, True])
def test_the_rule_matcher_is_the_tables_first_match(allow_tf32):
    """torch.ops.fusedops._select_variant, the matcher dispatch uses, against the tables as the manifest holds them:
    for every (arch, op, precision, layout) and sizes on both sides of every bound, the first rule whose bounds hold,
    except that a cuBLAS-GEMM variant gives way to the fallback rule's where cuBLAS cannot take the call: fp32 'ieee'
    while torch lets cuBLAS run fp32 in TF32, and operands of 2^31 elements or more."""
    import torch
    rules, variants = MANIFEST["rules"], MANIFEST["variants"]
    bounds = sorted({r[key] for r in rules for key in ("max_m", "max_n", "max_k") if r[key] > 0})
    sizes = sorted({1, *bounds, *(b + 1 for b in bounds), 1 << 20})

    def first_match(arch, op, precision, layout, m, n, k):
        return next(variants[r["variant"]] for r in rules if (r["arch"], r["op"], r["precision"], r["layout"]) ==
                    (arch, op, precision, layout) and not r["fallback"] and all(
                        bound < 0 or value <= bound
                        for bound, value in ((r["max_m"], m), (r["max_n"], n), (r["max_k"], k))))

    def fallback(arch, op, precision):
        return next(variants[r["variant"]] for r in rules
                    if (r["arch"], r["op"], r["precision"]) == (arch, op, precision) and r["fallback"])

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    try:
        checked = 0
        for arch, op, precision, layout in sorted({(r["arch"], r["op"], r["precision"], r["layout"]) for r in rules}):
            for m in sizes:
                for n, k in ((sizes[len(sizes) // 3], sizes[0]), (sizes[-1], sizes[len(sizes) // 2]), (m, m)):
                    want = first_match(arch, op, precision, layout, m, n, k)
                    too_big = max(m * n, m * k, n * k) >= 2**31
                    if spec.KERNELS[want["kernel"]]["cublas_gemm"] and (
                            precision == "fp32_ieee" and allow_tf32 or too_big):
                        want = fallback(arch, op, precision)
                    got = torch.ops.fusedops._select_variant(arch, op, precision, layout, m, n, k)
                    assert got == want["name"], (arch, op, precision, layout, m, n, k)
                    checked += 1
        assert checked > 1000
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    with pytest.raises(RuntimeError, match="no rule for sm_75"):
        torch.ops.fusedops._select_variant(75, "linear_relu", "fp16", "aligned", 1, 1, 1)
