"""Tuning rules learnt from measurements over many shapes, in the tables' own form (aot/tables.py): an ordered list of
rules with max_m / max_n / max_k bounds, the first whose bounds hold wins, the last one a catch-all.

    rules = induce(shapes, times)          # times[s][c]: candidate c's time on shape s (inf: it cannot run there)
    summary = evaluate(rules, shapes, times)

`induce` grows a decision list greedily: it starts from the one config best over all shapes (the catch-all) and
then, while that lowers the geometric-mean regret (time / the best candidate's time on the shape) by at least
`min_gain`, inserts the rule (a box from the bound grid, a config, a place in the list) that lowers it most. A rule
takes the shapes of its box that no rule before it holds. One step at a time: a region that only a pair of rules
can carve out (e.g. N > 4096, which needs a rule for N <= 4096 in front) is found only where the first rule of the
pair gains on its own. The tuner measures, this chooses, and the tests check it without a GPU.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

# Bounds a rule may take (None: unbounded), from the sizes where the kernels' behaviour changes: tile heights, about
# one wave of tiles on 128-132 SMs, and the widths of real layers.
GRID_M = (16, 64, 128, 256, 512, 1024, 2048, 4096, None)
GRID_N = (1024, 1280, 2048, 4096, 8192, None)
GRID_K = (1024, 2048, 4096, 8192, None)
BOUNDS = ("max_m", "max_n", "max_k")

Shape = Tuple[int, int, int]
Rule = Tuple[Dict[str, int], int]  # (bounds, index of the config)


def holds(bounds: Dict[str, int], shape: Shape) -> bool:
    return all(bounds.get(b) is None or v <= bounds[b] for b, v in zip(BOUNDS, shape))


def choice(rules: Sequence[Rule], shape: Shape) -> int:
    """The config index the first rule whose bounds hold gives the shape."""
    return next(c for bounds, c in rules if holds(bounds, shape))


def _regret_logs(times: Sequence[Sequence[float]]) -> List[List[float]]:
    """log(time / best time on the shape) per shape and config (inf where the config cannot run)."""
    out = []
    for row in times:
        best = min(row)
        if not math.isfinite(best):
            raise ValueError("a shape no candidate runs on cannot be tuned")
        out.append([math.log(t / best) if math.isfinite(t) else math.inf for t in row])
    return out


def induce(shapes: Sequence[Shape], times: Sequence[Sequence[float]], max_rules: int = 16,
           min_gain: float = 0.005) -> List[Rule]:
    """The decision list (see the module's doc). Returns [(bounds, config index)], ending with the catch-all."""
    import numpy as np
    logs = np.array(_regret_logs(times))  # [shape, config]
    total = logs.sum(axis=0)
    catch_all = int(np.argmin(total))
    if not math.isfinite(total[catch_all]):
        raise ValueError("no candidate runs on every shape: nothing can be the catch-all")
    rules: List[Rule] = [({}, catch_all)]
    owner = np.zeros(len(shapes), dtype=int)  # index of the rule each shape goes to
    current = logs[:, catch_all].copy()
    boxes = [{b: v for b, v in zip(BOUNDS, (m, n, k)) if v is not None}
             for m in GRID_M for n in GRID_N for k in GRID_K if (m, n, k) != (None, None, None)]
    inside = [np.array([holds(box, shape) for shape in shapes]) for box in boxes]
    with np.errstate(invalid="ignore"):  # (inf - inf where a config cannot run: never a gain)
        while len(rules) < max_rules:
            best: Optional[Tuple[float, int, int, int]] = None
            for b, box_mask in enumerate(inside):
                for position in range(len(rules)):  # in front of rule `position`: takes the box's shapes it had
                    moved = box_mask & (owner >= position)
                    if not moved.any():
                        continue
                    gains = current[moved].sum() - logs[moved].sum(axis=0)
                    c = int(np.nanargmax(np.where(np.isnan(gains), -np.inf, gains)))
                    if best is None or gains[c] > best[0]:
                        best = (float(gains[c]), b, c, position)
            if best is None or not best[0] / len(shapes) >= min_gain:
                break
            _, b, c, position = best
            moved = inside[b] & (owner >= position)
            owner[owner >= position] += 1
            owner[moved] = position
            current[moved] = logs[moved, c]
            rules.insert(position, (boxes[b], c))
    return rules


def evaluate(rules: Sequence[Rule], shapes: Sequence[Shape], times: Sequence[Sequence[float]]) -> dict:
    """How the rules do on shapes with every candidate timed: geometric-mean and worst regret, and the worst shape."""
    logs = _regret_logs(times)
    regrets = [math.exp(logs[s][choice(rules, shape)]) for s, shape in enumerate(shapes)]
    worst = max(range(len(shapes)), key=lambda s: regrets[s])
    return dict(geomean_regret=math.exp(sum(math.log(r) for r in regrets) / len(regrets)),
                worst_regret=regrets[worst], worst_shape=list(shapes[worst]))


def as_table_rules(rules: Sequence[Rule], configs: Sequence[dict], op: str) -> List[dict]:
    """The rules as the tables hold them for one op: {"ops", bounds..., "config"}."""
    return [dict({"ops": [op]}, **bounds, config=configs[c]) for bounds, c in rules]
