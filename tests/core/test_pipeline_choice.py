"""Which measured points a plan is chosen from, and how many evaluations random search is given."""

from __future__ import annotations

from mpsearch.pipeline import OptimizeConfig, default_random_evals, measured_frontier


def _pt(cost: float, score: float, tag: str) -> dict:
    return {"plan": {"tag": tag}, "omega": 0.0, "totals": {"weight_bytes": cost}, "score": score}


def test_without_optuna_the_ilp_frontier_is_the_pool():
    fr = {"metric": "weight_bytes", "frontier": [_pt(10, 0.9, "a"), _pt(5, 0.95, "b")]}
    assert measured_frontier(fr) == fr["frontier"]  # as the ILP gave them, dominated points included


def test_optuna_points_that_measure_better_replace_ilp_points():
    fr = {"metric": "weight_bytes", "frontier": [_pt(10, 0.90, "ilp10"), _pt(20, 0.95, "ilp20")],
          "optuna": {"points": [_pt(9, 0.93, "opt9"), _pt(30, 0.94, "opt30")]}}
    pool = measured_frontier(fr)
    # opt9 dominates ilp10 (cheaper and better); opt30 is dominated by ilp20
    assert [p["plan"]["tag"] for p in pool] == ["opt9", "ilp20"]
    assert pool[0]["search"] == "optuna" and "search" not in pool[1]


def test_random_search_gets_what_the_search_spent():
    assert default_random_evals(OptimizeConfig(), 18) == 18
    assert default_random_evals(OptimizeConfig(optuna_trials=40), 18) == 58
    assert default_random_evals(OptimizeConfig(optuna_trials=40, random_evals=5), 18) == 5
    assert default_random_evals(OptimizeConfig(random_evals=0), 18) == 0
