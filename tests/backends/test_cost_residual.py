"""End-to-end residual model: roofline of non-layer ops, timed-op override, dispatch from a whole timing."""

from __future__ import annotations

import numpy as np
import pytest

from backends.cost.residual import ModelOps, OpWork, ResidualModel, fit_dispatch, fit_ops


def ops():
    rng = np.random.default_rng(0)
    out = []
    for i in range(24):
        kind = "vectorized" if i % 2 else "generic"
        out.append(OpWork(f"op{i}", kind, float(10 ** rng.uniform(2, 7)), float(10 ** rng.uniform(0, 7)), f"s{i}"))
    return out


def test_roofline_and_measured_override():
    m = ResidualModel(op_overhead_s=1e-6, dispatch_s=2e-6, flops_per_s={"vectorized": 1e10, "generic": 1e9}, bandwidth_Bps=1e9)
    a = OpWork("a", "generic", bytes=1000.0, flops=1e6, signature="A")  # 1 ms of FLOPs > 1 us of bytes
    b = OpWork("b", "vectorized", bytes=1e6, flops=1e6, signature="B")  # 1 ms of bytes > 0.1 ms of FLOPs
    assert m.op_s(a) == pytest.approx(1e-6 + 1e-3)
    assert m.op_s(b) == pytest.approx(1e-6 + 1e-3)
    mops = ModelOps(layer_calls=3, ops=[a, b, b])
    assert mops.calls == 6
    assert m.residual_s(mops) == pytest.approx(3 * (1e-6 + 1e-3) + 6 * 2e-6)
    m.measured["B"] = 5e-6  # a timed op replaces its roofline
    assert m.residual_s(mops) == pytest.approx(1e-6 + 1e-3 + 2 * 5e-6 + 6 * 2e-6)


def test_fit_ops_recovers_parameters():
    truth = ResidualModel(op_overhead_s=2e-7, flops_per_s={"vectorized": 3e9, "generic": 4e8}, bandwidth_Bps=7e9)
    o = ops()
    fit = fit_ops(o, [truth.op_s(x) for x in o])
    assert fit.op_overhead_s == pytest.approx(2e-7, rel=0.1)
    assert fit.flops_per_s["generic"] == pytest.approx(4e8, rel=0.1)
    assert fit.bandwidth_Bps == pytest.approx(7e9, rel=0.1)


def test_dispatch_from_a_whole_model_timing():
    m = ResidualModel(measured={"A": 10e-6})
    mops = ModelOps(layer_calls=4, ops=[OpWork("a", "generic", 0.0, 0.0, "A")] * 6)
    # whole 200 us = layers 100 us + 6 ops x 10 us + 10 calls x 4 us
    assert fit_dispatch(m, 200e-6, 100e-6, mops).dispatch_s == pytest.approx(4e-6)
    assert fit_dispatch(m, 100e-6, 100e-6, mops).dispatch_s == 0.0  # never negative


def test_layer_of_kernel_matches_the_backend_names():
    from backends.cost.residual import layer_of_kernel

    names = ["stem", "layer1.conv1", "layer1.conv10", "encoder.layer.0.attention.self.query"]
    assert layer_of_kernel("fused_mpsearch_layer1_conv1_subtract_divide_add1_relu", names) == "layer1.conv1"
    assert layer_of_kernel("fused_mpsearch_layer1_conv10_add2", names) == "layer1.conv10"  # not layer1.conv1
    assert layer_of_kernel("mpsearch_stem", names) == "stem"
    assert layer_of_kernel("fused_mpsearch_encoder_layer_0_attention_self_query_add2", names) == "encoder.layer.0.attention.self.query"
    assert layer_of_kernel("fused_softmax", names) is None


class _Func:
    """Stands in for a PrimFunc: ``with_attr(...).script()`` is its body."""

    def __init__(self, body: str):
        self.body = body

    def with_attr(self, *_):
        return self

    def script(self) -> str:
        return self.body


def test_epilogue_seconds_and_residual():
    from backends.cost.residual import epilogue_seconds
    from mpsearch.graph import LayerGraph, LayerInfo

    def lin(name, i, n, k):
        return LayerInfo(name, "linear", i, (n, k), (1, 4, k), (1, 4, n), 4 * n * k, n * k, True, {})

    g = LayerGraph([lin("a", 0, 8, 8), lin("b", 1, 8, 8), lin("c", 2, 16, 8)], [], edge_source="hand")
    # a and b: same shape and fused body (timed once); c: its own; fused - bare, never negative
    fused = {"bias+relu": 7e-6, "bias": 2e-6}
    bare = {(8, 8): 5e-6, (16, 8): 3e-6}
    calls = []

    def op_timer(f, repeats, number):
        calls.append(f.body)
        return fused[f.body]

    def layer_timer(layer, cand, repeats, number):
        return bare[tuple(layer.weight_shape)]

    mops = ModelOps(3, [], layer_funcs=[("a", _Func("bias+relu")), ("b", _Func("bias+relu")), ("c", _Func("bias"))])
    e = epilogue_seconds(mops, g, "fp32", rounds=2, layer_timer=layer_timer, op_timer=op_timer)
    assert e == pytest.approx({"a": 2e-6, "b": 2e-6, "c": 0.0})
    assert len(calls) == 4  # 2 distinct kernels x 2 rounds
    m = ResidualModel(dispatch_s=1e-7, epilogue=e)
    assert m.epilogue_total_s(mops) == pytest.approx(4e-6)
    assert m.residual_s(mops) == pytest.approx(3 * 1e-7 + 4e-6)
