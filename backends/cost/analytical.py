"""Analytical per-(layer, candidate) costs from a Target: roofline latency, bytes, BOPs, energy, max-cut.

Latency of one layer (one kernel) on a target::

    t = launch_overhead + max(MACs / R_compute, bytes_moved / B_mem) + converted_elems / R_convert

``R_compute`` is the peak MAC rate of the compute type the target runs the candidate in (see
``Target.execution``) times the target's achieved efficiency for that layer kind (1.0 unless calibrated); ``bytes_moved`` = weights (in their format, scales included) + bias (fp32) + input
activation (in the candidate's act format) + output (at the compute unit's output width); ``B_mem`` is the
bandwidth of the smallest memory level that holds that working set. Operands stored in a format the target
cannot multiply (stored-only) are converted each call at ``R_convert`` elements/s -- the dequantization
overhead that makes INT4 no faster than INT8 with untuned kernels. The rate is per conversion
(``Target.convert_rates``: unpacking INT4 nibbles costs more than widening INT8 bytes); stored formats the
target expands at load time (``decode_at_load``) convert nothing per call; with ``act_input`` set,
integer activations arrive in that (float) format and are quantized by the consuming kernel, one
conversion per input element. On CPUs with ``vector_lanes`` the MACs of a layer whose output channels
do not fill whole SIMD registers are counted scalar (``lane_factor``).

In a deployed model whose weights do not stay cached between forward passes (``Target.weights_resident``
false for the plan's total weight bytes: ``cold_weights=True``), every layer first fetches its weights
from main memory::

    t_cold = t + L_main + weight_bytes / B_main     (B_main: Target.stream_bandwidth(), L_main: stream_latency_s)

added, not overlapped: the backend's CPU kernels issue no prefetches, and the measured slowdown of
MiniLM's compute-bound fp32 Linears with flushed weights is their weight bytes at ~13 GB/s on top of the
warm time, whatever their MACs. Timed alone and called back to back, the same kernel finds its weights
in cache; that is the ``cold_weights=False`` case the per-layer calibration measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from backends.targets import Target, format_class
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
    #: the conversions behind ``convert_s``: ``(("int4->fp32", elements), ...)``; calibration fits one
    #: rate per key
    converts: tuple[tuple[str, float], ...] = ()
    #: compute slowdown for output channels that do not fill the SIMD lanes (1.0 = none); in ``compute_s``
    lane_factor: float = 1.0
    #: ``memory_s`` split by the memory level each part streams from: ``(("L2", seconds), ...)``
    memory_levels: tuple[tuple[str, float], ...] = ()
    #: weights fetched from main memory before the reduction can reuse them (``cold_weights``), not
    #: overlapped with the roofline terms; 0 when the model's weights stay cached
    stream_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.overhead_s + max(self.compute_s, self.memory_s) + self.convert_s + self.stream_s

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"


def _lane_factor(layer: LayerInfo, target: Target) -> float:
    """Compute slowdown when the output channels per group are not a multiple of the SIMD width: the
    channel loop is vectorized only for whole registers, so such layers run their MACs scalar."""
    lanes = target.vector_lanes
    if lanes <= 1 or not layer.weight_shape:
        return 1.0
    groups = int(layer.attrs.get("groups", 1)) if layer.kind != "linear" else 1
    per_group = int(layer.weight_shape[0]) // max(groups, 1)
    return 1.0 if per_group % lanes == 0 else float(lanes)


def latency_breakdown(layer: LayerInfo, cand: Candidate, target: Target, batch: int = 1, *,
                      cold_weights: bool = False) -> LatencyBreakdown | None:
    """Roofline terms for one layer/candidate, or None when the target cannot run the candidate.
    ``cold_weights``: the weights come from main memory (see the module docstring)."""
    ex = target.execution(cand)
    if ex is None:
        return None
    w = layer_work(layer, cand, batch)
    ct = ex.compute.name
    wcls, acls = format_class(cand.weight), format_class(cand.act)
    at_load = ex.convert_weight and target.decoded_at_load(cand.weight, ct)
    # weights expanded at load time stream at the compute type's width (INT4 unpacked to INT8: 1 B each)
    weight_traffic = w.weight_bytes
    if at_load:
        weight_traffic = w.weight_elems * (_type_bits(ct) / 8.0) + (w.weight_bytes - w.weight_elems * w.w_bits / 8.0)
    converts: list[tuple[str, float]] = []
    if ex.convert_weight and not at_load:
        converts.append((f"{wcls}->{ct}", w.macs if target.convert_per_use else w.weight_elems))
    act_traffic = w.act_bytes
    if target.act_input and acls != target.act_input:
        # the producer writes act_input (fp32); this kernel quantizes its input on the fly
        act_traffic = w.in_elems * _type_bits(target.act_input) / 8.0
        converts.append((f"{target.act_input}->{acls}", w.in_elems))
    elif ex.convert_act:
        converts.append((f"{acls}->{ct}", w.in_elems))
    out_traffic = w.bias_bytes + w.out_elems * ex.compute.out_bytes
    if target.row_tile > 0:
        # reuse-aware: weights once per row tile, input once per output-channel tile, each operand from
        # the level that holds it; a re-read of an operand that fits L1 costs L1 bandwidth
        rows = max(1.0, w.macs / max(w.weight_elems, 1.0))
        w_passes = math.ceil(rows / target.row_tile - 1e-9)
        groups = int(layer.attrs.get("groups", 1)) if layer.kind != "linear" else 1
        per_group = max(1, int(layer.weight_shape[0]) // max(groups, 1))
        x_passes = math.ceil(per_group / target.col_tile) if target.col_tile > 0 else 1
        parts = ((weight_traffic * w_passes, weight_traffic), (act_traffic * x_passes, act_traffic), (out_traffic, out_traffic))
        moved = sum(b for b, _ in parts)
        by_level: dict[str, float] = {}
        for b, fp in parts:
            lvl = target.memory_for(fp)
            by_level[lvl.name] = by_level.get(lvl.name, 0.0) + b / lvl.bandwidth_Bps
        memory_s = sum(by_level.values())
        level = target.memory_for(weight_traffic + act_traffic + out_traffic)
    else:
        moved = weight_traffic + act_traffic + out_traffic
        level = target.memory_for(moved)
        memory_s = moved / level.bandwidth_Bps
        by_level = {level.name: memory_s}
    lane = _lane_factor(layer, target)
    return LatencyBreakdown(
        compute_s=w.macs * lane / (ex.compute.macs_per_s * target.efficiency_for(layer.kind, ct)),
        memory_s=memory_s,
        convert_s=sum(n / target.convert_rate(k) for k, n in converts),
        overhead_s=target.launch_overhead_s,
        bytes_moved=moved,
        memory_level=level.name,
        compute_type=ct,
        kind=layer.kind,
        converts=tuple(converts),
        lane_factor=lane,
        memory_levels=tuple(by_level.items()),
        stream_s=(target.stream_latency_s + (weight_traffic + w.bias_bytes) / target.stream_bandwidth()) if cold_weights else 0.0,
    )


def _type_bits(type_name: str) -> int:
    """Bits of a compute / format type name (``int8`` 8, ``fp32`` 32, ``tf32`` 32, ``e4m3`` 8)."""
    if type_name == "tf32":
        return 32
    try:
        return int(parse_format(type_name).element_bits)
    except Exception:  # a compute type that is not a format name: assume 32-bit
        digits = "".join(ch for ch in type_name if ch.isdigit())
        return int(digits) if digits else 32


def layer_costs(layer: LayerInfo, cand: Candidate, target: Target, batch: int = 1, *,
                cold_weights: bool = False) -> dict[str, float] | None:
    """All COST_METRICS for one layer and candidate (None: the target cannot run it).

    - ``weight_bytes``: the format library's storage (codes + scales/zero-points); bias not included.
    - ``act_bytes``: the layer's input activation at ``batch`` in the act format (per-tensor scale).
    - ``bops``: MACs x weight bits x activation bits (HAWQ-V3's definition).
    - ``energy_j``: MACs x MAC energy of the compute type + converted elements x convert energy +
      bytes moved x energy per byte of the memory level that holds the working set.
    """
    lb = latency_breakdown(layer, cand, target, batch, cold_weights=cold_weights)
    if lb is None:
        return None
    w = layer_work(layer, cand, batch)
    ex = target.execution(cand)
    assert ex is not None
    converted = sum(n for _, n in lb.converts)
    level = target.memory_for(lb.bytes_moved)
    energy_pj = w.macs * ex.compute.mac_pj + converted * target.convert_pj_per_elem + lb.bytes_moved * level.pj_per_byte
    if cold_weights:  # the weights' trip from main memory
        energy_pj += (w.weight_bytes + w.bias_bytes) * target.memory[-1].pj_per_byte
    return {
        "latency_s": lb.total_s,
        "weight_bytes": w.weight_bytes,
        "act_bytes": w.act_bytes,
        "bops": w.macs * w.w_bits * w.a_bits,
        "energy_j": energy_pj * 1e-12,
    }


def plan_weight_bytes(graph: LayerGraph, cand: Candidate) -> float:
    """Weight bytes (codes + scales + fp32 bias) of the uniform plan ``cand`` over every layer of ``graph``:
    what a deployed model must keep cached for its weights to stay warm between forward passes."""
    total = 0.0
    for layer in graph.layers:
        w = layer_work(layer, cand)
        total += w.weight_bytes + w.bias_bytes
    return total


def cold_candidates(graph: LayerGraph, candidates, target: Target) -> set[str]:
    """Keys of the candidates whose uniform plan's weights exceed what ``target`` keeps cached between
    forward passes: in a deployed model their layers fetch weights from main memory. Per candidate, so
    layer costs stay additive for the search (a mixed plan is priced by the contexts of its parts)."""
    return {c.key for c in candidates if not target.weights_resident(plan_weight_bytes(graph, c))}


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
