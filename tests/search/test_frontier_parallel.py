"""Frontier sweeps in worker processes: the same frontier as in-process, errors as in-process, no leftovers."""

from __future__ import annotations

import math
import multiprocessing as mp
import pickle

import pytest

from mpsearch.errors import MpsearchError
from mpsearch.search import InfeasibleBudgetError, ilp_frontier, resolve_budgets
from mpsearch.search import frontier
from mpsearch.search.ilp import CompiledSearch
from tests.search.test_ilp_property import _random_tables

GAP = 1e-4
FIXED = ["weight=0.6x:int5/fp32", "act=0.6x:int4/fp32"]


@pytest.fixture
def tables():
    return _random_tables(5, n_layers=40, n_cands=8)


@pytest.fixture
def pooled(monkeypatch):
    """Parallelise even this small problem, and record the start method of every pool used."""
    monkeypatch.setattr(frontier, "MIN_PARALLEL_BINARIES", 0)
    monkeypatch.setattr(frontier, "MIN_SPAWN_BINARIES", 0)
    used: list[str] = []
    inner = frontier._parallel_sweep

    def spy(*args, **kw):
        used.append(args[-1])
        return inner(*args, **kw)

    monkeypatch.setattr(frontier, "_parallel_sweep", spy)
    return used


def _feasible(costs, point, fixed) -> bool:
    bounds = {**fixed, "latency_s": point.budget}
    return all(costs.plan_cost(point.plan, m) <= b * (1 + 1e-6) for m, b in bounds.items())


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_parallel_frontier_agrees_with_sequential(tables, pooled, monkeypatch, method):
    if method not in mp.get_all_start_methods() or (method == "fork" and frontier.pool_start_method() != "fork"):
        pytest.skip(f"{method} is not used in this process")
    monkeypatch.setattr(frontier, "pool_start_method", lambda: method)
    sens, costs = tables
    fixed = resolve_budgets(FIXED, costs, list(costs.costs))
    n = 12 if method == "fork" else 6  # spawned workers import mpsearch afresh: keep that test short
    seq = ilp_frontier(sens, costs, "latency_s", n_points=n, fixed_budgets=fixed, gap_rel=GAP, workers=1)
    par = ilp_frontier(sens, costs, "latency_s", n_points=n, fixed_budgets=fixed, gap_rel=GAP, workers=2)
    assert pooled == [method]
    assert len(par) == len(seq) >= 3
    for s, p in zip(seq, par):
        assert p.budget == s.budget
        assert p.objective == pytest.approx(s.objective, rel=GAP, abs=1e-12)
        assert p.gap <= GAP + 1e-9 and p.status == "optimal"
        assert _feasible(costs, p, fixed)
    assert mp.active_children() == []  # every worker reaped


def test_worker_errors_surface_as_in_process(tables, pooled, monkeypatch):
    if frontier.pool_start_method() != "fork":
        pytest.skip("the failing solve is patched in; only forked workers inherit the patch")
    sens, costs = tables
    fixed = resolve_budgets(FIXED, costs, list(costs.costs))
    free = CompiledSearch(sens, costs, ["latency_s", *fixed]).solve(fixed).totals["latency_s"]
    solve = CompiledSearch.solve

    def failing(self, budgets, **kw):  # every swept budget fails, the unconstrained top end does not
        if budgets.get("latency_s", math.inf) < 0.999 * free:
            raise MpsearchError("solver fell over", hint="test")
        return solve(self, budgets, **kw)

    monkeypatch.setattr(CompiledSearch, "solve", failing)
    errors = []
    for workers in (1, 2):
        with pytest.raises(MpsearchError) as e:
            ilp_frontier(sens, costs, "latency_s", n_points=8, fixed_budgets=fixed, workers=workers)
        errors.append((type(e.value), str(e.value)))
    assert errors[0] == errors[1] == (MpsearchError, "solver fell over (test)")
    assert pooled == ["fork"]
    assert mp.active_children() == []


def test_small_sweeps_stay_in_process(hand, monkeypatch):
    def no_pool(*a, **kw):
        raise AssertionError("a pool was started for a tiny problem")

    monkeypatch.setattr(frontier, "_parallel_sweep", no_pool)
    sens, costs = hand
    assert ilp_frontier(sens, costs, "weight_bytes", n_points=30, workers=4)
    with pytest.raises(MpsearchError, match="workers must be >= 1"):
        ilp_frontier(sens, costs, "weight_bytes", workers=0)


def test_infeasible_budget_error_pickles():
    e = InfeasibleBudgetError("infeasible budgets", budgets={"latency_s": 1.0}, minimums={"latency_s": 2.0})
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is InfeasibleBudgetError and str(back) == str(e)
    assert back.budgets == e.budgets and back.minimums == e.minimums
