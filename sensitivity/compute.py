"""``compute_sensitivity``: the pipeline's entry point, from a Task to a SensitivityTable.

Stages (each checkpointed under ``cache_dir`` when given): activation statistics and noise ->
curvature (Hutchinson traces of weights and inputs, or Fisher) -> optional eigenvalues -> Omega table.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch

from mpsearch.errors import MpsearchError
from mpsearch.formats import parse_format
from mpsearch.graph import LayerGraph
from mpsearch.plan import Candidate
from mpsearch.tables import SensitivityTable
from mpsearch.task import Task
from sensitivity.activations import activation_statistics
from sensitivity.batching import to_device
from sensitivity.cache import Checkpoints, cache_key
from sensitivity.config import SensitivityConfig
from sensitivity.ggn import ggn_traces
from sensitivity.hessian import fisher_traces, hutchinson_traces, top_eigenvalues, trace_keys
from sensitivity.omega import omega_table, weight_error
from sensitivity.stats import summarize

Progress = Callable[[str, int, int], None] | None


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise MpsearchError(f"unknown device {name!r}", hint="use cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MpsearchError(f"device {name!r} requested but CUDA is not available here", hint="use device='cpu'")
    return dev


def _check_inputs(task: Task, graph: LayerGraph, candidates: Sequence[Candidate]) -> list[Candidate]:
    cands = list(candidates)
    if not cands:
        raise MpsearchError("no candidate formats given to sensitivity analysis")
    if not all(isinstance(c, Candidate) for c in cands):
        raise MpsearchError("candidates must be mpsearch.plan.Candidate objects (use parse_candidates)")
    if len(task.calib_batches) == 0:
        raise MpsearchError(f"task {task.name!r} has no calibration batches; sensitivity needs data")
    mods = dict(task.model.named_modules())
    for name in graph.names:
        if name not in mods or not hasattr(mods[name], "weight"):
            raise MpsearchError(f"graph layer {name!r} is not a weighted module of the task's model; rebuild the graph")
    return cands


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _trace_summary(samples: list[float]) -> dict[str, Any]:
    s = summarize(samples)
    return {"mean": s["mean"], "ci95": s["ci95"], "samples": s["n"], "rse": s["rse"], "std": s["std"], "negative": s["negative"]}


def compute_sensitivity(task: Task, graph: LayerGraph, candidates: Sequence[Candidate],
                        config: SensitivityConfig | None = None, *, act_amax: dict[str, float] | None = None,
                        cache_dir: Any = None, progress: Progress = None) -> SensitivityTable:
    """Per-layer curvature, activation statistics and ``omega[layer][cand.key]`` for every candidate.

    ``act_amax`` are the static activation ranges the simulation will use (default: max |x| on the
    calibration data). ``cache_dir`` enables the content-addressed cache and per-stage checkpoints (a
    killed run resumes where it stopped). ``progress(stage, done, total)`` feeds progress bars; stages are
    "activations", "act-noise", "hutchinson" (done = finished quantities), "fisher", "eigenvalues".

    ``layer_stats[layer]``: ``trace`` (mean), ``trace_ci95`` (Student-t half-width), ``trace_samples``,
    ``trace_rse``, ``trace_negative`` (raw mean < 0; Omega then uses 0 and ``omega_trace_clamped`` is set),
    ``trace_stop`` ("tol" | "atol" | "cap" | "time" | "unused" | "pass"), ``eigenvalue`` (None unless enabled), ``act`` (range,
    percentiles, kurtosis, outlier ratio, per-channel range spread and inter/intra-channel variance),
    ``act_mse`` and ``act_noise_curvature`` per activation format, ``weight_error`` per weight format.
    """
    cfg = (config or SensitivityConfig()).validate()
    if cfg.method == "ggn" and getattr(task, "logits", None) is None:
        raise MpsearchError(f"task {task.name!r} has no logits function, which sensitivity method=ggn needs "
                            "(its loss must be the mean cross-entropy of task.logits); use method=hutchinson or fisher")
    cands = _check_inputs(task, graph, candidates)
    names = graph.names
    settings = {
        "config": cfg.cache_dict(),
        "candidates": [c.key for c in cands],
        "layers": names,
        "graph": graph.fingerprint(),
        "act_amax": {k: float(v) for k, v in sorted((act_amax or {}).items())},
    }
    key = cache_key(task.model, task.calib_batches, settings)
    ck = Checkpoints(None if cache_dir is None else f"{cache_dir}/sensitivity-{key}")
    cached = ck.load("table")
    if cached is not None:
        return SensitivityTable.from_dict(cached)

    device = _device(cfg.device)
    model = copy.deepcopy(task.model).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    modules = {n: model.get_submodule(n) for n in names}
    for m in modules.values():
        m.weight.requires_grad_(True)
    batches = [to_device(b, device) for b in task.calib_batches]
    act_formats = sorted({parse_format(c.act) for c in cands if not parse_format(c.act).is_float}, key=lambda f: f.spelling)
    weight_formats = sorted({parse_format(c.weight) for c in cands}, key=lambda f: f.spelling)

    acts = ck.load("activations")
    if acts is None:
        acts = activation_statistics(model, modules, batches, task.run_forward, act_formats, act_amax=act_amax,
                                     sample=cfg.act_sample, percentiles=tuple(cfg.percentiles),
                                     outlier_sigma=cfg.outlier_sigma, seed=cfg.seed, progress=progress)
        ck.save("activations", acts)

    amax_used = {n: acts[n]["amax_used"] for n in names if "amax_used" in acts.get(n, {})}
    fmt_map = {f.spelling: f for f in act_formats}
    wfmt_map = {f.spelling: f for f in weight_formats if f.spelling != "fp32"} if cfg.weight_term != "trace" else {}
    wkind = "e" if cfg.weight_term == "diag" else "m"
    keys = trace_keys(names, cfg.act_trace, list(fmt_map) if cfg.act_hessian else [], list(wfmt_map),
                      weight_quad="diag" if cfg.weight_term == "diag" else "exact")
    if cfg.method == "hutchinson":
        state = ck.load("hutchinson")
        state = hutchinson_traces(model, modules, batches, task.loss, keys=keys, tol=cfg.tol,
                                  min_samples=cfg.min_samples, max_samples=cfg.max_samples, seed=cfg.seed,
                                  act_formats=fmt_map, act_amax=amax_used, weight_formats=wfmt_map,
                                  joint=cfg.joint, noise_joint=cfg.noise_joint,
                                  micro_batch=cfg.micro_batch, probes_per_batch=cfg.probes_per_batch,
                                  atol=cfg.atol, state=state,
                                  checkpoint=lambda s: ck.save("hutchinson", s), checkpoint_s=cfg.checkpoint_s,
                                  time_budget_s=cfg.time_budget_s, progress=progress)
    elif cfg.method == "ggn":
        state = ggn_traces(model, modules, batches, task.logits, keys=keys, tol=cfg.tol, min_samples=cfg.min_samples,
                           max_samples=cfg.max_samples, seed=cfg.seed, act_formats=fmt_map, act_amax=amax_used,
                           weight_formats=wfmt_map, micro_batch=cfg.micro_batch, probes_per_batch=cfg.probes_per_batch,
                           state=ck.load("ggn"), checkpoint=lambda s: ck.save("ggn", s), checkpoint_s=cfg.checkpoint_s,
                           time_budget_s=cfg.time_budget_s, progress=progress, probe=cfg.ggn_probe)
    else:
        state = ck.load("fisher")
        if state is None:
            state = fisher_traces(model, modules, batches, task.loss, keys=keys, act_formats=fmt_map,
                                  weight_formats=wfmt_map,
                                  act_amax=amax_used, micro_batch=cfg.micro_batch, progress=progress)
            ck.save("fisher", state)

    eig: dict[str, Any] = {}
    if cfg.eigenvalues and cfg.method == "hutchinson":
        eig = ck.load("eigenvalues") or {}
        eig = top_eigenvalues(model, modules, batches[: cfg.eigen_batches], task.loss, iters=cfg.power_iters,
                              tol=cfg.power_tol, seed=cfg.seed, done=eig, checkpoint=lambda e: ck.save("eigenvalues", e),
                              progress=progress)

    layer_stats: dict[str, dict[str, Any]] = {}
    werr: dict[str, dict[str, float]] = {}
    n_params: dict[str, int] = {}
    traces: dict[str, float] = {}
    act_energy: dict[str, dict[str, float]] = {}
    w_energy: dict[str, dict[str, float]] = {}
    for n in names:
        w = modules[n].weight
        n_params[n] = w.numel()
        werr[n] = {f.spelling: weight_error(w, f) for f in weight_formats}
        t = _trace_summary(state["q"][f"w|{n}"])
        traces[n] = t["mean"]
        stats: dict[str, Any] = {
            "method": cfg.method,
            "params": n_params[n],
            "trace": t["mean"],
            "trace_ci95": t["ci95"],
            "trace_samples": t["samples"],
            "trace_rse": t["rse"],
            "trace_std": t["std"],
            "trace_negative": t["negative"],
            "trace_stop": state["done"][f"w|{n}"],
            "trace_per_param": t["mean"] / n_params[n],
            "omega_trace_clamped": t["negative"],  # Omega uses max(trace, 0); the raw mean stays above
            "eigenvalue": eig.get(n, {}).get("eigenvalue"),
            "eigen_iters": eig.get(n, {}).get("iters"),
            "eigen_converged": eig.get(n, {}).get("converged"),
            "weight_error": werr[n],
            "act": {k: v for k, v in acts.get(n, {}).items() if k != "act_mse"},
            "act_mse": acts.get(n, {}).get("act_mse", {}),
            "act_numel_per_batch": _mean(state["x_numel"].get(n, [])),
        }
        if f"x|{n}" in state["q"]:
            a = _trace_summary(state["q"][f"x|{n}"])
            stats.update({"act_trace": a["mean"], "act_trace_ci95": a["ci95"], "act_trace_samples": a["samples"],
                          "act_trace_rse": a["rse"], "act_trace_negative": a["negative"],
                          "act_trace_stop": state["done"][f"x|{n}"]})
        energy = {}
        for f in fmt_map:
            k = f"n|{n}|{f}"
            if k in state["q"]:
                e = _trace_summary(state["q"][k])
                energy[f] = {"mean": e["mean"], "ci95": e["ci95"], "samples": e["samples"], "rse": e["rse"],
                             "negative": e["negative"], "stop": state["done"][k]}
        stats["act_noise_curvature"] = energy  # d^T H_x d per act format (the activation term of Omega)
        act_energy[n] = {f: e["mean"] for f, e in energy.items()}
        wnoise = {}
        for f in wfmt_map:
            e = _trace_summary(state["q"][f"{wkind}|{n}|{f}"])
            wnoise[f] = {"mean": e["mean"], "ci95": e["ci95"], "samples": e["samples"], "negative": e["negative"]}
        if wnoise:
            # d^T H_W d (weight_term="noise") or sum_i H_ii d_i^2 ("diag") per weight format
            stats["weight_noise_curvature"] = wnoise
            w_energy[n] = {f: e["mean"] for f, e in wnoise.items()}
        layer_stats[n] = stats
    omega = omega_table(cands, traces, werr, act_energy, n_params, w_energy if cfg.weight_term != "trace" else None)
    table = SensitivityTable(
        omega=omega,
        layer_stats=layer_stats,
        settings={**settings, "cache_key": key, "samples_drawn": state["next_sample"], "device": str(device),
                  "omega": {"trace": "Tr(H_W)/n*||Q(W)-W||^2", "noise": "E[d^T H_W d], d = Q(W)-W",
                            "diag": "sum_i H_ii d_i^2, d = Q(W)-W"}[cfg.weight_term]
                  + " + E[d^T H_x d], d = Q(x)-x; negative estimates clamped to 0"
                  + ("; H = Gauss-Newton matrix G (method=ggn)" if cfg.method == "ggn" else "")},
    )
    ck.save("table", table.to_dict())
    return table
