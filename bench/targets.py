"""The issue's sweep targets, checked against a bench results file:

    python -m bench.targets bench/results/bench_<stamp>.json [more.json ...]

For every (op, input dtype, precision) of the sweep: M >= 256 needs at least 0.8x the cuBLAS floor's throughput
(time <= 1.25x the floor), M <= 64 at most 1.5x the floor's time. Prints the misses and a count per case.
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


def idle_note(timing):
    """A note for a point whose timed calls began on an idle GPU often enough (> 5%) to move its median."""
    idle, reps = timing.get("calls_after_idle", 0), timing.get("reps", 0)
    if reps and idle > 0.05 * reps:
        return f"; {idle} of its {reps} timed calls began on an idle GPU (host-bound: re-run it)"
    return ""


if __name__ == "__main__":
    main(sys.argv[1:])
