"""Analytical cost model against hand-computed values on a hand-built LayerGraph and a toy target."""

from __future__ import annotations

import pytest

from backends.cost import build_cost_table
from backends.cost.analytical import act_cuts, latency_breakdown
from backends.targets import load_target
from mpsearch.errors import MpsearchError
from mpsearch.graph import LayerGraph, LayerInfo
from mpsearch.plan import Candidate, Plan

# Round numbers so every quantity below can be checked by hand:
# fp32 1e9 MAC/s, int8 4e9 MAC/s, memory 1e9 B/s and 10 pJ/B, launch 1 us, conversion 1e9 elem/s and 2 pJ.
TOY = """
name = "toy"
kind = "gpu"
launch_overhead_s = 1e-6
convert_elems_per_s = 1e9
convert_pj_per_elem = 2.0
[[memory]]
name = "dram"
capacity_bytes = 1e12
bandwidth_Bps = 1e9
pj_per_byte = 10.0
[compute.fp32]
ops_per_s = 2e9
out_bytes = 4
mac_pj = 4.0
[compute.int8]
ops_per_s = 8e9
out_bytes = 4
mac_pj = 1.0
[formats]
native = ["fp32", "int8"]
stored = { "int[2-7]" = "int8" }
unsupported = ["*"]
mixed_float = "fp32"
promotion = ["fp32", "int8"]
"""


def lin(name, index, n_out, n_in, rows=1, bias=False):
    """A Linear on a (1, rows, n_in) input: dim 0 is the batch, which ``batch=`` rescales."""
    return LayerInfo(name, "linear", index, (n_out, n_in), (1, rows, n_in), (1, rows, n_out), rows * n_in * n_out,
                     n_out * n_in + (n_out if bias else 0), bias, {})


@pytest.fixture
def toy(tmp_path):
    p = tmp_path / "toy.toml"
    p.write_text(TOY)
    return load_target(p)


@pytest.fixture
def graph():
    # a -> b, a -> c, b -> d, c -> d  (c is a skip branch)
    layers = [lin("a", 0, 8, 16, bias=True), lin("b", 1, 4, 8), lin("c", 2, 4, 8), lin("d", 3, 2, 4)]
    return LayerGraph(layers, [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")], edge_source="hand")


def test_bytes_bops_latency_energy_native(graph, toy):
    t = build_cost_table(graph, ["int8/int8"], toy)
    a = t.costs["a"]["int8/int8"]
    assert a["weight_bytes"] == 128 + 8 * 4  # int8 codes + one fp32 scale per output channel
    assert a["act_bytes"] == 16 + 4  # int8 input + one per-tensor scale
    assert a["bops"] == 128 * 8 * 8
    moved = 160 + 32 + 20 + 8 * 4  # weights, fp32 bias, input, int32->fp32 output
    assert a["latency_s"] == pytest.approx(1e-6 + moved / 1e9)  # memory-bound: 244 ns > 32 ns of MACs
    assert a["energy_j"] == pytest.approx((128 * 1.0 + moved * 10.0) * 1e-12)
    assert latency_breakdown(graph["a"], Candidate.parse("int8/int8"), toy).bound == "memory"


def test_compute_bound_regime(toy):
    big = lin("big", 0, 256, 256, rows=64)
    g = LayerGraph([big], [], edge_source="hand")
    c = build_cost_table(g, ["fp32"], toy).costs["big"]["fp32/fp32"]
    macs = 64 * 256 * 256
    assert c["latency_s"] == pytest.approx(1e-6 + macs / 1e9)  # 4.19 ms of MACs > 0.39 ms of bytes
    assert c["weight_bytes"] == 256 * 256 * 4 and c["act_bytes"] == 64 * 256 * 4
    assert c["bops"] == macs * 32 * 32
    assert latency_breakdown(big, Candidate("fp32"), toy).bound == "compute"


def test_stored_only_format_pays_dequantization(graph, toy):
    t = build_cost_table(graph, ["int4/int8", "int8/int8"], toy)
    c = t.costs["a"]["int4/int8"]
    assert c["weight_bytes"] == 128 * 0.5 + 8 * 4
    moved = 96 + 32 + 20 + 32
    converted = 128  # every weight decoded to int8 per call
    assert c["latency_s"] == pytest.approx(1e-6 + moved / 1e9 + converted / 1e9)
    assert c["energy_j"] == pytest.approx((128 * 1.0 + converted * 2.0 + moved * 10.0) * 1e-12)
    assert c["bops"] == 128 * 4 * 8


def test_mixed_int_float_computes_in_float(graph, toy):
    c = build_cost_table(graph, ["int8/fp32"], toy).costs["b"]["int8/fp32"]
    moved = (32 + 4 * 4) + 8 * 4 + 4 * 4  # int8 weights + scales, fp32 input, fp32 output
    assert c["latency_s"] == pytest.approx(1e-6 + moved / 1e9 + 32 / 1e9)  # 32 weights converted to fp32


def test_unsupported_left_out(graph, toy):
    t = build_cost_table(graph, ["int8/int8", "fp16/fp32", "bf16"], toy)
    assert set(t.costs["a"]) == {"int8/int8"}
    assert t.extra["unsupported"]["a"] == ["fp16/fp32", "bf16/fp32"]
    with pytest.raises(MpsearchError, match="can run none"):
        build_cost_table(graph, ["fp16"], toy)


def test_max_cut(graph, toy):
    # lifetimes (execution steps): a [-1, 0], b [0, 1], c [0, 2], d [1, 3]
    # live sets: {a,b,c}, {b,c,d}, {c,d} (subset, dropped), {d} (subset, dropped)
    assert act_cuts(graph) == [["a", "b", "c"], ["b", "c", "d"]]
    t = build_cost_table(graph, ["int8/int8", "fp32"], toy)
    plan = Plan.uniform(graph.names, Candidate.parse("int8/int8"))
    # act bytes: a 16+4, b 8+4, c 8+4, d 4+4 -> cuts 44 and 32
    assert t.peak_act_bytes(plan) == 44
    plan.layers["d"] = Candidate("fp32")  # d reads 4 fp32 = 16 B: second cut 12 + 12 + 16 = 40 < 44
    assert t.peak_act_bytes(plan) == 44
    plan.layers["c"] = Candidate("fp32")  # c reads 8 fp32 = 32 B: cuts 20 + 12 + 32 = 64 and 12 + 32 + 16 = 60
    assert t.peak_act_bytes(plan) == 64


def test_chain_without_edges_uses_model_input():
    layers = [lin("x", 0, 4, 4), lin("y", 1, 4, 4)]
    g = LayerGraph(layers, [], edge_source="hand")  # both read the model input
    assert act_cuts(g) == [["x", "y"]]


def test_batch_scales_activations_not_weights(graph, toy):
    one = build_cost_table(graph, ["fp32"], toy).costs["a"]["fp32/fp32"]
    many = build_cost_table(graph, ["fp32"], toy, batch=8).costs["a"]["fp32/fp32"]
    assert many["weight_bytes"] == one["weight_bytes"]
    assert many["act_bytes"] == 8 * one["act_bytes"] and many["bops"] == 8 * one["bops"]


def test_bad_arguments(graph, toy):
    with pytest.raises(MpsearchError, match="unknown cost mode"):
        build_cost_table(graph, ["fp32"], toy, mode="guess")
    with pytest.raises(MpsearchError, match="batch must be"):
        build_cost_table(graph, ["fp32"], toy, batch=0)
    with pytest.raises(MpsearchError, match="unknown target"):
        build_cost_table(graph, ["fp32"], "nonexistent")


def test_real_graph_on_shipped_targets(digits_graph):
    for name in ("h100", "t4", "x86-avx2", "x86-avx512-vnni", "fpga-generic"):
        t = build_cost_table(digits_graph, ["fp32", "int8/int8", "int4/int8"], name)
        assert set(t.costs) == set(digits_graph.names)
        for per in t.costs.values():
            assert per["int4/int8"]["weight_bytes"] < per["int8/int8"]["weight_bytes"] < per["fp32/fp32"]["weight_bytes"]
        assert t.act_cuts and all(set(c) <= set(digits_graph.names) for c in t.act_cuts)


CPU_TOY = """
name = "cpu-toy"
kind = "cpu"
launch_overhead_s = 1e-6
convert_elems_per_s = 1e9
act_input = "fp32"
[cpu]
cores = 1
freq_hz = 1e9
vector_lanes = 8
row_tile = 4
col_tile = 16
[[memory]]
name = "L1"
capacity_bytes = 1000
bandwidth_Bps = 1e10
[[memory]]
name = "dram"
capacity_bytes = 1e12
bandwidth_Bps = 1e9
[compute.fp32]
ops_per_cycle = 2
[compute.int8]
ops_per_cycle = 8
[convert_rates]
"int4->fp32" = 2e8
"fp32->int8" = 5e8
[formats]
native = ["fp32", "int8"]
stored = { "int[2-7]" = "int8" }
decode_at_load = { "int[2-7]" = "int8" }
unsupported = ["*"]
"""


@pytest.fixture
def cpu_toy(tmp_path):
    p = tmp_path / "cpu.toml"
    p.write_text(CPU_TOY)
    return load_target(p)


def test_int_act_quantized_in_kernel_and_int4_unpacked_at_load(cpu_toy):
    layer = lin("l", 0, 16, 64, rows=8)  # 8 rows x 64 in -> 16 out, 8192 MACs, 1024 weights
    lb8 = latency_breakdown(layer, Candidate.parse("int8/int8"), cpu_toy)
    lb4 = latency_breakdown(layer, Candidate.parse("int4/int8"), cpu_toy)
    assert lb8.converts == (("fp32->int8", 512.0),)  # the fp32 input, quantized once per element
    assert lb4.converts == lb8.converts  # INT4 weights were unpacked to INT8 when loaded: no decode per call
    assert lb4.compute_s == lb8.compute_s == pytest.approx(8192 / 4e9)
    assert lb4.bytes_moved == pytest.approx(lb8.bytes_moved)  # streamed as INT8 codes
    assert lb8.convert_s == pytest.approx(512 / 5e8)
    lbf = latency_breakdown(layer, Candidate.parse("int4/fp32"), cpu_toy)
    assert lbf.converts == (("int4->fp32", 1024.0),) and lbf.convert_s == pytest.approx(1024 / 2e8)


def test_reuse_aware_memory_and_lanes(cpu_toy):
    layer = lin("l", 0, 16, 64, rows=8)
    lb = latency_breakdown(layer, Candidate.parse("fp32"), cpu_toy)
    # weights 4096 B (> L1: from dram) twice (8 rows / 4 per tile); input 2048 B (> L1) once (16 out / 16);
    # output 512 B (fits L1) once
    assert lb.bytes_moved == pytest.approx(2 * 4096 + 2048 + 512)
    assert lb.memory_s == pytest.approx((2 * 4096 + 2048) / 1e9 + 512 / 1e10)
    assert dict(lb.memory_levels) == pytest.approx({"dram": (2 * 4096 + 2048) / 1e9, "L1": 512 / 1e10})
    assert lb.lane_factor == 1.0
    odd = lin("odd", 0, 10, 64, rows=8)  # 10 output channels: not a multiple of 8 lanes -> scalar MACs
    lo = latency_breakdown(odd, Candidate.parse("fp32"), cpu_toy)
    assert lo.lane_factor == 8.0 and lo.compute_s == pytest.approx(8 * 8 * 64 * 10 / 1e9)
