"""Weights that do not stay cached in a deployed model: resident_bytes, the cold weight fetch, its fit,
the measured plumbing, and the VM dispatch measured on a synthetic chain. Hand-computed on a tiny graph."""

from __future__ import annotations

import pytest

from backends.cost import build_cost_table
from backends.cost.analytical import cold_candidates, latency_breakdown, plan_weight_bytes
from backends.cost.calibrate import Observation, apply_factors, fit_target, observations_from
from backends.targets import load_target
from mpsearch.errors import MpsearchError
from mpsearch.graph import LayerGraph
from mpsearch.plan import Candidate
from tests.backends.test_cost_analytical import lin

# one memory level (1e9 B/s), fp32 1e9 MAC/s, int8 4e9 MAC/s, launch 1 us; weight fetch 1e8 B/s, 500 B resident
TOY = """
name = "toy"
kind = "gpu"
launch_overhead_s = 1e-6
convert_elems_per_s = 1e9
[[memory]]
name = "dram"
capacity_bytes = 1e12
bandwidth_Bps = 1e9
pj_per_byte = 10.0
[compute.fp32]
ops_per_s = 2e9
out_bytes = 4
[compute.int8]
ops_per_s = 8e9
out_bytes = 4
[formats]
native = ["fp32", "int8"]
unsupported = ["*"]
mixed_float = "fp32"
promotion = ["fp32", "int8"]
"""


@pytest.fixture
def toy(tmp_path):
    p = tmp_path / "toy.toml"
    p.write_text(TOY)
    return load_target(p).replace(resident_bytes=500.0, stream_Bps=1e8)


@pytest.fixture
def graph():
    layers = [lin("a", 0, 8, 16, bias=True), lin("b", 1, 4, 8), lin("c", 2, 4, 8), lin("d", 3, 2, 4)]
    return LayerGraph(layers, [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")], edge_source="hand")


def test_plan_weight_bytes_and_cold_candidates(graph, toy):
    fp32, int8 = Candidate.parse("fp32"), Candidate.parse("int8/int8")
    # fp32: a 128*4 + 8*4 bias, b 32*4, c 32*4, d 8*4
    assert plan_weight_bytes(graph, fp32) == 544 + 128 + 128 + 32
    # int8: codes + one fp32 scale per output channel (+ a's fp32 bias)
    assert plan_weight_bytes(graph, int8) == (128 + 32 + 32) + (32 + 16) + (32 + 16) + (8 + 8)
    assert cold_candidates(graph, [fp32, int8], toy) == {"fp32/fp32"}  # 832 B > 500 B resident >= 304 B
    assert toy.weights_resident(500) and not toy.weights_resident(501)


def test_cold_weight_fetch_is_added(graph, toy):
    c = Candidate.parse("fp32")
    warm = latency_breakdown(graph["a"], c, toy)
    cold = latency_breakdown(graph["a"], c, toy, cold_weights=True)
    assert warm.stream_s == 0.0
    assert cold.stream_s == pytest.approx(544 / 1e8)  # weights + bias at the fetch bandwidth
    assert cold.total_s == pytest.approx(warm.total_s + 544 / 1e8)
    assert toy.replace(stream_Bps=0.0).stream_bandwidth() == 1e9  # default: the last memory level
    lat = latency_breakdown(graph["a"], c, toy.replace(stream_latency_s=2e-6), cold_weights=True)
    assert lat.stream_s == pytest.approx(2e-6 + 544 / 1e8)  # plus the fixed first-miss latency per call


def test_deployed_table_per_candidate(graph, toy):
    iso = build_cost_table(graph, ["fp32", "int8/int8"], toy)
    dep = build_cost_table(graph, ["fp32", "int8/int8"], toy, residency="deployed")
    assert dep.extra["cold_weights"] == ["fp32/fp32"] and iso.extra["cold_weights"] == []
    for name, wb in (("a", 544), ("b", 128), ("c", 128), ("d", 32)):
        assert dep.costs[name]["fp32/fp32"]["latency_s"] == pytest.approx(iso.costs[name]["fp32/fp32"]["latency_s"] + wb / 1e8)
        assert dep.costs[name]["int8/int8"] == iso.costs[name]["int8/int8"]  # 304 B stay cached
    # the fetch also costs main-memory energy: 544 B x 10 pJ
    assert dep.costs["a"]["fp32/fp32"]["energy_j"] == pytest.approx(iso.costs["a"]["fp32/fp32"]["energy_j"] + 544 * 10e-12)
    everything = build_cost_table(graph, ["fp32", "int8/int8"], toy, residency="cold")
    assert everything.extra["cold_weights"] == ["fp32/fp32", "int8/int8"]
    with pytest.raises(MpsearchError, match="unknown residency"):
        build_cost_table(graph, ["fp32"], toy, residency="hot")


def test_x86_target_resident_bytes():
    t = load_target("x86-avx2")
    assert t.resident_bytes == 4 * 2**20
    assert t.stream_bandwidth() == t.memory[-1].bandwidth_Bps
    assert t.stream_latency_s == 1e-6


class ColdTimer:
    """Fake device: warm = 1 us + MACs at 1 GMAC/s; cold adds the layer's fp32 weights at 1e8 B/s."""

    def __init__(self):
        self.calls = []

    def __call__(self, layer, candidate, target, *, repeats=5, number=10, cold_weights=False):
        self.calls.append((layer.name, candidate.key, cold_weights))
        return 1e-6 + layer.macs * 1e-9 + (layer.params * 4 / 1e8 if cold_weights else 0.0)


def test_measured_deployed_times_cold_candidates(graph, toy, tmp_path):
    timer = ColdTimer()
    dep = build_cost_table(graph, ["fp32", "int8/int8"], toy, mode="measured", cache_dir=tmp_path, timer=timer, residency="deployed", prune=False)
    assert {(c[1], c[2]) for c in timer.calls} == {("fp32/fp32", True), ("int8/int8", False)}
    assert dep.costs["b"]["fp32/fp32"]["latency_s"] == pytest.approx(1e-6 + 32e-9 + 128 / 1e8)
    iso = build_cost_table(graph, ["fp32"], toy, mode="measured", cache_dir=tmp_path, timer=timer)
    assert iso.costs["b"]["fp32/fp32"]["latency_s"] == pytest.approx(1e-6 + 32e-9)  # a warm entry, its own cache key
    obs = observations_from(dep, {l.name: l for l in graph.layers})
    assert {(o.candidate.key, o.cold) for o in obs} == {("fp32/fp32", True), ("int8/int8", False)}

    def old(layer, candidate, target, *, repeats=5, number=10):  # a timer that cannot flush
        return 1e-6

    t = build_cost_table(graph, ["fp32", "int8/int8"], toy, mode="measured", cache_dir=tmp_path / "o", timer=old, residency="deployed")
    assert set(t.costs["a"]) == {"int8/int8"}
    assert {r["candidate"] for r in t.extra["measure"]["refused"]} == {"fp32/fp32"}


def test_fit_recovers_stream_bandwidth():
    target = load_target("x86-avx2")
    layers = [lin(f"l{i}", i, n, k, rows) for i, (n, k, rows) in enumerate(
        [(64, 64, 1), (256, 256, 1), (1024, 1024, 1), (256, 256, 64), (512, 512, 128), (2048, 512, 32), (384, 384, 41)])]
    cands = [Candidate.parse(c) for c in ("fp32", "int8/int8")]
    truth = {"rate:fp32": 0.5, "rate:int8": 0.2, "bandwidth": 0.5, "stream": 0.6, "stream_latency_s": 2e-6, "overhead_s": 3e-6}
    real = apply_factors(target, truth)
    assert real.stream_bandwidth() == pytest.approx(0.6 * target.memory[-1].bandwidth_Bps)
    obs = [Observation(L, c, latency_breakdown(L, c, real, cold_weights=cold).total_s, cold=cold)
           for L in layers for c in cands for cold in (False, True)]
    fit = fit_target(target, obs)
    assert fit.rms_log_err < 0.01
    assert fit.factors["stream"] == pytest.approx(0.6, rel=0.05)
    assert fit.factors["stream_latency_s"] == pytest.approx(2e-6, rel=0.05)
    assert "stream" not in fit_target(target, [o for o in obs if not o.cold]).factors  # no cold data, no factor


def test_calibrate_dispatch_on_this_cpu():
    pytest.importorskip("tvm")
    from backends.cost.residual import calibrate_dispatch

    d = calibrate_dispatch(32, rounds=1)
    assert 0.0 <= d < 50e-6  # the VM's cost per call of a tiny kernel: well under a microsecond-scale budget
