"""Check the analytical model against measurements, fit its effective parameters, prune dominated candidates.

Datasheet peaks are upper bounds; real kernels reach a fraction of them that differs per compute type
(untuned INT4 can be slower than INT8: HAWQ issue #6). ``fit_target`` fits, by least squares on log
latency, one achieved-rate factor per compute type, one bandwidth factor, the per-kernel overhead and the
conversion rate, and returns a Target with those effective numbers. ``compare`` reports predicted vs
measured per entry and end to end (uniform plans), with Spearman rank correlation and relative errors.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import spearmanr

from backends.targets import Target
from mpsearch.errors import MpsearchError
from mpsearch.formats import parse_format
from mpsearch.graph import LayerInfo
from mpsearch.plan import Candidate
from mpsearch.tables import CostTable


# -- dominance -------------------------------------------------------------------------------------
def _bits(key: str) -> tuple[int, int]:
    c = Candidate.parse(key)
    return parse_format(c.weight).element_bits, parse_format(c.act).element_bits


def find_dominated(table: CostTable, *, tol: float = 0.05, metric: str = "latency_s") -> list[dict[str, Any]]:
    """Entries where a lower-precision candidate (weight and act bits both <=, one <) is more than ``tol``
    slower than a higher-precision one on the same layer. Each is reported once, against the fastest
    higher-precision candidate."""
    found = []
    for layer, per in table.costs.items():
        for low, lc in per.items():
            lb = _bits(low)
            best = None
            for high, hc in per.items():
                hb = _bits(high)
                if high == low or not (lb[0] <= hb[0] and lb[1] <= hb[1] and lb != hb):
                    continue
                if lc[metric] > hc[metric] * (1 + tol) and (best is None or hc[metric] < per[best][metric]):
                    best = high
            if best is not None:
                found.append({"layer": layer, "slower": low, "faster": best, "ratio": lc[metric] / per[best][metric]})
    return found


def prune_dominated(table: CostTable, dominated: Iterable[dict[str, Any]]) -> CostTable:
    """A copy without the dominated entries (a layer always keeps its non-dominated candidates)."""
    out = CostTable(copy.deepcopy(table.costs), [list(c) for c in table.act_cuts], table.target, table.source, dict(table.extra))
    for d in dominated:
        out.costs[d["layer"]].pop(d["slower"], None)
    out.extra["pruned"] = sorted({f"{d['layer']}:{d['slower']}" for d in dominated})
    return out


# -- comparison ------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """Predicted vs measured latency: per (layer, candidate) rows and end-to-end per uniform plan."""

    rows: list[dict[str, Any]]
    spearman: float
    median_rel_err: float
    mean_rel_err: float
    end_to_end: list[dict[str, Any]] = field(default_factory=list)

    @property
    def worst_end_to_end_rel_err(self) -> float:
        return max((abs(r["rel_err"]) for r in self.end_to_end), default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare(predicted: CostTable, measured: CostTable, *, metric: str = "latency_s") -> Comparison:
    """Compare two tables on the entries both have; end to end = sum over layers for each candidate that
    every layer has in both tables (a uniform plan)."""
    rows = []
    for layer, per in measured.costs.items():
        for key, mc in per.items():
            pc = predicted.costs.get(layer, {}).get(key)
            if pc is None:
                continue
            p, m = float(pc[metric]), float(mc[metric])
            rows.append({"layer": layer, "candidate": key, "predicted": p, "measured": m, "rel_err": (p - m) / m})
    if len(rows) < 2:
        raise MpsearchError("need at least two common (layer, candidate) entries to compare cost tables")
    pred = np.array([r["predicted"] for r in rows])
    meas = np.array([r["measured"] for r in rows])
    rho = float(spearmanr(pred, meas).statistic) if np.ptp(pred) > 0 and np.ptp(meas) > 0 else float("nan")
    rel = np.abs(pred - meas) / meas
    common = set.intersection(*(set(predicted.costs.get(l, {})) & set(per) for l, per in measured.costs.items()))
    e2e = []
    for key in sorted(common):
        p = sum(predicted.costs[l][key][metric] for l in measured.costs)
        m = sum(measured.costs[l][key][metric] for l in measured.costs)
        e2e.append({"plan": f"uniform {key}", "predicted": p, "measured": m, "rel_err": (p - m) / m})
    return Comparison(rows, rho, float(np.median(rel)), float(np.mean(rel)), e2e)


# -- fitting ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Observation:
    """One measured latency of a layer (at the batch the timing used) and candidate."""

    layer: LayerInfo
    candidate: Candidate
    seconds: float
    batch: int = 1
    #: timed with the weights flushed from the caches (``latency_breakdown(cold_weights=True)``)
    cold: bool = False


@dataclass
class Fit:
    """The fitted target and the effective factors relative to the datasheet description."""

    target: Target
    factors: dict[str, float]
    rms_log_err: float
    n: int


def observations_from(table: CostTable, layers: dict[str, LayerInfo], batch: int = 1) -> list[Observation]:
    """Measured entries of a table as fitting observations (cold where the table timed that candidate
    with flushed weights, ``extra["cold_weights"]``)."""
    cold = set(table.extra.get("cold_weights", ()))
    return [Observation(layers[l], Candidate.parse(k), float(c["latency_s"]), batch, k in cold)
            for l, per in table.costs.items() for k, c in per.items()]


def apply_factors(target: Target, factors: dict[str, float]) -> Target:
    """A target with rates scaled: ``rate:<type>``, ``bandwidth`` (all levels), ``bandwidth:<level>``,
    ``convert`` (all conversions), ``stream`` (the cold weight fetch, ``Target.stream_bandwidth``),
    ``convert:<from>-><to>`` (one conversion); ``overhead_s`` replaces; ``eff:<kind>:<type>`` sets the
    achieved efficiency of one layer kind on one compute type."""
    compute = {
        name: dataclasses.replace(u, ops_per_s=u.ops_per_s * factors.get(f"rate:{name}", 1.0)) for name, u in target.compute.items()
    }
    bw = factors.get("bandwidth", 1.0)
    memory = tuple(dataclasses.replace(m, bandwidth_Bps=m.bandwidth_Bps * bw * factors.get(f"bandwidth:{m.name}", 1.0))
                   for m in target.memory)
    glob = factors.get("convert", 1.0)
    # per-conversion rates (``convert:int4->fp32``) scale that conversion's own rate; the global factor
    # scales every listed rate and the default
    rates = {k: v * glob for k, v in target.convert_rates.items()}
    for k, v in factors.items():
        if k.startswith("convert:"):
            rates[k[8:]] = target.convert_rate(k[8:]) * glob * v
    return target.replace(
        convert_rates=rates,
        compute=compute, memory=memory,
        launch_overhead_s=factors.get("overhead_s", target.launch_overhead_s),
        stream_Bps=target.stream_bandwidth() * factors["stream"] if "stream" in factors else target.stream_Bps,
        stream_latency_s=factors.get("stream_latency_s", target.stream_latency_s),
        convert_elems_per_s=target.convert_elems_per_s * factors.get("convert", 1.0),
        name=target.name, extra={**target.extra, "calibrated": dict(factors)},
        efficiency={**target.efficiency, **{k[4:]: target.efficiency_for(*k[4:].split(":", 1)) * v
                                            for k, v in factors.items() if k.startswith("eff:")}},
    )


def fit_target(target: Target, observations: Sequence[Observation], *, per_kind: bool = False, ridge: float = 1e-3,
               per_convert: bool = False, per_level: bool = False, loss: str = "linear") -> Fit:
    """Least squares on log latency over the effective factors (see module docstring).

    ``per_kind=True`` fits one efficiency per (layer kind, compute type) instead of one rate per compute
    type: untuned compilers reach very different fractions of peak on convolutions and matmuls.
    ``per_convert=True`` fits one rate per conversion (``convert:int4->fp32``, ``convert:fp32->int8``, ...)
    instead of one factor for all: unpacking nibbles and quantizing activations cost differently.
    ``per_level=True`` fits one bandwidth factor per memory level the observations stream from (a core's
    achieved L3 / DRAM bandwidth is far below the fill rate of the datasheet) instead of one for all.
    ``loss="soft_l1"`` makes the fit robust to a few timings inflated by other jobs on a shared machine.

    A small ridge on the log-factors keeps parameters that the data cannot identify (e.g. the conversion
    rate when no observation converts anything) at their datasheet values. Cold observations (weights
    flushed, ``Observation.cold``) also fit ``stream``, the bandwidth of the weight fetch from main memory,
    and ``stream_latency_s``, its fixed cost per call.
    """
    from backends.cost.analytical import latency_breakdown

    if len(observations) < 2:
        raise MpsearchError("calibration needs at least two measured latencies")
    parts = []
    for ob in observations:
        lb = latency_breakdown(ob.layer, ob.candidate, target, ob.batch, cold_weights=ob.cold)
        if lb is None:
            raise MpsearchError(f"target {target.name!r} cannot run {ob.candidate.key}; it cannot have been measured there")
        parts.append((lb, ob.seconds))

    def group(lb) -> str:
        return f"{lb.kind}:{lb.compute_type}" if per_kind else lb.compute_type

    types = sorted({group(lb) for lb, _ in parts})
    conv_keys = sorted({k for lb, _ in parts for k, _ in lb.converts}) if per_convert else []
    levels = sorted({n for lb, _ in parts for n, _ in lb.memory_levels}) if per_level else []
    names = ([f"eff:{t}" if per_kind else f"rate:{t}" for t in types]
             + ([f"bandwidth:{n}" for n in levels] if per_level else ["bandwidth"])
             + ([f"convert:{k}" for k in conv_keys] if per_convert else ["convert"]))
    has_stream = any(lb.stream_s > 0 for lb, _ in parts)
    names += (["stream", "stream_latency_s"] if has_stream else []) + ["overhead_s"]
    base_sl = max(target.stream_latency_s, 1e-7)
    cold = np.array([1.0 if lb.stream_s > 0 else 0.0 for lb, _ in parts])
    # the bandwidth part of the fetch (the fixed part is fitted on its own)
    stream = np.array([max(lb.stream_s - target.stream_latency_s, 0.0) if lb.stream_s > 0 else 0.0 for lb, _ in parts])
    ns = 2 if has_stream else 0
    base_ov = max(target.launch_overhead_s, 1e-9)
    comp = np.array([[lb.compute_s if group(lb) == t else 0.0 for t in types] for lb, _ in parts])
    if per_level:
        mem = np.array([[sum(t for n, t in lb.memory_levels if n == lv) for lv in levels] for lb, _ in parts])
    else:
        mem = np.array([[lb.memory_s] for lb, _ in parts])
    nm = mem.shape[1]
    if per_convert:
        conv = np.array([[sum(n / target.convert_rate(k) for k, n in lb.converts if k == ck) for ck in conv_keys] for lb, _ in parts])
    else:
        conv = np.array([[lb.convert_s] for lb, _ in parts])
    nc = conv.shape[1]
    meas = np.log(np.array([s for _, s in parts]))
    k = len(types)

    def predict(theta: np.ndarray) -> np.ndarray:
        c = (comp / np.exp(theta[:k])).sum(axis=1)
        m = (mem / np.exp(theta[k:k + nm])).sum(axis=1)
        cv = (conv / np.exp(theta[k + nm:k + nm + nc])).sum(axis=1) if nc else 0.0
        st = stream / np.exp(theta[k + nm + nc]) + cold * base_sl * np.exp(theta[k + nm + nc + 1]) if ns else 0.0
        return base_ov * np.exp(theta[-1]) + np.maximum(c, m) + cv + st

    def resid(theta: np.ndarray) -> np.ndarray:
        return np.log(predict(theta)) - meas

    def objective(theta: np.ndarray) -> np.ndarray:
        return np.concatenate([resid(theta), math.sqrt(ridge) * theta])

    best = None
    # max() has zero gradient for the inactive bound: start from a grid of rate / bandwidth scales
    for rate0 in (0.0, -2.0, -4.0):
        for bw0 in (0.0, -2.0, -4.0):
            x0 = np.zeros(len(names))
            x0[:k], x0[k:k + nm] = rate0, bw0
            r = least_squares(objective, x0, method="trf", loss=loss, f_scale=0.25)
            if best is None or r.cost < best.cost:
                best = r
    theta = best.x
    factors = {n: float(math.exp(v)) for n, v in zip(names, theta)}
    factors["overhead_s"] = base_ov * factors["overhead_s"]
    if "stream_latency_s" in factors:
        factors["stream_latency_s"] = base_sl * factors["stream_latency_s"]
    rms = float(np.sqrt(np.mean(resid(theta) ** 2)))
    return Fit(apply_factors(target, factors), factors, rms, len(parts))
