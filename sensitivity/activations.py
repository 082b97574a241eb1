"""Per-layer input-activation statistics and quantization-noise energy, from forward hooks on calibration data.

Two passes over the calibration batches. Pass 1 accumulates range, moments, per-channel ranges/moments
and a uniform random subsample (bottom-k on random keys) for percentiles. Pass 2, with the mean, std and
the static range now known, counts outliers exactly, accumulates the fourth central moment (kurtosis), and
measures E[(Q(x) - x)^2] for every candidate activation format at the static per-tensor ``amax`` that the
simulation (``mpsearch.simulate``) will use.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from mpsearch.formats import Format

RunForward = Callable[[nn.Module, Any], Any]


def _channels_last(x: torch.Tensor, mod: nn.Module) -> torch.Tensor:
    """Rows x channels view: conv inputs carry channels on dim 1, linear inputs on the last dim."""
    x = x.detach().float()
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and x.dim() >= 2:
        x = x.movedim(1, -1)
    return x.reshape(-1, x.shape[-1]) if x.dim() > 0 else x.reshape(1, 1)


class _Pass1:
    def __init__(self, k: int, gen: Callable[[torch.device], torch.Generator]) -> None:
        self.k, self.gen = k, gen  # gen(device): the run's generator on that device
        self.count = 0
        self.sum = self.sumsq = 0.0
        self.min, self.max = math.inf, -math.inf
        self.c_sum = self.c_sumsq = self.c_amax = None
        self.c_count = 0
        self.keys = torch.empty(0)
        self.vals = torch.empty(0)

    def update(self, xc: torch.Tensor) -> None:
        self.count += xc.numel()
        self.sum += float(xc.double().sum())
        self.sumsq += float(xc.double().pow(2).sum())
        self.min = min(self.min, float(xc.min()))
        self.max = max(self.max, float(xc.max()))
        cs, cq, ca = xc.double().sum(0), xc.double().pow(2).sum(0), xc.abs().amax(0)
        if self.c_sum is None or self.c_sum.shape != cs.shape:
            self.c_sum, self.c_sumsq, self.c_amax = cs, cq, ca
        else:
            self.c_sum += cs
            self.c_sumsq += cq
            self.c_amax = torch.maximum(self.c_amax, ca)
        self.c_count += xc.shape[0]
        # bottom-k subsample kept on the input's device: only k values ever reach the host (at the end)
        flat = xc.reshape(-1)
        keys = torch.rand(flat.numel(), generator=self.gen(flat.device), device=flat.device)
        keys = torch.cat([self.keys.to(flat.device), keys])
        vals = torch.cat([self.vals.to(flat.device), flat])
        if keys.numel() > self.k:
            idx = torch.topk(keys, self.k, largest=False).indices
            keys, vals = keys[idx], vals[idx]
        self.keys, self.vals = keys, vals


class _Pass2:
    def __init__(self, mean: float, std: float, sigma: float, amax: float, formats: list[Format]) -> None:
        self.mean, self.std, self.sigma, self.amax, self.formats = mean, std, sigma, amax, formats
        self.m4 = 0.0
        self.outliers = 0
        self.count = 0
        self.err = {f.spelling: 0.0 for f in formats}

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        c = x.double() - self.mean
        self.m4 += float(c.pow(4).sum())
        self.outliers += int((c.abs() > self.sigma * self.std).sum()) if self.std > 0 else 0
        self.count += x.numel()
        for f in self.formats:
            q = f.fake_quant(x, channel_axis=None, amax=self.amax)
            self.err[f.spelling] += float((q - x).double().pow(2).sum())


def _run(model: nn.Module, modules: dict[str, nn.Module], batches: list[Any], run_forward: RunForward,
         on_input: Callable[[str, nn.Module, torch.Tensor], None], progress, stage: str) -> None:
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: on_input(n, mod, args[0])) for n, m in modules.items()]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, b in enumerate(batches):
                run_forward(model, b)
                if progress:
                    progress(stage, i + 1, len(batches))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)


def activation_statistics(model: nn.Module, modules: dict[str, nn.Module], batches: list[Any], run_forward: RunForward,
                          act_formats: list[Format], *, act_amax: dict[str, float] | None = None, sample: int = 65536,
                          percentiles: tuple[float, ...] = (0.1, 1.0, 50.0, 99.0, 99.9), outlier_sigma: float = 6.0,
                          seed: int = 0, progress=None) -> dict[str, dict[str, Any]]:
    """Statistics of every layer's input and ``act_mse[format]`` = mean squared quantization error.

    ``amax`` is the caller's static range when given (the pipeline's calibrated ranges) and otherwise the
    max |x| seen in pass 1, exactly what ``mpsearch.simulate.calibrate_act_ranges`` would compute.
    """
    gens: dict[torch.device, torch.Generator] = {}

    def gen(device: torch.device) -> torch.Generator:
        if device not in gens:
            gens[device] = torch.Generator(device=device).manual_seed(seed)
        return gens[device]

    p1: dict[str, _Pass1] = {n: _Pass1(sample, gen) for n in modules}
    _run(model, modules, batches, run_forward, lambda n, mod, x: p1[n].update(_channels_last(x, mod)), progress, "activations")
    p2: dict[str, _Pass2] = {}
    for n, a in p1.items():
        if a.count == 0:
            continue
        mean = a.sum / a.count
        std = math.sqrt(max(a.sumsq / a.count - mean * mean, 0.0))
        amax = float(act_amax[n]) if act_amax and n in act_amax else max(abs(a.min), abs(a.max))
        p2[n] = _Pass2(mean, std, outlier_sigma, amax, act_formats)
    _run(model, {n: modules[n] for n in p2}, batches, run_forward, lambda n, mod, x: p2[n].update(x), progress, "act-noise")
    out: dict[str, dict[str, Any]] = {}
    for n, a in p1.items():
        if a.count == 0:
            out[n] = {"calls": 0}
            continue
        b = p2[n]
        mean = b.mean
        var = b.std ** 2
        qs = torch.quantile(a.vals.double().cpu(), torch.tensor([p / 100 for p in percentiles], dtype=torch.float64))
        c_mean = a.c_sum / a.c_count
        c_var = (a.c_sumsq / a.c_count - c_mean.pow(2)).clamp(min=0)
        c_amax = a.c_amax.double()
        intra = float(c_var.mean())
        out[n] = {
            "count": a.count,
            "min": a.min,
            "max": a.max,
            "absmax": max(abs(a.min), abs(a.max)),
            "amax_used": b.amax,
            "mean": mean,
            "std": b.std,
            "kurtosis": (b.m4 / b.count) / var**2 if var > 0 else 0.0,  # Pearson: 3 for a Gaussian
            "outlier_ratio": b.outliers / b.count,
            "outlier_sigma": outlier_sigma,
            "percentiles": {f"p{p:g}": float(q) for p, q in zip(percentiles, qs)},
            "channels": int(c_amax.numel()),
            "channel_range_max_over_median": float(c_amax.max() / torch.quantile(c_amax, 0.5).clamp(min=1e-30)),
            "channel_range_cv": float(c_amax.std() / c_amax.mean().clamp(min=1e-30)) if c_amax.numel() > 1 else 0.0,
            "channel_inter_var": float(c_mean.var()) if c_mean.numel() > 1 else 0.0,
            "channel_intra_var": intra,
            "channel_inter_intra_ratio": float(c_mean.var() / intra) if intra > 0 and c_mean.numel() > 1 else 0.0,
            "act_mse": {f: e / b.count for f, e in b.err.items()},
        }
    return out
