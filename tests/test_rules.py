"""bench/rules.py: tuning rules learnt from timings over many shapes, in the tables' first-match form. No GPU."""
import math
import random

import pytest

from bench import rules as R


def synthetic_times(shapes):
    """Three configs: 'skinny' is best at M <= 64, 'narrow' at N <= 2048 otherwise, 'big' elsewhere; 'narrow' cannot
    run at K > 8192 (inf), and every time grows with the problem so ratios, not sizes, decide."""
    out = []
    for m, n, k in shapes:
        base = m * n * k * 1e-9 + 0.01
        skinny = base * (1.0 if m <= 64 else 1.6)
        narrow = base * (1.0 if n <= 2048 and m > 64 else 1.3) if k <= 8192 else math.inf
        big = base * (1.0 if m > 64 and n > 2048 else 1.2)
        out.append([skinny, narrow, big])
    return out


def draw(count, seed):
    rng = random.Random(seed)
    return [(int(math.exp(rng.uniform(0, math.log(16384)))), rng.choice([1024, 2048, 4096, 8192, 12288]),
             rng.choice([1024, 4096, 8192, 16384])) for _ in range(count)]


def test_rules_learnt_on_training_shapes_hold_on_held_out_ones():
    train, held_out = draw(200, 1), draw(200, 2)
    rules = R.induce(train, synthetic_times(train))
    assert rules[-1][0] == {} and len(rules) <= 4, rules  # a catch-all last, and no rule that gains nothing
    summaries = [R.evaluate(rules, shapes, synthetic_times(shapes)) for shapes in (train, held_out)]
    for summary in summaries:
        assert summary["geomean_regret"] < 1.01, summaries
    assert R.choice(rules, (16, 8192, 1024)) == 0 and R.choice(rules, (1024, 2048, 4096)) == 1
    assert R.choice(rules, (1024, 1024, 16384)) == 2  # 'narrow' cannot run there: the catch-all takes it


def test_catch_all_must_run_everywhere_and_every_shape_needs_a_candidate():
    with pytest.raises(ValueError, match="no candidate runs on every shape"):
        R.induce([(1, 1024, 1024), (4096, 1024, 1024)], [[1.0, math.inf], [math.inf, 1.0]])
    with pytest.raises(ValueError, match="no candidate runs on"):
        R.induce([(1, 1024, 1024)], [[math.inf, math.inf]])


def test_small_gains_add_no_rule_and_table_form():
    shapes = [(m, 4096, 4096) for m in (1, 16, 256, 4096)]
    times = [[1.0, 1.001], [1.0, 1.001], [1.0, 0.999], [1.0, 1.0]]  # 'b' wins by 0.1% at one shape: below min_gain
    rules = R.induce(shapes, times)
    assert rules == [({}, 0)]
    table = R.as_table_rules([({"max_m": 64}, 1), ({}, 0)], [{"BLOCK_M": 128}, {"BLOCK_M": 16}], "linear_relu")
    assert table == [{"ops": ["linear_relu"], "max_m": 64, "config": {"BLOCK_M": 16}},
                     {"ops": ["linear_relu"], "config": {"BLOCK_M": 128}}]


def test_the_tuners_shape_set_mode_learns_and_reports_held_out_ratios():
    """bench.tune.tune_on_shapes, with timings from a function instead of a GPU: rules in the table's form, the
    training regret, and the held-out shapes' time over the floor (median, p90, worst with its shape)."""
    from bench import tune
    train, held_out = draw(120, 1), draw(60, 2)
    configs = [{"BLOCK_M": 16}, {"BLOCK_M": 64, "BLOCK_N": 32}, {"BLOCK_M": 128}]
    timing = {tuple(sorted(c.items())): i for i, c in enumerate(configs)}

    def time_fn(config, shape):
        return synthetic_times([shape])[0][timing[tuple(sorted(config.items()))]]

    def floor_fn(shape):
        m, n, k = shape
        return m * n * k * 1e-9 + 0.01

    table_rules, summary = tune.tune_on_shapes("linear_relu", "half", train, held_out, configs, time_fn, floor_fn)
    assert table_rules[-1] == {"ops": ["linear_relu"], "config": configs[2]}
    assert table_rules[0] == {"ops": ["linear_relu"], "max_m": 64, "config": configs[0]}
    assert summary["train_geomean_regret"] < 1.01 and summary["rules"] == len(table_rules)
    assert summary["held_out_x_floor"]["median"] == 1.0 and summary["held_out_x_floor"]["worst"] >= 1.0
    assert tune.aligned([(3, 1000, 17)]) == [(3, 1008, 32)]
