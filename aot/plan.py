"""Stage 1 of the AOT build: spec x tuning tables -> the variants to compile and the ordered rules that name them.

Every table config is checked against aot/spec.py here (kernel, layout, arch, knobs and their values), so a table
that asks for something the kernels cannot do fails the build with the rule to fix.
"""
from aot import spec, tables


def table_form(kernel, config):
    """A variant's config as a tuning table writes it (what plan_variants expands): KERNEL unless the kernel is
    "tiled", knobs only where they differ from their defaults."""
    defaults = dict(spec.KERNELS[kernel]["knobs"], **spec.LAUNCHER_KNOBS)
    short = {k: v for k, v in config.items() if k != "KERNEL" and not (k in defaults and v == defaults[k])}
    return short if kernel == "tiled" else dict(short, KERNEL=kernel)


def plan_variants(archs):
    """Every variant to compile, and the ordered selection rules that point at them."""
    variants, rules, index = [], [], {}

    def variant_for(arch, op, precision, layout, config):
        kernel = config.get("KERNEL", "tiled")
        kernel_spec = spec.KERNELS.get(kernel)
        if kernel_spec is None or layout not in kernel_spec["layouts"] or arch < kernel_spec["min_arch"]:
            raise SystemExit(f"tuning table for sm_{arch}: KERNEL {kernel!r} cannot serve the {layout} layout on "
                             f"sm_{arch} (kernels: {spec.KERNELS})")
        if arch > (kernel_spec["max_arch"] or arch):
            raise SystemExit(f"tuning table for sm_{arch}: KERNEL {kernel!r} runs on sm_{kernel_spec['max_arch']} at "
                             f"most ({op} {precision}); sm_{arch} needs a table of its own, "
                             f"aot/tuning/sm_{arch}.json (a table of another arch is used when it has none)")
        if kernel_spec["dots"] is not None and spec.PRECISIONS[precision][1] not in kernel_spec["dots"]:
            raise SystemExit(f"tuning table for sm_{arch}: KERNEL {kernel!r} serves DOT {kernel_spec['dots']} only; "
                             f"{op} {precision} asks for it")
        known = {*spec.CONFIG_KEYS, "KERNEL", *kernel_spec["knobs"], *spec.LAUNCHER_KNOBS}
        unknown = set(config) - known
        if unknown:  # e.g. a knob of another kernel: it would be ignored without a word
            raise SystemExit(f"tuning table for sm_{arch}: {op} {precision} sets {sorted(unknown)}, which KERNEL "
                             f"{kernel!r} does not take (its knobs: {sorted(kernel_spec['knobs'])}; launcher knobs: "
                             f"{sorted(spec.LAUNCHER_KNOBS)})")
        knobs = {k: int(config.get(k, default)) for k, default in kernel_spec["knobs"].items()}
        knobs.update({k: int(config.get(k, default)) for k, default in spec.LAUNCHER_KNOBS.items()})
        for name, value in knobs.items():
            if value not in spec.KNOB_VALUES.get(name, (0, 1)):
                raise SystemExit(f"tuning table for sm_{arch}: {name} must be one of "
                                 f"{spec.KNOB_VALUES.get(name, (0, 1))}; {op} {precision} has {value}")
        if knobs["WEIGHT_FP16"] and spec.PRECISIONS[precision][1] != "fp16":
            raise SystemExit(f"tuning table for sm_{arch}: WEIGHT_FP16 applies only to precisions whose kernel "
                             f"computes in fp16 (fp32_fp16); {op} {precision} asks for it")
        for name, value in kernel_spec["requires"].items():
            if knobs[name] != value:
                raise SystemExit(f"tuning table for sm_{arch}: KERNEL {kernel!r} needs {name}={value}; "
                                 f"{op} {precision} has {knobs[name]}")
        if knobs.get("VECTORS_FIRST") and knobs.get("SPLIT_K", 1) != 1:
            raise SystemExit(f"tuning table for sm_{arch}: VECTORS_FIRST applies only without split-K (the tile's "
                             f"last program applies the epilogue); {op} {precision} sets SPLIT_K={knobs['SPLIT_K']}")
        config = dict({k: int(config[k]) for k in spec.CONFIG_KEYS}, **knobs)
        key = (arch, op, precision, layout, kernel, tuple(config.values()))
        if key not in index:
            tag = "m{BLOCK_M}n{BLOCK_N}k{BLOCK_K}g{GROUP_M}w{num_warps}s{num_stages}".format(**config)
            tag = tag if kernel == "tiled" else f"{kernel}_{tag}"
            defaults = dict(kernel_spec["knobs"], **spec.LAUNCHER_KNOBS)  # name the non-defaults
            tag += "".join(f"_{k.lower()}{v}" if k in spec.KNOB_VALUES else f"_{'' if v else 'no'}{k.lower()}"
                           for k, v in knobs.items() if v != defaults[k])
            index[key] = len(variants)
            variants.append(dict(name=f"{op}__{precision}__sm{arch}__{layout}__{tag}", arch=arch, op=op,
                                 precision=precision, layout=layout, kernel=kernel, config=config))
        return index[key]

    for arch in archs:
        table_arch, table = tables.load_rules(arch)
        for op in spec.OPS:
            for precision, (_, _, table_key) in spec.PRECISIONS.items():
                op_rules = [r for r in table["rules"][table_key] if op in r.get("ops", [op])]
                if not op_rules or any(k in op_rules[-1] for k in ("max_m", "max_n", "max_k")):
                    raise SystemExit(f"sm_{table_arch}.json: rules[{table_key!r}] for {op} must end with a "
                                     f"catch-all rule (one without max_m/max_n/max_k)")
                for rule in op_rules:
                    rules.append(dict(arch=arch, op=op, precision=precision, layout="aligned",
                                      max_m=rule.get("max_m", -1), max_n=rule.get("max_n", -1),
                                      max_k=rule.get("max_k", -1), fallback=False,
                                      variant=variant_for(arch, op, precision, "aligned", rule["config"])))
                rules.append(dict(arch=arch, op=op, precision=precision, layout="generic", max_m=-1, max_n=-1,
                                  max_k=-1, fallback=False, variant=variant_for(arch, op, precision, "generic",
                                                                table["generic"][table_key])))
                # where a rule names a cuBLAS-GEMM variant that cannot take the call (csrc/dispatch.cpp: cublas_takes)
                fallback = table.get("fallback", {}).get(table_key, table["generic"][table_key])
                if spec.KERNELS[fallback.get("KERNEL", "tiled")]["cublas_gemm"]:
                    raise SystemExit(f"sm_{table_arch}.json: the fallback for {table_key!r} (fallback[{table_key!r}], "
                                     f"else generic[{table_key!r}]) must not be a cuBLAS-GEMM kernel")
                rules.append(dict(arch=arch, op=op, precision=precision, layout="generic", max_m=-1, max_n=-1,
                                  max_k=-1, fallback=True,
                                  variant=variant_for(arch, op, precision, "generic", fallback)))
        for v in variants:
            if v["arch"] == arch:
                v["tuning_table"] = f"sm_{table_arch}.json"
    return variants, rules
