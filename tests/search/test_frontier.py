"""Frontier sweep, the non-dominated filter, and verification of frontier points."""

from __future__ import annotations

import itertools

import pytest

from mpsearch.errors import MpsearchError
from mpsearch.plan import Candidate, Plan
from mpsearch.search import FrontierPoint, ilp_frontier, pareto_front, verify_points
from mpsearch.search.verify import rank_agreement


def all_plans(sens, costs):
    names = list(costs.costs)
    for combo in itertools.product(*[list(costs.costs[n]) for n in names]):
        yield Plan({n: Candidate.parse(k) for n, k in zip(names, combo)})


def true_front(sens, costs, metric):
    pts = [{"omega": sens.plan_value(p), metric: costs.plan_cost(p, metric)} for p in all_plans(sens, costs)]
    return {(d[metric], d["omega"]) for d in pareto_front(pts, [metric, "omega"])}


@pytest.mark.parametrize("metric", ["weight_bytes", "latency_s", "peak_act_bytes", "energy_j"])
def test_frontier_is_on_the_true_front_and_monotone(hand, metric):
    sens, costs = hand
    front = ilp_frontier(sens, costs, metric, n_points=60)
    pairs = [(p.totals[metric], p.objective) for p in front]
    truth = true_front(sens, costs, metric)
    assert set(pairs) <= truth
    # both ends of the true front are found: the cheapest plan and Ω = 0
    assert min(truth) in pairs and min(truth, key=lambda t: (t[1], t[0])) in pairs
    # monotone: cost strictly up, Ω strictly down
    assert all(a[0] < b[0] and a[1] > b[1] for a, b in zip(pairs, pairs[1:]))


def test_frontier_weight_bytes_exact(hand):
    sens, costs = hand
    front = ilp_frontier(sens, costs, "weight_bytes", n_points=99)  # a 1-byte grid from 14 to 112
    assert [(p.totals["weight_bytes"], p.objective) for p in front] == sorted(true_front(sens, costs, "weight_bytes"))


def test_frontier_respects_fixed_budgets(hand):
    sens, costs = hand
    front = ilp_frontier(sens, costs, "latency_s", n_points=20, fixed_budgets={"weight_bytes": 40})
    assert front and all(p.totals["weight_bytes"] <= 40 for p in front)
    assert front[-1].objective == 3.0  # best Ω with weight <= 40 (see test_ilp_exact)
    with pytest.raises(MpsearchError, match="swept metric"):
        ilp_frontier(sens, costs, "latency_s", fixed_budgets={"latency_s": 4})


def test_weighted_sum_points_are_supported_points(hand):
    sens, costs = hand
    front = ilp_frontier(sens, costs, "weight_bytes", n_points=2, weights=[0.0, 0.05, 1.0, 100.0])
    truth = true_front(sens, costs, "weight_bytes")
    assert {(p.totals["weight_bytes"], p.objective) for p in front} <= truth
    assert any(p.weight is not None for p in front)


def test_pareto_front_filter():
    pts = [
        {"name": "a", "cost": 1, "accuracy": 0.5},
        {"name": "b", "cost": 2, "accuracy": 0.4},  # dominated by a
        {"name": "c", "cost": 3, "accuracy": 0.9},
        {"name": "d", "cost": 3, "accuracy": 0.9},  # duplicate of c
        {"name": "e", "cost": 0.5, "accuracy": 0.1},
    ]
    assert [p["name"] for p in pareto_front(pts, ["cost", "-accuracy"])] == ["e", "a", "c"]
    assert pareto_front([], ["cost"]) == []
    with pytest.raises(MpsearchError):
        pareto_front(pts, [])


def test_verify_points_reports_prediction_next_to_measurement(hand):
    sens, costs = hand
    front = ilp_frontier(sens, costs, "weight_bytes", n_points=30)
    calls = []

    def evaluate(plan):
        calls.append(plan)
        return 1.0 - sens.plan_value(plan) / 100.0

    out = verify_points(front, evaluate, top_k=3)
    assert len(out) == len(calls) == 3
    assert out[0].plan is front[0].plan and out[-1].plan is front[-1].plan  # spread covers both ends
    for v in out:
        assert v.measured_accuracy == pytest.approx(1.0 - v.predicted_objective / 100.0)
    assert rank_agreement(out) == pytest.approx(-1.0)
    best = verify_points(front, evaluate, top_k=1, select="best")
    assert best[0].predicted_objective == min(p.objective for p in front)
