"""Optuna refinement: warm start, resume from SQLite without redoing trials, determinism, budgets."""

from __future__ import annotations

import pytest

from mpsearch.plan import Candidate, Plan
from mpsearch.search import optuna_refine, uniform_plan

NAMES = ["A", "B", "C"]


def candidates(costs):
    return {n: list(costs.costs[n]) for n in NAMES}


def make_eval(sens, calls):
    def evaluate(plan: Plan) -> float:
        calls.append(tuple(plan.layers[n].key for n in NAMES))
        return 1.0 - sens.plan_value(plan) / 100.0

    return evaluate


def test_resume_runs_only_the_missing_trials(hand, tmp_path):
    sens, costs = hand
    db = tmp_path / "study.db"
    warm = [uniform_plan(NAMES, "int8"), uniform_plan(NAMES, "int4")]
    calls: list = []
    r1 = optuna_refine(make_eval(sens, calls), costs, candidates(costs), metric="weight_bytes", warm_start=warm,
                       n_trials=4, storage=str(db), study_name="s", seed=3)
    assert len(r1.trials) == 4 and r1.new_trials == 4
    r2 = optuna_refine(make_eval(sens, calls), costs, candidates(costs), metric="weight_bytes", warm_start=warm,
                       n_trials=8, storage=str(db), study_name="s", seed=3)
    assert r2.new_trials == 4
    assert sorted(t.trial for t in r2.trials) == list(range(8))  # exactly 8 distinct trials
    assert len(calls) <= 8 and len(set(calls)) == len(calls)  # no plan measured twice
    keys = [tuple(t.plan.layers[n].key for n in NAMES) for t in r2.trials]
    assert keys[:2] == [("int8/fp32",) * 3, ("int4/fp32",) * 3]  # warm starts ran first ...
    assert keys.count(("int8/fp32",) * 3) == 1  # ... and were not enqueued again on resume
    assert [t.warm_start for t in r2.trials[:2]] == [True, True]
    # measured values are real: accuracy = 1 - Ω/100, cost = weight bytes from the table
    for t in r2.trials:
        assert t.accuracy == pytest.approx(1.0 - sens.plan_value(t.plan) / 100.0)
        assert t.cost == costs.plan_cost(t.plan, "weight_bytes")
    # Pareto set: feasible and non-dominated in (max accuracy, min cost)
    for p in r2.pareto:
        assert not any(q.accuracy >= p.accuracy and q.cost <= p.cost and (q.accuracy, q.cost) != (p.accuracy, p.cost) for q in r2.trials)
    # a third call with the same target does nothing
    r3 = optuna_refine(make_eval(sens, calls), costs, candidates(costs), metric="weight_bytes", n_trials=8,
                       storage=str(db), study_name="s", seed=3)
    assert r3.new_trials == 0 and len(r3.trials) == 8


def test_seeded_runs_are_identical(hand, tmp_path):
    sens, costs = hand
    runs = []
    for i in range(2):
        r = optuna_refine(make_eval(sens, []), costs, candidates(costs), metric="latency_s", n_trials=10,
                          storage=str(tmp_path / f"s{i}.db"), study_name="d", seed=7)
        runs.append([tuple(t.plan.layers[n].key for n in NAMES) for t in r.trials])
    assert runs[0] == runs[1] and len(set(runs[0])) > 1


def test_budgets_keep_infeasible_trials_out_of_the_pareto_set(hand):
    sens, costs = hand
    r = optuna_refine(make_eval(sens, []), costs, candidates(costs), metric="latency_s", n_trials=12, storage=None,
                      study_name="mem", seed=0, budgets={"weight_bytes": 40}, warm_start=[uniform_plan(NAMES, "fp32")])
    assert not r.trials[0].feasible  # fp32 everywhere is 112 bytes
    assert r.pareto and all(p.feasible and p.totals["weight_bytes"] <= 40 for p in r.pareto)


def test_warm_start_must_use_known_candidates(hand):
    from mpsearch.errors import MpsearchError

    sens, costs = hand
    bad = Plan({n: Candidate.parse("int2") for n in NAMES})
    with pytest.raises(MpsearchError, match="not among its candidates"):
        optuna_refine(make_eval(sens, []), costs, candidates(costs), metric="latency_s", n_trials=1, warm_start=[bad])
