"""Frontier vs baselines: at every baseline's cost, is the best measured mpsearch plan at least as accurate?

The question a user asks of a search (and issue 6's acceptance test), answered from the frontier record
the pipeline writes (``frontier.json``'s value, plus ``optuna`` when refinement ran): for each uniform
baseline, each HAWQ-V3 INT4/8 point and each random-search plan, the most accurate *measured* mpsearch
point whose cost in the frontier metric is no higher. Scores are compared exactly (they are fractions of
a finite test set); whether a difference is larger than that test set can resolve is a separate question
(``benchmarks/diag_minilm_baselines.py`` answers it per query).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EPS = 1e-12  # float noise on equal fractions

Point = Mapping[str, Any]  # {"totals": {metric: cost, ...}, "score": float, "plan": ..., ...}


@dataclass(frozen=True)
class BaselineComparison:
    """One baseline point against the best mpsearch point at no more cost (``best`` None: none that cheap)."""

    baseline: str
    cost: float
    score: float
    best: Point | None

    @property
    def difference(self) -> float | None:
        return None if self.best is None else float(self.best["score"]) - self.score

    @property
    def verdict(self) -> str:
        """``>=`` (mpsearch at least as accurate at no more cost), ``<`` or ``no point``."""
        d = self.difference
        return "no point" if d is None else (">=" if d >= -EPS else "<")


@dataclass(frozen=True)
class ComparisonSummary:
    rows: tuple[BaselineComparison, ...]
    pool: int  # measured mpsearch points compared against

    @property
    def wins_or_ties(self) -> int:
        return sum(r.verdict == ">=" for r in self.rows)

    @property
    def losses(self) -> int:
        return sum(r.verdict == "<" for r in self.rows)

    @property
    def no_point(self) -> int:
        return sum(r.verdict == "no point" for r in self.rows)


def baseline_points(frontier: Mapping[str, Any]) -> list[tuple[str, Point]]:
    """(label, point) for every uniform baseline, HAWQ-V3 point and random plan; HAWQ and random cheapest first."""
    m = frontier["metric"]
    rows: list[tuple[str, Point]] = list((frontier.get("baselines") or {}).items())
    hawq = sorted(frontier.get("hawq_v3") or [], key=lambda p: p["totals"][m])
    rows += [(f"HAWQ-V3 #{i + 1}", p) for i, p in enumerate(hawq)]
    rnd = sorted(frontier.get("random") or [], key=lambda p: p["totals"][m])
    rows += [(f"random #{i + 1}", p) for i, p in enumerate(rnd)]
    return [(label, p) for label, p in rows if p.get("score") is not None]


def mpsearch_points(frontier: Mapping[str, Any], with_optuna: bool = True) -> list[Point]:
    """The measured ILP frontier points, plus Optuna's measured Pareto points (the pipeline chooses among both)."""
    pts = list(frontier["frontier"])
    if with_optuna:
        pts += list((frontier.get("optuna") or {}).get("points") or [])
    return [p for p in pts if p.get("score") is not None]


def best_at_cost(points: list[Point], metric: str, cost: float) -> Point | None:
    """The most accurate point with cost <= ``cost`` (relative slack 1e-9; ties: the cheaper one)."""
    ok = [p for p in points if p["totals"][metric] <= cost * (1 + 1e-9)]
    return max(ok, key=lambda p: (p["score"], -p["totals"][metric])) if ok else None


def compare_with_baselines(frontier: Mapping[str, Any], with_optuna: bool = True) -> ComparisonSummary:
    """Every baseline point against the best measured mpsearch point at no more cost in the frontier metric."""
    m = frontier["metric"]
    pool = mpsearch_points(frontier, with_optuna)
    rows = tuple(BaselineComparison(label, float(p["totals"][m]), float(p["score"]), best_at_cost(pool, m, p["totals"][m]))
                 for label, p in baseline_points(frontier))
    return ComparisonSummary(rows, len(pool))
