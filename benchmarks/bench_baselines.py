"""Frontier vs baselines: at every baseline's cost, is mpsearch's ILP frontier at least as accurate?

Reads ``frontier.json`` of finished ``mpsearch optimize`` run directories (and ``optuna.json`` when
present) and, for every baseline point -- each uniform baseline (int8, int4, fp8), each HAWQ-V3 INT4/8 ILP
point and each random-search point -- finds the best *measured* score among the mpsearch frontier points
whose cost (the run's frontier metric, e.g. ``weight_bytes``) is <= the baseline's cost. It prints one
markdown table per run directory:

    baseline | cost | score | best mpsearch score at <= cost (its cost) | difference | verdict

verdict is ``>=`` (mpsearch at least as accurate at no more cost), ``<`` (mpsearch loses) or
``no point`` (every mpsearch frontier point costs more than the baseline). All scores are real
evaluations of the quantized model on the task's held-out data, as stored by the pipeline.

    .venv/bin/python benchmarks/bench_baselines.py runs/examples/digits runs/examples/minilm
    .venv/bin/python benchmarks/bench_baselines.py RUN --with-optuna   # frontier := ILP points + Optuna Pareto
    .venv/bin/python benchmarks/bench_baselines.py RUN --strict        # exit 1 if mpsearch loses anywhere
    .venv/bin/python benchmarks/bench_baselines.py RUN --at-cost       # + ILP re-solved at each baseline's cost

The frontier is a sweep of a dozen budgets, so a baseline's cost usually falls between two frontier points
and the comparison above is against the next cheaper one. ``--at-cost`` separates that granularity from the
quality of the sensitivity proxy: it re-solves the ILP from the run's cached sensitivity and cost tables
with the baseline's exact cost as the budget, evaluates that plan for real on the task (loading the model;
plans the run already evaluated are taken from its ``evals.json``) and prints a second table with the
proxy Ω of both plans next to their measured scores.

The runs need random search for its rows: ``mpsearch optimize TASK --random-evals 16 --points 12``.
This script only reads; it never writes into the run directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpsearch.search.compare import EPS, baseline_points, compare_with_baselines  # noqa: E402

def load_run(run_dir: Path) -> dict[str, Any]:
    """frontier.json's value (unwrapping the pipeline's {"key", "value"} checkpoint), plus optuna.json."""
    path = run_dir / "frontier.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; run 'mpsearch optimize ... --run-dir {run_dir}' first")
    data = json.loads(path.read_text())
    fr = data["value"] if isinstance(data, dict) and "value" in data and "key" in data else data
    for field in ("metric", "float_score", "frontier"):
        if field not in fr:
            raise SystemExit(f"error: {path} has no {field!r}; is it an mpsearch frontier?")
    opt = run_dir / "optuna.json"
    if "optuna" not in fr and opt.is_file():
        fr["optuna"] = json.loads(opt.read_text())
    summary = run_dir / "summary.json"
    fr["_summary"] = json.loads(summary.read_text()) if summary.is_file() else {}
    return fr


def fmt_cost(metric: str, v: float, ref: float | None) -> str:
    if metric == "weight_bytes" or metric.endswith("_bytes"):
        s = f"{v / 1e6:.3f} MB" if v >= 1e6 else f"{v / 1e3:.1f} kB"
    elif metric == "latency_s":
        s = f"{v * 1e3:.3f} ms" if v >= 1e-3 else f"{v * 1e6:.1f} µs"
    else:
        s = f"{v:.4g}"
    return f"{s} ({v / ref:.2f}×)" if ref else s


def compare(fr: dict[str, Any], with_optuna: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """mpsearch.search.compare's rows as dicts, and the counts this script prints."""
    m = fr["metric"]
    summary = compare_with_baselines(fr, with_optuna)
    rows = [{"baseline": r.baseline, "cost": r.cost, "score": r.score, "best": r.best, "diff": r.difference,
             "verdict": r.verdict} for r in summary.rows]
    ref = (fr.get("baselines") or {}).get("uniform int8", {}).get("totals", {}).get(m)
    stats = {"n": len(rows), "win_or_tie": summary.wins_or_ties, "lose": summary.losses, "no_point": summary.no_point,
             "ref": ref, "pool": summary.pool}
    return rows, stats


def markdown(run_dir: Path, fr: dict[str, Any], rows: list[dict[str, Any]], stats: dict[str, Any]) -> str:
    m, ref = fr["metric"], stats["ref"]
    name = fr.get("metric_name", "score")
    task = fr["_summary"].get("task", run_dir.name)
    out = [f"### {task} (`{run_dir}`)", "",
           f"Frontier metric `{m}` (× = relative to uniform int8), score = {name} on held-out data; float32 "
           f"{fr['float_score']:.4f}. mpsearch pool: {stats['pool']} measured frontier points.", "",
           f"| baseline | {m} | {name} | best mpsearch {name} at ≤ cost (its {m}) | difference | verdict |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        b = r["best"]
        best = "–" if b is None else f"{b['score']:.4f} ({fmt_cost(m, b['totals'][m], ref)})"
        diff = "–" if r["diff"] is None else f"{r['diff']:+.4f}"
        out.append(f"| {r['baseline']} | {fmt_cost(m, r['cost'], ref)} | {r['score']:.4f} | {best} | {diff} | {r['verdict']} |")
    out += ["", f"mpsearch ≥ baseline at ≤ cost: **{stats['win_or_tie']}/{stats['n']}**; loses: {stats['lose']}; "
                f"no mpsearch point that cheap: {stats['no_point']}."]
    return "\n".join(out)


def at_cost(run_dir: Path, fr: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Re-solve the ILP at every distinct baseline cost and evaluate each plan for real (read-only on the run)."""
    import time

    import torch

    from mpsearch import search
    from mpsearch.pipeline import OptimizeConfig, load_tables, load_task_spec, plan_key
    from mpsearch.rundir import RunDir
    from mpsearch.simulate import apply_plan

    torch.set_num_threads(1)
    run = RunDir(run_dir, create=False)
    cfg = OptimizeConfig.from_dict(run.read_json("config.json"))
    graph, sens, costs = load_tables(run)
    amax = run.read_json("act_amax.json")["value"]
    evals = run.read_json("evals.json") if run.file("evals.json").is_file() else {}
    fixed = {b.metric: b for b in map(search.parse_budget, cfg.budgets) if b.metric != fr["metric"]}
    task = None
    m = fr["metric"]
    rows, cache, t0, n_eval = [], {}, time.perf_counter(), 0
    for label, p in baseline_points(fr):
        cost = p["totals"][m]
        if cost not in cache:
            res = search.solve_ilp(sens, costs, [*fixed.values(), search.Budget(m, cost)], graph=graph)
            key = plan_key(res.plan)
            if key not in evals:
                if task is None:
                    task = load_task_spec(cfg.task, **cfg.task_args)
                evals[key] = float(task.evaluate(apply_plan(task.model, res.plan, amax)))
                n_eval += 1
            cache[cost] = {"score": evals[key], "omega": res.objective, "cost": res.totals[m]}
        got = cache[cost]
        diff = got["score"] - p["score"]
        rows.append({"baseline": label, "cost": cost, "score": p["score"], "omega": p.get("omega"), "ilp": got,
                     "diff": diff, "verdict": ">=" if diff >= -EPS else "<"})
    stats = {"n": len(rows), "win_or_tie": sum(r["verdict"] == ">=" for r in rows), "lose": sum(r["verdict"] == "<" for r in rows),
             "omega_lower": sum((r["ilp"]["omega"] <= (r["omega"] or 0) + 1e-15) for r in rows),
             "new_evals": n_eval, "seconds": time.perf_counter() - t0, "distinct": len(cache)}
    return rows, stats


def markdown_at_cost(fr: dict[str, Any], rows: list[dict[str, Any]], stats: dict[str, Any], ref: float | None) -> str:
    m, name = fr["metric"], fr.get("metric_name", "score")
    out = [f"ILP re-solved with each baseline's exact {m} as the budget ({stats['distinct']} distinct costs, "
           f"{stats['new_evals']} new evaluations, {stats['seconds']:.0f} s):", "",
           f"| baseline | {m} | {name} | Ω | mpsearch ILP at that cost: {name} | its Ω | its {m} | difference | verdict |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r["ilp"]
        om = "–" if r["omega"] is None else f"{r['omega']:.3g}"
        out.append(f"| {r['baseline']} | {fmt_cost(m, r['cost'], ref)} | {r['score']:.4f} | {om} | {g['score']:.4f} | "
                   f"{g['omega']:.3g} | {fmt_cost(m, g['cost'], ref)} | {r['diff']:+.4f} | {r['verdict']} |")
    out += ["", f"mpsearch ILP at the baseline's cost ≥ baseline: **{stats['win_or_tie']}/{stats['n']}**; loses: {stats['lose']}; "
                f"the ILP plan has Ω ≤ the baseline's Ω in {stats['omega_lower']}/{stats['n']} rows."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", type=Path, help="finished 'mpsearch optimize' run directories")
    ap.add_argument("--with-optuna", action="store_true", help="add the Optuna Pareto points to mpsearch's pool")
    ap.add_argument("--at-cost", action="store_true",
                    help="also re-solve the ILP at each baseline's exact cost and evaluate it (loads the task)")
    ap.add_argument("--strict", action="store_true", help="exit 1 if mpsearch loses to any baseline point")
    args = ap.parse_args(argv)
    lost = 0
    for i, run_dir in enumerate(args.run_dirs):
        fr = load_run(run_dir)
        rows, stats = compare(fr, args.with_optuna)
        if not stats["n"]:
            print(f"warning: {run_dir} has no baseline points", file=sys.stderr)
        print(("\n" if i else "") + markdown(run_dir, fr, rows, stats))
        lost += stats["lose"]
        if args.at_cost:
            rows2, stats2 = at_cost(run_dir, fr)
            print("\n" + markdown_at_cost(fr, rows2, stats2, stats["ref"]))
    return 1 if (args.strict and lost) else 0


if __name__ == "__main__":
    sys.exit(main())
