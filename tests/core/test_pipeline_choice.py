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


def _session(budgets: list[str], scores: dict):
    """A stand-in Session over the hand-made search table: evaluate_plan reads a score per plan."""
    from types import SimpleNamespace

    from tests.search.tables import HAND, HAND_CUTS, make_tables

    from mpsearch.graph import LayerGraph, LayerInfo

    sens, costs = make_tables(HAND, HAND_CUTS)
    names = list(costs.costs)
    # a chain of linear layers of distinct shapes: no ties, so the ILP answer is the hand table's own
    layers = [LayerInfo(n, "linear", i, (4, 4), (1, 4 + i), (1, 5 + i), 16, 16, False, {}) for i, n in enumerate(names)]
    graph = LayerGraph(layers, list(zip(names, names[1:])), edge_source="test")
    return SimpleNamespace(
        config=OptimizeConfig(budgets=budgets), sens=sens, costs=costs, graph=graph, task=SimpleNamespace(name="hand"),
        evaluate_plan=lambda plan: scores.get(tuple(plan.layers[n].key for n in names), 0.5),
    ), names


def test_with_budgets_an_optuna_trial_that_measured_better_is_chosen():
    from mpsearch.pipeline import choose_plan
    from mpsearch.plan import Candidate, Plan

    s, names = _session(["weight_bytes=20"], {})
    better = Plan({n: Candidate.parse("int4") for n in names})
    fr = {"metric": "weight_bytes", "frontier": [], "optuna": {"points": [
        {"plan": better.to_dict(), "omega": 9.0, "totals": {"weight_bytes": 12.0}, "score": 0.9, "trial": 7, "feasible": True},
        {"plan": better.to_dict(), "omega": 9.0, "totals": {"weight_bytes": 99.0}, "score": 0.99, "trial": 8, "feasible": False},
    ]}}
    plan, info = choose_plan(s, fr)
    assert info["score"] == 0.9 and "Optuna trial 7" in info["how"]
    assert {c.key for c in plan.layers.values()} == {"int4/fp32"}
    # the ILP optimum stays when no trial measured better
    fr["optuna"]["points"][0]["score"] = 0.4
    plan, info = choose_plan(s, fr)
    assert info["how"].startswith("ILP under budgets") and info["score"] == 0.5
