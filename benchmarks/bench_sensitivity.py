"""Sensitivity benchmark: cost and precision of per-layer curvature, and how well Omega ranks layers.

Side by side in one run, on the digits CNN and on all-MiniLM-L6-v2 (retrieval task):
- wall time, probes drawn and per-layer relative standard error of the Hessian traces for joint
  Hutchinson (one double backward serves all layers), per-layer Hutchinson and the Fisher fallback;
- Spearman rho over layers between predicted Omega and the measured loss change of quantizing that layer
  alone, per candidate and per format family (INT vs minifloat), against the plain change on the
  calibration data, the symmetrised change (first-order term cancelled), and for digits the plain change
  on the training split (where the gradient is ~0, as the second-order model assumes).

Run: .venv/bin/python benchmarks/bench_sensitivity.py [--quick] [--no-append]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from mpsearch.graph import build_layer_graph  # noqa: E402
from mpsearch.plan import parse_candidates  # noqa: E402
from mpsearch.simulate import calibrate_act_ranges  # noqa: E402
from mpsearch.task import load_task  # noqa: E402
from sensitivity import SensitivityConfig, compute_sensitivity  # noqa: E402
from sensitivity.validate import measure_plain_and_symmetric, measure_single_layer, rank_agreement  # noqa: E402


ONLY: set[str] = set()  # --only: estimator labels to run (empty: all)


def rse_summary(table) -> dict[str, float]:
    rses = [s["trace_rse"] for s in table.layer_stats.values()]
    finite = [r for r in rses if r != float("inf")]
    return {
        "layers": len(rses),
        "layers_at_tol": sum(r < 0.1 for r in rses),
        "median_rse": statistics.median(finite) if finite else float("inf"),
        "max_rse": max(rses),
        "negative_traces": sum(bool(s["trace_negative"]) for s in table.layer_stats.values()),
    }


def sem_over_max(table) -> float:
    """Largest standard error of a layer trace, as a fraction of the largest |trace| (the atol scale)."""
    st = table.layer_stats.values()
    ref = max(abs(s["trace"]) for s in st) or 1.0
    return max(s["trace_std"] / max(s["trace_samples"], 1) ** 0.5 for s in st) / ref


def timed(task, graph, cands, cfg, amax):
    t0 = time.perf_counter()
    table = compute_sensitivity(task, graph, cands, cfg, act_amax=amax)
    return table, time.perf_counter() - t0


def fmt_rank(d: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.2f}" for k, v in d.items())


def bench_digits(quick: bool) -> list[str]:
    torch.set_num_threads(1)
    task = load_task("digits-cnn")
    graph = build_layer_graph(task.model, task.example_input)
    cands = parse_candidates(["int4", "int3", "e2m1", "e3m2", "fp32/int3", "fp32/e2m1"])
    amax = calibrate_act_ranges(task.model, graph.names, task.calib_batches, task.run_forward)
    cap = 60 if quick else 200
    rows, tables = [], {}
    for label, cfg in [
        ("hutchinson joint", SensitivityConfig(joint=True, max_samples=cap)),
        ("hutchinson per-layer", SensitivityConfig(joint=False, max_samples=cap)),
        ("hutchinson per-layer, weight_term=noise", SensitivityConfig(joint=False, max_samples=cap, weight_term="noise")),
        ("fisher", SensitivityConfig(method="fisher")),
        # a GGN probe is one plain backward (Hutchinson: a double backward per layer), so its cap is 10x
        ("ggn", SensitivityConfig(method="ggn", max_samples=10 * cap, probes_per_batch=4)),
        ("ggn, sampled labels", SensitivityConfig(method="ggn", max_samples=10 * cap, probes_per_batch=4, ggn_probe="labels")),
        ("ggn, weight_term=noise", SensitivityConfig(method="ggn", max_samples=10 * cap, probes_per_batch=4, weight_term="noise")),
        ("hutchinson per-layer, weight_term=diag", SensitivityConfig(joint=False, max_samples=cap, weight_term="diag")),
        ("ggn, weight_term=diag", SensitivityConfig(method="ggn", max_samples=10 * cap, probes_per_batch=4, weight_term="diag")),
    ]:
        if ONLY and label not in ONLY:
            continue
        table, wall = timed(task, graph, cands, cfg, amax)
        tables[label] = table
        rows.append((label, wall, table.settings["samples_drawn"], rse_summary(table)))
    from mpsearch.tasks.digits import load_digits_split

    tx, ty = load_digits_split(0)["train"]
    train = [(tx[i : i + 256], ty[i : i + 256]) for i in range(0, len(tx), 256)]
    plain, sym = measure_plain_and_symmetric(task, graph.names, cands, amax)
    measured = {"calib plain": plain, "calib symmetric": sym,
                "train plain": measure_single_layer(task, graph.names, cands, amax, batches=train)}
    out = ["### digits-cnn (ResNet-8, 10 layers, 1 thread)", "",
           "| estimator | wall s | probes | layers at RSE<0.1 | median RSE | max RSE | negative |", "|---|---|---|---|---|---|---|"]
    base = rows[0][1]
    for label, wall, n, r in rows:
        out.append(f"| {label} | {wall:.1f} ({wall / base:.2f}x) | {n} | {r['layers_at_tol']}/{r['layers']} | "
                   f"{r['median_rse']:.3f} | {r['max_rse']:.3f} | {r['negative_traces']} |")
    out += ["", "Spearman(Omega, measured loss change), per candidate; family = min over its candidates:", ""]
    for label, table in tables.items():
        for mlabel, m in measured.items():
            out.append(f"- {label} vs {mlabel}: {fmt_rank(rank_agreement(table, m, cands))}")
    return out


def bench_minilm(quick: bool, threads: int, skip_rank: bool = False, held_out: int = 0) -> list[str]:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    task = load_task("minilm")
    load_s = time.perf_counter() - t0
    graph = build_layer_graph(task.model, task.example_input)
    out = [f"### minilm (all-MiniLM-L6-v2, {len(graph)} Linear layers, InfoNCE, {len(task.calib_batches)} calib "
           f"batches of 16 pairs, max_len 64, {threads} threads; task load {load_s:.0f} s)", ""]
    wcands = parse_candidates(["int4", "int3", "e2m1"])
    amax = calibrate_act_ranges(task.model, graph.names, task.calib_batches, task.run_forward)
    budget = 20.0 if quick else 60.0
    atol = 0.01
    rows, tables = [], {}
    configs = [
        (f"before: hutchinson per-layer, 1 probe/batch, {budget:.0f} s budget",
         SensitivityConfig(act_hessian=False, time_budget_s=budget)),
        (f"after: hutchinson per-layer, 4 probes/batch, {budget:.0f} s budget",
         SensitivityConfig(act_hessian=False, time_budget_s=budget, probes_per_batch=4)),
        (f"after: hutchinson per-layer, 4 probes/batch, atol {atol}, {budget:.0f} s budget",
         SensitivityConfig(act_hessian=False, time_budget_s=budget, probes_per_batch=4, atol=atol)),
        (f"after: hutchinson joint, 4 probes/batch, {budget:.0f} s budget",
         SensitivityConfig(joint=True, act_hessian=False, time_budget_s=budget, probes_per_batch=4)),
        ("fisher", SensitivityConfig(method="fisher", act_hessian=False)),
        ("ggn, sampled labels", SensitivityConfig(method="ggn", act_hessian=False, probes_per_batch=4, max_samples=2000,
                                                  ggn_probe="labels")),
        ("ggn", SensitivityConfig(method="ggn", act_hessian=False, probes_per_batch=4, max_samples=2000)),
        # 8 probes share one forward: the forward is a third of a 4-probe round's cost
        ("ggn, 8 probes/batch", SensitivityConfig(method="ggn", act_hessian=False, probes_per_batch=8, max_samples=2000)),
        ("ggn, weight_term=noise", SensitivityConfig(method="ggn", act_hessian=False, probes_per_batch=4, max_samples=2000,
                                                     weight_term="noise")),
        ("ggn, weight_term=diag", SensitivityConfig(method="ggn", act_hessian=False, probes_per_batch=4, max_samples=2000,
                                                    weight_term="diag")),
        ("fisher, weight_term=diag", SensitivityConfig(method="fisher", act_hessian=False, weight_term="diag")),
        # d^T H d of each format's actual error, one HVP per (layer, format) and batch: exact on the calibration
        # data (no probe variance), so one visit of each batch; the traces ride along at 1 probe per batch
        ("hutchinson, weight_term=noise (exact d^T H d)",
         SensitivityConfig(act_hessian=False, weight_term="noise", min_samples=4, max_samples=4)),
    ]
    for label, cfg in configs:
        if ONLY and label not in ONLY:
            continue
        table, wall = timed(task, graph, wcands, cfg, amax)
        tables[label] = table
        rows.append((label, wall, table.settings["samples_drawn"], rse_summary(table)))
        print(f"[minilm] {label}: {wall:.1f} s, {rows[-1][2]} probes, {rows[-1][3]}", flush=True)
    out += ["| estimator (weights only) | wall s | probes | s/probe | layers at RSE<0.1 | stopped by atol | median RSE | max RSE | max sem / max trace | negative |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for (label, wall, n, r), table in zip(rows, tables.values()):
        atol_n = sum(s["trace_stop"] == "atol" for s in table.layer_stats.values())
        out.append(f"| {label} | {wall:.1f} | {n} | {wall / max(n, 1):.2f} | {r['layers_at_tol']}/{r['layers']} | "
                   f"{atol_n} | {r['median_rse']:.3f} | {r['max_rse']:.3f} | {sem_over_max(table):.4f} | {r['negative_traces']} |")
    out.append("")
    for (label, wall, n, _), table in zip(rows, tables.values()):
        if "hutchinson" not in label:
            continue
        need = sorted((s["trace_rse"] / 0.1) ** 2 * s["trace_samples"] for s in table.layer_stats.values())
        per_probe = wall / max(n, 1)
        out.append(f"- {label}: probes needed for RSE<0.1 (from the measured variances) median {statistics.median(need):.0f}"
                   f" (~{statistics.median(need) * per_probe / 60:.0f} min), 90th pct {need[int(0.9 * len(need))]:.0f}"
                   f" (~{need[int(0.9 * len(need))] * per_probe / 60:.0f} min); goal 60 s for all layers.")
    if skip_rank:
        return out
    plain, sym = measure_plain_and_symmetric(task, graph.names, wcands, amax)
    measured = {"calib plain": plain, "calib symmetric": sym}
    if held_out:
        # the same shuffle with more calibration pairs: its first batches are ours, the rest are held-out pairs
        n_cal = task.metadata["calib_pairs"]
        big = load_task("minilm", calib_pairs=n_cal + held_out)
        held = big.calib_batches[len(task.calib_batches):]
        hp, hs = measure_plain_and_symmetric(task, graph.names, wcands, amax, batches=held)
        pairs = sum(int(b["query"]["input_ids"].shape[0]) for b in held)
        measured.update({f"held-out plain ({pairs} pairs)": hp, f"held-out symmetric ({pairs} pairs)": hs})
    out += ["", "Spearman(Omega, measured loss change) over the 36 layers:", ""]
    for label, table in tables.items():
        for mlabel, m in measured.items():
            out.append(f"- {label} vs {mlabel}: {fmt_rank(rank_agreement(table, m, wcands))}")
    fp = task.evaluate.metrics(task.model)
    out += ["", f"float32 retrieval on {task.metadata['eval_pairs']} held-out pairs: " + json.dumps({k: round(v, 3) for k, v in fp.items()})]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer probes (a smoke run)")
    ap.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-rank", action="store_true", help="MiniLM: skip the Spearman measurement")
    ap.add_argument("--held-out", type=int, default=0, metavar="PAIRS",
                    help="MiniLM: also measure the single-layer loss change on PAIRS held-out pairs (not calibration)")
    ap.add_argument("--only", default="", help="';'-separated estimator labels to run (default: all)")
    args = ap.parse_args()
    ONLY.update(x.strip() for x in args.only.split(";") if x.strip())
    lines = [f"## sensitivity (issue 4) — {datetime.date.today()}", "",
             f"Device: CPU, {os.cpu_count()} cores (shared with other jobs; load average "
             f"{os.getloadavg()[0]:.1f} at start), torch {torch.__version__}.", ""]
    if not args.skip_digits:
        lines += bench_digits(args.quick) + [""]
        print("\n".join(lines), flush=True)
    if not args.skip_minilm:
        lines += bench_minilm(args.quick, args.threads, args.skip_rank, args.held_out) + [""]
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
