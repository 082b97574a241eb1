"""Rounds of probes that share one graph, the running statistics and the absolute stopping rule."""

from __future__ import annotations

import math

import torch
from torch.func import functional_call

from mpsearch.graph import build_layer_graph
from mpsearch.plan import parse_candidates
from mpsearch.task import Task
from sensitivity import SensitivityConfig, compute_sensitivity
from sensitivity.hessian import _Running, hutchinson_round, hutchinson_sample
from sensitivity.stats import summarize
from tests.sensitivity.tiny import tiny_mlp_task


def _prepared(task: Task):
    model = task.model
    for p in model.parameters():
        p.requires_grad_(False)
    mods = {n: model.get_submodule(n) for n in ("0", "2", "4")}
    for m in mods.values():
        m.weight.requires_grad_(True)
    return model, mods


def _exact_weight_hessian(task: Task, layer: str, batch) -> torch.Tensor:
    w0 = task.model.get_submodule(layer).weight.detach()

    def f(flat: torch.Tensor) -> torch.Tensor:
        return task.loss(lambda x: functional_call(task.model, {f"{layer}.weight": flat.reshape(w0.shape)}, (x,)), batch)

    return torch.autograd.functional.hessian(f, w0.reshape(-1).clone())


def test_round_of_probes_equals_separate_samples():
    """Probes sharing one forward and first backward give exactly what separate samples give."""
    torch.set_num_threads(1)
    task = tiny_mlp_task(1)
    model, mods = _prepared(task)
    want = [f"w|{n}" for n in mods] + [f"x|{n}" for n in mods]
    for joint in (True, False):
        for micro in (None, 16):
            gens = [torch.Generator().manual_seed(100 + k) for k in range(3)]
            vals, nx = hutchinson_round(model, mods, task.calib_batches[0], task.loss, want, gens, joint=joint,
                                        micro_batch=micro)
            for k in range(3):
                one, nx1 = hutchinson_sample(model, mods, task.calib_batches[0], task.loss, want,
                                             torch.Generator().manual_seed(100 + k), joint=joint, micro_batch=micro)
                assert nx1 == nx
                for key in want:
                    assert math.isclose(vals[k][key], one[key], rel_tol=1e-6, abs_tol=1e-9), (joint, micro, k, key)


def test_running_stats_match_summarize():
    xs = [3.0, -1.5, 2.25, 7.0, 0.5, 4.0]
    run = _Running(xs[:3])
    for x in xs[3:]:
        run.add(x)
    s = summarize(xs)
    assert run.n == 6 and math.isclose(run.mean, s["mean"]) and math.isclose(run.rse(), s["rse"])
    assert _Running([2.0, 2.0]).rse() == 0.0 and _Running([1.0]).sem() == math.inf


def test_probes_per_batch_traces_within_ci_of_exact():
    torch.set_num_threads(1)
    task = tiny_mlp_task(2)
    graph = build_layer_graph(task.model, task.example_input)
    exact = {l: sum(float(_exact_weight_hessian(task, l, b).diagonal().sum()) for b in task.calib_batches) / 2
             for l in graph.names}
    cfg = SensitivityConfig(tol=0.1, min_samples=32, max_samples=3000, act_hessian=False, probes_per_batch=4)
    table = compute_sensitivity(task, graph, parse_candidates(["int4"]), cfg)
    assert table.settings["samples_drawn"] % 4 == 0
    for l in graph.names:
        st = table.layer_stats[l]
        assert abs(st["trace"] - exact[l]) <= st["trace_ci95"], (l, st["trace"], exact[l])
        assert st["trace_stop"] == "tol" and st["trace_rse"] < 0.1


def test_absolute_tolerance_stops_small_traces():
    """With atol, a trace stops once its standard error is <= atol x the largest |trace|; the result says
    which rule stopped it, and the config rejects out-of-range values."""
    torch.set_num_threads(1)
    task = tiny_mlp_task(1)
    graph = build_layer_graph(task.model, task.example_input)
    cfg = SensitivityConfig(tol=0.01, min_samples=10, max_samples=400, act_hessian=False, atol=0.05)
    table = compute_sensitivity(task, graph, parse_candidates(["int4"]), cfg)
    ref = max(abs(s["trace"]) for s in table.layer_stats.values())
    stops = {s["trace_stop"] for s in table.layer_stats.values()}
    assert "atol" in stops
    for s in table.layer_stats.values():
        if s["trace_stop"] == "atol":
            # the rule compared against the running max at stop time, which is close to the final one
            assert s["trace_std"] / math.sqrt(s["trace_samples"]) <= 0.05 * ref * 1.5
    plain = compute_sensitivity(task, graph, parse_candidates(["int4"]),
                                SensitivityConfig(tol=0.01, min_samples=10, max_samples=400, act_hessian=False))
    assert sum(s["trace_samples"] for s in table.layer_stats.values()) < sum(
        s["trace_samples"] for s in plain.layer_stats.values())
    for bad in (0.0, 1.5):
        try:
            SensitivityConfig(atol=bad).validate()
        except Exception as e:  # MpsearchError
            assert "atol" in str(e)
        else:
            raise AssertionError("atol out of range accepted")
