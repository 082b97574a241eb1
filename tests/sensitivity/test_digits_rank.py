"""On the real digits CNN, Omega must rank layers like the measured loss change of quantizing each alone.

The measured change is symmetrised, (L(W+d) + L(W-d))/2 - L(W), which cancels the first-order term g.d
that the second-order model deliberately leaves out (on calibration data the gradient is not zero, and
for 3-4 bit noise g.d is as large as the curvature term: the plain change ranks layers no better than
chance for every estimator, see benchmarks/bench_sensitivity.py).
"""

from __future__ import annotations

from mpsearch.plan import parse_candidates
from mpsearch.simulate import calibrate_act_ranges
from sensitivity import SensitivityConfig, compute_sensitivity
from sensitivity.validate import measure_plain_and_symmetric, rank_agreement


def test_omega_ranks_digits_layers_like_measured_loss_change(digits_task, digits_graph):
    task, graph = digits_task, digits_graph
    cands = parse_candidates(["int4", "int3", "fp32/int3", "int4/int8"])
    amax = calibrate_act_ranges(task.model, graph.names, task.calib_batches, task.run_forward)
    table = compute_sensitivity(task, graph, cands, SensitivityConfig(), act_amax=amax)
    _, sym = measure_plain_and_symmetric(task, graph.names, cands, amax)
    rho = rank_agreement(table, sym, cands)  # default settings: per-layer probes to RSE < 0.1
    assert rho["family:int"] >= 0.8, rho  # every INT candidate, weight-only, activation-only and both
    assert all(s["trace_rse"] < 0.1 or s["trace_samples"] == 200 for s in table.layer_stats.values())
