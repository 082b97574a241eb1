"""Check predicted Omega against the measured loss change of quantizing one layer at a time.

``measure_single_layer`` quantizes exactly one layer (weights per channel, input at the static range, as
``mpsearch.simulate`` does) and reports the loss change on the given batches. With ``symmetric=True`` it
applies the quantization noise d once with each sign and reports (L(+d) + L(-d))/2 - L: the first-order
term g.d cancels and what remains is the curvature term 1/2 d^T H d + O(d^4) that Omega models. The
plain (``symmetric=False``) change also contains g.d, which is not small when the calibration gradient is
not zero (a model evaluated off its training data), so both are reported.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from scipy.stats import spearmanr
from torch import nn

from mpsearch.formats import parse_format
from mpsearch.plan import Candidate
from mpsearch.tables import SensitivityTable
from mpsearch.task import Task


@contextmanager
def _perturbed(model: nn.Module, layer: str, cand: Candidate, amax: float | None, sign: float) -> Iterator[None]:
    mod = model.get_submodule(layer)
    wf, af = parse_format(cand.weight), parse_format(cand.act)
    w0 = mod.weight.detach().clone()
    hook = None
    with torch.no_grad():
        mod.weight.add_(sign * (wf.fake_quant(w0, channel_axis=0) - w0))
    if not af.is_float:
        def pre(m: nn.Module, args: tuple) -> tuple:
            x = args[0]
            return (x + sign * (af.fake_quant(x, channel_axis=None, amax=amax) - x), *args[1:])

        hook = mod.register_forward_pre_hook(pre)
    try:
        yield
    finally:
        if hook is not None:
            hook.remove()
        with torch.no_grad():
            mod.weight.copy_(w0)


@torch.no_grad()
def mean_loss(task: Task, model: nn.Module, batches: Sequence[Any]) -> float:
    return sum(float(task.loss(model, b)) for b in batches) / len(batches)


@torch.no_grad()
def measure_single_layer(task: Task, layers: Sequence[str], candidates: Sequence[Candidate],
                         act_amax: dict[str, float], *, batches: Sequence[Any] | None = None,
                         symmetric: bool = False) -> dict[str, dict[str, float]]:
    """``delta[layer][cand.key]``: loss change when only ``layer`` uses ``cand`` (mean over batches)."""
    batches = list(batches if batches is not None else task.calib_batches)
    model = task.model
    was = model.training
    model.eval()
    try:
        base = mean_loss(task, model, batches)
        out: dict[str, dict[str, float]] = {}
        for layer in layers:
            row = {}
            for c in candidates:
                with _perturbed(model, layer, c, act_amax.get(layer), 1.0):
                    plus = mean_loss(task, model, batches)
                if symmetric:
                    with _perturbed(model, layer, c, act_amax.get(layer), -1.0):
                        minus = mean_loss(task, model, batches)
                    row[c.key] = 0.5 * (plus + minus) - base
                else:
                    row[c.key] = plus - base
            out[layer] = row
    finally:
        model.train(was)
    return out


@torch.no_grad()
def measure_plain_and_symmetric(task: Task, layers: Sequence[str], candidates: Sequence[Candidate],
                                act_amax: dict[str, float], *, batches: Sequence[Any] | None = None
                                ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Both measurements of ``measure_single_layer`` from one pass (the +d evaluation is shared)."""
    batches = list(batches if batches is not None else task.calib_batches)
    model = task.model
    was = model.training
    model.eval()
    plain: dict[str, dict[str, float]] = {}
    sym: dict[str, dict[str, float]] = {}
    try:
        base = mean_loss(task, model, batches)
        for layer in layers:
            plain[layer], sym[layer] = {}, {}
            for c in candidates:
                with _perturbed(model, layer, c, act_amax.get(layer), 1.0):
                    plus = mean_loss(task, model, batches)
                with _perturbed(model, layer, c, act_amax.get(layer), -1.0):
                    minus = mean_loss(task, model, batches)
                plain[layer][c.key] = plus - base
                sym[layer][c.key] = 0.5 * (plus + minus) - base
    finally:
        model.train(was)
    return plain, sym


def rank_agreement(table: SensitivityTable, measured: dict[str, dict[str, float]],
                   candidates: Sequence[Candidate]) -> dict[str, float]:
    """Spearman rho over layers between Omega and the measured change, per candidate and per format
    family (``family:int`` pools every candidate whose quantized formats are all INT, and so on)."""
    layers = list(measured)
    out: dict[str, float] = {}
    fams: dict[str, list[float]] = {}
    for c in candidates:
        om = [table.omega[l][c.key] for l in layers]
        me = [measured[l][c.key] for l in layers]
        rho = float(spearmanr(om, me).statistic)
        out[c.key] = rho
        kinds = {parse_format(s).family for s in (c.weight, c.act) if not parse_format(s).is_float}
        if len(kinds) == 1:
            fams.setdefault(f"family:{kinds.pop()}", []).append(rho)
    for fam, rhos in fams.items():
        out[fam] = min(rhos)  # the family passes only if every candidate in it does
    return out
