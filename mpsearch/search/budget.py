"""Budgets: one upper bound on one cost metric, absolute or relative to a uniform baseline plan.

Spellings accepted by :func:`parse_budget` (the CLI passes them through unchanged)::

    latency_s=2e-3            weight_bytes=0.5x:int8/fp32      memory=40KB     latency=2ms
    act=0.25x:int8/int8       bops=3G                          energy=1.5mJ

A relative budget (``<factor>x[:<baseline candidate>]``) is ``factor × cost of the plan that uses the
baseline candidate on every layer``; the baseline defaults to ``fp32`` (the float model).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from mpsearch.errors import MpsearchError
from mpsearch.plan import Candidate, Plan
from mpsearch.tables import CostTable

#: Metrics a budget may bound. ``peak_act_bytes`` is the max over ``CostTable.act_cuts``; the rest are sums.
BUDGET_METRICS = ("latency_s", "weight_bytes", "peak_act_bytes", "bops", "energy_j")

_ALIASES = {
    "latency": "latency_s", "latency_s": "latency_s", "lat": "latency_s", "time": "latency_s",
    "memory": "weight_bytes", "mem": "weight_bytes", "weight": "weight_bytes", "weights": "weight_bytes",
    "weight_bytes": "weight_bytes", "size": "weight_bytes",
    "act": "peak_act_bytes", "acts": "peak_act_bytes", "activation": "peak_act_bytes",
    "activations": "peak_act_bytes", "peak_act": "peak_act_bytes", "peak_act_bytes": "peak_act_bytes",
    "act_bytes": "peak_act_bytes",
    "bops": "bops", "bop": "bops",
    "energy": "energy_j", "energy_j": "energy_j",
}

# Unit suffixes per metric kind (case-sensitive where SI prefixes need it: 'm' milli vs 'M' mega).
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_BYTE_UNITS = {
    "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024.0, "mib": 1024.0**2, "gib": 1024.0**3,
}
_ENERGY_UNITS = {"j": 1.0, "mj": 1e-3, "uj": 1e-6, "µj": 1e-6, "nj": 1e-9, "pj": 1e-12}
_COUNT_UNITS = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_REL = re.compile(rf"^({_NUMBER})\s*x(?:\s*:\s*(\S+))?$", re.IGNORECASE)
_ABS = re.compile(rf"^({_NUMBER})\s*([A-Za-zµ]*)$")


@dataclass(frozen=True)
class Budget:
    """``metric <= value`` (absolute) or ``metric <= value × cost(uniform baseline)`` (relative)."""

    metric: str
    value: float
    relative: bool = False
    baseline: str | None = None  # candidate key of the uniform baseline plan, for relative budgets

    def __post_init__(self) -> None:
        if self.metric not in BUDGET_METRICS:
            raise MpsearchError(f"unknown budget metric {self.metric!r}", hint=f"known: {', '.join(BUDGET_METRICS)}")
        if not (isinstance(self.value, (int, float)) and math.isfinite(self.value) and self.value > 0):
            raise MpsearchError(f"budget for {self.metric} must be a positive finite number, got {self.value!r}")
        if self.relative:
            base = Candidate.parse(self.baseline or "fp32").key
            object.__setattr__(self, "baseline", base)

    def __str__(self) -> str:
        if self.relative:
            return f"{self.metric}={self.value:g}x:{self.baseline}"
        return f"{self.metric}={self.value:g}"


def _unit_factor(metric: str, unit: str, text: str) -> float:
    if not unit:
        return 1.0
    if metric == "latency_s":
        table, u = _TIME_UNITS, unit
    elif metric in ("weight_bytes", "peak_act_bytes"):
        table, u = _BYTE_UNITS, unit.lower()
    elif metric == "energy_j":
        table, u = _ENERGY_UNITS, unit.lower()
    else:  # bops: SI count prefixes
        table, u = _COUNT_UNITS, unit.lower()
    if u not in table:
        raise MpsearchError(f"budget {text!r}: unit {unit!r} does not fit {metric}", hint=f"use one of {', '.join(table) or 'no unit'}")
    return table[u]


def parse_budget(text: str) -> Budget:
    """Parse ``metric=value[unit]`` or ``metric=<factor>x[:<baseline>]`` into a :class:`Budget`."""
    if not isinstance(text, str) or "=" not in text:
        raise MpsearchError(f"budget {text!r} must look like 'latency=2ms' or 'weight_bytes=0.5x:int8'")
    name, _, rhs = text.partition("=")
    key = name.strip().lower()
    if key not in _ALIASES:
        raise MpsearchError(f"budget {text!r}: unknown metric {name.strip()!r}", hint=f"known: {', '.join(BUDGET_METRICS)} (or latency, memory, act, bops, energy)")
    metric = _ALIASES[key]
    rhs = rhs.strip()
    m = _REL.match(rhs)
    if m:
        base = m.group(2)
        return Budget(metric, float(m.group(1)), relative=True, baseline=base)
    m = _ABS.match(rhs)
    if not m:
        raise MpsearchError(f"budget {text!r}: cannot read value {rhs!r}", hint="write a number with an optional unit, or e.g. 0.5x:int8")
    return Budget(metric, float(m.group(1)) * _unit_factor(metric, m.group(2), text))


def as_budgets(budgets: Iterable[Budget | str] | Mapping[str, float] | None) -> list[Budget]:
    """Accept Budget objects, spellings, or a ``{metric: absolute value}`` mapping; one budget per metric."""
    if budgets is None:
        return []
    if isinstance(budgets, Mapping):
        items: list[Budget] = [parse_budget(f"{k}={float(v)!r}") if not isinstance(v, Budget) else v for k, v in budgets.items()]
    elif isinstance(budgets, (str, Budget)):
        items = [budgets if isinstance(budgets, Budget) else parse_budget(budgets)]
    else:
        items = [b if isinstance(b, Budget) else parse_budget(b) for b in budgets]
    seen: set[str] = set()
    for b in items:
        if b.metric in seen:
            raise MpsearchError(f"two budgets for {b.metric}; give at most one per metric")
        seen.add(b.metric)
    return items


def resolve_budget(budget: Budget | str, costs: CostTable, layer_names: Sequence[str]) -> float:
    """The absolute bound: ``value`` itself, or ``value × cost of the uniform-baseline plan``."""
    b = budget if isinstance(budget, Budget) else parse_budget(budget)
    if not b.relative:
        return float(b.value)
    base = Candidate.parse(b.baseline or "fp32")
    missing = [n for n in layer_names if base.key not in costs.costs.get(n, {})]
    if missing:
        raise MpsearchError(
            f"budget {b}: baseline candidate {base.key!r} is not in the cost table (layer {missing[0]!r})",
            hint="add it to the candidates or give an absolute budget",
        )
    ref = costs.plan_cost(Plan.uniform(layer_names, base), b.metric)
    if not ref > 0:
        raise MpsearchError(f"budget {b}: the {base.key} baseline costs {ref:g} {b.metric}, so a relative budget is meaningless")
    return float(b.value) * ref
