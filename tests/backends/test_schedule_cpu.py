"""CPU schedules of the TVM backend: each scheduled function equals the unscheduled build (small shapes).

Covers the AVX-512 linear tiles with tile-major fp32 weights, the AVX2 tiles (built for a Haswell
target; this CPU runs that code too), the batched-matmul schedule of attention, the vectorizable erf,
and the GELU folded into its linear kernel's epilogue.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import tvm
from tvm import te, topi

from backends.tvm import kernels as K
from backends.tvm import schedule_cpu as S
from backends.tvm import schedule_ops as O
from backends.tvm.target import host_spec
from backends.tvm.weights import act_quant, prepare_weight

HOST = tvm.target.Target({"kind": "llvm", "mcpu": host_spec()["mcpu"]})
AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
host_avx2 = pytest.mark.skipif(not tvm.target.codegen.target_has_features("avx2", HOST), reason="needs an AVX2 CPU")


def _run(func, target, arrays, out_shape):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
    args.append(tvm.runtime.tensor(np.zeros(out_shape, np.float32)))
    lib["main"](*args)
    return args[-1].numpy()


def _linear_case(m, k, o, fmt="fp32", act=None, target=HOST, pack=True):
    torch.manual_seed(m * 7 + k + o)
    w = torch.randn(o, k) * 0.1
    aq = act_quant(act, 4.0) if act else None
    pw = prepare_weight(w, fmt, aq)
    x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
    with target:
        cols = S.linear_pack_cols(o) if pack else None
        func, spec = K.linear_kernel(m, pw, aq, row_tiles=S.linear_row_tiles(), pack_cols=cols)
        ref_func, ref_spec = K.linear_kernel(m, pw, aq)
        sched = S.schedule_kernel_cpu(func)
    arrays = K.kernel_arrays(pw, spec)
    got = _run(sched, target, [x, *arrays], spec.out_shape)
    ref = _run(ref_func, target, [x, *[pw.arrays[n] for n in ref_spec.param_names]], ref_spec.out_shape)
    return got, ref, spec


@pytest.mark.parametrize("m,k,o", [(41, 96, 64), (5, 64, 48), (13, 520, 32), (1, 32, 24)])
def test_linear_fp32_host_schedule_matches_unscheduled(m, k, o):
    got, ref, spec = _linear_case(m, k, o)
    if S.has_avx512(HOST) and o % 16 == 0:
        assert spec.pack_cols and o % spec.pack_cols == 0
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt,act", [("int8", "int8"), ("int8", None), ("uint8", None), ("int4", None), ("fp16", None),
                                     ("bf16", None), ("e4m3", None), ("int8g128", None)])
@pytest.mark.parametrize("k", [200, 520])
def test_linear_quantized_host_schedule_matches_unscheduled(fmt, act, k):
    got, ref, spec = _linear_case(41, k, 64, fmt, act)
    if S.has_avx512(HOST):  # tile-major unless codes share bytes (int4: two per byte)
        assert (spec.pack_cols is None) == (fmt == "int4")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@host_avx2
@pytest.mark.parametrize("fmt", ["fp32", "int4"])
def test_linear_avx2_schedule_matches_unscheduled(fmt):
    got, ref, spec = _linear_case(41, 96, 48, fmt, target=AVX2)
    assert spec.pack_cols is None and not S.has_avx512(AVX2)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_pack_fp32_weight_layout():
    w = np.arange(3 * 8, dtype=np.float32).reshape(3, 8)
    p = K.pack_fp32_weight(w, 4)
    assert p.shape == (2, 3, 4)
    for kk in range(3):
        for oo in range(8):
            assert p[oo // 4, kk, oo % 4] == w[kk, oo]


def test_single_thread_builds_have_no_parallel_loops(monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    assert S.build_threads() == 1
    pw = prepare_weight(torch.randn(256, 512) * 0.1, "fp32")
    with HOST:
        func, _ = K.linear_kernel(64, pw, None, row_tiles=S.linear_row_tiles())
        sched = S.schedule_kernel_cpu(func)
    assert "T.parallel" not in sched.script()
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    with HOST:
        assert "T.parallel" in S.schedule_kernel_cpu(func).script()


@pytest.mark.parametrize("b,m,k,n", [(3, 41, 32, 41), (2, 9, 13, 32), (12, 5, 41, 32), (1, 4, 8, 160)])
def test_batched_matmul_schedule_matches_unscheduled(b, m, k, n):
    a = te.placeholder((b, m, k), name="a")
    bb = te.placeholder((b, k, n), name="b")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((b, m, n), lambda z, i, j: te.sum(a[z, i, r] * bb[z, r, j], axis=r), name="matmul")
    func = te.create_prim_func([a, bb, c])
    with HOST:
        sched = O.schedule_matmul(func)
    assert sched is not None
    rng = np.random.default_rng(b + m + k + n)
    xa, xb = rng.standard_normal((b, m, k)).astype(np.float32), rng.standard_normal((b, k, n)).astype(np.float32)
    got = _run(sched, HOST, [xa, xb], (b, m, n))
    ref = _run(func, HOST, [xa, xb], (b, m, n))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, xa @ xb, rtol=1e-4, atol=1e-4)


def test_matmul_schedule_skips_other_reductions():
    x = te.placeholder((4, 16), name="x")
    r = te.reduce_axis((0, 16), name="k")
    s = te.compute((4,), lambda i: te.sum(x[i, r], axis=r), name="sum")
    assert O.schedule_matmul(te.create_prim_func([x, s])) is None


def test_erf_legalization_is_as_exact_as_torch_gelu():
    """The default erf (topi.fast_erf) vs float64: erf within 5 ulp, and GELU built on it no further
    from the exact GELU than torch's own CPU GELU (what the simulation runs)."""
    xs = np.concatenate([np.linspace(-8, 8, 1 << 16, dtype=np.float32),
                         (np.random.default_rng(0).standard_normal(1 << 16) * 3).astype(np.float32)])
    x = te.placeholder(xs.shape, name="x")
    half = tvm.tirx.const(0.5, "float32")
    e = topi.fast_erf(te.compute(x.shape, lambda i: x[i] * tvm.tirx.const(0.7071067811865476, "float32")))
    y = te.compute(x.shape, lambda i: x[i] * half * (e[i] + tvm.tirx.const(1.0, "float32")))
    got_erf = _run(te.create_prim_func([x, topi.fast_erf(x)]), HOST, [xs], xs.shape).astype(np.float64)
    got_gelu = _run(te.create_prim_func([x, y]), HOST, [xs], xs.shape).astype(np.float64)
    x64 = xs.astype(np.float64)
    erf64 = np.array([math.erf(v) for v in x64])
    ulp = np.abs(got_erf - erf64) / np.spacing(np.abs(erf64).astype(np.float32)).astype(np.float64)
    assert ulp.max() <= 6
    gelu64 = x64 * 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x64]))
    torch_err = np.abs(torch.nn.functional.gelu(torch.from_numpy(xs)).double().numpy() - gelu64).max()
    assert np.abs(got_gelu - gelu64).max() <= max(torch_err, 1.2e-6)


def test_gelu_folds_into_the_linear_epilogue(tmp_path):
    """A Linear on a 3-D input (torch: 2-D matmul + view) followed by GELU: one fused kernel function,
    no separate erf function, and the artifact matches the simulation."""
    from torch import nn

    from backends.tvm.compile import ParityTolerance, build_module
    from backends.tvm.lower import lower_plan
    from backends.tvm.target import resolve_target
    from mpsearch.graph import build_layer_graph
    from mpsearch.plan import Candidate, Plan
    from mpsearch.simulate import apply_plan

    class FFN(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)

        def forward(self, x):
            return self.down(nn.functional.gelu(self.up(x)))

    torch.manual_seed(0)
    model = FFN().eval()
    x = torch.randn(1, 7, 32)
    graph = build_layer_graph(model, (x,))
    plan = Plan.uniform(graph.names, Candidate("fp32"))
    tgt = resolve_target("llvm")
    low = lower_plan(model, graph, plan, None, (x,), tgt)
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm import relax

    from backends.tvm.compile import _erf_legalize

    with tgt.tvm():
        fused = tvm.transform.Sequential([relax.transform.LegalizeOps({"relax.erf": _erf_legalize})]
                                         + cpu.legalize_passes(tgt.tvm())[1:])(low.mod)
    names = [gv.name_hint for gv in fused.functions]
    assert any("mpsearch_up" in n and "erf" in n for n in names), names
    assert not any("erf" in n and "mpsearch" not in n for n in names), names
    ex = build_module(low.mod, tgt)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(x.numpy())] + [tvm.runtime.tensor(low.params[n]) for n in low.param_names]
    got = vm["main"](*args)[0].numpy()
    with torch.no_grad():
        ref = apply_plan(model, plan, None)(x).numpy()
    assert np.abs(got - ref).max() <= ParityTolerance().bound(ref)


@pytest.mark.parametrize("shape", [(1, 5, 64), (2, 3, 384), (1, 7, 40)])
def test_layer_norm_row_schedule_matches_unscheduled(shape):
    x = te.placeholder(shape, name="x")
    g = te.placeholder(shape[-1:], name="g")
    b = te.placeholder(shape[-1:], name="b")
    y = topi.nn.layer_norm(x, g, b, axis=[-1], epsilon=1e-12)
    func = te.create_prim_func([x, g, b, y])
    with HOST:
        sched = O.schedule_rows(func)
    assert sched is not None
    rng = np.random.default_rng(sum(shape))
    arrays = [rng.standard_normal(shape).astype(np.float32) * 3 + 1, rng.standard_normal(shape[-1:]).astype(np.float32),
              rng.standard_normal(shape[-1:]).astype(np.float32)]
    got = _run(sched, HOST, arrays, shape)
    ref = _run(func, HOST, arrays, shape)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)  # vector partial sums: another summation order
    t = torch.nn.functional.layer_norm(torch.from_numpy(arrays[0]), shape[-1:], torch.from_numpy(arrays[1]),
                                       torch.from_numpy(arrays[2]), eps=1e-12).numpy()
    np.testing.assert_allclose(got, t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("n", [64, 41])
def test_softmax_row_schedule(fast, n):
    """Rows of 64 are scheduled (vectorized, partial sums); rows of 41 keep TVM's loops (faster there)."""
    x = te.placeholder((2, 3, 5, n), name="x")
    func = te.create_prim_func([x, (topi.nn.fast_softmax if fast else topi.nn.softmax)(x)])
    with HOST:
        sched = O.schedule_rows(func)
    if n % 8:
        assert sched is None
        return
    assert sched is not None
    xs = (np.random.default_rng(n).standard_normal((2, 3, 5, n)) * 4).astype(np.float32)
    got = _run(sched, HOST, [xs], xs.shape)
    np.testing.assert_allclose(got, _run(func, HOST, [xs], xs.shape), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got, torch.softmax(torch.from_numpy(xs), -1).numpy(), rtol=1e-5, atol=1e-7)


def test_time_layer_and_layer_parity_use_the_packed_fp32_layout():
    """Per-layer tools run the kernels an artifact runs (tile-major fp32 weights on AVX-512)."""
    from torch import nn

    from backends.tvm import time_layer
    from backends.tvm.compile import layer_parity
    from mpsearch.graph import build_layer_graph
    from mpsearch.plan import Candidate, Plan

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 32)).eval()
    x = torch.randn(7, 48)
    graph = build_layer_graph(model, (x,))
    assert time_layer(graph[graph.names[0]], "fp32", "llvm", repeats=1, number=1) > 0
    res = layer_parity(model, graph, Plan.uniform(graph.names, Candidate("fp32")), None, (x,))
    assert set(res) == set(graph.names) and all(v["ok"] and v["max_abs_diff"] < 1e-5 for v in res.values()), res
