"""LayerGraph: the quantizable layers of a model as a networkx DiGraph with shapes, MACs and data flow.

Shapes and MACs come from forward hooks on one example input (always works); data-flow edges come from a
torch.fx trace (``transformers``' tracer for HF models, else ``torch.export``), falling back to execution order when a model
cannot be traced. Edges connect each quantizable layer to the nearest quantizable layers it feeds,
looking through non-quantizable ops (activations, norms, adds, reshapes).
"""

from __future__ import annotations

import re

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import networkx as nx
import torch
from torch import nn

from mpsearch.errors import MpsearchError

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass
class LayerInfo:
    """One quantizable layer: its module path, kind, tensor shapes and counts at the example input."""

    name: str
    kind: str  # "conv1d" | "conv2d" | "linear"
    index: int  # execution order
    weight_shape: tuple[int, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    macs: int
    params: int
    has_bias: bool
    attrs: dict[str, Any]  # stride, padding, groups, dilation for convs

    @property
    def in_numel(self) -> int:
        return _numel(self.in_shape)

    @property
    def out_numel(self) -> int:
        return _numel(self.out_shape)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class LayerGraph:
    """Quantizable layers in execution order plus a DiGraph of data flow between them."""

    def __init__(self, layers: list[LayerInfo], edges: list[tuple[str, str]], *, edge_source: str) -> None:
        self.layers = layers
        self.by_name = {l.name: l for l in layers}
        self.graph = nx.DiGraph()
        for l in layers:
            self.graph.add_node(l.name, info=l)
        self.graph.add_edges_from(edges)
        self.edge_source = edge_source

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.layers]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerInfo]:
        return iter(self.layers)

    def __getitem__(self, name: str) -> LayerInfo:
        return self.by_name[name]

    @property
    def total_macs(self) -> int:
        return sum(l.macs for l in self.layers)

    @property
    def total_params(self) -> int:
        return sum(l.params for l in self.layers)

    def fingerprint(self) -> str:
        """Stable hash of names and shapes: plans and caches record which graph they belong to."""
        h = hashlib.sha256()
        for l in self.layers:
            h.update(f"{l.name}|{l.kind}|{l.weight_shape}|{l.in_shape}|{l.out_shape};".encode())
        return h.hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [asdict(l) for l in self.layers],
            "edges": [list(e) for e in self.graph.edges],
            "edge_source": self.edge_source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerGraph":
        layers = []
        for d in data["layers"]:
            d = dict(d)
            for k in ("weight_shape", "in_shape", "out_shape"):
                d[k] = tuple(d[k])
            layers.append(LayerInfo(**d))
        return cls(layers, [tuple(e) for e in data["edges"]], edge_source=data.get("edge_source", "json"))


def _kind(m: nn.Module) -> str:
    return {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Linear: "linear"}[type(m)] if type(m) in (nn.Conv1d, nn.Conv2d, nn.Linear) else type(m).__name__.lower()


def _macs(m: nn.Module, out: torch.Tensor) -> int:
    if isinstance(m, nn.Linear):
        return out.numel() * m.in_features
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        k = _numel(tuple(m.kernel_size))
        return out.numel() * (m.in_channels // m.groups) * k
    return 0


def build_layer_graph(model: nn.Module, example_input: tuple[Any, ...] | dict[str, Any]) -> LayerGraph:
    """Extract the LayerGraph of ``model`` at ``example_input`` (tuple of positional args or kwargs dict)."""
    modules = {n: m for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)}
    if not modules:
        raise MpsearchError("the model has no quantizable layer (Conv1d/Conv2d/Linear); nothing to search")
    records: dict[str, LayerInfo] = {}
    hooks = []

    def make_hook(name: str):
        def hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
            if name in records or not isinstance(output, torch.Tensor):
                return
            x = inputs[0]
            attrs: dict[str, Any] = {}
            if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
                attrs = {
                    "stride": list(mod.stride), "padding": list(mod.padding) if not isinstance(mod.padding, str) else mod.padding,
                    "dilation": list(mod.dilation), "groups": mod.groups,
                }
            records[name] = LayerInfo(
                name=name, kind=_kind(mod), index=len(records), weight_shape=tuple(mod.weight.shape),
                in_shape=tuple(x.shape), out_shape=tuple(output.shape), macs=_macs(mod, output),
                params=sum(p.numel() for p in mod.parameters(recurse=False)), has_bias=getattr(mod, "bias", None) is not None,
                attrs=attrs,
            )
        return hook

    for n, m in modules.items():
        hooks.append(m.register_forward_hook(make_hook(n)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(example_input, dict):
                model(**example_input)
            else:
                model(*example_input)
    except Exception as e:
        raise MpsearchError(f"the model failed on its example input: {type(e).__name__}: {e}") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    layers = sorted(records.values(), key=lambda l: l.index)
    if not layers:
        raise MpsearchError("no quantizable layer ran on the example input; nothing to search")
    edges, source = _fx_edges(model, set(records), example_input)
    if edges is None:
        names = [l.name for l in layers]
        edges, source = list(zip(names, names[1:])), "execution-order"
    return LayerGraph(layers, edges, edge_source=source)


def _fx_edges(model: nn.Module, names: set[str], example_input: Any) -> tuple[list[tuple[str, str]] | None, str]:
    gm = None
    source = "torch.fx"
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:
        try:  # Hugging Face models need their own tracer
            from transformers.utils.fx import symbolic_trace as hf_trace

            input_names = list(example_input.keys()) if isinstance(example_input, dict) else None
            gm = hf_trace(model, input_names=input_names) if input_names else hf_trace(model)
            source = "transformers.fx"
        except Exception:
            return _export_edges(model, names, example_input)
    # For each node, the set of quantizable call_module nodes that reach it without passing another one.
    reach: dict[torch.fx.Node, frozenset[str]] = {}
    edges: set[tuple[str, str]] = set()
    for node in gm.graph.nodes:
        upstream: set[str] = set()
        for inp in node.all_input_nodes:
            upstream |= reach.get(inp, frozenset())
        if node.op == "call_module" and node.target in names:
            for u in upstream:
                if u != node.target:
                    edges.add((u, node.target))
            reach[node] = frozenset({node.target})
        else:
            reach[node] = frozenset(upstream)
    return sorted(edges), source


def _module_path(fqn: str) -> str:
    """``L['self'].encoder.layer[0].fc`` or ``encoder.layer.0.fc`` -> ``encoder.layer.0.fc``."""
    p = re.sub(r"^L\['self'\]\.?", "", fqn)
    p = re.sub(r"\[(\d+)\]", r".\1", p)
    return re.sub(r"\._modules\['([^']+)'\]", r".\1", p).strip(".")


def _export_edges(model: nn.Module, names: set[str], example_input: Any) -> tuple[list[tuple[str, str]] | None, str]:
    """Data-flow edges from ``torch.export`` when fx cannot trace (e.g. Hugging Face models on transformers 5).

    Each ATen node is owned by the innermost quantizable module on its ``nn_module_stack``; an edge joins
    two owners when data flows between their nodes without passing through a third one.
    """
    try:
        args, kwargs = ((), dict(example_input)) if isinstance(example_input, dict) else (tuple(example_input), {})
        was_training = model.training
        model.eval()
        try:
            ep = torch.export.export(model, args, kwargs, strict=False)
        finally:
            model.train(was_training)
    except Exception:
        return None, ""
    reach: dict[Any, frozenset[str]] = {}
    edges: set[tuple[str, str]] = set()
    owned = 0
    for node in ep.graph.nodes:
        upstream: set[str] = set()
        for inp in node.all_input_nodes:
            upstream |= reach.get(inp, frozenset())
        owner = None
        for entry in (node.meta.get("nn_module_stack") or {}).values():
            path = _module_path(entry[0] if isinstance(entry, tuple) else str(entry))
            if path in names:
                owner = path  # entries run outer -> inner: keep the innermost quantizable one
        if owner is not None and node.op == "call_function":
            owned += 1
            edges.update((u, owner) for u in upstream if u != owner)
            reach[node] = frozenset({owner})
        else:
            reach[node] = frozenset(upstream)
    if owned == 0:
        return None, ""
    return sorted(edges), "torch.export"

