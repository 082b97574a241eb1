"""Frontier points at given costs (``extra_budgets``): each is the ILP optimum at that exact budget."""

from __future__ import annotations

from mpsearch.search import Budget, ilp_frontier, solve_ilp
from tests.search.test_ilp_property import _random_tables

GAP = 1e-4


def test_extra_budgets_put_an_optimal_point_at_each_cost():
    sens, costs = _random_tables(3, n_layers=30, n_cands=6)
    plain = ilp_frontier(sens, costs, "weight_bytes", n_points=4, gap_rel=GAP, workers=1)
    lo, hi = min(p.totals["weight_bytes"] for p in plain), max(p.totals["weight_bytes"] for p in plain)
    wanted = [lo + f * (hi - lo) for f in (0.13, 0.41, 0.77)]
    pts = ilp_frontier(sens, costs, "weight_bytes", n_points=4, gap_rel=GAP, workers=1,
                       extra_budgets=[*wanted, 10 * hi, -1.0])  # out-of-range budgets are ignored
    for b in wanted:
        best = solve_ilp(sens, costs, [Budget("weight_bytes", b)], gap_rel=GAP)
        # the frontier's best point at <= b is as good as the ILP at exactly b (it may be a cheaper equal-Ω plan)
        at = [p for p in pts if p.totals["weight_bytes"] <= b * (1 + 1e-9)]
        assert at, b
        assert min(p.objective for p in at) <= best.objective * (1 + 2 * GAP) + 1e-12, (b, best.objective)
    # and the plain 4-point sweep misses at least one of these costs by more than the gap
    worse = 0
    for b in wanted:
        best = solve_ilp(sens, costs, [Budget("weight_bytes", b)], gap_rel=GAP)
        at = [p.objective for p in plain if p.totals["weight_bytes"] <= b * (1 + 1e-9)]
        worse += (not at) or min(at) > best.objective * (1 + 2 * GAP) + 1e-12
    assert worse >= 1
