"""The per-arch tuning tables: what the build reads, apart from what backs it up.

    aot/tuning/sm_<arch>.json            the rules (build input: hashed into the kernel source digest), one per line
    aot/tuning/evidence/sm_<arch>.json   how they were chosen: notes, tuner runs, timings (never read by the build)

A rules file holds {"arch", "rules": {tuning key: [rule, ...]}, "generic": {tuning key: config}, "fallback"?:
{tuning key: config}}; a rule is {"ops"?, "max_m"?, "max_n"?, "max_k"?, "config"}, and for an (arch, op, precision)
the first rule whose bounds hold wins. "fallback" (default: the "generic" config) is a Triton kernel for the calls a
rule's cuBLAS-GEMM kernel cannot take. Editing the evidence changes no kernel build, so prebuilt kernels still relink
after it.
"""
import json
from pathlib import Path

TUNING_DIR = Path(__file__).resolve().parent / "tuning"
EVIDENCE_DIR = TUNING_DIR / "evidence"
RULE_KEYS = ("arch", "rules", "generic", "fallback")  # "fallback" optional


def rules_path(arch):
    return TUNING_DIR / f"sm_{arch}.json"


def evidence_path(arch):
    return EVIDENCE_DIR / f"sm_{arch}.json"


def rule_files():
    """{arch: path} of every rules file."""
    return {int(p.stem[3:]): p for p in TUNING_DIR.glob("sm_*.json")}


def load_rules(arch):
    """(the arch whose table serves `arch`, its rules): the arch's own table, else the nearest arch's."""
    tables = rule_files()
    if not tables:
        raise SystemExit(f"{TUNING_DIR} holds no sm_*.json tuning table")
    source = arch if arch in tables else min(tables, key=lambda a: (abs(a - arch), a > arch))
    table = json.loads(tables[source].read_text())
    unknown = set(table) - set(RULE_KEYS)
    if unknown:
        raise SystemExit(f"{tables[source]}: keys {sorted(unknown)} belong in {evidence_path(source)} (the build reads "
                         f"only {list(RULE_KEYS)})")
    return source, table


def load_evidence(arch):
    path = evidence_path(arch)
    return json.loads(path.read_text()) if path.exists() else {}


def rules_text(table):
    """A rules file's text: one rule or generic config per line, so that a retune's diff shows the rules it moved."""
    lines = ["{", f' "arch": {json.dumps(table["arch"])},', ' "rules": {']
    keys = list(table["rules"])
    for i, key in enumerate(keys):
        rules = table["rules"][key]
        lines.append(f"  {json.dumps(key)}: [")
        lines += [f"   {json.dumps(rule)}{',' if j < len(rules) - 1 else ''}" for j, rule in enumerate(rules)]
        lines.append(f"  ]{',' if i < len(keys) - 1 else ''}")
    sections = ["generic"] + (["fallback"] if table.get("fallback") else [])  # (an empty fallback: none)
    lines.append(" },")
    for n, name in enumerate(sections):
        configs = list(table[name].items())
        lines.append(f" {json.dumps(name)}: {{")
        lines += [f"  {json.dumps(key)}: {json.dumps(config)}{',' if i < len(configs) - 1 else ''}"
                  for i, (key, config) in enumerate(configs)]
        lines.append(f" }}{',' if n < len(sections) - 1 else ''}")
    lines += ["}", ""]
    return "\n".join(lines)


def write(arch, table, evidence):
    """Writes an arch's rules (the RULE_KEYS of `table`) and its evidence."""
    rules_path(arch).write_text(rules_text({k: table[k] for k in RULE_KEYS if k in table}))
    EVIDENCE_DIR.mkdir(exist_ok=True)
    evidence_path(arch).write_text(json.dumps(evidence, indent=1) + "\n")
