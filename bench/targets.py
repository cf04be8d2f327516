"""The speed targets, checked against bench results files:

    python -m bench.targets bench/results/bench_<stamp>.json [more.json ...]

The sweep's: for every (op, input dtype, precision) of the sweep, M >= 256 needs at least 0.8x the cuBLAS floor's
throughput (time <= 1.25x the floor), M <= 64 at most 1.5x the floor's time. Prints the misses and a count per case.
Every shape's (a --shapes random / models run; SHAPE_TARGETS): per op, half precision at M <= 64 with N K >= 4096^2
within 1.10x the floor; half precision at M >= 128 within 1.15x at the 90th percentile and under 1.3x at worst; fp32
input on fp16 math at M <= 1024 within 1.25x the fp16 floor on pre-cast operands; and no case slower than the eager
composite. Each prints met or missed with its figure and worst case.
With several files, a point measured in a later file replaces the earlier one (e.g. a re-run of some M values).
A miss whose timed calls often began on an idle GPU (bench.timing's calls_after_idle: the host fell behind) says so:
its median holds host time, and the point wants a re-run before it is read as the kernel's.
"""
import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

BIG_M, BIG_M_MAX_RATIO = 256, 1 / 0.8
SKINNY_M, SKINNY_M_MAX_RATIO = 64, 1.5


def target_ratio(m):
    """The largest fusedops time / floor time the sweep target allows at this M (None: no target)."""
    if m >= BIG_M:
        return BIG_M_MAX_RATIO
    if m <= SKINNY_M:
        return SKINNY_M_MAX_RATIO
    return None


def misses(results):
    """{(op, dtype, precision): (points, [missed rows])} over the sweep's fusedops rows."""
    cases = defaultdict(lambda: [0, []])
    for r in results:
        if r.get("problem") is not None or r.get("family") != "fusedops" or r.get("x_floor") is None:
            continue
        limit = target_ratio(r["M"])
        if limit is None:
            continue
        case = cases[(r["op"], r["dtype"], r["precision"])]
        case[0] += 1
        if r["x_floor"] > limit:
            case[1].append(r)
    return {k: tuple(v) for k, v in cases.items()}


HALF = ("fp16", "bf16")
# (name, which fusedops rows it covers, statistic of time / floor, the most it may be)
SHAPE_TARGETS = (
    ("half, M <= 64, N K >= 4096^2: each", lambda r: r["dtype"] in HALF and r["M"] <= 64 and r["N"] * r["K"] >= 4096**2,
     "worst", 1.10),
    ("half, M >= 128: 90th percentile", lambda r: r["dtype"] in HALF and r["M"] >= 128, "p90", 1.15),
    ("half, M >= 128: worst", lambda r: r["dtype"] in HALF and r["M"] >= 128, "worst_strict", 1.3),
    ("fp32 in, fp16 math, M <= 1024: each", lambda r: r["dtype"] == "fp32" and r["precision"] == "fp16"
     and r["M"] <= 1024, "worst", 1.25),
)


def shape_targets(results):
    """[(target name, op, cases, figure, limit, met, worst row)] for SHAPE_TARGETS over fusedops rows off the seed
    problems, then per op the cases slower than the eager composite (figure: their count; limit 0)."""
    from bench.report import _eager_for, percentile
    rows = [r for r in results if r.get("problem") is None and r.get("family") == "fusedops"
            and r.get("x_floor") is not None]
    out = []
    for op in sorted({r["op"] for r in rows}):
        mine = [r for r in rows if r["op"] == op]
        for name, covers, statistic, limit in SHAPE_TARGETS:
            cases = [r for r in mine if covers(r)]
            if not cases:
                continue
            worst = max(cases, key=lambda r: r["x_floor"])
            if statistic == "p90":
                figure = percentile([r["x_floor"] for r in cases], 90)
                met = figure <= limit
            else:
                figure = worst["x_floor"]
                met = figure < limit if statistic == "worst_strict" else figure <= limit
            out.append((name, op, len(cases), figure, limit, met, worst))
        slower = []
        for r in mine:
            eager = _eager_for(results, r)
            if eager and eager.get("median_ms"):
                slower.append((r["median_ms"] / eager["median_ms"], r))
        if slower:
            ratio, worst = max(slower, key=lambda p: p[0])
            count = sum(v > 1 for v, _ in slower)
            out.append((f"never slower than eager (worst {ratio:.2f}x eager)", op, len(slower), count, 0,
                        count == 0, worst))
    return out


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.targets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="bench_<stamp>.json files that bench.bench wrote")
    paths = parser.parse_args(argv).results
    points = {}
    for path in paths:
        try:
            rows = json.loads(path.read_text())["results"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            parser.error(f"{path}: not a bench results file ({type(e).__name__}: {e})")
        for r in rows:
            points[(r.get("problem"), r["op"], r["dtype"], r["precision"], r["M"], r["N"], r["K"], r["contender"])] = r
    cases = misses(list(points.values()))
    if not cases:
        print("no sweep points in these files (the seed problems have targets of their own: see bench.bench's table)")
    for (op, dtype, precision), (n_points, missed) in sorted(cases.items()):
        print(f"{op:<20} {dtype:<5} {precision:<5} {len(missed):>2} of {n_points} points miss")
        for r in missed:
            print(f"    M {r['M']:>5} N {r['N']:>5} K {r['K']:>5}: {r['x_floor']:.2f}x the floor's time "
                  f"({r['median_ms']:.4f} ms vs {r['floor_ms']:.4f}){idle_note(r.get('timing') or {})}")
    print_shape_targets(list(points.values()))


def print_shape_targets(results):
    targets = shape_targets(results)
    if targets:
        print("\nevery-shape targets (time / cuBLAS floor; the last line per op counts cases slower than eager):")
    for name, op, n_cases, figure, limit, met, worst in targets:
        shape = f"M {worst['M']} N {worst['N']} K {worst['K']} {worst['dtype']}"
        value = f"{figure:6.2f}" if isinstance(figure, float) else f"{figure:6d}"
        print(f"  {op:<20} {name:<44} {n_cases:>4} cases  {value} (limit {limit})  "
              f"{'met' if met else 'MISSED'}  worst: {shape}")


def idle_note(timing):
    """A note for a point whose timed calls began on an idle GPU often enough (> 5%) to move its median."""
    idle, reps = timing.get("calls_after_idle", 0), timing.get("reps", 0)
    if reps and idle > 0.05 * reps:
        return f"; {idle} of its {reps} timed calls began on an idle GPU (host-bound: re-run it)"
    return ""


if __name__ == "__main__":
    main(sys.argv[1:])
