"""PyTorch simulation of a Plan: fake-quantized weights and input activations per layer.

This is the reference every other stage is checked against: sensitivity measures the loss under it, the
search verifies plans with it, and the compiled artifact must reproduce its outputs.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import nn

from mpsearch.formats import Format, parse_format
from mpsearch.plan import Plan


class QuantizedLayer(nn.Module):
    """Wraps a Conv/Linear: weight quantized once at construction, input fake-quantized per call."""

    def __init__(self, inner: nn.Module, weight_format: Format, act_format: Format, act_amax: float | None) -> None:
        super().__init__()
        self.inner = inner
        self.weight_format = weight_format
        self.act_format = act_format
        self.act_amax = act_amax
        with torch.no_grad():
            inner.weight.copy_(weight_format.fake_quant(inner.weight.detach(), channel_axis=0))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.act_format.is_float:
            x = self.act_format.fake_quant(x, channel_axis=None, amax=self.act_amax)
        return self.inner(x, *args, **kwargs)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


@torch.no_grad()
def calibrate_act_ranges(model: nn.Module, layer_names: Iterable[str], batches: Iterable[Any], run_forward) -> dict[str, float]:
    """Max |input| per layer over the calibration batches (static per-tensor activation range)."""
    amax: dict[str, float] = {}
    hooks = []
    for name in layer_names:
        mod = model.get_submodule(name)

        def hook(m, inputs, out, name=name):
            v = float(inputs[0].detach().abs().max())
            amax[name] = max(amax.get(name, 0.0), v)

        hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for b in batches:
            run_forward(model, b)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return amax


def apply_plan(model: nn.Module, plan: Plan, act_amax: dict[str, float] | None = None, *, inplace: bool = False) -> nn.Module:
    """Return a copy of ``model`` in which every planned layer is simulated in its chosen formats."""
    sim = model if inplace else copy.deepcopy(model)
    for name, cand in plan.layers.items():
        mod = sim.get_submodule(name)
        wf, af = parse_format(cand.weight), parse_format(cand.act)
        if wf.is_float and wf.spelling == "fp32" and af.is_float:
            continue
        _set_submodule(sim, name, QuantizedLayer(mod, wf, af, (act_amax or {}).get(name)))
    sim.eval()
    return sim
