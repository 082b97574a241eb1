"""Hand-made tables for exact-answer search tests, and a brute-force reference optimiser."""

from __future__ import annotations

import itertools
from typing import Mapping



from mpsearch.plan import Candidate, Plan
from mpsearch.tables import CostTable, SensitivityTable

FIELDS = ("omega", "weight_bytes", "latency_s", "bops", "energy_j", "act_bytes")

# layer -> candidate -> (Ω, weight_bytes, latency_s, bops, energy_j, act_bytes)
HAND = {
    "A": {
        "fp32/fp32": (0, 32, 3.0, 32, 9, 40),
        "int8/fp32": (1, 8, 2.0, 8, 6, 40),
        "int4/fp32": (5, 4, 1.5, 4, 5, 40),
        "int8/int8": (2, 8, 1.0, 2, 2, 10),
    },
    "B": {
        "fp32/fp32": (0, 64, 6.0, 64, 18, 20),
        "int8/fp32": (2, 16, 4.0, 16, 12, 20),
        "int4/fp32": (3, 8, 3.0, 8, 10, 20),
        "int8/int8": (6, 16, 2.0, 4, 4, 5),
    },
    "C": {
        "fp32/fp32": (0, 16, 2.0, 16, 6, 80),
        "int8/fp32": (4, 4, 1.5, 4, 4, 80),
        "int4/fp32": (20, 2, 1.0, 2, 3, 80),
        "int8/int8": (5, 4, 0.5, 1, 1, 20),
    },
}
HAND_CUTS = [["A", "B"], ["B", "C"]]


def make_tables(spec: Mapping[str, Mapping[str, tuple]], cuts=None) -> tuple[SensitivityTable, CostTable]:
    omega = {l: {k: float(v[0]) for k, v in cs.items()} for l, cs in spec.items()}
    costs = {
        l: {k: {f: float(x) for f, x in zip(FIELDS[1:], v[1:])} for k, v in cs.items()} for l, cs in spec.items()
    }
    return SensitivityTable(omega), CostTable(costs, act_cuts=[list(c) for c in (cuts or [])])


def brute_force(sens: SensitivityTable, costs: CostTable, budgets: Mapping[str, float], ties=(), transition=None):
    """Least Ω over every plan (ties respected; transition = (edges, objective cost, latency cost))."""
    names = list(costs.costs)
    best = None
    for combo in itertools.product(*[list(costs.costs[n]) for n in names]):
        plan = Plan({n: Candidate.parse(k) for n, k in zip(names, combo)})
        if any(len({plan.layers[n].key for n in g}) > 1 for g in ties):
            continue
        om = sens.plan_value(plan)
        n_diff = 0
        if transition:
            edges, t_obj, t_lat = transition
            n_diff = sum(plan.layers[a].act != plan.layers[b].act for a, b in edges)
            om += t_obj * n_diff
        ok = True
        for m, b in budgets.items():
            v = costs.plan_cost(plan, m)
            if transition and m == "latency_s":
                v += transition[2] * n_diff
            ok &= v <= b
        if ok and (best is None or om < best[0]):
            best = (om, plan)
    return best


