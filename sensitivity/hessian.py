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


def wanted_layers(modules: dict[str, nn.Module], want: list[str]) -> tuple[list[str], list[str]]:
    """Layers whose weight (``w``/``m`` keys) and whose input (``x``/``n`` keys) a round differentiates, in
    execution order."""
    order = {n: i for i, n in enumerate(modules)}
    wl = sorted({k.split("|")[1] for k in want if k[0] in WEIGHT_KINDS}, key=order.__getitem__)
    xl = sorted({k.split("|")[1] for k in want if k[0] in "xn"}, key=order.__getitem__)
    return wl, xl


#: key kinds that belong to a layer's weight (trace, exact noise form, diagonal noise form)
WEIGHT_KINDS = "wme"


def probe_targets(modules: dict[str, nn.Module], wl: list[str], xl: list[str], taps: dict[str, list[torch.Tensor]],
                  numel_x: dict[str, int]) -> tuple[list[torch.Tensor], list[str]]:
    """What one backward differentiates: the weights of ``wl`` then every tapped input of ``xl`` (one per
    call of the layer), with the layer owning each; adds the inputs' sizes to ``numel_x``."""
    targets: list[torch.Tensor] = [modules[n].weight for n in wl]
    owner: list[str] = list(wl)
    for n in xl:
        for x in taps[n]:
            targets.append(x)
            owner.append(n)
            numel_x[n] += x.numel()
    return targets, owner


def _rademacher(shape: torch.Size, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """+-1 entries drawn on the generator's device (a CUDA generator keeps probes off the host)."""
    v = torch.randint(0, 2, shape, generator=gen, dtype=torch.int8, device=gen.device)
    return (v.to(like.dtype) * 2 - 1).to(like.device)


def _scalar_loss(loss_fn: LossFn, model: nn.Module, batch: Any, check_finite: bool = True) -> torch.Tensor:
    loss = loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise MpsearchError("task.loss must return a scalar tensor for sensitivity analysis")
    if not loss.requires_grad:
        raise MpsearchError("task.loss is not differentiable w.r.t. the layer weights; cannot compute curvature")
    if check_finite and not torch.isfinite(loss):  # a host sync: callers on a GPU check later, in bulk
        raise MpsearchError("task.loss is NaN or Inf on a calibration batch")
    return loss.reshape(())


def _noise(x: torch.Tensor, fmt: Format, amax: float | None) -> torch.Tensor:
    with torch.no_grad():
        return fmt.fake_quant(x.detach(), channel_axis=None, amax=amax) - x.detach()


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> as a 0-dim float tensor on the device (fp32 accumulation for half types; no host sync)."""
    if a.dtype in (torch.float16, torch.bfloat16):
        return torch.dot(a.reshape(-1).float(), b.reshape(-1).float())
    return (a * b).sum()


def hutchinson_round(model: nn.Module, modules: dict[str, nn.Module], batch: Any, loss_fn: LossFn,
                     want: list[str], gens: list[torch.Generator], *, act_formats: dict[str, Format] | None = None,
                     act_amax: dict[str, float] | None = None, joint: bool = True, noise_joint: bool = False,
                     micro_batch: int | None = None, weight_formats: dict[str, Format] | None = None
                     ) -> tuple[list[dict[str, float | None]], dict[str, int]]:
    """``len(gens)`` samples of every wanted quantity on one calibration batch, sharing one forward and
    one first backward (``create_graph``) per micro-batch among all probes.

    Probe ``k`` draws its Rademacher vectors from ``gens[k]`` (on the model's device). Exact noise
    quantities (``n``/``m`` keys) do not depend on the probe and are computed once, with probe 0; the
    other probes' dicts omit them. All quadratic forms stay on the device until one host transfer at the
    end. Returns (one value dict per probe, input numel per layer); see ``hutchinson_sample``.
    """
    act_formats = act_formats or {}
    weight_formats = weight_formats or {}
    wl, xl = wanted_layers(modules, want)
    n_probe = len(gens)
    acc: list[dict[str, torch.Tensor | float]] = [{} for _ in range(n_probe)]
    unused: set[str] = set()
    numel_x: dict[str, int] = {n: 0 for n in xl}
    wanted = set(want)
    # one random sign per noise quantity, shared by all calls of a layer (queries and documents through
    # the same Linear): the exact value then includes the cross-call terms that real quantization has
    signs = {k: float(torch.randint(0, 2, (1,), generator=gens[0], device=gens[0].device)) * 2 - 1
             for k in want if k[0] in "nm"}
    losses = []
    for mb, weight in split_batch(batch, micro_batch):
        with input_taps(modules, xl) as taps:
            loss = _scalar_loss(loss_fn, model, mb, check_finite=False)
        losses.append(loss.detach())
        targets, owner = probe_targets(modules, wl, xl, taps, numel_x)
        grads = torch.autograd.grad(loss, targets, create_graph=True, allow_unused=True)
        for i, g in enumerate(grads[: len(wl)]):
            if g is None:  # the loss does not use this layer's weight at all
                unused.add(wl[i])
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]

        def hvp_sum(items: list[tuple[int, str, torch.Tensor]], into: dict[str, torch.Tensor | float],
                    readers: dict[int, list[tuple[str, torch.Tensor]]] | None = None) -> None:
            """One HVP for the summed probe of ``items``; each item reads its own quadratic form, and
            ``readers[i]`` (key, r) pairs read <Hv, r> of target i as well."""
            probe: dict[int, torch.Tensor] = {}
            for i, _, u in items:
                probe[i] = probe[i] + u if i in probe else u
            idx = list(probe)
            dot = sum(_dot(grads[i], probe[i]) for i in idx)
            hv = dict(zip(idx, torch.autograd.grad(dot, [targets[i] for i in idx], retain_graph=True, allow_unused=True)))
            for i, key, u in items:
                h = hv[i]
                if h is not None:
                    if key in wanted:
                        into[key] = into.get(key, 0.0) + weight * _dot(h, u)
                    for rkey, r in (readers or {}).get(i, ()):
                        into[rkey] = into.get(rkey, 0.0) + weight * _dot(h, r)

        live_set = set(live)
        # diag noise forms: with Rademacher u, E[u_i (Hu)_i] = H_ii, so <Hu, u * d^2> estimates sum_i H_ii d_i^2
        diag_sq: dict[int, list[tuple[str, torch.Tensor]]] = {}
        for i in range(len(wl)):
            ekeys = [(f"e|{owner[i]}|{f}", fmt) for f, fmt in weight_formats.items() if f"e|{owner[i]}|{f}" in wanted]
            if ekeys:
                w = targets[i].detach()
                with torch.no_grad():
                    diag_sq[i] = [(ek, (fmt.fake_quant(w, channel_axis=0) - w).pow(2)) for ek, fmt in ekeys]
        for k, gen in enumerate(gens):
            random_items: list[tuple[int, str, torch.Tensor]] = []
            readers: dict[int, list[tuple[str, torch.Tensor]]] = {}
            for i in range(len(targets)):
                key = f"{'w' if i < len(wl) else 'x'}|{owner[i]}"
                if key in wanted or i in diag_sq:
                    u = _rademacher(targets[i].shape, gen, targets[i])  # drawn even if unused: fixed RNG order
                    if i in live_set:
                        random_items.append((i, key, u))
                        if i in diag_sq:
                            readers[i] = [(ek, u * d2) for ek, d2 in diag_sq[i]]
            if joint:
                if random_items:
                    hvp_sum(random_items, acc[k], readers)
            else:
                for item in random_items:
                    hvp_sum([item], acc[k], readers)
            del random_items, readers
        noise_items: list[tuple[int, str, torch.Tensor]] = []
        for i in live:
            n = owner[i]
            if i < len(wl):
                w = targets[i].detach()
                for f, fmt in weight_formats.items():
                    if f"m|{n}|{f}" in wanted:
                        with torch.no_grad():
                            d = fmt.fake_quant(w, channel_axis=0) - w
                        noise_items.append((i, f"m|{n}|{f}", signs[f"m|{n}|{f}"] * d))
            else:
                for f, fmt in act_formats.items():
                    if f"n|{n}|{f}" in wanted:
                        d = _noise(targets[i], fmt, (act_amax or {}).get(n))
                        noise_items.append((i, f"n|{n}|{f}", signs[f"n|{n}|{f}"] * d))
        if noise_items:
            if noise_joint:
                hvp_sum(noise_items, acc[0])
            else:  # d^T H d exactly, one HVP per quantity (all calls of the layer together): no probe variance
                by_key: dict[str, list[tuple[int, str, torch.Tensor]]] = {}
                for item in noise_items:
                    by_key.setdefault(item[1], []).append(item)
                for items in by_key.values():
                    hvp_sum(items, acc[0])
        del grads, loss, targets, noise_items
    if not all(math.isfinite(v) for v in torch.stack(losses).float().tolist()):
        raise MpsearchError("task.loss is NaN or Inf on a calibration batch")
    # one host transfer for every quadratic form of every probe
    flat = [(k, key, v) for k in range(n_probe) for key, v in acc[k].items() if isinstance(v, torch.Tensor)]
    host = torch.stack([v.detach().double().reshape(()) for _, _, v in flat]).tolist() if flat else []
    vals: list[dict[str, float | None]] = []
    for k in range(n_probe):
        keys = [key for key in want if k == 0 or key[0] in "wxe"]
        vals.append({key: 0.0 for key in keys})
    for (k, key, _), v in zip(flat, host):
        vals[k][key] = v
    for k in range(n_probe):
        for key in vals[k]:
            if key[0] in WEIGHT_KINDS and key.split("|")[1] in unused:
                vals[k][key] = None
    return vals, numel_x


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
    vals, nx = hutchinson_round(model, modules, batch, loss_fn, want, [gen], act_formats=act_formats,
                                act_amax=act_amax, joint=joint, noise_joint=noise_joint, micro_batch=micro_batch,
                                weight_formats=weight_formats)
    return vals[0], nx


def trace_keys(names: list[str], act_trace: bool, act_formats: list[str], weight_formats: list[str] = (),
               weight_quad: str = "exact") -> list[str]:
    """``w|L`` weight trace, ``x|L`` input trace, ``n|L|F`` input noise curvature, and per weight format
    either ``m|L|F`` (``weight_quad="exact"``: d^T H d of the weight error d) or ``e|L|F`` ("diag":
    sum_i H_ii d_i^2, the expected d^T H d for rounding errors independent across elements)."""
    keys = [f"w|{n}" for n in names]
    kind = "m" if weight_quad == "exact" else "e"
    keys += [f"{kind}|{n}|{f}" for n in names for f in weight_formats]
    if act_trace:
        keys += [f"x|{n}" for n in names]
    keys += [f"n|{n}|{f}" for n in names for f in act_formats]
    return keys


def new_trace_state(keys: list[str]) -> dict[str, Any]:
    """Checkpointable state of a Hutchinson run (plain JSON types only)."""
    return {"next_sample": 0, "q": {k: [] for k in keys}, "done": {k: None for k in keys}, "x_numel": {}}


class _Running:
    """Welford mean/variance of one quantity's samples: O(1) per sample, no list rescans per probe."""

    __slots__ = ("n", "mean", "m2")

    def __init__(self, samples: list[float] = ()) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        for x in samples:
            self.add(x)

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    def sem(self) -> float:
        return math.sqrt(max(self.m2, 0.0) / (self.n - 1) / self.n) if self.n > 1 else math.inf

    def rse(self) -> float:
        sem = self.sem()
        if sem == 0.0:
            return 0.0
        return sem / abs(self.mean) if self.mean != 0.0 else math.inf


def _stop_reason(run: _Running, tol: float, min_n: int, max_n: int, abs_tol: float | None = None) -> str | None:
    """"tol": RSE < tol; "atol": standard error <= abs_tol (an absolute bound, for quantities whose mean is
    near 0 where no relative tolerance is reachable); "cap": ``max_n`` samples."""
    if run.n >= min_n:
        if run.rse() < tol:
            return "tol"
        if abs_tol is not None and run.sem() <= abs_tol:
            return "atol"
    if run.n >= max_n:
        return "cap"
    return None


def hutchinson_traces(model: nn.Module, modules: dict[str, nn.Module], batches: list[Any], loss_fn: LossFn, *,
                      keys: list[str], tol: float, min_samples: int, max_samples: int, seed: int,
                      act_formats: dict[str, Format] | None = None, act_amax: dict[str, float] | None = None,
                      weight_formats: dict[str, Format] | None = None,
                      joint: bool = True, noise_joint: bool = False, micro_batch: int | None = None,
                      probes_per_batch: int = 1, atol: float | None = None,
                      state: dict[str, Any] | None = None,
                      checkpoint: Callable[[dict[str, Any]], None] | None = None, checkpoint_s: float = 5.0,
                      time_budget_s: float | None = None, progress: Progress = None) -> dict[str, Any]:
    """Sample until every quantity reaches RSE < ``tol`` (after ``min_samples``) or ``max_samples``, or
    until ``time_budget_s`` of sampling in this call is spent (unfinished quantities then stop as "time").

    Sampling goes in rounds of ``probes_per_batch`` probes on one calibration batch, which share the
    forward and the first (``create_graph``) backward (see :func:`sample_until_stopped` for the batch and
    seed schedule that makes a resumed run continue exactly where an uninterrupted one would). Exact noise
    quantities (``n``/``m`` keys, ``noise_joint=False``) take one value per calibration batch instead.
    """
    def one_round(batch_index: int, want: list[str], gens: list[torch.Generator]):
        return hutchinson_round(model, modules, batches[batch_index], loss_fn, want, gens,
                                act_formats=act_formats, act_amax=act_amax, joint=joint, noise_joint=noise_joint,
                                micro_batch=micro_batch, weight_formats=weight_formats)

    return sample_until_stopped(one_round, len(batches), keys, device=_device_of(modules), tol=tol,
                                min_samples=min_samples, max_samples=max_samples, seed=seed,
                                probes_per_batch=probes_per_batch, atol=atol, exact_noise=not noise_joint,
                                state=state, checkpoint=checkpoint, checkpoint_s=checkpoint_s,
                                time_budget_s=time_budget_s, progress=progress, stage="hutchinson")


def _device_of(modules: dict[str, nn.Module]) -> torch.device:
    try:
        return next(iter(modules.values())).weight.device
    except StopIteration:
        return torch.device("cpu")


RoundFn = Callable[[int, list[str], list[torch.Generator]], tuple[list[dict[str, float | None]], dict[str, int]]]


def sample_until_stopped(one_round: RoundFn, n_batches: int, keys: list[str], *, device: torch.device, tol: float,
                         min_samples: int, max_samples: int, seed: int, probes_per_batch: int = 1,
                         atol: float | None = None, exact_noise: bool = False, state: dict[str, Any] | None = None,
                         checkpoint: Callable[[dict[str, Any]], None] | None = None, checkpoint_s: float = 5.0,
                         time_budget_s: float | None = None, progress: Progress = None,
                         stage: str = "hutchinson") -> dict[str, Any]:
    """The sequential stopping loop shared by every sampled estimator (Hutchinson, Gauss-Newton).

    ``one_round(batch_index, want, gens)`` returns one value dict per generator (a probe each) and the
    input numel per layer. The round starting at sample ``s`` uses batch ``(s // probes_per_batch) mod
    n_batches`` and probe ``j`` draws from a generator on ``device`` seeded by (seed, s + j), so a run
    resumed from ``state`` continues exactly where an uninterrupted one would. A quantity stops at RSE <
    ``tol`` (after ``min_samples``, and never before every calibration batch has contributed), at
    ``max_samples`` ("cap"), when ``time_budget_s`` of sampling in this
    call is spent ("time"), or, with ``atol``, once its standard error is at most ``atol`` times the largest
    |mean| among quantities of its kind ("atol": the rule for traces near 0 or negative, whose relative
    error cannot shrink). ``exact_noise``: ``n``/``m`` values are exact per batch, one per calibration batch.
    ``checkpoint(state)`` is called when a quantity finishes and at least every ``checkpoint_s`` seconds.
    """
    st = state or new_trace_state(keys)
    k_round = max(1, int(probes_per_batch))
    # the target is the mean over all calibration batches: a quantity may not stop on a relative error
    # measured before every batch has contributed (with many probes per batch the first rounds all come
    # from batch 0 and would under-state the spread)
    min_samples = max(min_samples, min(n_batches * k_round, max_samples))
    runs = {k: _Running(st["q"][k]) for k in keys}
    last = start = time.monotonic()
    while True:
        want = [k for k in keys if st["done"][k] is None]
        over = time_budget_s is not None and time.monotonic() - start >= time_budget_s
        if want and over and st["next_sample"] >= 2:  # two samples at least: a CI needs a spread
            for k in want:
                st["done"][k] = "time"
            want = []
        if progress:
            progress(stage, len(keys) - len(want), len(keys))
        if not want:
            break
        s = st["next_sample"]
        gens = [torch.Generator(device=device).manual_seed(seed * 1_000_003 + s + j) for j in range(k_round)]
        vals, nx = one_round((s // k_round) % n_batches, want, gens)
        finished = False
        for probe_vals in vals:
            for k, v in probe_vals.items():
                if st["done"][k] is not None:
                    continue
                layer = k.split("|")[1]
                if v is None or (k[0] in "xn" and nx.get(layer, 0) == 0):
                    # the loss never reaches this layer (or its input): that curvature block is exactly zero
                    st["q"][k], st["done"][k], finished = [0.0], "unused", True
                    runs[k] = _Running([0.0])
                    continue
                st["q"][k].append(v)
                runs[k].add(v)
                if k[0] in "nm" and exact_noise:
                    # exact per batch: one value per calibration batch, the CI is the spread over batches
                    st["done"][k] = "all-batches" if len(st["q"][k]) >= n_batches else None
        scale = {kind: max((abs(runs[k].mean) for k in keys if k[0] == kind and runs[k].n), default=0.0)
                 for kind in "wx"}
        for k in want:
            if st["done"][k] is None and not (k[0] in "nm" and exact_noise):
                abs_tol = atol * scale[k[0]] if atol is not None and k[0] in scale and scale[k[0]] > 0 else None
                st["done"][k] = _stop_reason(runs[k], tol, min_samples, max_samples, abs_tol)
            finished |= st["done"][k] is not None
        for layer, n in nx.items():
            st["x_numel"].setdefault(layer, []).append(n)
        st["next_sample"] = s + k_round
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
                    if f"m|{n}|{f}" in wanted or f"e|{n}|{f}" in wanted:
                        w = modules[n].weight.detach()
                        d = fmt.fake_quant(w, channel_axis=0) - w
                    if f"m|{n}|{f}" in wanted:
                        vals[f"m|{n}|{f}"] += weight * m * float((g.double() * d.double()).sum()) ** 2
                    if f"e|{n}|{f}" in wanted:
                        vals[f"e|{n}|{f}"] += weight * m * float((g.double() * d.double()).pow(2).sum())
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
            st["q"][k].append(0.0 if k[0] in WEIGHT_KINDS and k.split("|")[1] in unused else vals[k])
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
