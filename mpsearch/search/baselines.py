"""Baselines computed in the same run, so every comparison in a report is like for like.

* ``uniform_plan``: one candidate everywhere (INT8, INT4, FP8 ... as the tables allow).
* ``hawq_v3_ilp``: HAWQ-V3's recipe, the same knapsack restricted to INT4/INT8 weights, fed with a
  trace-based Ω table (pass the table computed that way).
* ``random_search``: random plans within the budgets, each measured for real, as many as the search used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from mpsearch.errors import MpsearchError
from mpsearch.plan import Candidate, Plan
from mpsearch.search.budget import Budget
from mpsearch.search.ilp import SolveResult, plan_totals, resolve_budgets, solve_ilp
from mpsearch.search.problem import layer_order
from mpsearch.tables import CostTable, SensitivityTable

HAWQ_V3_WEIGHTS = ("int4", "int8")


def uniform_plan(names: Iterable[str], cand: Candidate | str, task: str = "") -> Plan:
    """Every layer on ``cand`` (e.g. ``"int8"``, ``"int4/int8"``)."""
    c = cand if isinstance(cand, Candidate) else Candidate.parse(cand)
    plan = Plan.uniform(list(names), c, task=task)
    plan.metadata["search"] = f"uniform {c.key}"
    return plan


def hawq_v3_ilp(
    sens: SensitivityTable,
    costs: CostTable,
    budgets: Iterable[Budget | str] | Mapping[str, float] | None,
    *,
    acts: Sequence[str] | None = None,
    **kw,
) -> SolveResult:
    """The knapsack over candidates whose weight format is INT4 or INT8 (HAWQ-V3), optionally fixing acts."""
    names = layer_order(sens, costs, kw.get("graph"))
    keys = {k for n in names for k in costs.costs[n] if k.split("/")[0] in HAWQ_V3_WEIGHTS}
    if acts is not None:
        allowed_acts = {Candidate.parse(f"int8/{a}").act for a in acts}
        keys = {k for k in keys if k.split("/")[1] in allowed_acts}
    if not keys:
        raise MpsearchError("HAWQ-V3 baseline needs int4 and/or int8 weight candidates in the tables")
    r = solve_ilp(sens, costs, budgets, candidates=sorted(keys), **kw)
    r.plan.metadata["search"] = "hawq-v3 ilp"
    return r


@dataclass
class EvaluatedPlan:
    plan: Plan
    accuracy: float
    totals: dict[str, float]


@dataclass
class RandomSearchResult:
    points: list[EvaluatedPlan]
    best: EvaluatedPlan | None  # most accurate
    draws: int  # random plans drawn (including rejected/repaired ones)
    repaired: int  # plans that needed repair to fit the budgets


def random_search(
    evaluate_plan: Callable[[Plan], float],
    costs: CostTable,
    candidates: Iterable[Candidate | str] | Mapping[str, Iterable[Candidate | str]],
    n_evals: int,
    budget: Iterable[Budget | str] | Mapping[str, float] | Budget | str | None,
    seed: int = 0,
    *,
    layer_names: Sequence[str] | None = None,
    task: str = "",
) -> RandomSearchResult:
    """``n_evals`` distinct random plans inside the budgets, each measured with ``evaluate_plan``.

    A uniform draw over a tight budget is almost always infeasible, so an infeasible draw is repaired by
    moving randomly chosen layers to their cheapest candidate on the violated metric until it fits; a
    budget no plan can meet raises.
    """
    if n_evals < 1:
        raise MpsearchError(f"n_evals must be >= 1, got {n_evals}")
    names = list(layer_names) if layer_names is not None else list(costs.costs)
    if isinstance(candidates, Mapping):
        per = {n: [c if isinstance(c, Candidate) else Candidate.parse(c) for c in candidates[n]] for n in names}
    else:
        cl = [c if isinstance(c, Candidate) else Candidate.parse(c) for c in candidates]
        per = {n: [c for c in cl if c.key in costs.costs[n]] for n in names}
    for n, cs in per.items():
        if not cs:
            raise MpsearchError(f"layer {n!r} has no candidate with costs for random search")
    bounds = resolve_budgets([budget] if isinstance(budget, (Budget, str)) else budget, costs, names)
    rng = np.random.default_rng(seed)

    def over(plan: Plan) -> str | None:
        tot = plan_totals(costs, plan)
        for m, b in bounds.items():
            if tot[m] > b * (1 + 1e-9):
                return m
        return None

    def cheapest(n: str, m: str) -> Candidate:
        met = "act_bytes" if m == "peak_act_bytes" else m
        return min(per[n], key=lambda c: costs.metric(n, c, met))

    seen: set[tuple[str, ...]] = set()
    points: list[EvaluatedPlan] = []
    draws = repaired = 0
    limit = 50 * n_evals + 100
    while len(points) < n_evals and draws < limit:
        draws += 1
        plan = Plan({n: per[n][int(rng.integers(len(per[n])))] for n in names}, task=task, metadata={"search": "random"})
        m = over(plan)
        if m is not None:
            order = [names[i] for i in rng.permutation(len(names))]
            for n in order:
                plan.layers[n] = cheapest(n, m)
                m = over(plan)
                if m is None:
                    break
            if m is not None:
                for n in names:  # everything cheapest on the first violated metric, then re-check
                    plan.layers[n] = cheapest(n, m)
                if over(plan) is not None:
                    continue
            repaired += 1
        key = tuple(plan.layers[n].key for n in names)
        if key in seen:
            continue
        seen.add(key)
        points.append(EvaluatedPlan(plan, float(evaluate_plan(plan)), plan_totals(costs, plan)))
    if not points:
        raise MpsearchError(f"random search found no plan within the budgets after {draws} draws")
    best = max(points, key=lambda p: p.accuracy)
    return RandomSearchResult(points, best, draws, repaired)
