"""Parity of compiled TVM artifacts (llvm) with the PyTorch simulation of the same plan.

Each plan is compiled once (module-scoped fixtures), loaded back through the runtime loader, and run on
several held-out inputs; the outputs must match ``apply_plan`` within the artifact's stated tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from backends.artifact import load_artifact
from backends.tvm import compile_plan
from backends.tvm.compile import ParityTolerance
from mpsearch.graph import build_layer_graph
from mpsearch.plan import Candidate, Plan
from mpsearch.simulate import apply_plan, calibrate_act_ranges

TOL = ParityTolerance()


def _check(art, model, plan, amax, inputs):
    """Run the artifact on each input; compare with the simulation; return the worst diff."""
    loaded = load_artifact(art.directory)
    sim = apply_plan(model, plan, amax)
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            ref = sim(x).numpy()
            got = loaded.run(x.numpy())
            assert got.shape == ref.shape
            diff = float(np.abs(got - ref).max())
            print(f"max abs diff {diff:.3g} (bound {TOL.bound(ref):.3g})")
            assert diff <= TOL.bound(ref)
            worst = max(worst, diff)
    return worst


# -- digits CNN ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_amax(digits_task, digits_graph):
    t = digits_task
    return calibrate_act_ranges(t.model, digits_graph.names, t.calib_batches, t.run_forward)


@pytest.fixture(scope="module")
def digits_inputs(digits_task):
    x, _ = digits_task.calib_batches[0]
    return [x[i : i + 1] for i in range(6)]


def _mixed_plan(names: list[str]) -> Plan:
    cands = ["int8/int8", "int4", "e4m3", "int4g128", "fp16", "uint8t/int8", "int2", "mxfp4"]
    return Plan({n: Candidate.parse(cands[i % len(cands)]) for i, n in enumerate(names)}, task="test")


PLANS = {
    "w8a8": lambda names: Plan.uniform(names, Candidate("int8", "int8")),
    "int4": lambda names: Plan.uniform(names, Candidate("int4")),
    "e4m3": lambda names: Plan.uniform(names, Candidate("e4m3")),
    "mixed": _mixed_plan,
}


@pytest.mark.parametrize("which", list(PLANS))
def test_digits_parity(which, digits_task, digits_graph, digits_amax, digits_inputs, tmp_path_factory):
    t = digits_task
    plan = PLANS[which](digits_graph.names)
    out = tmp_path_factory.mktemp(f"digits_{which}") / "artifact"
    art = compile_plan(t.model, digits_graph, plan, digits_amax, t.example_input, target="llvm", out_dir=out)
    assert art.parity["max_abs_diff"] <= art.parity["bound"]
    assert sorted(art.files) == ["model.so", "plan.json", "reference.npz", "weights.safetensors"]
    modes = {v["mode"] for v in art.extra["layers"].values()}
    expected = {"w8a8": {"int8dot"}, "int4": {"int"}, "e4m3": {"lut"}}.get(which)
    if expected:
        assert modes == expected
    else:
        assert {"int8dot", "int", "lut", "float16"} <= modes
    _check(art, t.model, plan, digits_amax, digits_inputs)
    # the artifact's predictions are the simulation's predictions on the test batch
    loaded = load_artifact(out)
    sim = apply_plan(t.model, plan, digits_amax)
    x, _ = t.calib_batches[1]
    with torch.no_grad():
        agree = sum(int(loaded.run(x[i : i + 1].numpy()).argmax() == int(sim(x[i : i + 1]).argmax())) for i in range(16))
    assert agree == 16


def test_int4_weights_are_packed(digits_task, digits_graph, digits_amax, tmp_path):
    """INT4 weight-only stores two codes per byte (+ one fp32 scale per channel) and nothing else: the
    float weights of planned layers are not shipped."""
    from backends.artifact import read_safetensors

    t = digits_task
    names = digits_graph.names
    sizes, files = {}, {}
    for cand in ("fp32", "int4"):
        art = compile_plan(t.model, digits_graph, Plan.uniform(names, Candidate(cand)), digits_amax, t.example_input,
                           target="llvm", out_dir=tmp_path / cand, check_parity=False)
        sizes[cand] = sum(v["weight_bytes"] for v in art.extra["layers"].values())
        files[cand] = read_safetensors(art.directory / "weights.safetensors")
    n_weights = sum(l.params - (l.weight_shape[0] if l.has_bias else 0) for l in digits_graph.layers)
    assert sizes["fp32"] == 4 * n_weights
    out_ch = sum(l.weight_shape[0] for l in digits_graph.layers)
    assert sizes["int4"] == sum((l.params - (l.weight_shape[0] if l.has_bias else 0)) // 2 for l in digits_graph.layers) + 4 * out_ch
    int4_layer_arrays = [k for k in files["int4"] if k.startswith("q_")]
    assert sum(files["int4"][k].nbytes for k in int4_layer_arrays) == sizes["int4"]
    assert not any(k.endswith("_weight") and "bn" not in k and "shortcut_1" not in k for k in files["int4"])


# -- a BERT-like transformer block ---------------------------------------------------------------------
class TinyBlock(nn.Module):
    """Self-attention + LayerNorm + GELU FFN + residuals, the shape of a BERT layer (d=32, 4 heads)."""

    def __init__(self, d: int = 32, heads: int = 4, ff: int = 64) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, ff), nn.Linear(ff, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h = self.heads

        def split(t):
            return t.reshape(b, s, h, d // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(b, s, d)
        x = self.ln1(x + self.o(ctx))
        x = self.ln2(x + self.down(nn.functional.gelu(self.up(x))))
        return self.head(x.mean(dim=1))


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    model = TinyBlock().eval()
    xs = [torch.randn(2, 8, 32) for _ in range(4)]
    graph = build_layer_graph(model, (xs[0],))
    amax = calibrate_act_ranges(model, graph.names, [(x,) for x in xs], lambda m, b: m(b[0]))
    return model, graph, amax, xs


@pytest.mark.parametrize("which", ["fp32", "w8a8", "int4", "e4m3", "mixed"])
def test_transformer_block_parity(which, block, tmp_path):
    model, graph, amax, xs = block
    plan = Plan.uniform(graph.names, Candidate("fp32")) if which == "fp32" else PLANS[which](graph.names)
    art = compile_plan(model, graph, plan, amax, (xs[0],), target="llvm", out_dir=tmp_path / "a")
    assert len(art.extra["layers"]) == len(graph.names) == 7
    # float-activation plans get the vectorizable erf; integer activations keep libm's (code flips)
    assert art.extra["erf"] == ("exact" if which in ("w8a8", "mixed") else "fast")
    worst = _check(art, model, plan, amax, xs)
    if which == "fp32":  # tile-major fp32 weights, GELU in the up-projection's epilogue, scheduled attention
        return
    # the quantized plan really differs from float (the test would notice a silently-float artifact)
    with torch.no_grad():
        float_gap = float((model(xs[1]) - apply_plan(model, plan, amax)(xs[1])).abs().max())
    assert float_gap > 10 * max(worst, 1e-7)


def test_compile_at_another_batch_size_than_the_graph(block, tmp_path):
    """The LayerGraph was built at batch 2; the artifact is compiled for batch 1 (kernels follow the
    shapes of the exported graph, not the LayerGraph's)."""
    model, graph, amax, xs = block
    plan = PLANS["mixed"](graph.names)
    x1 = xs[2][:1]
    art = compile_plan(model, graph, plan, amax, (x1,), target="llvm", out_dir=tmp_path / "b1")
    assert art.inputs[0].shape == (1, 8, 32)
    _check(art, model, plan, amax, [x1, xs[3][1:]])


# -- CUDA cross-compilation (built here, run on the GPU machine) ---------------------------------------
def _nvcc() -> bool:
    import shutil
    from pathlib import Path

    return shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").is_file()


@pytest.mark.skipif(not _nvcc(), reason="cross-compiling for CUDA needs nvcc")
def test_digits_plan_cross_compiles_for_cuda(digits_task, digits_graph, digits_amax, tmp_path):
    """Every conv of the CNN, including 4-bit float table decodes (e2m1, mxfp4: dlight's Reduction rule
    asserts on their data-dependent table read) and odd widths, builds for sm_90 with its device code and
    the simulation's outputs for the check on the GPU."""
    cands = ["e2m1", "int8/int8", "int3", "mxfp4", "int6", "fp16", "int4", "e4m3", "nvfp4", "int8"]
    plan = Plan({n: Candidate.parse(cands[i % len(cands)]) for i, n in enumerate(digits_graph.names)}, task="test")
    t = digits_task
    compile_plan(t.model, digits_graph, plan, digits_amax, t.example_input, target="cuda", out_dir=tmp_path / "cuda")
    files = {p.name for p in (tmp_path / "cuda").iterdir()}
    assert {"model.so", "weights.safetensors", "plan.json", "reference.npz", "manifest.json"} <= files
