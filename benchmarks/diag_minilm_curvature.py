"""Why trace-style Omega cannot rank MiniLM's layers: the curvature along each format's actual error.

For every Linear layer L of all-MiniLM-L6-v2 and weight format F (int4, int3, e2m1), with d = Q_F(W_L) - W_L,
on the task's calibration batches:

- measured: the symmetrised single-layer loss change (L(W+d) + L(W-d))/2 - L(W)  (first-order term cancelled)
- hessian:  1/2 d^T H d, exact, by a double-backward Hessian-vector product
- gauss-newton: 1/2 dz^T (diag p - p p^T) dz / N with the exact logit change dz = (z(W+d) - z(W-d))/2, i.e. the
  Gauss-Newton (PSD) part of the same quadratic form

and Spearman rho over the 36 layers of each against the measured change, plus how many measured changes are
negative (directions of negative curvature, which no trace or PSD estimate can represent).

Run: HF_HUB_OFFLINE=1 .venv/bin/python -u benchmarks/diag_minilm_curvature.py [--threads 2] [--json OUT]
(~20 min on 2 idle cores: 432 double-backward HVPs and 864 forwards).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from mpsearch.formats import parse_format  # noqa: E402
from mpsearch.graph import build_layer_graph  # noqa: E402
from mpsearch.plan import parse_candidates  # noqa: E402
from mpsearch.simulate import calibrate_act_ranges  # noqa: E402
from mpsearch.task import load_task  # noqa: E402
from sensitivity.validate import measure_single_layer  # noqa: E402


def softmax_form(dz: torch.Tensor, p: torch.Tensor) -> float:
    """dz^T (diag p - p p^T) dz summed over rows, divided by the row count (the mean-CE Gauss-Newton form)."""
    return float(((dz * dz * p).sum(-1) - (dz * p).sum(-1) ** 2).sum() / dz.shape[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task("minilm")
    graph = build_layer_graph(task.model, task.example_input)
    cands = parse_candidates(["int4", "int3", "e2m1"])
    amax = calibrate_act_ranges(task.model, graph.names, task.calib_batches, task.run_forward)
    model = task.model.eval()
    t0 = time.perf_counter()
    measured = measure_single_layer(task, graph.names, cands, amax, symmetric=True)
    hess: dict[str, dict[str, float]] = {}
    ggn: dict[str, dict[str, float]] = {}
    for layer in graph.names:
        mod = model.get_submodule(layer)
        w0 = mod.weight.detach().clone()
        for c in cands:
            d = parse_format(c.weight).fake_quant(w0, channel_axis=0) - w0
            h = g = 0.0
            for b in task.calib_batches:
                with torch.no_grad():
                    p = torch.softmax(task.logits(model, b).float(), -1)
                    mod.weight.copy_(w0 + d)
                    zp = task.logits(model, b)
                    mod.weight.copy_(w0 - d)
                    zm = task.logits(model, b)
                    mod.weight.copy_(w0)
                g += softmax_form((zp - zm).float() / 2, p)
                grad, = torch.autograd.grad(task.loss(model, b), mod.weight, create_graph=True)
                hv, = torch.autograd.grad((grad * d).sum(), mod.weight)
                h += float((hv * d).sum())
            n = len(task.calib_batches)
            hess.setdefault(layer, {})[c.key] = h / n / 2
            ggn.setdefault(layer, {})[c.key] = g / n / 2
    wall = time.perf_counter() - t0
    print(f"all-MiniLM-L6-v2, {len(graph)} layers, {len(task.calib_batches)} calibration batches, {wall:.0f} s\n")
    print("| format | negative measured changes | Spearman(exact 1/2 d^T H d, measured) | Spearman(Gauss-Newton part, measured) | max rel. diff Hessian form vs measured (top-10 layers) |")
    print("|---|---|---|---|---|")
    for c in cands:
        m = [measured[l][c.key] for l in graph.names]
        h = [hess[l][c.key] for l in graph.names]
        g = [ggn[l][c.key] for l in graph.names]
        top = sorted(range(len(m)), key=lambda i: -abs(m[i]))[:10]
        rel = max(abs(h[i] - m[i]) / abs(m[i]) for i in top)
        print(f"| {c.weight} | {sum(x < 0 for x in m)}/{len(m)} | {spearmanr(h, m).statistic:.3f} | "
              f"{spearmanr(g, m).statistic:.3f} | {rel:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": measured, "hessian": hess, "gauss_newton": ggn}))


if __name__ == "__main__":
    main()
