"""Cost tables for the search: per-(layer, candidate) latency, bytes, BOPs and energy on one target.

``build_cost_table(..., mode="analytical")`` evaluates the target description (roofline, see
``analytical``); ``mode="measured"`` times every (layer shape, candidate) on the real device (see
``measured``) and keeps the analytical bytes/BOPs/energy. Both return the same ``CostTable`` so the ILP
takes either. Candidates a target cannot run are left out of that layer's table (listed in
``extra["unsupported"]``); the search then cannot choose them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Iterable

from backends.cost.analytical import act_cuts, cold_candidates, latency_breakdown, layer_costs
from backends.cost.calibrate import find_dominated, prune_dominated
from backends.cost.measured import MeasureConfig, measure_latencies
from backends.targets import Target, load_target
from mpsearch.errors import MpsearchError
from mpsearch.graph import LayerGraph
from mpsearch.plan import Candidate, parse_candidates
from mpsearch.tables import CostTable

MODES = ("analytical", "measured")
RESIDENCY = ("isolated", "deployed", "cold")


def build_cost_table(
    graph: LayerGraph,
    candidates: Iterable[Candidate | str],
    target: Target | str,
    *,
    mode: str = "analytical",
    batch: int = 1,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    timer: Callable[..., float] | None = None,
    measure: MeasureConfig = MeasureConfig(),
    prune: bool = True,
    dominance_tol: float = 0.05,
    residency: str = "isolated",
) -> CostTable:
    """Costs of every candidate for every layer of ``graph`` on ``target`` at ``batch`` samples.

    In measured mode a lower-precision candidate that measures more than ``dominance_tol`` slower than a
    higher-precision one on the same layer is warned about, recorded in ``extra["dominated"]`` and, with
    ``prune=True``, removed (it is dominated on latency; note it may still be smaller in bytes).
    """
    if mode not in MODES:
        raise MpsearchError(f"unknown cost mode {mode!r}", hint="use 'analytical' or 'measured'")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise MpsearchError(f"batch must be a positive integer, got {batch!r}")
    if residency not in RESIDENCY:
        raise MpsearchError(f"unknown residency {residency!r}", hint="use 'isolated', 'deployed' or 'cold'")
    tgt = target if isinstance(target, Target) else load_target(target)
    cands = parse_candidates([c.key if isinstance(c, Candidate) else c for c in candidates])
    cold = {c.key for c in cands} if residency == "cold" else cold_candidates(graph, cands, tgt) if residency == "deployed" else set()
    costs: dict[str, dict[str, dict[str, float]]] = {}
    unsupported: dict[str, list[str]] = {}
    bounds: dict[str, dict[str, str]] = {}
    for layer in graph.layers:
        costs[layer.name] = {}
        for cand in cands:
            c = layer_costs(layer, cand, tgt, batch, cold_weights=cand.key in cold)
            if c is None:
                unsupported.setdefault(layer.name, []).append(cand.key)
                continue
            costs[layer.name][cand.key] = c
            lb = latency_breakdown(layer, cand, tgt, batch, cold_weights=cand.key in cold)
            bounds.setdefault(layer.name, {})[cand.key] = f"{lb.bound}/{lb.compute_type}/{lb.memory_level}"
        if not costs[layer.name]:
            raise MpsearchError(
                f"target {tgt.name!r} can run none of the candidates {[c.key for c in cands]} for layer {layer.name!r}",
                hint="add a format the target lists as native or stored",
            )
    extra: dict = {
        "batch": batch, "graph": graph.fingerprint(), "target_file": tgt.source_path,
        "unsupported": unsupported, "roofline": bounds, "residency": residency, "cold_weights": sorted(cold),
    }
    if mode == "measured":
        wanted = {name: [Candidate.parse(k) for k in per] for name, per in costs.items()}
        lat, info = measure_latencies(graph, wanted, tgt, batch=batch, cache_dir=cache_dir, timer=timer, config=measure, progress=progress,
                                      cold=cold)
        extra["measure"] = info
        analytical_lat: dict[str, dict[str, float]] = {}
        extra["analytical_latency_s"] = analytical_lat
        for name, per in costs.items():
            for key in list(per):
                if key in lat[name]:
                    analytical_lat.setdefault(name, {})[key] = per[key]["latency_s"]
                    per[key]["latency_s"] = lat[name][key]
                else:  # the timer refused it: the search must not pick what could not be measured
                    del per[key]
            if not per:
                raise MpsearchError(f"no candidate could be measured for layer {name!r}", hint="see the timer's refusals")
    table = CostTable(costs, act_cuts(graph), tgt.name, mode, extra)
    if mode == "measured":
        dominated = find_dominated(table, tol=dominance_tol)
        table.extra["dominated"] = dominated
        if dominated:
            worst = max(dominated, key=lambda d: d["ratio"])
            warnings.warn(
                f"{len(dominated)} lower-precision candidates measure slower than a higher-precision one on {tgt.name} "
                f"(worst: {worst['layer']} {worst['slower']} is {worst['ratio']:.2f}x {worst['faster']})"
                + ("; pruned" if prune else ""),
                stacklevel=2,
            )
            if prune:
                table = prune_dominated(table, dominated)
    if progress:
        progress(f"cost table: {len(costs)} layers, {sum(len(v) for v in table.costs.values())} entries ({mode}, {tgt.name})")
    return table


__all__ = ["MODES", "RESIDENCY", "MeasureConfig", "build_cost_table"]
