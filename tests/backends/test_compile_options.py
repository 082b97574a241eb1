"""``compile_plan`` options: ``fp16_tables`` (float32 embedding tables stored as float16) and ``cuda_graph`` (llvm, fast).

The artifact must hold the table in float16 (half the bytes), agree with the simulation of the model
whose table is rounded to float16, and leave every other parameter (and the quantized layers) alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from backends.artifact import load_artifact, read_safetensors
from backends.tvm import compile_plan
from backends.tvm.compile import ParityTolerance, fp16_rounded_tables
from mpsearch.graph import build_layer_graph
from mpsearch.plan import Candidate, Plan
from mpsearch.simulate import apply_plan, calibrate_act_ranges


class TinyEncoder(nn.Module):
    """Token + position embeddings, LayerNorm, two Linear layers: the shape of a BERT front end."""

    def __init__(self, vocab: int = 300, d: int = 32, seq: int = 8) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        self.ln = nn.LayerNorm(d)
        self.up = nn.Linear(d, 64)
        self.down = nn.Linear(64, d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        x = self.ln(self.tok(ids) + self.pos(pos))
        return x + self.down(nn.functional.gelu(self.up(x)))


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    with torch.no_grad():  # values that fp16 cannot hold exactly, so the rounding is visible
        model.tok.weight.mul_(1.2345)
    ids = [torch.randint(0, 300, (2, 8)) for _ in range(3)]
    graph = build_layer_graph(model, (ids[0],))
    amax = calibrate_act_ranges(model, graph.names, [(x,) for x in ids], lambda m, b: m(b[0]))
    plan = Plan({"up": Candidate.parse("int8/int8"), "down": Candidate.parse("int4")})
    return model, graph, amax, plan, ids


def test_fp16_tables_artifact(encoder, tmp_path):
    model, graph, amax, plan, ids = encoder
    art = compile_plan(model, graph, plan, amax, (ids[0],), target="llvm", out_dir=tmp_path / "a", fp16_tables=True)
    assert art.extra["fp16_tables"] == ["pos.weight", "tok.weight"]
    w = read_safetensors(tmp_path / "a" / "weights.safetensors")
    f16 = {k: v.shape for k, v in w.items() if v.dtype == np.float16}
    assert sorted(f16.values()) == [(8, 32), (300, 32)]
    assert not any(v.dtype == np.float32 and v.shape in ((300, 32), (8, 32)) for v in w.values())  # no fp32 copy left
    assert art.parity["max_abs_diff"] <= art.parity["bound"]
    loaded = load_artifact(tmp_path / "a")
    ref_model = fp16_rounded_tables(model, art.extra["fp16_tables"])
    tol = ParityTolerance()
    with torch.no_grad():
        for x in ids:
            ref = apply_plan(ref_model, plan, amax)(x).numpy()
            got = loaded.run(x.numpy())
            assert float(np.abs(got - ref).max()) <= tol.bound(ref)
        # the reference really is the rounded model (the fp32 table gives another output)
        gap = float((apply_plan(model, plan, amax)(ids[1]) - apply_plan(ref_model, plan, amax)(ids[1])).abs().max())
    assert gap > 0


def test_fp16_tables_off_by_default(encoder, tmp_path):
    model, graph, amax, plan, ids = encoder
    art = compile_plan(model, graph, plan, amax, (ids[0],), target="llvm", out_dir=tmp_path / "b")
    assert art.extra["fp16_tables"] == []
    w = read_safetensors(tmp_path / "b" / "weights.safetensors")
    assert not any(v.dtype == np.float16 for v in w.values())


def test_cuda_graph_is_cuda_only(encoder, tmp_path):
    from mpsearch.errors import MpsearchError

    model, graph, amax, plan, ids = encoder
    with pytest.raises(MpsearchError, match="CUDA"):
        compile_plan(model, graph, plan, amax, (ids[0],), target="llvm", out_dir=tmp_path / "c", cuda_graph=True)
