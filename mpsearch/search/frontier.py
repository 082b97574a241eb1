"""The accuracy/cost frontier from one sensitivity table: sweep one budget, keep the non-dominated plans."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from mpsearch.errors import MpsearchError
from mpsearch.graph import LayerGraph
from mpsearch.plan import Plan
from mpsearch.search.budget import BUDGET_METRICS, Budget
from mpsearch.search.ilp import CompiledSearch, InfeasibleBudgetError, SolveResult, resolve_budgets
from mpsearch.search.problem import Transitions, layer_order
from mpsearch.tables import CostTable, SensitivityTable


#: Weight of the swept metric (scaled to O(1), like Ω) that breaks ties between equal-Ω plans.
TIE_BREAK = 1e-7


@dataclass
class FrontierPoint:
    plan: Plan
    objective: float  # predicted total Ω
    totals: dict[str, float]
    budget: float | None  # the swept metric's bound that produced it (None for weighted-sum points)
    weight: float | None = None  # weighted-sum point: Ω + weight × metric (both scaled)
    status: str = "optimal"
    gap: float | None = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _value(p: Any, key: str | Callable[[Any], float]) -> float:
    if callable(key):
        return float(key(p))
    sign = 1.0
    if key.startswith("-"):
        sign, key = -1.0, key[1:]
    if isinstance(p, Mapping):
        v = p[key] if key in p else p["totals"][key]
    elif hasattr(p, key):
        v = getattr(p, key)
    else:
        v = p.totals[key]
    return sign * float(v)


def pareto_front(points: Iterable[Any], objectives: Sequence[str | Callable[[Any], float]]) -> list[Any]:
    """Non-dominated subset, all objectives minimised (prefix a name with ``-`` to maximise it).

    Names are looked up as attributes, mapping keys, then ``totals`` entries. Points with equal objective
    vectors keep only the first. Result sorted by the first objective, then the next.
    """
    pts = list(points)
    if not objectives:
        raise MpsearchError("pareto_front needs at least one objective")
    if not pts:
        return []
    vals = np.array([[_value(p, o) for o in objectives] for p in pts], dtype=float)
    keep = []
    for i in range(len(pts)):
        le = np.all(vals <= vals[i], axis=1)
        lt = np.any(vals < vals[i], axis=1)
        dominated = np.any(le & lt)
        dup_earlier = np.any(np.all(vals[:i] == vals[i], axis=1))
        if not dominated and not dup_earlier and np.all(np.isfinite(vals[i])):
            keep.append(i)
    keep.sort(key=lambda i: tuple(vals[i]))
    return [pts[i] for i in keep]


def _point(r: SolveResult, budget: float | None, weight: float | None) -> FrontierPoint:
    return FrontierPoint(r.plan, r.objective, r.totals, budget, weight, r.status, r.gap, {"solver": r.solver, "seconds": r.seconds})


def ilp_frontier(
    sens: SensitivityTable,
    costs: CostTable,
    metric: str,
    *,
    n_points: int = 30,
    fixed_budgets: Iterable[Budget | str] | Mapping[str, float] = (),
    weights: Sequence[float] | None = None,
    candidates=None,
    ties: Iterable[Sequence[str]] | None = None,
    transitions: Transitions | None = None,
    graph: LayerGraph | None = None,
    time_limit: float = 10.0,
    solver: str = "auto",
    gap_rel: float = 1e-4,
    task: str = "",
) -> list[FrontierPoint]:
    """Non-dominated (Ω, ``metric``) plans for budgets of ``metric`` from its minimum to where it stops binding.

    The model is compiled once and re-solved with a new right-hand side per point; ``fixed_budgets`` hold
    throughout. ``weights`` adds supported points of ``Ω + w·metric`` (scaled) for an additive metric.
    """
    if metric not in BUDGET_METRICS:
        raise MpsearchError(f"unknown frontier metric {metric!r}", hint=f"known: {', '.join(BUDGET_METRICS)}")
    if n_points < 2:
        raise MpsearchError(f"n_points must be >= 2, got {n_points}")
    names = layer_order(sens, costs, graph)
    fixed = resolve_budgets(fixed_budgets, costs, names)
    if metric in fixed:
        raise MpsearchError(f"{metric} is the swept metric; do not also give it as a fixed budget")
    search = CompiledSearch(
        sens, costs, [metric, *fixed], candidates=candidates, ties=ties, transitions=transitions, graph=graph,
        time_limit=time_limit, solver=solver, gap_rel=gap_rel,
    )
    search.task = task
    # Among plans of equal Ω prefer the cheaper one, so no point is weakly dominated by an equal-Ω plan.
    tie_break = None if metric == "peak_act_bytes" else {"omega": 1.0, metric: TIE_BREAK}
    free = search.solve(fixed, objective=tie_break)  # best Ω under the fixed budgets: the sweep's top end
    hi = free.totals[metric]
    lo = search.min_metric(metric)
    points = [_point(free, hi, None)]
    # Geometric spacing: costs span orders of magnitude (INT2 .. FP32) and the knee sits at the cheap end,
    # where a linear sweep leaves the widest gaps.
    sweep = np.geomspace(lo, hi, n_points) if lo > 0 else np.linspace(lo, hi, n_points)
    for b in sweep[:-1]:
        try:
            r = search.solve({**fixed, metric: float(b)}, objective=tie_break, diagnose=False)
            points.append(_point(r, float(b), None))
        except InfeasibleBudgetError:
            continue  # below what the fixed budgets allow
    for w in weights or ():
        if metric == "peak_act_bytes":
            raise MpsearchError("weighted-sum frontier points need an additive metric, not peak_act_bytes")
        points.append(_point(search.solve(fixed, objective={"omega": 1.0, metric: float(w)}), None, float(w)))
    seen: set[tuple[str, ...]] = set()
    unique = []
    for p in points:
        key = tuple(p.plan.layers[n].key for n in names)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return pareto_front(unique, [metric, "objective"])
