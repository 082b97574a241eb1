"""Analytical per-(layer, candidate) costs from a Target: roofline latency, bytes, BOPs, energy, max-cut.

Latency of one layer (one kernel) on a target::

    t = launch_overhead + max(MACs / R_compute, bytes_moved / B_mem) + converted_elems / R_convert

``R_compute`` is the peak MAC rate of the compute type the target runs the candidate in (see
``Target.execution``) times the target's achieved efficiency for that layer kind (1.0 unless calibrated); ``bytes_moved`` = weights (in their format, scales included) + bias (fp32) + input
activation (in the candidate's act format) + output (at the compute unit's output width); ``B_mem`` is the
bandwidth of the smallest memory level that holds that working set. Operands stored in a format the target
cannot multiply (stored-only) are converted each call at ``R_convert`` elements/s -- the dequantization
overhead that makes INT4 no faster than INT8 with untuned kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

from backends.targets import Target
from mpsearch.formats import parse_format
from mpsearch.graph import LayerGraph, LayerInfo
from mpsearch.plan import Candidate


@dataclass(frozen=True)
class LayerWork:
    """Counts of one layer at one batch size and one candidate; everything the models need."""

    macs: float
    weight_elems: float
    in_elems: float
    out_elems: float
    weight_bytes: float  # codes + scales/zero-points
    bias_bytes: float
    act_bytes: float  # input activation in the candidate's act format
    w_bits: int
    a_bits: int


def batch_factor(layer: LayerInfo, batch: int) -> float:
    """The graph records shapes at the task's example input; scale activation counts to ``batch`` samples."""
    example = int(layer.in_shape[0]) if layer.in_shape else 1
    return batch / max(example, 1)


def layer_work(layer: LayerInfo, cand: Candidate, batch: int = 1) -> LayerWork:
    f = batch_factor(layer, batch)
    wf, af = parse_format(cand.weight), parse_format(cand.act)
    weight_elems = 1.0
    for s in layer.weight_shape:
        weight_elems *= s
    in_elems = layer.in_numel * f
    # Activations are quantized per tensor (one scale): storage of the batch-scaled input tensor.
    in_shape = (int(round(in_elems)),)
    return LayerWork(
        macs=layer.macs * f,
        weight_elems=weight_elems,
        in_elems=in_elems,
        out_elems=layer.out_numel * f,
        weight_bytes=float(wf.storage_bytes(tuple(layer.weight_shape), channel_axis=0)),
        bias_bytes=4.0 * layer.weight_shape[0] if layer.has_bias else 0.0,
        act_bytes=float(af.storage_bytes(in_shape, channel_axis=None)),
        w_bits=wf.element_bits,
        a_bits=af.element_bits,
    )


@dataclass(frozen=True)
class LatencyBreakdown:
    """The roofline terms, kept so reports and calibration can show which bound was active."""

    compute_s: float
    memory_s: float
    convert_s: float
    overhead_s: float
    bytes_moved: float
    memory_level: str
    compute_type: str
    kind: str = ""

    @property
    def total_s(self) -> float:
        return self.overhead_s + max(self.compute_s, self.memory_s) + self.convert_s

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"


def latency_breakdown(layer: LayerInfo, cand: Candidate, target: Target, batch: int = 1) -> LatencyBreakdown | None:
    """Roofline terms for one layer/candidate, or None when the target cannot run the candidate."""
    ex = target.execution(cand)
    if ex is None:
        return None
    w = layer_work(layer, cand, batch)
    moved = w.weight_bytes + w.bias_bytes + w.act_bytes + w.out_elems * ex.compute.out_bytes
    level = target.memory_for(moved)
    weight_decodes = w.macs if target.convert_per_use else w.weight_elems
    converted = (weight_decodes if ex.convert_weight else 0.0) + (w.in_elems if ex.convert_act else 0.0)
    return LatencyBreakdown(
        compute_s=w.macs / (ex.compute.macs_per_s * target.efficiency_for(layer.kind, ex.compute.name)),
        memory_s=moved / level.bandwidth_Bps,
        convert_s=converted / target.convert_elems_per_s,
        overhead_s=target.launch_overhead_s,
        bytes_moved=moved,
        memory_level=level.name,
        compute_type=ex.compute.name,
        kind=layer.kind,
    )


def layer_costs(layer: LayerInfo, cand: Candidate, target: Target, batch: int = 1) -> dict[str, float] | None:
    """All COST_METRICS for one layer and candidate (None: the target cannot run it).

    - ``weight_bytes``: the format library's storage (codes + scales/zero-points); bias not included.
    - ``act_bytes``: the layer's input activation at ``batch`` in the act format (per-tensor scale).
    - ``bops``: MACs x weight bits x activation bits (HAWQ-V3's definition).
    - ``energy_j``: MACs x MAC energy of the compute type + converted elements x convert energy +
      bytes moved x energy per byte of the memory level that holds the working set.
    """
    lb = latency_breakdown(layer, cand, target, batch)
    if lb is None:
        return None
    w = layer_work(layer, cand, batch)
    ex = target.execution(cand)
    assert ex is not None
    converted = lb.convert_s * target.convert_elems_per_s
    level = target.memory_for(lb.bytes_moved)
    energy_pj = w.macs * ex.compute.mac_pj + converted * target.convert_pj_per_elem + lb.bytes_moved * level.pj_per_byte
    return {
        "latency_s": lb.total_s,
        "weight_bytes": w.weight_bytes,
        "act_bytes": w.act_bytes,
        "bops": w.macs * w.w_bits * w.a_bits,
        "energy_j": energy_pj * 1e-12,
    }


def act_cuts(graph: LayerGraph) -> list[list[str]]:
    """MCT-style max-cut liveness bound over the execution order.

    The input activation of layer j is live from the execution of its earliest producer (its predecessors
    in ``graph.graph``; the model input, i.e. before step 0, for layers without predecessors) until j
    executes. The live set at each execution step is one cut; cuts contained in another are dropped.
    Each layer's input is counted once per consumer (a tensor feeding two layers is stored in each
    consumer's act format), which makes the bound conservative.
    """
    order = {name: i for i, name in enumerate(graph.names)}
    start: dict[str, int] = {}
    for name in graph.names:
        preds = [order[p] for p in graph.graph.predecessors(name) if p in order]
        start[name] = min(preds) if preds else -1
    cuts: list[frozenset[str]] = []
    for step in range(len(graph.names)):
        live = frozenset(n for n in graph.names if start[n] <= step <= order[n])
        if live:
            cuts.append(live)
    unique = list(dict.fromkeys(cuts))
    maximal = [c for c in unique if not any(c < other for other in unique)]
    return [sorted(c, key=order.__getitem__) for c in maximal]
