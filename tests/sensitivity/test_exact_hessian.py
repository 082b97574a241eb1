"""Hutchinson traces and power-iteration eigenvalues against the exact Hessian of a tiny model."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from mpsearch.graph import build_layer_graph
from mpsearch.plan import parse_candidates
from mpsearch.task import Task
from sensitivity import SensitivityConfig, compute_sensitivity
from tests.sensitivity.tiny import tiny_mlp_task


def _exact_weight_hessian(task: Task, layer: str, batch) -> torch.Tensor:
    w0 = task.model.get_submodule(layer).weight.detach()

    def f(flat: torch.Tensor) -> torch.Tensor:
        return task.loss(lambda x: functional_call(task.model, {f"{layer}.weight": flat.reshape(w0.shape)}, (x,)), batch)

    return torch.autograd.functional.hessian(f, w0.reshape(-1).double().float())


def _exact_input_trace(task: Task, index: int, batch) -> float:
    """Trace of the loss Hessian w.r.t. the input of Sequential layer ``index``."""
    x_in, y = batch
    with torch.no_grad():
        h = task.model[:index](x_in)
    rest = task.model[index:]
    hess = torch.autograd.functional.hessian(lambda z: nn.functional.cross_entropy(rest(z), y), h)
    return float(hess.reshape(h.numel(), h.numel()).diagonal().sum())


def test_hutchinson_trace_within_ci_of_exact_trace():
    task = tiny_mlp_task(1)
    graph = build_layer_graph(task.model, task.example_input)
    cands = parse_candidates(["int4/int4"])
    for joint in (True, False):
        # min_samples=30: stopping on a sample RSE is biased when that RSE is computed from very few samples
        cfg = SensitivityConfig(tol=0.1, min_samples=30, max_samples=2000, joint=joint, act_trace=True)
        table = compute_sensitivity(task, graph, cands, cfg)
        for layer in graph.names:
            st = table.layer_stats[layer]
            exact = float(_exact_weight_hessian(task, layer, task.calib_batches[0]).diagonal().sum())
            assert abs(st["trace"] - exact) <= st["trace_ci95"], (joint, layer, st["trace"], st["trace_ci95"], exact)
            assert st["trace_rse"] < 0.1 or st["trace_samples"] == 2000
            x_exact = _exact_input_trace(task, int(layer), task.calib_batches[0])
            assert abs(st["act_trace"] - x_exact) <= st["act_trace_ci95"], (joint, layer, st["act_trace"], x_exact)


def test_ci_coverage_over_seeds():
    """Over many seeds the 95% CI should contain the exact trace about 95% of the time (>= 80% here)."""
    task = tiny_mlp_task(1)
    graph = build_layer_graph(task.model, task.example_input)
    exact = {l: float(_exact_weight_hessian(task, l, task.calib_batches[0]).diagonal().sum()) for l in graph.names}
    hits = total = 0
    for seed in range(20):
        cfg = SensitivityConfig(tol=0.2, min_samples=10, max_samples=200, seed=seed, act_hessian=False)
        table = compute_sensitivity(task, graph, parse_candidates(["int4"]), cfg)
        for l in graph.names:
            st = table.layer_stats[l]
            hits += abs(st["trace"] - exact[l]) <= st["trace_ci95"]
            total += 1
    assert hits / total >= 0.8, hits / total


def test_power_iteration_matches_eigvalsh():
    task = tiny_mlp_task(1)
    graph = build_layer_graph(task.model, task.example_input)
    cfg = SensitivityConfig(eigenvalues=True, power_iters=500, power_tol=1e-7, act_hessian=False, tol=0.5)
    table = compute_sensitivity(task, graph, parse_candidates(["int8"]), cfg)
    for layer in graph.names:
        ev = torch.linalg.eigvalsh(_exact_weight_hessian(task, layer, task.calib_batches[0]).double())
        dominant = float(ev[ev.abs().argmax()])
        got = table.layer_stats[layer]["eigenvalue"]
        assert abs(got - dominant) <= 0.01 * abs(dominant), (layer, got, dominant)


def test_multi_batch_trace_targets_mean_over_batches():
    task = tiny_mlp_task(n_batches=2)
    graph = build_layer_graph(task.model, task.example_input)
    cfg = SensitivityConfig(tol=0.1, min_samples=30, max_samples=4000, act_hessian=False, joint=False)
    table = compute_sensitivity(task, graph, parse_candidates(["int4"]), cfg)
    for layer in graph.names:
        exact = sum(float(_exact_weight_hessian(task, layer, b).diagonal().sum()) for b in task.calib_batches) / 2
        st = table.layer_stats[layer]
        assert abs(st["trace"] - exact) <= st["trace_ci95"], (layer, st["trace"], exact)


def test_activation_noise_curvature_is_exact_per_batch():
    """The activation term of Omega is d^T H_x d for the actual noise d = Q(x) - x: check it exactly."""
    from mpsearch.formats import parse_format

    task = tiny_mlp_task(1)
    graph = build_layer_graph(task.model, task.example_input)
    table = compute_sensitivity(task, graph, parse_candidates(["fp32/int3"]), SensitivityConfig(max_samples=10))
    x_in, y = task.calib_batches[0]
    for layer in graph.names:
        i = int(layer)
        with torch.no_grad():
            h = task.model[:i](x_in)
        amax = table.layer_stats[layer]["act"]["amax_used"]
        d = parse_format("int3").fake_quant(h, channel_axis=None, amax=amax) - h
        rest = task.model[i:]
        hess = torch.autograd.functional.hessian(lambda z: nn.functional.cross_entropy(rest(z), y), h)
        exact = float(d.reshape(-1) @ hess.reshape(h.numel(), h.numel()) @ d.reshape(-1))
        got = table.layer_stats[layer]["act_noise_curvature"]["int3"]
        assert got["samples"] == 1 and got["stop"] == "all-batches"
        assert abs(got["mean"] - exact) <= 1e-4 * abs(exact) + 1e-9, (layer, got["mean"], exact)
        assert table.omega[layer]["fp32/int3"] == max(got["mean"], 0.0)


def test_weight_noise_term_is_exact_per_batch():
    """weight_term="noise": Omega's weight term is d^T H_W d for the actual weight error d = Q(W) - W."""
    from mpsearch.formats import parse_format

    task = tiny_mlp_task(1)
    graph = build_layer_graph(task.model, task.example_input)
    cfg = SensitivityConfig(max_samples=10, weight_term="noise", act_hessian=False)
    table = compute_sensitivity(task, graph, parse_candidates(["fp32", "int3", "e2m1"]), cfg)
    for layer in graph.names:
        w = task.model.get_submodule(layer).weight.detach()
        hess = _exact_weight_hessian(task, layer, task.calib_batches[0]).double()
        assert table.omega[layer]["fp32/fp32"] == 0.0
        for fmt in ("int3", "e2m1"):
            d = (parse_format(fmt).fake_quant(w, channel_axis=0) - w).reshape(-1).double()
            exact = float(d @ hess @ d)
            got = table.layer_stats[layer]["weight_noise_curvature"][fmt]["mean"]
            assert abs(got - exact) <= 1e-4 * abs(exact) + 1e-9, (layer, fmt, got, exact)
            assert table.omega[layer][f"{fmt}/fp32"] == max(got, 0.0)


def test_weight_diag_term_within_ci_of_exact_diagonal_form():
    """weight_term="diag": the weight term is sum_i H_ii d_i^2, read off the trace probes (u * d^2 . Hu)."""
    from mpsearch.formats import parse_format

    task = tiny_mlp_task(1)
    graph = build_layer_graph(task.model, task.example_input)
    for joint in (False, True):
        cfg = SensitivityConfig(tol=0.05, min_samples=30, max_samples=4000, weight_term="diag", act_hessian=False,
                                joint=joint, probes_per_batch=4)
        table = compute_sensitivity(task, graph, parse_candidates(["fp32", "int3", "e2m1"]), cfg)
        for layer in graph.names:
            w = task.model.get_submodule(layer).weight.detach()
            diag = _exact_weight_hessian(task, layer, task.calib_batches[0]).double().diagonal()
            assert table.omega[layer]["fp32/fp32"] == 0.0
            for fmt in ("int3", "e2m1"):
                d2 = (parse_format(fmt).fake_quant(w, channel_axis=0) - w).reshape(-1).double().pow(2)
                exact = float(diag @ d2)
                got = table.layer_stats[layer]["weight_noise_curvature"][fmt]
                # 95% CI widened to ~3 standard errors: 12 quantities per setting must pass for a fixed seed
                assert abs(got["mean"] - exact) <= 1.6 * got["ci95"], (joint, layer, fmt, got, exact)
                assert table.omega[layer][f"{fmt}/fp32"] == max(got["mean"], 0.0)
        assert "H_ii" in table.settings["omega"]
