"""Per-(layer, candidate) tables that flow from sensitivity and cost modelling into the search."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from mpsearch.errors import MpsearchError
from mpsearch.plan import Candidate, Plan

COST_METRICS = ("latency_s", "weight_bytes", "act_bytes", "bops", "energy_j")


@dataclass
class SensitivityTable:
    """``omega[layer][candidate_key]``: predicted loss increase (HAWQ Ω) of using that candidate.

    ``layer_stats[layer]`` carries the evidence: Hessian trace mean / CI / samples, eigenvalue, activation
    statistics, so reports can show error bars and users can see where numbers come from.
    """

    omega: dict[str, dict[str, float]]
    layer_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def value(self, layer: str, cand: Candidate | str) -> float:
        key = cand.key if isinstance(cand, Candidate) else cand
        try:
            return self.omega[layer][key]
        except KeyError:
            raise MpsearchError(f"no sensitivity for layer {layer!r} and candidate {key!r}; re-run sensitivity") from None

    def plan_value(self, plan: Plan) -> float:
        return sum(self.value(n, c) for n, c in plan.layers.items())

    def to_dict(self) -> dict[str, Any]:
        return {"omega": self.omega, "layer_stats": self.layer_stats, "settings": self.settings}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SensitivityTable":
        return cls(d["omega"], d.get("layer_stats", {}), d.get("settings", {}))


@dataclass
class CostTable:
    """``costs[layer][candidate_key][metric]`` for metrics in COST_METRICS (additive over layers), plus
    ``act_cuts``: sets of layers whose input activations are live at the same time; peak activation memory
    is ``max over cuts of sum(act_bytes)`` (an MCT-style max-cut liveness bound)."""

    costs: dict[str, dict[str, dict[str, float]]]
    act_cuts: list[list[str]] = field(default_factory=list)
    target: str = ""
    source: str = "analytical"  # or "measured"
    extra: dict[str, Any] = field(default_factory=dict)

    def metric(self, layer: str, cand: Candidate | str, metric: str) -> float:
        key = cand.key if isinstance(cand, Candidate) else cand
        try:
            return float(self.costs[layer][key][metric])
        except KeyError:
            raise MpsearchError(f"no {metric} cost for layer {layer!r} and candidate {key!r}") from None

    def plan_cost(self, plan: Plan, metric: str) -> float:
        """Total of an additive metric, or the peak over cuts for ``peak_act_bytes``."""
        if metric == "peak_act_bytes":
            return self.peak_act_bytes(plan)
        return sum(self.metric(n, c, metric) for n, c in plan.layers.items())

    def peak_act_bytes(self, plan: Plan) -> float:
        cuts = self.act_cuts or [[n] for n in plan.layers]
        return max(sum(self.metric(n, plan.layers[n], "act_bytes") for n in cut) for cut in cuts)

    def candidates(self, layer: str) -> Iterable[str]:
        return self.costs[layer].keys()

    def to_dict(self) -> dict[str, Any]:
        return {"costs": self.costs, "act_cuts": self.act_cuts, "target": self.target, "source": self.source, "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CostTable":
        return cls(d["costs"], d.get("act_cuts", []), d.get("target", ""), d.get("source", "analytical"), d.get("extra", {}))
