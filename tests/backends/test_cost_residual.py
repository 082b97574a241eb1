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
