"""Omega table contents, negative traces, Fisher fallback, cache hits, resume after interruption, errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import sensitivity.compute as compute_mod
from mpsearch.errors import MpsearchError
from mpsearch.formats import parse_format
from mpsearch.graph import build_layer_graph
from mpsearch.plan import parse_candidates
from mpsearch.task import Task
from sensitivity import SensitivityConfig, compute_sensitivity

CANDS = ["fp32", "int8", "int4", "int4/int8", "fp32/int4"]


def _task(loss_sign: float = 1.0) -> Task:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(3)]

    def loss(m, b):
        out = m(b[0])
        return nn.functional.cross_entropy(out, b[1]) if loss_sign > 0 else -(out**2).mean()

    return Task("t", model, (batches[0][0][:1],), batches, evaluate=lambda m: 0.0, loss=loss)


def _run(task, **kw):
    graph = build_layer_graph(task.model, task.example_input)
    cfg = SensitivityConfig(**{"max_samples": 40, **kw.pop("cfg", {})})
    return graph, compute_sensitivity(task, graph, parse_candidates(CANDS), cfg, **kw)


def test_omega_is_hawq_weight_term_plus_activation_term():
    task = _task()
    graph, table = _run(task)
    for layer in graph.names:
        st = table.layer_stats[layer]
        w = task.model.get_submodule(layer).weight.detach()
        assert table.omega[layer]["fp32/fp32"] == 0.0
        for fmt in ("int8", "int4"):
            err = float((parse_format(fmt).fake_quant(w, channel_axis=0) - w).double().pow(2).sum())
            expect = max(st["trace"], 0.0) / w.numel() * err
            assert table.omega[layer][f"{fmt}/fp32"] == pytest.approx(expect, rel=1e-9)
        act = max(st["act_noise_curvature"]["int8"]["mean"], 0.0)
        assert table.omega[layer]["int4/int8"] == pytest.approx(table.omega[layer]["int4/fp32"] + act, rel=1e-9)
        assert table.omega[layer]["int4/fp32"] > table.omega[layer]["int8/fp32"] > 0
        assert st["trace_samples"] >= 10 and st["trace_ci95"] > 0 and not st["trace_negative"]
        assert {"kurtosis", "outlier_ratio", "percentiles", "channel_range_max_over_median"} <= set(st["act"])
    assert table.settings["candidates"] == [c for c in ["fp32/fp32", "int8/fp32", "int4/fp32", "int4/int8", "fp32/int4"]]


def test_negative_trace_is_reported_and_clamped():
    """A concave loss has negative curvature: the trace stays negative in the stats, Omega uses 0."""
    task = _task(loss_sign=-1.0)
    graph, table = _run(task, cfg={"act_hessian": False})
    last = graph.names[-1]
    st = table.layer_stats[last]
    assert st["trace"] < 0 and st["trace_negative"] and st["omega_trace_clamped"]
    assert table.omega[last]["int4/fp32"] == 0.0


def test_fisher_with_single_row_micro_batches_is_mean_squared_example_gradient():
    task = _task()
    graph, table = _run(task, cfg={"method": "fisher", "micro_batch": 1, "act_hessian": False})
    model = task.model
    for layer in graph.names:
        w = model.get_submodule(layer).weight
        per_batch = []
        for x, y in task.calib_batches:
            total = 0.0
            for i in range(len(x)):
                (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), w)
                total += float(g.double().pow(2).sum())
            per_batch.append(total / len(x))
        st = table.layer_stats[layer]
        assert st["method"] == "fisher" and st["trace_samples"] == 3
        assert st["trace"] == pytest.approx(sum(per_batch) / 3, rel=1e-6)


def test_cache_hit_and_key_changes_with_weights(tmp_path, monkeypatch):
    task = _task()
    graph, first = _run(task, cache_dir=tmp_path)

    def recompute(*a, **k):
        raise RuntimeError("recomputed")

    monkeypatch.setattr(compute_mod, "hutchinson_traces", recompute)
    _, again = _run(task, cache_dir=tmp_path)  # a cache hit never reaches the estimator
    assert again.to_dict() == json.loads(json.dumps(first.to_dict()))
    with torch.no_grad():
        task.model[0].weight.mul_(1.01)
    with pytest.raises(RuntimeError, match="recomputed"):  # new weights, new key: the estimator runs
        _run(task, cache_dir=tmp_path)


def test_resume_after_interruption_recomputes_nothing_and_matches(tmp_path):
    task = _task()
    _, clean = _run(task, cfg={"checkpoint_s": 0.0})
    seen = []

    class Killed(Exception):
        pass

    def progress(stage, done, total):
        if stage == "hutchinson":
            seen.append(done)
            if len(seen) == 15:
                raise Killed

    with pytest.raises(Killed):
        _run(task, cache_dir=tmp_path, progress=progress, cfg={"checkpoint_s": 0.0})
    (ckpt,) = tmp_path.glob("sensitivity-*/hutchinson.json")
    drawn = json.loads(ckpt.read_text())["next_sample"]
    assert drawn == 14
    resumed_steps = []
    _, resumed = _run(task, cache_dir=tmp_path, cfg={"checkpoint_s": 0.0},
                      progress=lambda s, d, t: resumed_steps.append(s) if s == "hutchinson" else None)
    assert resumed.omega == clean.omega
    assert resumed.settings["samples_drawn"] == clean.settings["samples_drawn"]
    assert len(resumed_steps) == clean.settings["samples_drawn"] - drawn + 1  # only the remaining samples


def test_bad_inputs_raise_one_line_errors():
    task = _task()
    graph = build_layer_graph(task.model, task.example_input)
    with pytest.raises(MpsearchError, match="no candidate"):
        compute_sensitivity(task, graph, [])
    with pytest.raises(MpsearchError, match="unknown sensitivity method"):
        compute_sensitivity(task, graph, parse_candidates(["int8"]), SensitivityConfig(method="magic"))
    with pytest.raises(MpsearchError, match="CUDA is not available|unknown device"):
        compute_sensitivity(task, graph, parse_candidates(["int8"]), SensitivityConfig(device="cuda" if not torch.cuda.is_available() else "nope"))
    bad = Task("t", task.model, task.example_input, task.calib_batches, evaluate=lambda m: 0.0, loss=lambda m, b: m(b[0]))
    with pytest.raises(MpsearchError, match="scalar"):
        compute_sensitivity(bad, graph, parse_candidates(["int8"]))


def test_time_budget_stops_sampling_and_says_so():
    task = _task()
    _, table = _run(task, cfg={"time_budget_s": 1e-9, "act_hessian": False})
    for st in table.layer_stats.values():
        assert st["trace_stop"] == "time" and st["trace_samples"] == 2 and st["trace_ci95"] > 0


def test_micro_batching_gives_the_same_exact_quantities():
    """For a mean-over-rows loss, splitting batches changes memory, not the (exact) noise curvatures."""
    task = _task()
    cfg = {"weight_term": "noise", "max_samples": 10}
    _, whole = _run(task, cfg=cfg)
    _, split = _run(task, cfg={**cfg, "micro_batch": 5})
    for layer, st in whole.layer_stats.items():
        for kind in ("weight_noise_curvature", "act_noise_curvature"):
            for fmt, e in st[kind].items():
                assert split.layer_stats[layer][kind][fmt]["mean"] == pytest.approx(e["mean"], rel=1e-5, abs=1e-10)
