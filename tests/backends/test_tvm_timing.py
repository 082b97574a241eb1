"""time_layer (measured latency of one layer kernel) and per-layer parity of the kernels."""

from __future__ import annotations

import math

import pytest

from backends.tvm import time_layer
from backends.tvm.compile import layer_parity
from mpsearch.errors import MpsearchError
from mpsearch.plan import Candidate, Plan
from mpsearch.simulate import calibrate_act_ranges


@pytest.mark.parametrize("cand", ["fp32", "int8/int8", "int4", "e4m3", "int4g128"])
def test_time_layer_returns_seconds(digits_graph, cand):
    for layer in (digits_graph["layer1.conv1"], digits_graph["fc"]):
        s = time_layer(layer, cand, "llvm", repeats=2, number=2)
        assert isinstance(s, float) and math.isfinite(s) and 0 < s < 0.5


def test_time_layer_accepts_candidate_objects_and_cost_targets(digits_graph):
    class FakeCostTarget:  # backends.targets.Target exposes .kind / .name
        kind, name = "cpu", "x86-avx2"

    assert time_layer(digits_graph["fc"], Candidate("int8", "int8"), FakeCostTarget(), repeats=1, number=1) > 0


def test_time_layer_refuses_what_it_cannot_time(digits_graph):
    with pytest.raises(MpsearchError, match="CPU only"):
        time_layer(digits_graph["fc"], "int4", "cuda")
    with pytest.raises(MpsearchError, match="unknown target"):
        time_layer(digits_graph["fc"], "int4", "tpu")
    with pytest.raises(MpsearchError, match="unknown format"):
        time_layer(digits_graph["fc"], "int5x", "llvm")


def test_layer_parity_after_timing_uses_the_real_act_scale(digits_task, digits_graph):
    """time_layer caches kernels built with a dummy activation range; per-layer parity on the same shapes
    must not pick those up (the activation scale is compiled into the kernel)."""
    t = digits_task
    amax = calibrate_act_ranges(t.model, digits_graph.names, t.calib_batches, t.run_forward)
    for name in ("stem", "layer3.conv1", "fc"):
        time_layer(digits_graph[name], "int8/int8", "llvm", repeats=1, number=1)
    cands = ["int8/int8", "int4", "e4m3", "int4g128", "fp16", "mxfp4", "uint8t/int8"]
    plan = Plan({n: Candidate.parse(cands[i % len(cands)]) for i, n in enumerate(digits_graph.names)})
    res = layer_parity(t.model, digits_graph, plan, amax, t.example_input)
    assert set(res) == set(digits_graph.names)
    bad = {k: v for k, v in res.items() if not v["ok"]}
    assert not bad, bad
