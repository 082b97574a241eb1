"""Measured mode plumbing (cache, dedupe, refusals), dominance pruning, calibration fit, real TVM timing."""

from __future__ import annotations

import json
import warnings

import pytest

from backends.cost import build_cost_table
from backends.cost.analytical import latency_breakdown
from backends.cost.calibrate import Observation, apply_factors, compare, find_dominated, fit_target
from backends.cost.measured import MeasureConfig, tvm_time_layer
from backends.targets import load_target
from mpsearch.errors import MpsearchError
from mpsearch.graph import LayerGraph, LayerInfo
from mpsearch.plan import Candidate


def lin(name, index, n_out, n_in, rows=1):
    return LayerInfo(name, "linear", index, (n_out, n_in), (1, rows, n_in), (1, rows, n_out), rows * n_in * n_out, n_out * n_in, False, {})


@pytest.fixture
def graph():
    # a and c have the same shape: one timing serves both
    return LayerGraph([lin("a", 0, 8, 16), lin("b", 1, 16, 8), lin("c", 2, 8, 16)], [("a", "b"), ("b", "c")], edge_source="hand")


class CountingTimer:
    """Deterministic fake device: latency from MACs and a per-candidate speed; counts calls."""

    def __init__(self, speed=None, refuse=()):
        self.calls = []
        self.speed = speed or {}
        self.refuse = set(refuse)

    def __call__(self, layer, candidate, target, *, repeats=5, number=10):
        self.calls.append((layer.name, candidate.key))
        if candidate.key in self.refuse:
            raise MpsearchError(f"cannot build {candidate.key}")
        return layer.macs * 1e-9 / self.speed.get(candidate.key, 1.0) + 1e-6


def test_measured_table_and_cache(graph, tmp_path):
    timer = CountingTimer({"int8/int8": 2.0})
    t = build_cost_table(graph, ["fp32", "int8/int8"], "x86-avx2", mode="measured", cache_dir=tmp_path, timer=timer)
    assert t.source == "measured"
    assert t.costs["b"]["int8/int8"]["latency_s"] == pytest.approx(128e-9 / 2 + 1e-6)
    assert len(timer.calls) == 4  # 2 shapes x 2 candidates (a and c share a shape)
    assert t.extra["measure"]["timed"] == 4 and t.extra["measure"]["cached"] == 2
    # non-latency metrics stay analytical
    ana = build_cost_table(graph, ["fp32", "int8/int8"], "x86-avx2")
    assert t.costs["a"]["fp32/fp32"]["weight_bytes"] == ana.costs["a"]["fp32/fp32"]["weight_bytes"]
    assert t.extra["analytical_latency_s"]["a"]["fp32/fp32"] == ana.costs["a"]["fp32/fp32"]["latency_s"]
    files = list((tmp_path / "cost-measured" / "x86-avx2").glob("*.json"))
    assert len(files) == 4 and "latency_s" in json.loads(files[0].read_text())

    again = CountingTimer({"int8/int8": 2.0})
    t2 = build_cost_table(graph, ["fp32", "int8/int8"], "x86-avx2", mode="measured", cache_dir=tmp_path, timer=again)
    assert again.calls == [] and t2.costs == t.costs
    # a different batch is a different shape: re-timed
    build_cost_table(graph, ["fp32"], "x86-avx2", mode="measured", cache_dir=tmp_path, timer=again, batch=2)
    assert len(again.calls) == 2


def test_corrupt_cache_entry_is_retimed(graph, tmp_path):
    timer = CountingTimer()
    build_cost_table(graph, ["fp32"], "x86-avx2", mode="measured", cache_dir=tmp_path, timer=timer)
    for f in (tmp_path / "cost-measured" / "x86-avx2").glob("*.json"):
        f.write_text("{not json")
    timer2 = CountingTimer()
    build_cost_table(graph, ["fp32"], "x86-avx2", mode="measured", cache_dir=tmp_path, timer=timer2)
    assert len(timer2.calls) == 2


def test_refused_candidates_left_out(graph, tmp_path):
    timer = CountingTimer(refuse={"int4/int8"})
    t = build_cost_table(graph, ["fp32", "int4/int8"], "x86-avx2", mode="measured", cache_dir=tmp_path, timer=timer)
    assert set(t.costs["a"]) == {"fp32/fp32"}
    assert {r["candidate"] for r in t.extra["measure"]["refused"]} == {"int4/int8"}


def test_bad_timer_value(graph, tmp_path):
    with pytest.raises(MpsearchError, match="expected a positive time"):
        build_cost_table(graph, ["fp32"], "x86-avx2", mode="measured", cache_dir=tmp_path, timer=lambda *a, **k: 0.0)


def test_dominated_lower_precision_pruned(graph, tmp_path):
    # untuned INT4: slower than INT8 (HAWQ issue #6)
    timer = CountingTimer({"int8/int8": 2.0, "int4/int8": 0.5})
    with pytest.warns(UserWarning, match="lower-precision candidates measure slower"):
        t = build_cost_table(graph, ["fp32", "int8/int8", "int4/int8"], "x86-avx2", mode="measured", cache_dir=tmp_path, timer=timer)
    dom = t.extra["dominated"]
    assert {(d["layer"], d["slower"], d["faster"]) for d in dom} == {(l, "int4/int8", "int8/int8") for l in "abc"}
    # int4/int8 is also slower than fp32/fp32 (speed 0.5 vs 1) but is reported against the fastest: int8/int8
    for d in dom:
        macs = graph[d["layer"]].macs
        assert d["ratio"] == pytest.approx((macs * 1e-9 / 0.5 + 1e-6) / (macs * 1e-9 / 2.0 + 1e-6))
    assert all(set(per) == {"fp32/fp32", "int8/int8"} for per in t.costs.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = build_cost_table(graph, ["fp32", "int8/int8", "int4/int8"], "x86-avx2", mode="measured", cache_dir=tmp_path,
                                timer=timer, prune=False)
    assert "int4/int8" in kept.costs["a"] and kept.extra["dominated"]


def test_no_dominance_when_incomparable(graph):
    ana = build_cost_table(graph, ["int4/fp32", "int8/int8"], "x86-avx2")
    ana.costs["a"]["int4/fp32"]["latency_s"] = 1.0  # 4 < 8 weight bits but 32 > 8 act bits: not comparable
    assert find_dominated(ana) == []


def _synthetic(target, layers, cands, factors):
    """Observations from a 'true' device = the target with known effective factors."""
    truth = apply_factors(target, factors)
    obs = []
    for L in layers:
        for c in cands:
            lb = latency_breakdown(L, c, truth)
            obs.append(Observation(L, c, lb.total_s))
    return obs


def test_fit_recovers_effective_parameters():
    target = load_target("x86-avx2")
    layers = [lin(f"l{i}", i, n, k, rows) for i, (n, k, rows) in enumerate(
        [(64, 64, 1), (256, 256, 1), (1024, 1024, 1), (256, 256, 64), (512, 512, 128), (2048, 512, 32), (16, 16, 4), (4096, 4096, 1)])]
    cands = [Candidate.parse(c) for c in ("fp32", "int8/int8", "int4/int8", "int8/fp32")]
    truth = {"rate:fp32": 0.4, "rate:int8": 0.1, "bandwidth": 0.5, "convert": 0.3, "overhead_s": 5e-6}
    fit = fit_target(target, _synthetic(target, layers, cands, truth))
    assert fit.rms_log_err < 0.01
    for k, v in truth.items():
        assert fit.factors[k] == pytest.approx(v, rel=0.05), k
    g = LayerGraph(layers, [], edge_source="hand")
    pred = build_cost_table(g, cands, fit.target)
    meas = build_cost_table(g, cands, apply_factors(target, truth))
    cmp = compare(pred, meas)
    assert cmp.spearman > 0.999 and cmp.worst_end_to_end_rel_err < 0.02
    assert len(cmp.end_to_end) == 4
    raw = compare(build_cost_table(g, cands, target), meas)
    assert raw.median_rel_err > 0.5  # the datasheet peaks alone are far off; calibration is what fixes it


def test_fit_needs_data():
    with pytest.raises(MpsearchError, match="at least two"):
        fit_target(load_target("h100"), [])


def test_real_tvm_timer_on_this_cpu(tmp_path):
    conv = LayerInfo("c", "conv2d", 0, (8, 4, 3, 3), (1, 4, 6, 6), (1, 8, 6, 6), 8 * 4 * 9 * 36, 288, True,
                     {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1})
    g = LayerGraph([conv, lin("fc", 1, 10, 288)], [("c", "fc")], edge_source="hand")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untuned INT kernels may well be slower than fp32 here
        t = build_cost_table(g, ["fp32", "int8/int8", "int4/int8"], "x86-avx2", mode="measured", cache_dir=tmp_path,
                             measure=MeasureConfig(repeats=2, number=2), prune=False)
    assert t.extra["measure"]["timed"] == 6
    assert all(0 < v["latency_s"] < 1.0 for per in t.costs.values() for v in per.values())
    with pytest.raises(MpsearchError, match="CPU only"):
        tvm_time_layer(conv, Candidate("fp32"), load_target("h100"))


class NoisyTimer(CountingTimer):
    """Each call is slower than the true time by a factor that cycles 3x, 1x, 2x (another job's bursts)."""

    factors = (3.0, 1.0, 2.0)

    def __call__(self, layer, candidate, target, *, repeats=5, number=10):
        true = super().__call__(layer, candidate, target, repeats=repeats, number=number)
        return true * self.factors[(len(self.calls) - 1) % 3]


def test_rounds_keep_the_fastest(graph, tmp_path):
    timer = NoisyTimer()
    t = build_cost_table(graph, ["fp32"], "x86-avx2", mode="measured", cache_dir=tmp_path, timer=timer,
                         measure=MeasureConfig(rounds=3))
    assert len(timer.calls) == 6  # 2 shapes x 3 rounds; c shares a's timing
    for name in "abc":
        assert t.costs[name]["fp32/fp32"]["latency_s"] == pytest.approx(graph[name].macs * 1e-9 + 1e-6)
    rec = json.loads(next((tmp_path / "cost-measured" / "x86-avx2").glob("*.json")).read_text())
    assert rec["rounds"] == 3


def test_timer_version_invalidates_cache(graph, tmp_path):
    timer = CountingTimer()
    timer.cache_version = "k1"
    build_cost_table(graph, ["fp32"], "x86-avx2", mode="measured", cache_dir=tmp_path, timer=timer)
    assert len(timer.calls) == 2
    build_cost_table(graph, ["fp32"], "x86-avx2", mode="measured", cache_dir=tmp_path, timer=timer)
    assert len(timer.calls) == 2  # same kernels: cached
    timer.cache_version = "k2"  # the backend's kernels changed: old timings must not be served
    build_cost_table(graph, ["fp32"], "x86-avx2", mode="measured", cache_dir=tmp_path, timer=timer)
    assert len(timer.calls) == 4


def test_fit_per_conversion_and_level():
    base = load_target("x86-avx2")
    layers = [lin(f"l{i}", i, n, k, rows) for i, (n, k, rows) in enumerate(
        [(64, 64, 1), (256, 256, 1), (1024, 1024, 1), (256, 256, 64), (512, 512, 128), (2048, 512, 32), (16, 16, 4),
         (4096, 4096, 1), (128, 128, 8), (512, 2048, 16)])]
    cands = [Candidate.parse(c) for c in ("fp32", "int8/int8", "int4/int8", "int8/fp32", "int4/fp32")]
    truth = {"rate:fp32": 0.5, "rate:int8": 0.15, "convert:int4->fp32": 0.1, "convert:int8->fp32": 2.0,
             "convert:fp32->int8": 0.5, "bandwidth:L3": 0.3, "overhead_s": 3e-7}
    obs = _synthetic(base, layers, cands, truth)
    fit = fit_target(base, obs, per_convert=True, per_level=True)
    assert fit.rms_log_err < 0.02
    for k in ("rate:fp32", "rate:int8", "convert:int4->fp32"):  # act quantization is too small here to identify
        assert fit.factors[k] == pytest.approx(truth[k], rel=0.1), k
    # a single conversion factor cannot tell nibble unpacking from byte widening
    assert fit_target(base, obs).rms_log_err > 5 * fit.rms_log_err
