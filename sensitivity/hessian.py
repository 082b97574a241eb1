"""Second-order curvature per layer: Hutchinson Hessian traces, power-iteration eigenvalues, Fisher diagonal.

All estimates are block-diagonal: the probe of layer ``l`` touches only layer ``l``'s weight (or input), so
the quantity estimated is Tr(H_ll), the curvature of the loss when that layer alone is perturbed, which is
what quantizing that layer alone does. With ``joint=True`` one double backward serves every layer: the
probe is the concatenation of independent Rademacher vectors v_l, and v_l^T (H v)_l =
v_l^T H_ll v_l + sum_{m != l} v_l^T H_lm v_m, whose second term has zero mean because v_l is independent
of v_m; it only adds variance, which the per-layer stopping rule sees and pays for with more samples.

Layer inputs: a forward pre-hook hands each quantizable layer a private alias of its input
(``x.view_as(x)``), so the gradient w.r.t. it covers only the path through that layer even when several
layers read the same tensor (Q/K/V projections), i.e. exactly what quantizing that layer's input perturbs.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from mpsearch.errors import MpsearchError
from mpsearch.formats import Format
from sensitivity.batching import batch_rows, split_batch
from sensitivity.stats import summarize

LossFn = Callable[[nn.Module, Any], torch.Tensor]
Progress = Callable[[str, int, int], None] | None


@contextmanager
def input_taps(modules: dict[str, nn.Module], names: list[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record a differentiable private alias of every call's first input of the named layers."""
    captured: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = []

    def make(name: str):
        def pre(mod: nn.Module, args: tuple) -> tuple:
            x = args[0]
            x = x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
            captured[name].append(x)
            return (x, *args[1:])

        return pre

    for n in names:
        hooks.append(modules[n].register_forward_pre_hook(make(n)))
    try:
        yield captured
    finally:
        for h in hooks:
            h.remove()


def _rademacher(shape: torch.Size, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    v = torch.randint(0, 2, shape, generator=gen, dtype=torch.int8)
    return (v.to(like.dtype) * 2 - 1).to(like.device)


def _scalar_loss(loss_fn: LossFn, model: nn.Module, batch: Any) -> torch.Tensor:
    loss = loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise MpsearchError("task.loss must return a scalar tensor for sensitivity analysis")
    if not loss.requires_grad:
        raise MpsearchError("task.loss is not differentiable w.r.t. the layer weights; cannot compute curvature")
    if not torch.isfinite(loss):
        raise MpsearchError("task.loss is NaN or Inf on a calibration batch")
    return loss.reshape(())


def _noise(x: torch.Tensor, fmt: Format, amax: float | None) -> torch.Tensor:
    with torch.no_grad():
        return fmt.fake_quant(x.detach(), channel_axis=None, amax=amax) - x.detach()


def hutchinson_sample(model: nn.Module, modules: dict[str, nn.Module], batch: Any, loss_fn: LossFn,
                      want: list[str], gen: torch.Generator, *, act_formats: dict[str, Format] | None = None,
                      act_amax: dict[str, float] | None = None, joint: bool = True, noise_joint: bool = False,
                      micro_batch: int | None = None, weight_formats: dict[str, Format] | None = None
                      ) -> tuple[dict[str, float | None], dict[str, int]]:
    """One sample of every wanted quantity (keys from ``trace_keys``) on one calibration batch.

    ``w|L``: Rademacher sample of Tr(H) of layer L's weight block. ``x|L``: same for L's input.
    ``m|L|F``: like ``n|L|F`` for the weight noise Q_F(W) - W (per-channel scales).
    ``n|L|F``: (s*d)^T H (s*d) for d = Q_F(x) - x, the actual quantization noise of L's input under
    activation format F, with a random sign s per layer and format (so joint probing stays unbiased);
    its mean is d^T H_xx d, the second-order loss change of quantizing that input. Noise probes never
    share an HVP with the Rademacher probes (whose cross terms would swamp them); with
    ``noise_joint=False`` each gets its own HVP and the value is exact for this batch. Returns (values,
    input numel per layer); a value is ``None`` when the loss does not depend on that weight at all.
    """
    act_formats = act_formats or {}
    weight_formats = weight_formats or {}
    wl = sorted({k.split("|")[1] for k in want if k[0] in "wm"}, key=list(modules).index)
    xl = sorted({k.split("|")[1] for k in want if k[0] in "xn"}, key=list(modules).index)
    out: dict[str, float | None] = {k: 0.0 for k in want}
    numel_x: dict[str, int] = {n: 0 for n in xl}
    wanted = set(want)
    # one random sign per noise quantity, shared by all calls of a layer (queries and documents through
    # the same Linear): the exact value then includes the cross-call terms that real quantization has
    signs = {k: float(torch.randint(0, 2, (1,), generator=gen)) * 2 - 1 for k in want if k[0] in "nm"}
    for mb, weight in split_batch(batch, micro_batch):
        with input_taps(modules, xl) as taps:
            loss = _scalar_loss(loss_fn, model, mb)
        targets: list[torch.Tensor] = [modules[n].weight for n in wl]
        comps: list[list[tuple[str, torch.Tensor]]] = []
        for n in wl:
            w = modules[n].weight
            c = [(f"w|{n}", _rademacher(w.shape, gen, w))] if f"w|{n}" in wanted else []
            for f, fmt in weight_formats.items():
                if f"m|{n}|{f}" in wanted:
                    with torch.no_grad():
                        d = fmt.fake_quant(w.detach(), channel_axis=0) - w.detach()
                    c.append((f"m|{n}|{f}", signs[f"m|{n}|{f}"] * d))
            comps.append(c)
        for n in xl:
            for x in taps[n]:
                targets.append(x)
                numel_x[n] += x.numel()
                c = []
                if f"x|{n}" in wanted:
                    c.append((f"x|{n}", _rademacher(x.shape, gen, x)))
                for f, fmt in act_formats.items():
                    if f"n|{n}|{f}" in wanted:
                        c.append((f"n|{n}|{f}", signs[f"n|{n}|{f}"] * _noise(x, fmt, (act_amax or {}).get(n))))
                comps.append(c)
        grads = torch.autograd.grad(loss, targets, create_graph=True, allow_unused=True)
        for i, g in enumerate(grads):
            if g is None and i < len(wl):  # the loss does not use this layer's weight at all
                for k in want:
                    if k[0] in "wm" and k.split("|")[1] == wl[i]:
                        out[k] = None
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad and comps[i]]
        quad: dict[str, float] = {}

        def hvp_sum(items: list[tuple[int, str, torch.Tensor]]) -> None:
            """One HVP for the summed probe of ``items``; each item reads its own quadratic form."""
            probe: dict[int, torch.Tensor] = {}
            for i, _, u in items:
                probe[i] = probe[i] + u if i in probe else u
            idx = list(probe)
            dot = sum((grads[i] * probe[i]).sum() for i in idx)
            hv = dict(zip(idx, torch.autograd.grad(dot, [targets[i] for i in idx], retain_graph=True, allow_unused=True)))
            for i, key, u in items:
                h = hv[i]
                quad[key] = quad.get(key, 0.0) + (0.0 if h is None else float((h * u).sum()))

        random_items = [(i, k, u) for i in live for k, u in comps[i] if k[0] in "wx"]
        noise_items = [(i, k, u) for i in live for k, u in comps[i] if k[0] in "nm"]
        if joint:
            if random_items:
                hvp_sum(random_items)
        else:
            for item in random_items:
                hvp_sum([item])
        if noise_joint and noise_items:
            hvp_sum(noise_items)
        else:  # d^T H d exactly, one HVP per quantity (all calls of the layer together): no probe variance
            by_key: dict[str, list[tuple[int, str, torch.Tensor]]] = {}
            for item in noise_items:
                by_key.setdefault(item[1], []).append(item)
            for items in by_key.values():
                hvp_sum(items)
        for key, q in quad.items():
            if out[key] is not None:
                out[key] += weight * q
        del grads, loss
    return out, numel_x


def trace_keys(names: list[str], act_trace: bool, act_formats: list[str], weight_formats: list[str] = ()) -> list[str]:
    """``w|L`` weight trace, ``x|L`` input trace, ``n|L|F`` input noise curvature, ``m|L|F`` weight noise."""
    keys = [f"w|{n}" for n in names]
    keys += [f"m|{n}|{f}" for n in names for f in weight_formats]
    if act_trace:
        keys += [f"x|{n}" for n in names]
    keys += [f"n|{n}|{f}" for n in names for f in act_formats]
    return keys


def new_trace_state(keys: list[str]) -> dict[str, Any]:
    """Checkpointable state of a Hutchinson run (plain JSON types only)."""
    return {"next_sample": 0, "q": {k: [] for k in keys}, "done": {k: None for k in keys}, "x_numel": {}}


def _stop_reason(samples: list[float], tol: float, min_n: int, max_n: int) -> str | None:
    if len(samples) >= min_n:
        s = summarize(samples)
        if s["rse"] < tol:
            return "tol"
    if len(samples) >= max_n:
        return "cap"
    return None


def hutchinson_traces(model: nn.Module, modules: dict[str, nn.Module], batches: list[Any], loss_fn: LossFn, *,
                      keys: list[str], tol: float, min_samples: int, max_samples: int, seed: int,
                      act_formats: dict[str, Format] | None = None, act_amax: dict[str, float] | None = None,
                      weight_formats: dict[str, Format] | None = None,
                      joint: bool = True, noise_joint: bool = False, micro_batch: int | None = None,
                      state: dict[str, Any] | None = None,
                      checkpoint: Callable[[dict[str, Any]], None] | None = None, checkpoint_s: float = 5.0,
                      time_budget_s: float | None = None, progress: Progress = None) -> dict[str, Any]:
    """Sample until every quantity reaches RSE < ``tol`` (after ``min_samples``) or ``max_samples``, or
    until ``time_budget_s`` of sampling in this call is spent (unfinished quantities then stop as "time").

    Sample ``s`` uses calibration batch ``s mod len(batches)`` and probes drawn from a generator seeded
    by (seed, s), so a run resumed from ``state`` continues exactly where an uninterrupted one would.
    ``checkpoint(state)`` is called when a quantity finishes and at least every ``checkpoint_s`` seconds.
    """
    st = state or new_trace_state(keys)
    last = start = time.monotonic()
    while True:
        want = [k for k in keys if st["done"][k] is None]
        over = time_budget_s is not None and time.monotonic() - start >= time_budget_s
        if want and over and st["next_sample"] >= 2:  # two samples at least: a CI needs a spread
            for k in want:
                st["done"][k] = "time"
            want = []
        if progress:
            progress("hutchinson", len(keys) - len(want), len(keys))
        if not want:
            break
        s = st["next_sample"]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + s)
        vals, nx = hutchinson_sample(model, modules, batches[s % len(batches)], loss_fn, want, gen,
                                     act_formats=act_formats, act_amax=act_amax, joint=joint, noise_joint=noise_joint,
                                     micro_batch=micro_batch, weight_formats=weight_formats)
        finished = False
        for k, v in vals.items():
            layer = k.split("|")[1]
            if v is None or (k[0] in "xn" and nx.get(layer, 0) == 0):
                # the loss never reaches this layer (or its input): that Hessian block is exactly zero
                st["q"][k], st["done"][k], finished = [0.0], "unused", True
                continue
            st["q"][k].append(v)
            if k[0] in "nm" and not noise_joint:
                # exact per batch: one value per calibration batch, the CI is the spread over batches
                st["done"][k] = "all-batches" if len(st["q"][k]) >= len(batches) else None
            else:
                st["done"][k] = _stop_reason(st["q"][k], tol, min_samples, max_samples)
            finished |= st["done"][k] is not None
        for layer, n in nx.items():
            st["x_numel"].setdefault(layer, []).append(n)
        st["next_sample"] = s + 1
        if checkpoint and (finished or time.monotonic() - last >= checkpoint_s):
            checkpoint(st)
            last = time.monotonic()
    if checkpoint:
        checkpoint(st)
    return st


def fisher_traces(model: nn.Module, modules: dict[str, nn.Module], batches: list[Any], loss_fn: LossFn, *,
                  keys: list[str], act_formats: dict[str, Format] | None = None,
                  act_amax: dict[str, float] | None = None, micro_batch: int | None = None,
                  weight_formats: dict[str, Format] | None = None,
                  progress: Progress = None) -> dict[str, Any]:
    """Empirical-Fisher stand-ins for the same quantities as ``hutchinson_traces``: one backward per
    micro-batch, no double backward.

    For a loss that is a mean over m rows, E[g g^T] ~= F/m (mean-gradient term neglected) and the Fisher
    approximates the Hessian near a minimum, so each micro-batch gives Tr(H) ~= m * ||g||^2 and
    d^T H d ~= m * (g . d)^2. One value per calibration batch (weighted over its micro-batches); the CI
    comes from the spread over batches.
    """
    act_formats = act_formats or {}
    names = list(modules)
    wanted = set(keys)
    xl = [n for n in names if any(k.split("|")[1] == n for k in keys if k[0] in "xn")]
    weight_formats = weight_formats or {}
    st = new_trace_state(keys)
    for b_i, batch in enumerate(batches):
        vals = {k: 0.0 for k in keys}
        unused: set[str] = set()
        nx = {n: 0 for n in xl}
        for mb, weight in split_batch(batch, micro_batch):
            try:
                m = batch_rows(mb)
            except MpsearchError:
                m = 1
            with input_taps(modules, xl) as taps:
                loss = _scalar_loss(loss_fn, model, mb)
            owners = [n for n in names]
            targets = [modules[n].weight for n in names]
            xs = [(n, x) for n in xl for x in taps[n]]
            grads = torch.autograd.grad(loss, targets + [x for _, x in xs], allow_unused=True)
            for n, g in zip(owners, grads[: len(names)]):
                if g is None:
                    unused.add(n)
                    continue
                if f"w|{n}" in wanted:
                    vals[f"w|{n}"] += weight * m * float(g.double().pow(2).sum())
                for f, fmt in weight_formats.items():
                    if f"m|{n}|{f}" in wanted:
                        w = modules[n].weight.detach()
                        d = fmt.fake_quant(w, channel_axis=0) - w
                        vals[f"m|{n}|{f}"] += weight * m * float((g.double() * d.double()).sum()) ** 2
            for (n, x), g in zip(xs, grads[len(names):]):
                nx[n] += x.numel()
                if g is None:
                    continue
                if f"x|{n}" in wanted:
                    vals[f"x|{n}"] += weight * m * float(g.double().pow(2).sum())
                for f, fmt in act_formats.items():
                    if f"n|{n}|{f}" in wanted:
                        d = _noise(x, fmt, (act_amax or {}).get(n))
                        vals[f"n|{n}|{f}"] += weight * m * float((g.double() * d.double()).sum()) ** 2
        for k in keys:
            st["q"][k].append(0.0 if k[0] in "wm" and k.split("|")[1] in unused else vals[k])
        for n, c in nx.items():
            st["x_numel"].setdefault(n, []).append(c)
        if progress:
            progress("fisher", b_i + 1, len(batches))
    for k in keys:
        st["done"][k] = "unused" if all(v == 0.0 for v in st["q"][k]) else "pass"
    st["next_sample"] = len(batches)
    return st


def top_eigenvalues(model: nn.Module, modules: dict[str, nn.Module], batches: list[Any], loss_fn: LossFn, *,
                    iters: int, tol: float, seed: int, done: dict[str, Any] | None = None,
                    checkpoint: Callable[[dict[str, Any]], None] | None = None,
                    progress: Progress = None) -> dict[str, dict[str, Any]]:
    """Dominant eigenvalue of each layer's Hessian block H_ll (HAWQ) by power iteration on HVPs.

    The Hessian is that of the mean loss over ``batches``; the gradient graphs are built once and reused
    for every HVP. Power iteration converges to the eigenvalue of largest magnitude; its sign is kept.
    """
    names = list(modules)
    out: dict[str, dict[str, Any]] = dict(done or {})
    weights = [modules[n].weight for n in names]
    grads_per_batch = []
    for b in batches:
        loss = _scalar_loss(loss_fn, model, b)
        grads_per_batch.append(torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True))
    for li, n in enumerate(names):
        if progress:
            progress("eigenvalues", li, len(names))
        if n in out:
            continue
        w = weights[li]
        gen = torch.Generator().manual_seed(seed * 7919 + li)
        v = torch.randn(w.shape, generator=gen).to(w.device, w.dtype)
        v = v / v.norm()
        lam, prev, it, converged = 0.0, math.nan, 0, False
        for it in range(1, iters + 1):
            hv = torch.zeros_like(w)
            for grads in grads_per_batch:
                g = grads[li]
                if g is not None and g.requires_grad:
                    (h,) = torch.autograd.grad((g * v).sum(), w, retain_graph=True, allow_unused=True)
                    if h is not None:
                        hv += h / len(grads_per_batch)
            lam = float((hv * v).sum())
            norm = float(hv.norm())
            if norm == 0.0:
                converged = True
                break
            v = hv / norm
            if abs(lam - prev) <= tol * abs(lam):
                converged = True
                break
            prev = lam
        out[n] = {"eigenvalue": lam, "iters": it, "converged": converged}
        if checkpoint:
            checkpoint(out)
    if progress:
        progress("eigenvalues", len(names), len(names))
    return out
