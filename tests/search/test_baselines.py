"""Baselines: uniform plans, the HAWQ-V3 INT4/INT8 ILP, and budgeted random search."""

from __future__ import annotations

import pytest

from mpsearch.errors import MpsearchError
from mpsearch.search import hawq_v3_ilp, random_search, uniform_plan
from tests.search.tables import HAND, brute_force, make_tables

NAMES = ["A", "B", "C"]


def test_uniform_plan():
    p = uniform_plan(NAMES, "int4")
    assert {n: c.key for n, c in p.layers.items()} == {n: "int4/fp32" for n in NAMES}
    assert p.metadata["search"] == "uniform int4/fp32"


@pytest.mark.parametrize("budget", [200.0, 28.0, 20.0])
def test_hawq_v3_is_the_ilp_over_int4_int8_weights(hand, budget):
    sens, costs = hand
    r = hawq_v3_ilp(sens, costs, {"weight_bytes": budget})
    assert all(c.weight in ("int4", "int8") for c in r.plan.layers.values())
    only48 = make_tables({n: {k: v for k, v in cs.items() if k.split("/")[0] in ("int4", "int8")} for n, cs in HAND.items()})
    assert r.objective == brute_force(*only48, {"weight_bytes": budget})[0]
    assert r.plan.metadata["search"] == "hawq-v3 ilp"


def test_hawq_v3_exact_answer(hand):
    sens, costs = hand
    # nothing binds at 200 bytes: cheapest Ω among int8/fp32, int4/fp32, int8/int8 per layer = 1 + 2 + 4
    assert hawq_v3_ilp(sens, costs, {"weight_bytes": 200}).objective == 7.0
    # <= 20 bytes: int8 A (8) + int4 B (8) + int8 C (4) = 20 -> Ω 1 + 3 + 4 = 8 (int8 B would need 24)
    r = hawq_v3_ilp(sens, costs, {"weight_bytes": 20})
    assert r.objective == 8.0 and [c.key for c in r.plan.layers.values()] == ["int8/fp32", "int4/fp32", "int8/fp32"]


def test_random_search_is_feasible_distinct_and_seeded(hand):
    sens, costs = hand
    calls = []

    def evaluate(plan):
        calls.append(plan)
        return 1.0 - sens.plan_value(plan) / 100.0

    r = random_search(evaluate, costs, ["fp32", "int8", "int4", "int8/int8"], 6, "weight_bytes=40", seed=1)
    assert len(r.points) == len(calls) == 6
    assert all(p.totals["weight_bytes"] <= 40 for p in r.points)
    assert len({tuple(c.key for c in p.plan.layers.values()) for p in r.points}) == 6
    assert r.best.accuracy == max(p.accuracy for p in r.points)
    again = random_search(evaluate, costs, ["fp32", "int8", "int4", "int8/int8"], 6, "weight_bytes=40", seed=1)
    assert [p.plan.layers for p in again.points] == [p.plan.layers for p in r.points]
    # the ILP optimum at the same budget is at least as good as the best random plan (Ω 3 -> 0.97)
    assert r.best.accuracy <= 0.97


def test_random_search_repairs_tight_budgets_and_rejects_impossible_ones(hand):
    sens, costs = hand
    r = random_search(lambda p: 0.0, costs, ["fp32", "int8", "int4"], 1, {"weight_bytes": 14}, seed=0)
    assert [c.key for c in r.points[0].plan.layers.values()] == ["int4/fp32"] * 3  # the only plan that fits
    with pytest.raises(MpsearchError, match="no plan within the budgets"):
        random_search(lambda p: 0.0, costs, ["fp32", "int8"], 1, {"weight_bytes": 10}, seed=0)
