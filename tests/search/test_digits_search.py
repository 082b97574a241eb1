"""Integration on the real digits CNN: Ω from real weight quantization error, costs from real storage bytes."""

from __future__ import annotations

import pytest
import torch

from mpsearch.formats import parse_format
from mpsearch.plan import Candidate
from mpsearch.search import graph_ties, ilp_frontier, solve_ilp, uniform_plan, verify_points
from mpsearch.simulate import apply_plan
from mpsearch.tables import CostTable, SensitivityTable

CANDS = ["fp32", "int8", "int6", "int4", "int3"]


@pytest.fixture(scope="module")
def digits_tables(digits_task, digits_graph):
    mods = dict(digits_task.model.named_modules())
    omega, costs = {}, {}
    for layer in digits_graph.layers:
        w = mods[layer.name].weight.detach()
        omega[layer.name], costs[layer.name] = {}, {}
        for spelling in CANDS:
            fmt = parse_format(spelling)
            key = Candidate(spelling).key
            omega[layer.name][key] = float(((fmt.fake_quant(w, channel_axis=0) - w) ** 2).sum())
            costs[layer.name][key] = {"weight_bytes": float(fmt.storage_bytes(tuple(w.shape)))}
    return SensitivityTable(omega), CostTable(costs)


def test_ilp_on_digits_beats_uniform_int4_at_its_own_size(digits_task, digits_graph, digits_tables):
    sens, costs = digits_tables
    names = digits_graph.names
    int4 = uniform_plan(names, "int4")
    budget = costs.plan_cost(int4, "weight_bytes")
    r = solve_ilp(sens, costs, {"weight_bytes": budget}, graph=digits_graph)
    assert r.totals["weight_bytes"] <= budget
    assert r.objective <= sens.plan_value(int4)  # the optimum is never worse than a feasible plan

    def evaluate(plan):
        with torch.no_grad():
            return digits_task.evaluate(apply_plan(digits_task.model, plan))

    acc_mixed, acc_int4 = evaluate(r.plan), evaluate(int4)
    assert acc_mixed >= acc_int4 - 0.01 and acc_mixed > 0.9

    front = ilp_frontier(sens, costs, "weight_bytes", n_points=8, graph=digits_graph)
    out = verify_points(front, evaluate, top_k=3)
    assert out[-1].measured_accuracy > 0.95  # the least compressed point keeps the float accuracy


def test_graph_ties_on_digits(digits_graph, digits_tables):
    groups = graph_ties(digits_graph)
    # a block's first conv and its shortcut conv read the same tensor
    assert sorted(map(sorted, groups)) == [["layer2.conv1", "layer2.shortcut.0"], ["layer3.conv1", "layer3.shortcut.0"]]
    rule = graph_ties(digits_graph, [r"layer(\d)\.conv(?:1|2)"], same_inputs=False)
    assert sorted(map(sorted, rule)) == [["layer1.conv1", "layer1.conv2"], ["layer2.conv1", "layer2.conv2"], ["layer3.conv1", "layer3.conv2"]]
    sens, costs = digits_tables
    r = solve_ilp(sens, costs, ["weight=0.45x:int8"], graph=digits_graph, ties=groups)
    for g in groups:
        assert len({r.plan.layers[n].key for n in g}) == 1
