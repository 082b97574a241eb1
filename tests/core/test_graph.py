"""LayerGraph extraction on a CNN with residuals and on a transformer block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.errors import MpsearchError
from mpsearch.graph import LayerGraph, build_layer_graph


def test_digits_cnn_graph(digits_graph):
    g = digits_graph
    assert g.names[0] == "stem" and g.names[-1] == "fc"
    assert len(g) == 10
    stem = g["stem"]
    assert stem.kind == "conv2d" and stem.weight_shape == (16, 1, 3, 3)
    assert stem.in_shape == (1, 1, 8, 8) and stem.out_shape == (1, 16, 8, 8)
    assert stem.macs == 16 * 8 * 8 * 1 * 9
    assert g["fc"].macs == 64 * 10 and g["fc"].params == 64 * 10 + 10
    # identity shortcut of layer1: the stem output also feeds layer2's two branches (residual add)
    assert g.graph.has_edge("stem", "layer2.conv1") and g.graph.has_edge("stem", "layer2.shortcut.0")
    assert g.graph.has_edge("layer3.conv2", "fc") and g.graph.has_edge("layer3.shortcut.0", "fc")
    assert not g.graph.has_edge("stem", "fc")
    assert g.edge_source == "torch.fx"


class TinyBlock(nn.Module):
    """A pre-norm transformer block written out so q/k/v are separate Linear layers."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        att = torch.softmax(split(self.q(h)) @ split(self.k(h)).transpose(-1, -2) / (d // self.heads) ** 0.5, -1)
        x = x + self.o((att @ split(self.v(h))).transpose(1, 2).reshape(b, t, d))
        return x + self.down(torch.relu(self.up(self.norm2(x))))


def test_transformer_block_graph():
    g = build_layer_graph(TinyBlock(), (torch.randn(2, 5, 32),))
    assert g.names == ["q", "k", "v", "o", "up", "down"]
    assert g["up"].macs == 2 * 5 * 32 * 128
    for src in ("q", "k", "v"):
        assert g.graph.has_edge(src, "o")
    assert g.graph.has_edge("o", "up") and g.graph.has_edge("up", "down")
    # the residual around attention carries o's output into the MLP input
    assert set(g.graph.predecessors("up")) == {"o"}


def test_graph_roundtrip(digits_graph):
    g2 = LayerGraph.from_dict(digits_graph.to_dict())
    assert g2.fingerprint() == digits_graph.fingerprint()
    assert set(g2.graph.edges) == set(digits_graph.graph.edges)


def test_no_quantizable_layer():
    with pytest.raises(MpsearchError, match="no quantizable layer"):
        build_layer_graph(nn.Sequential(nn.ReLU()), (torch.randn(1, 3),))


def test_untraceable_model_falls_back_to_execution_order():
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow defeats torch.fx
                x = x * 2
            return self.b(self.a(x))

    g = build_layer_graph(Dynamic(), (torch.ones(1, 4),))
    assert g.edge_source == "execution-order" and list(g.graph.edges) == [("a", "b")]


def test_fx_untraceable_model_gets_data_flow_edges_from_torch_export():
    class ShapeBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            if x.shape[-1] == 4:  # a Python branch on a shape: fx cannot trace it, torch.export specialises it
                x = x + 1
            h = self.a(x)
            return self.c(self.b(h) + h)  # the skip connection a -> c is data flow, not execution order

    g = build_layer_graph(ShapeBranch(), (torch.ones(2, 4),))
    assert g.edge_source == "torch.export"
    assert sorted(g.graph.edges) == [("a", "b"), ("a", "c"), ("b", "c")]
