"""Frontier vs baselines (mpsearch.search.compare): hand-made frontier records with known verdicts."""

from __future__ import annotations

from mpsearch.search import compare_with_baselines


def pt(cost: float, score: float | None, **extra):
    return {"totals": {"weight_bytes": cost, "latency_s": 1.0 / cost}, "score": score, **extra}


FRONTIER = {
    "metric": "weight_bytes",
    "float_score": 0.95,
    "frontier": [pt(10, 0.50), pt(20, 0.90), pt(40, 0.93), pt(80, 0.93)],
    "baselines": {"uniform int8": pt(80, 0.94), "uniform int4": pt(40, 0.90), "uniform fp8": pt(5, 0.99)},
    "hawq_v3": [pt(30, 0.91), pt(20, 0.89)],
    "random": [pt(20, 0.90), pt(60, None)],  # an unevaluated plan is no baseline point
}


def test_each_baseline_gets_the_best_point_at_no_more_cost():
    cmp = compare_with_baselines(FRONTIER)
    got = {r.baseline: (r.best["totals"]["weight_bytes"] if r.best else None, r.verdict) for r in cmp.rows}
    assert got == {
        "uniform int8": (40, "<"),         # 0.93 at 40 (cheaper of the two 0.93 points) vs 0.94
        "uniform int4": (40, ">="),        # 0.93 >= 0.90
        "uniform fp8": (None, "no point"),  # nothing costs <= 5
        "HAWQ-V3 #1": (20, ">="),          # HAWQ sorted by cost: 20 first; 0.90 >= 0.89
        "HAWQ-V3 #2": (20, "<"),           # 0.90 at 20 is the best at <= 30; 0.91 wins
        "random #1": (20, ">="),           # an exact tie counts as at least as accurate
    }
    assert (cmp.wins_or_ties, cmp.losses, cmp.no_point, cmp.pool) == (3, 2, 1, 4)
    assert abs(cmp.rows[0].difference - (0.93 - 0.94)) < 1e-12


def test_optuna_points_join_the_pool_only_when_asked():
    fr = {**FRONTIER, "optuna": {"points": [pt(35, 0.95)]}}
    with_opt = {r.baseline: r.verdict for r in compare_with_baselines(fr).rows}
    without = {r.baseline: r.verdict for r in compare_with_baselines(fr, with_optuna=False).rows}
    assert with_opt["uniform int8"] == ">=" and with_opt["HAWQ-V3 #2"] == "<"  # 35 > 30: still too costly there
    assert without["uniform int8"] == "<"


def test_cost_slack_is_relative_not_absolute():
    fr = {"metric": "weight_bytes", "frontier": [pt(1e9 * (1 + 1e-10), 0.9)], "baselines": {"u": pt(1e9, 0.8)}}
    assert compare_with_baselines(fr).rows[0].verdict == ">="  # rounding of a byte count is not a costlier plan
    fr["frontier"] = [pt(1e9 * (1 + 1e-6), 0.9)]
    assert compare_with_baselines(fr).rows[0].verdict == "no point"
