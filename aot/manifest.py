"""The kernel manifest (manifest.json beside the binaries): checked before any of it reaches generated code.

Prebuilt kernels (FUSEDOPS_PREBUILT_AOT, `aot.build --relink`) come from elsewhere, so their manifest is untrusted
input: its fields become C++ identifiers, numbers, comments and assembler paths in fusedops_kernels.cpp. `check`
holds every field the code generator reads to a strict pattern or range, and `check_binaries` holds every cubin and
PTX file to the sha256 the manifest records. The build runs the same checks on what it writes.
"""
import hashlib
import re
from pathlib import Path

from aot import spec

BINARY_KINDS = ("cubin", "ptx")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
VARIANT_NAME = re.compile(r"[A-Za-z0-9_]{1,200}")  # also a file name: kernels/<name>.cubin
HEX24 = re.compile(r"[0-9a-f]{24}")
SHA256 = re.compile(r"[0-9a-f]{64}")
# Largest tile extent a variant may have: csrc/dispatch.h's kMaxKernelExtent leaves 4096 below 2^31 for rounding
# M, N and K up to whole tiles.
MAX_TILE_EXTENT = 1024
# Keys of a variant record that the launcher code is generated from (an older manifest may lack some).
LAUNCH_KEYS = ("cache_key", "num_warps", "runtime_args", "scratch_params", "scratch_align",
               *(f"{kind}_sha256" for kind in BINARY_KINDS))


class ManifestError(ValueError):
    """A manifest field that is missing, of the wrong type, or outside what the code generator accepts."""


def sha256_of(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _fail(where, what, value):
    shown = repr(value)
    raise ManifestError(f"{where} must be {what}; got {shown[:80] + '...' if len(shown) > 80 else shown}")


def _int(where, value, low, high):
    if type(value) is not int or not low <= value <= high:  # (bool is an int subclass: refused too)
        _fail(where, f"an integer in [{low}, {high}]", value)
    return value


def _match(where, value, pattern, what):
    if not isinstance(value, str) or not pattern.fullmatch(value):
        _fail(where, what, value)
    return value


def _one_of(where, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        _fail(where, f"one of {list(allowed)}", value)
    return value


def _text(where, value, optional=False):
    """Free text (shown to people, embedded only inside the escaped manifest string): printable ASCII, short."""
    if value is None and optional:
        return
    if not isinstance(value, str) or len(value) > 500 or not all(" " <= ch <= "~" for ch in value):
        _fail(where, "printable ASCII text of at most 500 characters" + (" or null" if optional else ""), value)


def _record(where, value, keys):
    if not isinstance(value, dict):
        _fail(where, "an object", value)
    missing = [k for k in keys if k not in value]
    if missing:
        raise ManifestError(f"{where} lacks {missing}")
    return value


def check_variant(where, v, archs):
    _record(where, v, ("name", "arch", "op", "precision", "layout", "kernel", "config", "entry_name", "shared_bytes",
                       "scratch_bytes", "registers", "stack_bytes", "local_bytes", "spills", "ptx_target",
                       "wgmma_serial_reason", "wgmma_register_hazard", "tuning_table", *LAUNCH_KEYS))
    _match(f"{where}.name", v["name"], VARIANT_NAME, "letters, digits and '_' (at most 200)")
    if v["arch"] not in archs:
        _fail(f"{where}.arch", f"one of the manifest's archs {archs}", v["arch"])
    _one_of(f"{where}.op", v["op"], spec.OPS)
    _one_of(f"{where}.precision", v["precision"], spec.PRECISIONS)
    _one_of(f"{where}.layout", v["layout"], spec.LAYOUTS)
    kernel = _one_of(f"{where}.kernel", v["kernel"], spec.KERNELS)
    _match(f"{where}.entry_name", v["entry_name"], IDENTIFIER, "a C identifier")
    config = _record(f"{where}.config", v["config"], (*spec.CONFIG_KEYS, *spec.LAUNCHER_KNOBS))
    for key, value in config.items():
        if key not in (*spec.CONFIG_KEYS, *spec.LAUNCHER_KNOBS, *spec.KERNELS[kernel]["knobs"]):
            _fail(f"{where}.config", f"free of keys kernel {kernel!r} does not take", key)
        high = MAX_TILE_EXTENT if key in ("BLOCK_M", "BLOCK_N", "BLOCK_K") else 64
        _int(f"{where}.config.{key}", value, 0, high)
    for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_stages", *(
            ("SPLIT_K",) if "SPLIT_K" in config else ())):
        _int(f"{where}.config.{key}", config[key], 1, MAX_TILE_EXTENT)
    _int(f"{where}.num_warps", v["num_warps"], 1, 32)  # all warps of a block (warp-specialised: every partition's)
    _int(f"{where}.shared_bytes", v["shared_bytes"], 0, 1 << 20)
    _int(f"{where}.scratch_bytes", v["scratch_bytes"], 0, 1 << 20)
    align = _int(f"{where}.scratch_align", v["scratch_align"], 1, 4096)
    if align & (align - 1):
        _fail(f"{where}.scratch_align", "a power of two", align)
    _int(f"{where}.scratch_params", v["scratch_params"], 0, 2)
    _int(f"{where}.registers", v["registers"], 0, 255)
    _int(f"{where}.stack_bytes", v["stack_bytes"], 0, 1 << 20)
    _int(f"{where}.local_bytes", v["local_bytes"], 0, 1 << 20)
    if type(v["spills"]) is not bool:
        _fail(f"{where}.spills", "true or false", v["spills"])
    args = v["runtime_args"]
    if not isinstance(args, list) or len(set(map(str, args))) != len(args):
        _fail(f"{where}.runtime_args", "a list of distinct kernel argument names", args)
    for i, name in enumerate(args):
        _one_of(f"{where}.runtime_args[{i}]", name, spec.ARG_TYPES)
    _match(f"{where}.cache_key", v["cache_key"], HEX24, "24 lowercase hex digits")
    for kind in BINARY_KINDS:
        _match(f"{where}.{kind}_sha256", v[f"{kind}_sha256"], SHA256, "a sha256 in lowercase hex")
    for key in ("ptx_target", "tuning_table"):
        _text(f"{where}.{key}", v[key])
    for key in ("wgmma_serial_reason", "wgmma_register_hazard"):
        _text(f"{where}.{key}", v[key], optional=True)


def check(manifest):
    """Raises ManifestError naming the first field outside what the code generator accepts."""
    _record("manifest", manifest, ("triton", "source_digest", "archs", "ops", "precisions", "layouts", "variants",
                                   "rules"))
    _text("manifest.triton", manifest["triton"])
    _match("manifest.source_digest", manifest["source_digest"], HEX24, "24 lowercase hex digits")
    archs = manifest["archs"]
    if not isinstance(archs, list) or not archs or any(a not in spec.SHARED_MEMORY_LIMIT or type(a) is not int
                                                       for a in archs):
        _fail("manifest.archs", f"a list of archs from {sorted(spec.SHARED_MEMORY_LIMIT)}", archs)
    for key, names in (("ops", spec.OPS), ("precisions", spec.PRECISIONS), ("layouts", spec.LAYOUTS)):
        if manifest[key] != list(names):
            _fail(f"manifest.{key}", f"this checkout's {list(names)}", manifest[key])
    variants = manifest["variants"]
    if not isinstance(variants, list) or not variants:
        _fail("manifest.variants", "a non-empty list", variants)
    for i, v in enumerate(variants):
        check_variant(f"manifest.variants[{i}]", v, archs)
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names):
        _fail("manifest.variants", "named uniquely", sorted(n for n in names if names.count(n) > 1)[0])
    rules = manifest["rules"]
    if not isinstance(rules, list) or not rules:
        _fail("manifest.rules", "a non-empty list", rules)
    for i, r in enumerate(rules):
        where = f"manifest.rules[{i}]"
        _record(where, r, ("arch", "op", "precision", "layout", "max_m", "max_n", "max_k", "fallback", "variant"))
        for key in ("max_m", "max_n", "max_k"):
            _int(f"{where}.{key}", r[key], -1, (1 << 62))
        if type(r["fallback"]) is not bool:
            _fail(f"{where}.fallback", "true or false", r["fallback"])
        v = variants[_int(f"{where}.variant", r["variant"], 0, len(variants) - 1)]
        if (r["arch"], r["op"], r["precision"], r["layout"]) != (v["arch"], v["op"], v["precision"], v["layout"]):
            _fail(where, f"for the arch, op, precision and layout of the variant it names ({v['name']})",
                  [r["arch"], r["op"], r["precision"], r["layout"]])
        if r["fallback"] and (r["layout"] != "generic" or spec.KERNELS[v["kernel"]]["cublas_gemm"]):
            _fail(where, "a fallback rule naming a generic-layout kernel of Triton's (not cuBLAS's GEMM)", v["name"])
    # every (arch, op, precision) has one fallback (dispatch takes it where cuBLAS cannot take a call)
    keys = {(r["arch"], r["op"], r["precision"]) for r in rules}
    fallbacks = [(r["arch"], r["op"], r["precision"]) for r in rules if r["fallback"]]
    if sorted(fallbacks) != sorted(keys):
        _fail("manifest.rules", "one fallback rule per arch, op and precision", sorted(fallbacks))


def check_binaries(manifest, kernels_dir):
    """Raises ManifestError unless every variant's cubin and PTX file in kernels_dir has the sha256 it records."""
    for v in manifest["variants"]:
        for kind in BINARY_KINDS:
            path = Path(kernels_dir) / f"{v['name']}.{kind}"
            if not path.is_file():
                raise ManifestError(f"{kernels_dir} lacks {path.name}, which the manifest lists")
            if sha256_of(path) != v[f"{kind}_sha256"]:
                raise ManifestError(f"{path} does not have the sha256 the manifest records for it (changed or "
                                    f"corrupted since it was built)")


def check_incbin_path(path):
    """A path the generated assembler will .incbin: inside its double quotes, printable ASCII but '"' and '\\'."""
    text = str(path)
    if not all(" " <= ch <= "~" and ch not in '"\\' for ch in text):
        raise ManifestError(f"the kernels' path {text!r} has a character the assembler's .incbin cannot quote "
                            f"(use a directory whose path is printable ASCII without '\"' or '\\\\')")
    return text
