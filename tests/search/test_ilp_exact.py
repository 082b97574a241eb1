"""Exact answers on the hand-made 3-layer table (optima checked by hand and by enumeration)."""

from __future__ import annotations

import pytest
from tests.search.tables import brute_force

from mpsearch.errors import MpsearchError
from mpsearch.search import InfeasibleBudgetError, Transitions, solve_ilp
from mpsearch.search.solvers import SOLVERS


def keys(plan):
    return tuple(plan.layers[n].key for n in ("A", "B", "C"))


F, I8, I4, I88 = "fp32/fp32", "int8/fp32", "int4/fp32", "int8/int8"

CASES = [
    # (budgets, Ω, plan)  loose and tight (== a plan's cost) for every constraint type, then combinations
    ({"weight_bytes": 200}, 0.0, (F, F, F)),
    ({"weight_bytes": 100}, 1.0, (I8, F, F)),
    ({"weight_bytes": 40}, 3.0, (I8, I8, F)),  # tight: the optimum costs exactly 40
    ({"weight_bytes": 39.5}, 4.0, (I8, I4, F)),  # half a byte less flips the answer
    ({"weight_bytes": 14}, 28.0, (I4, I4, I4)),  # the minimum achievable
    ({"latency_s": 20}, 0.0, (F, F, F)),
    ({"latency_s": 6}, 5.0, (I88, I4, F)),
    ({"latency_s": 4}, 13.0, (I88, I88, I88)),
    ({"peak_act_bytes": 100}, 0.0, (F, F, F)),
    ({"peak_act_bytes": 90}, 5.0, (F, F, I88)),  # cut B+C binds; cut A+B does not
    ({"peak_act_bytes": 60}, 5.0, (F, F, I88)),
    ({"peak_act_bytes": 30}, 13.0, (I88, I88, I88)),
    ({"bops": 112}, 0.0, (F, F, F)),
    ({"bops": 20}, 8.0, (I8, I4, I8)),
    ({"bops": 8}, 13.0, (I88, I88, I88)),
    ({"energy_j": 33}, 0.0, (F, F, F)),
    ({"energy_j": 12}, 8.0, (I88, I88, F)),
    ({"energy_j": 7}, 13.0, (I88, I88, I88)),
    ({"weight_bytes": 40, "latency_s": 8}, 3.0, (I8, I8, F)),  # both tight at once
    ({"weight_bytes": 30, "peak_act_bytes": 60, "energy_j": 20}, 8.0, (I8, I8, I88)),
    ({"latency_s": 5, "bops": 40}, 8.0, (I88, I88, F)),
]


@pytest.mark.parametrize("budgets, omega, plan", CASES)
def test_known_optimum(hand, budgets, omega, plan):
    sens, costs = hand
    r = solve_ilp(sens, costs, budgets)
    assert r.objective == pytest.approx(omega)
    assert keys(r.plan) == plan
    assert r.status == "optimal" and r.gap == pytest.approx(0.0, abs=1e-9)
    for m, b in budgets.items():
        assert r.totals[m] <= b
    ref = brute_force(sens, costs, budgets)
    assert ref[0] == pytest.approx(omega) and keys(ref[1]) == plan


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("budgets, omega, plan", [CASES[3], CASES[10], CASES[19]])
def test_every_solver_agrees(hand, solver, budgets, omega, plan):
    sens, costs = hand
    for fixing in (True, False):
        r = solve_ilp(sens, costs, budgets, solver=solver, reduced_cost_fixing=fixing, prune=fixing)
        assert (r.solver, r.objective, keys(r.plan)) == (solver, pytest.approx(omega), plan)


def test_totals_cover_every_metric(hand):
    sens, costs = hand
    r = solve_ilp(sens, costs, {"weight_bytes": 40})
    assert r.totals == {
        "latency_s": 8.0, "weight_bytes": 40.0, "act_bytes": 140.0, "bops": 40.0, "energy_j": 24.0, "peak_act_bytes": 100.0,
    }
    assert r.plan.metadata["search"] == "ilp" and r.budgets == {"weight_bytes": 40}


def test_relative_budget(hand):
    sens, costs = hand
    # 0.5x of uniform int8 weights (28 bytes) = 14: only all-int4 fits
    r = solve_ilp(sens, costs, ["weight=0.5x:int8"])
    assert keys(r.plan) == (I4, I4, I4) and r.budgets == {"weight_bytes": 14.0}


def test_infeasible_single_budget_names_the_binding_one(hand):
    sens, costs = hand
    with pytest.raises(InfeasibleBudgetError) as e:
        solve_ilp(sens, costs, {"weight_bytes": 10, "latency_s": 100})
    msg = str(e.value)
    assert msg.startswith("infeasible budget: weight_bytes cannot be met by any plan")
    assert "weight_bytes <= 10 (min achievable 14, binds)" in msg
    assert "latency_s <= 100 (min achievable 3.5)" in msg
    assert e.value.minimums == {"weight_bytes": 14.0, "latency_s": 3.5}
    assert "\n" not in msg


def test_infeasible_combination_says_each_alone_is_feasible(hand):
    sens, costs = hand
    # weight <= 14 forces all int4 (latency 5.5); latency <= 3.5 forces all int8/int8 (weight 28)
    with pytest.raises(InfeasibleBudgetError, match="each is achievable alone but not all together") as e:
        solve_ilp(sens, costs, {"weight_bytes": 14, "latency_s": 3.5})
    assert e.value.minimums == {"weight_bytes": 14.0, "latency_s": 3.5}


def test_infeasible_peak_activation_minimum(hand):
    sens, costs = hand
    with pytest.raises(InfeasibleBudgetError, match=r"peak_act_bytes <= 20 \(min achievable 25, binds\)"):
        solve_ilp(sens, costs, {"peak_act_bytes": 20})


def test_ties_change_the_answer(hand):
    sens, costs = hand
    free = solve_ilp(sens, costs, {"weight_bytes": 39.5})
    assert keys(free.plan) == (I8, I4, F) and free.objective == 4.0
    # A and B must share a format: both int8 (24 bytes) leaves 15.5 for C -> C int8: Ω 1 + 2 + 4 = 7
    tied = solve_ilp(sens, costs, {"weight_bytes": 39.5}, ties=[["A", "B"]])
    assert keys(tied.plan) == (I8, I8, I8) and tied.objective == 7.0
    assert brute_force(sens, costs, {"weight_bytes": 39.5}, ties=[["A", "B"]])[0] == 7.0


def test_tie_with_no_common_candidate_is_an_error(hand):
    sens, costs = hand
    with pytest.raises(MpsearchError, match="share no candidate"):
        solve_ilp(sens, costs, {}, ties=[["A", "B"]], candidates={"A": ["int8"], "B": ["int4"], "C": ["fp32"]})


EDGES = (("A", "B"), ("B", "C"))


def test_transition_cost_in_the_objective(hand):
    sens, costs = hand
    # optimum at latency 6 is (int8/int8, int4, fp32): one act-format change (A->B) costs +1 -> Ω 6
    r = solve_ilp(sens, costs, {"latency_s": 6}, transitions=Transitions(objective=1.0, edges=EDGES))
    assert keys(r.plan) == (I88, I4, F) and r.objective == pytest.approx(6.0) and r.totals["transitions"] == 1.0
    assert brute_force(sens, costs, {"latency_s": 6}, transition=(EDGES, 1.0, 0.0))[0] == 6.0


def test_transition_cost_in_latency_changes_the_plan(hand):
    sens, costs = hand
    # +0.5 s per cast makes (int8/int8, int4, fp32) cost 6.5 > 6; best is (int8/int8, int8/int8, fp32):
    # latency 1 + 2 + 2 + one cast 0.5 = 5.5, Ω 2 + 6 + 0 = 8
    t = Transitions(latency_s=0.5, edges=EDGES)
    r = solve_ilp(sens, costs, {"latency_s": 6}, transitions=t)
    assert keys(r.plan) == (I88, I88, F) and r.objective == pytest.approx(8.0)
    assert r.totals["latency_s"] == pytest.approx(5.5) and r.totals["transitions"] == 1.0
    assert brute_force(sens, costs, {"latency_s": 6}, transition=(EDGES, 0.0, 0.5))[0] == 8.0


def test_transitions_need_edges(hand):
    sens, costs = hand
    with pytest.raises(MpsearchError, match="transition costs need edges"):
        solve_ilp(sens, costs, {}, transitions=Transitions(objective=1.0))


def test_candidate_restriction(hand):
    sens, costs = hand
    r = solve_ilp(sens, costs, {"weight_bytes": 100}, candidates=["int4", "int8/int8"])
    assert keys(r.plan) == (I88, I4, I88) and r.objective == pytest.approx(10.0)


def test_bad_inputs(hand):
    sens, costs = hand
    with pytest.raises(MpsearchError, match="unknown solver"):
        solve_ilp(sens, costs, {}, solver="gurobi")
    del sens.omega["B"]
    with pytest.raises(MpsearchError, match="layer 'B' has no sensitivity"):
        solve_ilp(sens, costs, {})
