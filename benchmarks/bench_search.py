"""Search speed: 500 layers × 32 candidates × 3 budgets, one solve and a 30-point frontier, HiGHS vs CBC.

Two random table families, both 8 weight formats × 4 activation formats = 32 candidates per layer:

* ``structured``: costs follow the format (bytes ∝ bits, roofline-like latency, BOPs = MACs × bits × bits)
  with ±5 % noise, Ω = layer sensitivity × quantization noise power with ±20 % noise, as real tables do;
* ``noisy``: latency gets independent ±50 % noise per candidate, so few candidates are dominated and the
  LP relaxation is highly degenerate (a stress case, not what cost models produce).

Wall time and process CPU time are both reported (this machine is shared; CPU time is what the solver
used). Appends a section to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_search.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpsearch.search import CompiledSearch, ilp_frontier, resolve_budgets  # noqa: E402
from mpsearch.tables import CostTable, SensitivityTable  # noqa: E402

WEIGHTS = ["int2", "int3", "int4", "int5", "int6", "int7", "int8", "fp16"]
ACTS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
BUDGETS = ["latency=0.85x:int8/int8", "weight=0.45x:int8", "bops=0.35x:int8/int8"]


def bits(w: str) -> int:
    return 16 if w == "fp16" else int(w[3:])


def make_tables(n_layers: int, kind: str, seed: int = 0) -> tuple[SensitivityTable, CostTable]:
    rng = np.random.default_rng(seed)
    omega: dict = {}
    costs: dict = {}
    for i in range(n_layers):
        name = f"layer{i}"
        params = float(rng.lognormal(11, 1))  # ~60k params median
        macs = params * float(rng.lognormal(3, 1))
        sens = float(rng.lognormal(0, 1.5))
        omega[name], costs[name] = {}, {}
        for w in WEIGHTS:
            for a, ab in ACTS.items():
                wb = bits(w)
                key = f"{w}/{a}"
                noise = rng.uniform(0.95, 1.05)
                lat_noise = rng.uniform(0.5, 1.5) if kind == "noisy" else rng.uniform(0.95, 1.05)
                mem_s = params * wb / 8 / 2e12
                cmp_s = macs / (4e12 * 32 / max(wb, ab))
                omega[name][key] = sens * (2.0 ** (-2 * wb) + 0.3 * 2.0 ** (-2 * ab)) * rng.uniform(0.8, 1.2)
                costs[name][key] = {
                    "latency_s": (max(mem_s, cmp_s) + 2e-7) * lat_noise,
                    "weight_bytes": params * wb / 8 * noise,
                    "act_bytes": macs / params * 64 * ab / 8,
                    "bops": macs * wb * ab,
                    "energy_j": (macs * wb * ab * 1e-15 + params * wb / 8 * 1e-11) * noise,
                }
    return SensitivityTable(omega), CostTable(costs)


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def bench_solve(sens, costs, solver: str, repeats: int) -> dict:
    names = list(costs.costs)
    budgets = resolve_budgets(BUDGETS, costs, names)
    search, t_compile, _ = timed(lambda: CompiledSearch(sens, costs, budgets.keys(), solver=solver, time_limit=60))
    walls, cpus, results = [], [], []
    for i in range(repeats):
        # vary the budgets a little so repeats are not identical problems
        b = {m: v * (1.0 - 0.02 * i) for m, v in budgets.items()}
        r, w, c = timed(lambda: search.solve(b))
        walls.append(w)
        cpus.append(c)
        results.append(r)
    return {
        "compile_s": t_compile, "solve_wall_s": statistics.median(walls), "solve_cpu_s": statistics.median(cpus),
        "max_wall_s": max(walls), "gap": max(r.gap or 0.0 for r in results), "omega": results[0].objective,
        "status": ",".join(sorted({r.status for r in results})), "pruned": search.problem.pruned,
        "binaries": search.problem.n_x,
    }


def bench_frontier(sens, costs, solver: str, n_points: int) -> dict:
    names = list(costs.costs)
    fixed = resolve_budgets(BUDGETS[1:], costs, names)
    front, w, c = timed(lambda: ilp_frontier(sens, costs, "latency_s", n_points=n_points, fixed_budgets=fixed, solver=solver, time_limit=60))
    return {"wall_s": w, "cpu_s": c, "points": len(front), "max_gap": max((p.gap or 0.0) for p in front)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100 layers, fewer repeats (smoke run)")
    ap.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    n_layers = 100 if args.quick else 500
    repeats = 2 if args.quick else 5
    rows = []
    for kind in ("structured", "noisy"):
        sens, costs = make_tables(n_layers, kind)
        for solver in ("highs", "cbc"):
            s = bench_solve(sens, costs, solver, repeats)
            f = bench_frontier(sens, costs, solver, 30)
            rows.append((kind, solver, s, f))
            print(
                f"{kind:10s} {solver:5s} compile {s['compile_s']:.2f}s  solve {s['solve_wall_s']:.2f}s wall / {s['solve_cpu_s']:.2f}s cpu"
                f" (max {s['max_wall_s']:.2f}s, gap {s['gap']:.1e}, {s['binaries']} binaries after pruning {s['pruned']})"
                f"  frontier-30 {f['wall_s']:.2f}s wall / {f['cpu_s']:.2f}s cpu, {f['points']} points, max gap {f['max_gap']:.1e}",
                flush=True,
            )
    lines = [
        "",
        f"## Search ILP speed (bench_search.py, 2026-11-23, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared machine)",
        "",
        f"{n_layers} layers × 32 candidates (8 weight × 4 act formats), budgets {', '.join(BUDGETS)}; median of {repeats} solves;",
        "frontier = 30 latency budgets with the other two fixed. CPU = process time (the machine was loaded).",
        "Default settings: gap_rel 1e-4, dominated candidates pruned, LP reduced-cost fixing.",
        "",
        "| tables | solver | compile s | solve wall s | solve CPU s | max gap | binaries left | frontier-30 wall s | frontier CPU s | points |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, solver, s, f in rows:
        lines.append(
            f"| {kind} | {solver} | {s['compile_s']:.2f} | {s['solve_wall_s']:.2f} | {s['solve_cpu_s']:.2f} | {s['gap']:.1e} |"
            f" {s['binaries']} | {f['wall_s']:.2f} | {f['cpu_s']:.2f} | {f['points']} |"
        )
    ratios = []
    for kind in ("structured", "noisy"):
        h = next(r for r in rows if r[0] == kind and r[1] == "highs")
        c = next(r for r in rows if r[0] == kind and r[1] == "cbc")
        ratios.append(f"{kind}: CBC/HiGHS solve {c[2]['solve_wall_s'] / h[2]['solve_wall_s']:.1f}x, frontier {c[3]['wall_s'] / h[3]['wall_s']:.1f}x")
    lines += ["", "Ratios: " + "; ".join(ratios) + ". (CBC's CPU time excludes its subprocess.)", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_results and not args.quick:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
