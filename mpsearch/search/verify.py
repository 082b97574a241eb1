"""Re-measure frontier points for real and put the measurement next to the prediction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from mpsearch.errors import MpsearchError
from mpsearch.plan import Plan


@dataclass
class Verification:
    plan: Plan
    predicted_objective: float  # Ω (lower = predicted more accurate)
    predicted: dict[str, float]  # the cost model's totals
    measured_accuracy: float
    measured: dict[str, Any] = field(default_factory=dict)  # e.g. latency of the compiled artifact


def _pick(n: int, k: int, select: str, objective: Sequence[float]) -> list[int]:
    if k >= n:
        return list(range(n))
    if select == "best":
        return sorted(range(n), key=lambda i: objective[i])[:k]
    if select == "spread":
        return sorted(set(int(round(x)) for x in np.linspace(0, n - 1, k)))
    raise MpsearchError(f"unknown selection {select!r}; use spread or best")


def verify_points(
    points: Sequence[Any],
    evaluate_plan: Callable[[Plan], float],
    top_k: int = 5,
    *,
    select: str = "spread",
    measure: Callable[[Plan], dict[str, Any]] | None = None,
) -> list[Verification]:
    """Evaluate ``top_k`` of ``points`` (anything with ``plan``, ``objective``, ``totals``) for real.

    ``select="spread"`` takes points evenly along the frontier as given (cheap to expensive), ``"best"``
    the lowest predicted Ω. ``measure(plan)`` may add more measurements (compiled latency, size).
    """
    if top_k < 1:
        raise MpsearchError(f"top_k must be >= 1, got {top_k}")
    pts = list(points)
    idx = _pick(len(pts), top_k, select, [float(p.objective) for p in pts])
    out = []
    for i in idx:
        p = pts[i]
        extra = dict(measure(p.plan)) if measure is not None else {}
        out.append(Verification(p.plan, float(p.objective), dict(p.totals), float(evaluate_plan(p.plan)), extra))
    return out


def rank_agreement(verified: Sequence[Verification]) -> float:
    """Spearman correlation between predicted Ω and measured accuracy (-1 = perfect agreement)."""
    if len(verified) < 2:
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr([v.predicted_objective for v in verified], [v.measured_accuracy for v in verified])[0])
