"""The accuracy/cost frontier from one sensitivity table: sweep one budget, keep the non-dominated plans."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from mpsearch.errors import MpsearchError
from mpsearch.graph import LayerGraph
from mpsearch.plan import Plan
from mpsearch.search.budget import BUDGET_METRICS, Budget
from mpsearch.search.ilp import CompiledSearch, InfeasibleBudgetError, SolveResult, resolve_budgets
from mpsearch.search.problem import Transitions, layer_order
from mpsearch.tables import CostTable, SensitivityTable


#: Relative optimality gap every frontier point is proven to. Looser than one solve's 1e-4 on purpose: the
#: Ω being minimised is itself an estimate (each layer's trace stops at ~10 % relative standard error), so
#: plans within 0.1 % of each other are not distinguishable, while proving 1e-4 costs a sweep 2.5-5x the time
#: on degenerate tables (benchmarks/RESULTS.md, "Search ILP speed" of 2026-12-02). Pass gap_rel=1e-4 (or 0)
#: for a strict sweep.
FRONTIER_GAP = 1e-3
#: Weight of the swept metric (scaled to O(1), like Ω) that breaks ties between equal-Ω plans.
TIE_BREAK = 1e-7
#: Parallel sweeps give every worker at least this many neighbouring budgets: fewer and the warm LP
#: re-solves inside a chunk (tens of simplex iterations instead of a cold start) are mostly lost.
MIN_POINTS_PER_WORKER = 2
#: Chunks per worker: more balance the load (single points can take 10x the median), fewer keep more warm
#: re-solves; each chunk starts from a cold solver, so the frontier does not depend on which worker took it.
CHUNKS_PER_WORKER = 1
#: Binaries (after pruning) below which the sweep stays in-process. A forked pool costs ~40 ms to start
#: and its results are pickled back; ~1000-binary knapsacks take ~0.1 s per point, tiny ones milliseconds.
MIN_PARALLEL_BINARIES = 1000
#: The same with "spawn" (used where fork is unsafe): each worker imports mpsearch afresh (~2 s here, it
#: pulls in torch), which only sweeps of several seconds per worker repay.
MIN_SPAWN_BINARIES = 10000


@dataclass
class FrontierPoint:
    plan: Plan
    objective: float  # predicted total Ω
    totals: dict[str, float]
    budget: float | None  # the swept metric's bound that produced it (None for weighted-sum points)
    weight: float | None = None  # weighted-sum point: Ω + weight × metric (both scaled)
    status: str = "optimal"
    gap: float | None = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _value(p: Any, key: str | Callable[[Any], float]) -> float:
    if callable(key):
        return float(key(p))
    sign = 1.0
    if key.startswith("-"):
        sign, key = -1.0, key[1:]
    if isinstance(p, Mapping):
        v = p[key] if key in p else p["totals"][key]
    elif hasattr(p, key):
        v = getattr(p, key)
    else:
        v = p.totals[key]
    return sign * float(v)


def pareto_front(points: Iterable[Any], objectives: Sequence[str | Callable[[Any], float]]) -> list[Any]:
    """Non-dominated subset, all objectives minimised (prefix a name with ``-`` to maximise it).

    Names are looked up as attributes, mapping keys, then ``totals`` entries. Points with equal objective
    vectors keep only the first. Result sorted by the first objective, then the next.
    """
    pts = list(points)
    if not objectives:
        raise MpsearchError("pareto_front needs at least one objective")
    if not pts:
        return []
    vals = np.array([[_value(p, o) for o in objectives] for p in pts], dtype=float)
    keep = []
    for i in range(len(pts)):
        le = np.all(vals <= vals[i], axis=1)
        lt = np.any(vals < vals[i], axis=1)
        dominated = np.any(le & lt)
        dup_earlier = np.any(np.all(vals[:i] == vals[i], axis=1))
        if not dominated and not dup_earlier and np.all(np.isfinite(vals[i])):
            keep.append(i)
    keep.sort(key=lambda i: tuple(vals[i]))
    return [pts[i] for i in keep]


def _point(r: SolveResult, budget: float | None, weight: float | None) -> FrontierPoint:
    return FrontierPoint(r.plan, r.objective, r.totals, budget, weight, r.status, r.gap, {"solver": r.solver, "seconds": r.seconds})


def _sweep(
    search: CompiledSearch, fixed: Mapping[str, float], metric: str, budgets: Sequence[float], objective: Mapping[str, float] | None
) -> list[FrontierPoint]:
    """One point per feasible budget, in order; neighbours warm-start each other, infeasible ones are skipped."""
    points = []
    for b in budgets:
        try:
            r = search.solve({**fixed, metric: float(b)}, objective=objective, diagnose=False)
        except InfeasibleBudgetError:
            continue  # below what the fixed budgets allow
        points.append(_point(r, float(b), None))
    return points


def _os_threads() -> int:
    """Threads of this process, native ones included (OpenMP, HiGHS, Optuna heartbeats) where Linux shows them."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def pool_start_method() -> str:
    """"fork" where it is safe (Linux, a single-threaded process: no other thread can hold a lock the child
    inherits), else "spawn". Fork also shares the compiled problem with the workers for free."""
    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods() and _os_threads() == 1:
        return "fork"
    return "spawn"


def default_workers() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _pool_plan(search: CompiledSearch, n_budgets: int, workers: int | None) -> tuple[int, str]:
    """(worker processes, start method) for a sweep; 1 worker means the in-process sequential sweep."""
    if workers is None:
        workers = default_workers()
    elif workers < 1:
        raise MpsearchError(f"workers must be >= 1, got {workers}")
    workers = min(workers, n_budgets // MIN_POINTS_PER_WORKER)
    if workers <= 1 or mp.current_process().daemon:  # daemonic processes may not have children
        return 1, ""
    method = pool_start_method()
    if search.problem.n_x < (MIN_PARALLEL_BINARIES if method == "fork" else MIN_SPAWN_BINARIES):
        return 1, ""
    return workers, method


_worker_search: CompiledSearch | None = None


def _init_worker(search: CompiledSearch) -> None:
    """Pool initializer: under fork the parent's compiled problem is inherited as is, under spawn it is pickled once."""
    global _worker_search
    _worker_search = search


def _solve_chunk(
    fixed: Mapping[str, float], metric: str, budgets: Sequence[float], objective: Mapping[str, float] | None
) -> list[FrontierPoint]:
    """A worker's contiguous run of budgets, from a cold solver so the result does not depend on which
    worker solved which chunk before. Errors travel back pickled, so an :class:`MpsearchError` that cannot
    be rebuilt in the parent (a subclass with keyword-only fields) is sent as a plain one."""
    assert _worker_search is not None
    _worker_search.reset_solvers()
    try:
        return _sweep(_worker_search, fixed, metric, budgets, objective)
    except MpsearchError as e:
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:
            raise MpsearchError(str(e)) from None
        raise


def _parallel_sweep(
    search: CompiledSearch, fixed: Mapping[str, float], metric: str, budgets: Sequence[float],
    objective: Mapping[str, float] | None, workers: int, method: str,
) -> list[FrontierPoint]:
    """:func:`_sweep` over contiguous chunks of ``budgets`` in ``workers`` processes, merged in budget order."""
    n_chunks = max(workers, min(workers * CHUNKS_PER_WORKER, len(budgets) // MIN_POINTS_PER_WORKER))
    chunks = [[float(b) for b in c] for c in np.array_split(np.asarray(budgets, float), n_chunks)]
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_init_worker, initargs=(search,))
    try:
        futures = [pool.submit(_solve_chunk, dict(fixed), metric, c, objective) for c in chunks]
        return [p for f in futures for p in f.result()]
    except BrokenProcessPool as e:
        raise MpsearchError(f"a frontier worker process died ({e})", hint="retry with workers=1") from e
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # reap every worker, also on errors: no zombies


def ilp_frontier(
    sens: SensitivityTable,
    costs: CostTable,
    metric: str,
    *,
    n_points: int = 30,
    fixed_budgets: Iterable[Budget | str] | Mapping[str, float] = (),
    weights: Sequence[float] | None = None,
    candidates=None,
    ties: Iterable[Sequence[str]] | None = None,
    transitions: Transitions | None = None,
    graph: LayerGraph | None = None,
    time_limit: float = 10.0,
    solver: str = "auto",
    gap_rel: float = FRONTIER_GAP,
    task: str = "",
    workers: int | None = None,
    extra_budgets: Iterable[float] = (),
) -> list[FrontierPoint]:
    """Non-dominated (Ω, ``metric``) plans for budgets of ``metric`` from its minimum to where it stops binding.

    ``extra_budgets`` adds budget values of ``metric`` to the geometric sweep (those inside its range), e.g.
    the exact costs of baseline plans, so the frontier answers "what does the same cost buy" at each of them
    instead of leaving the comparison to the next cheaper sweep point.

    The model is compiled once and re-solved with a new right-hand side per point; ``fixed_budgets`` hold
    throughout. ``weights`` adds supported points of ``Ω + w·metric`` (scaled) for an additive metric.
    ``workers`` processes (default: the CPUs this process may use) each sweep a contiguous chunk of the
    budgets; 1, or a sweep too small to repay process start-up (see :data:`MIN_PARALLEL_BINARIES`), runs
    in-process. Every point is optimal to ``gap_rel`` either way; plans of equal Ω may differ.
    """
    if metric not in BUDGET_METRICS:
        raise MpsearchError(f"unknown frontier metric {metric!r}", hint=f"known: {', '.join(BUDGET_METRICS)}")
    if n_points < 2:
        raise MpsearchError(f"n_points must be >= 2, got {n_points}")
    names = layer_order(sens, costs, graph)
    fixed = resolve_budgets(fixed_budgets, costs, names)
    if metric in fixed:
        raise MpsearchError(f"{metric} is the swept metric; do not also give it as a fixed budget")
    search = CompiledSearch(
        sens, costs, [metric, *fixed], candidates=candidates, ties=ties, transitions=transitions, graph=graph,
        time_limit=time_limit, solver=solver, gap_rel=gap_rel,
    )
    search.task = task
    # Among plans of equal Ω prefer the cheaper one, so no point is weakly dominated by an equal-Ω plan.
    tie_break = None if metric == "peak_act_bytes" else {"omega": 1.0, metric: TIE_BREAK}
    free = search.solve(fixed, objective=tie_break)  # best Ω under the fixed budgets: the sweep's top end
    hi = free.totals[metric]
    lo = search.min_metric(metric)
    points = [_point(free, hi, None)]
    # Geometric spacing: costs span orders of magnitude (INT2 .. FP32) and the knee sits at the cheap end,
    # where a linear sweep leaves the widest gaps.
    sweep = [float(b) for b in (np.geomspace(lo, hi, n_points) if lo > 0 else np.linspace(lo, hi, n_points))[:-1]]
    extra = [float(b) for b in extra_budgets if lo <= float(b) < hi]
    if extra:  # one ascending sweep, so neighbours still warm-start each other
        sweep = sorted(set(sweep) | set(extra))
    n_workers, method = _pool_plan(search, len(sweep), workers)
    if n_workers > 1:
        points += _parallel_sweep(search, fixed, metric, sweep, tie_break, n_workers, method)
    else:
        points += _sweep(search, fixed, metric, sweep, tie_break)
    for w in weights or ():
        if metric == "peak_act_bytes":
            raise MpsearchError("weighted-sum frontier points need an additive metric, not peak_act_bytes")
        points.append(_point(search.solve(fixed, objective={"omega": 1.0, metric: float(w)}), None, float(w)))
    seen: set[tuple[str, ...]] = set()
    unique = []
    for p in points:
        key = tuple(p.plan.layers[n].key for n in names)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return pareto_front(unique, [metric, "objective"])
