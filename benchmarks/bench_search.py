"""Search speed: 500 layers × 32 candidates × 3 budgets, one solve and a 30-point frontier.

Two random table families, both 8 weight formats × 4 activation formats = 32 candidates per layer:

* ``structured``: costs follow the format (bytes ∝ bits, roofline-like latency, BOPs = MACs × bits × bits)
  with ±5 % noise, Ω = layer sensitivity × quantization noise power with ±20 % noise, as real tables do;
* ``noisy``: latency gets independent ±50 % noise per candidate, so few candidates are dominated and the
  LP relaxation is highly degenerate (a stress case, not what cost models produce).

Wall time and CPU time are both reported (this machine is shared; CPU time is what the solver used),
CPU time including that of reaped child processes. The frontier runs twice, with ``workers=1`` (in-process)
and ``workers=N`` (``--workers``, default 2: the budget points split over N processes), side by side. ``--baseline REV`` loads the search code of git revision REV (read-only ``git show``) into a
private package and times it next to the working tree, interleaved, so both see the same machine load;
their objectives are compared too (both must be optimal within gap_rel). ``--solvers highs,cbc`` adds CBC.

    .venv/bin/python benchmarks/bench_search.py [--quick] [--baseline c6f8bab] [--solvers highs] [--workers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mpsearch.search as current  # noqa: E402
from mpsearch.search import resolve_budgets  # noqa: E402
from mpsearch.search.frontier import FRONTIER_GAP, default_workers, pool_start_method  # noqa: E402
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


def load_baseline(rev: str):
    """The search modules (ilp, frontier and their imports) as of git revision ``rev``, as a private package."""
    root = Path(__file__).resolve().parents[1]
    pkg = "mpsearch_search_" + "".join(ch for ch in rev if ch.isalnum())
    tmp = Path(tempfile.mkdtemp(prefix="bench_search_"))
    (tmp / pkg).mkdir()
    (tmp / pkg / "__init__.py").write_text("")
    for mod in ("budget", "problem", "solvers", "mckp", "ilp", "frontier"):
        show = subprocess.run(["git", "show", f"{rev}:mpsearch/search/{mod}.py"], cwd=root, capture_output=True, text=True)
        if show.returncode:  # a module that revision does not have yet (mckp is newer than the others)
            continue
        (tmp / pkg / f"{mod}.py").write_text(show.stdout.replace("mpsearch.search.", f"{pkg}."))
    sys.path.insert(0, str(tmp))
    import importlib

    ilp = importlib.import_module(f"{pkg}.ilp")
    frontier = importlib.import_module(f"{pkg}.frontier")

    class Baseline:
        CompiledSearch = ilp.CompiledSearch
        ilp_frontier = frontier.ilp_frontier

    return Baseline


def cpu_time() -> float:
    """User + system time of this process and of its children that have been waited for (pool workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn):
    w0, c0 = time.perf_counter(), cpu_time()
    out = fn()
    return out, time.perf_counter() - w0, cpu_time() - c0


def bench_solve(impls: dict, sens, costs, solver: str, repeats: int) -> dict:
    """Each implementation solves the same budgets, interleaved repeat by repeat."""
    names = list(costs.costs)
    budgets = resolve_budgets(BUDGETS, costs, names)
    out = {}
    for label, mod in impls.items():
        search, t_compile, _ = timed(lambda: mod.CompiledSearch(sens, costs, budgets.keys(), solver=solver, time_limit=60))
        out[label] = {"search": search, "compile_s": t_compile, "walls": [], "cpus": [], "results": []}
    for i in range(repeats):
        # vary the budgets a little so repeats are not identical problems
        b = {m: v * (1.0 - 0.02 * i) for m, v in budgets.items()}
        for label, d in out.items():
            r, w, c = timed(lambda: d["search"].solve(b))
            d["walls"].append(w)
            d["cpus"].append(c)
            d["results"].append(r)
    rows = {}
    for label, d in out.items():
        rs = d["results"]
        rows[label] = {
            "compile_s": d["compile_s"], "solve_wall_s": statistics.median(d["walls"]), "solve_cpu_s": statistics.median(d["cpus"]),
            "max_wall_s": max(d["walls"]), "gap": max(r.gap or 0.0 for r in rs), "omegas": [r.objective for r in rs],
            "status": ",".join(sorted({r.status for r in rs})), "pruned": d["search"].problem.pruned,
            "binaries": d["search"].problem.n_x,
        }
    return rows


def bench_frontier(mod, sens, costs, solver: str, n_points: int, gap: float, workers: int | None = None) -> dict:
    """One frontier sweep to relative gap ``gap``; ``workers`` is passed only when given (baseline revisions predate it)."""
    names = list(costs.costs)
    fixed = resolve_budgets(BUDGETS[1:], costs, names)
    kw = {} if workers is None else {"workers": workers}
    front, w, c = timed(lambda: mod.ilp_frontier(sens, costs, "latency_s", n_points=n_points, fixed_budgets=fixed, solver=solver,
                                                 time_limit=60, gap_rel=gap, **kw))
    return {"wall_s": w, "cpu_s": c, "points": len(front), "max_gap": max((p.gap or 0.0) for p in front),
            "omegas": [p.objective for p in front]}


def accepts_workers(mod) -> bool:
    import inspect

    return "workers" in inspect.signature(mod.ilp_frontier).parameters


def frontier_cell(f: dict) -> str:
    return f"{f['wall_s']:.2f}s wall / {f['cpu_s']:.2f}s cpu, {f['points']} points, max gap {f['max_gap']:.1e}"


def omega_diff(a: dict, b: dict) -> float:
    """Largest relative Ω difference between two frontiers point by point (inf if their lengths differ)."""
    if len(a["omegas"]) != len(b["omegas"]):
        return float("inf")
    return max((abs(x - y) / max(abs(x), abs(y), 1e-300) for x, y in zip(a["omegas"], b["omegas"])), default=0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100 layers, fewer repeats (smoke run)")
    ap.add_argument("--no-results", action="store_true", help="print the section, do not append it to RESULTS.md")
    ap.add_argument("--baseline", metavar="REV", help="also time the search code of this git revision, interleaved")
    ap.add_argument("--solvers", default="highs", help="comma-separated: highs, cbc (CBC takes minutes per frontier)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2, help="processes for the parallel frontier, next to workers=1")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random tables (0 is the one RESULTS.md reports)")
    ap.add_argument("--gaps", default=f"{FRONTIER_GAP:g},1e-4",
                    help="relative gaps of the frontier sweeps, comma-separated (first: also timed with --workers)")
    args = ap.parse_args()
    gaps = [float(g) for g in args.gaps.split(",")]
    n_layers = 100 if args.quick else 500
    repeats = args.repeats or (2 if args.quick else 5)
    impls = {"after": current}
    if args.baseline:
        impls = {"before": load_baseline(args.baseline), "after": current}
    rows = []
    for kind in ("structured", "noisy"):
        sens, costs = make_tables(n_layers, kind, args.seed)
        for solver in args.solvers.split(","):
            s = bench_solve(impls, sens, costs, solver, repeats)
            # workers=1 and workers=N of the current code back to back, so both see the same machine load
            # in-process for both (a baseline without the workers argument is in-process anyway)
            for gi, gap in enumerate(gaps):
                f = {label: bench_frontier(mod, sens, costs, solver, 30, gap, 1 if accepts_workers(mod) else None) for label, mod in impls.items()}
                fp = bench_frontier(current, sens, costs, solver, 30, gap, args.workers) if gi == 0 else None
                for label in impls:
                    par = fp if label == "after" else None
                    rows.append((kind, solver, label, s[label], f[label], par, gap))
                    print(
                        f"{kind:10s} {solver:5s} {label:6s} compile {s[label]['compile_s']:.2f}s  solve {s[label]['solve_wall_s']:.2f}s wall /"
                        f" {s[label]['solve_cpu_s']:.2f}s cpu (max {s[label]['max_wall_s']:.2f}s, gap {s[label]['gap']:.1e},"
                        f" {s[label]['binaries']} binaries after pruning {s[label]['pruned']})  frontier-30 workers=1: {frontier_cell(f[label])}"
                        + (f" | workers={args.workers}: {frontier_cell(par)} | wall ratio {f[label]['wall_s'] / par['wall_s']:.2f}x,"
                           f" largest relative Ω difference {omega_diff(f[label], par):.1e}" if par else ""),
                        flush=True,
                    )
            if "before" in s:
                worst = max(abs(a - b) / max(abs(a), abs(b)) for a, b in zip(s["before"]["omegas"], s["after"]["omegas"]))
                print(f"{kind:10s} {solver:5s} largest relative Ω difference before/after: {worst:.1e} (each is within its gap)")
    lines = [
        "",
        f"## Search ILP speed (bench_search.py, {datetime.date.today()}, {platform.machine()} CPU, {os.cpu_count()} cores, shared machine)",
        "",
        f"{n_layers} layers × 32 candidates (8 weight × 4 act formats), table seed {args.seed}, budgets {', '.join(BUDGETS)}; median of {repeats} solves",
        "(budgets shrunk 2 % per repeat); frontier = 30 latency budgets with the other two fixed. CPU = process time (+ reaped children).",
        f"One solve: gap_rel 1e-4 (solve_ilp's default); frontier: the gap in its column ({FRONTIER_GAP:g} is ilp_frontier's default).",
        "Dominated candidates pruned, LP reduced-cost fixing.",
        "",
        f"Frontier columns: workers=1 / workers={args.workers} (CPU includes the worker processes; {default_workers()} CPUs usable, {pool_start_method()} start method).",
        "",
        "| tables | solver | code | solve wall s (median / max) | solve CPU s | max gap | binaries | frontier gap_rel | frontier-30 wall s | frontier CPU s | points | frontier max gap |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, solver, label, s, f, par, gap in rows:
        pair = lambda k, fmt: f"{f[k]:{fmt}}" + (f" / {par[k]:{fmt}}" if par else "")  # noqa: E731
        lines.append(
            f"| {kind} | {solver} | {label} | {s['solve_wall_s']:.2f} / {s['max_wall_s']:.2f} | {s['solve_cpu_s']:.2f} | {s['gap']:.1e} |"
            f" {s['binaries']} | {gap:g} | {pair('wall_s', '.2f')} | {pair('cpu_s', '.2f')} | {pair('points', 'd')} | {pair('max_gap', '.1e')} |"
        )
    speedups = [f"{kind}/{solver}: {f['wall_s'] / par['wall_s']:.2f}x wall, {f['cpu_s'] / par['cpu_s']:.2f}x CPU"
                for kind, solver, _, _, f, par, _ in rows if par]
    lines += ["", f"Frontier workers=1 / workers={args.workers}: " + "; ".join(speedups) + "."]
    if args.baseline:
        ratios = []
        for kind in ("structured", "noisy"):
            for solver in args.solvers.split(","):
                b = next(r for r in rows if r[:3] == (kind, solver, "before") and r[6] == gaps[0])
                a = next(r for r in rows if r[:3] == (kind, solver, "after") and r[6] == gaps[0])
                ratios.append(
                    f"{kind}/{solver}: solve median {b[3]['solve_wall_s'] / a[3]['solve_wall_s']:.2f}x, max {b[3]['max_wall_s'] / a[3]['max_wall_s']:.2f}x,"
                    f" frontier {b[4]['wall_s'] / a[4]['wall_s']:.2f}x"
                )
        lines += ["", f"Speed-up before ({args.baseline}) / after: " + "; ".join(ratios) + ".", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_results and not args.quick:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
