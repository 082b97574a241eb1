"""Minimise total Ω subject to any combination of budgets: an exact multiple-choice knapsack MILP.

One binary per (layer, candidate), exactly one per layer (tied layers share their binaries); one row per
budgeted additive metric; one row per activation cut for peak activation memory; one continuous auxiliary
per data-flow edge that pays a cast when the two layers' activation formats differ. Solved by a chain of
back ends (see :mod:`mpsearch.search.solvers`) under a time limit, reporting status and optimality gap.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from mpsearch.errors import MpsearchError
from mpsearch.graph import LayerGraph
from mpsearch.plan import Candidate, Plan
from mpsearch.search.budget import BUDGET_METRICS, Budget, as_budgets, resolve_budget
from mpsearch.search.mckp import CoreSolver
from mpsearch.search.problem import Problem, Transitions, act_format, compile_problem, layer_order
from mpsearch.search.solvers import AUTO_CHAIN, SOLVERS, RawSolution, make_backend
from mpsearch.tables import COST_METRICS, CostTable, SensitivityTable

#: Relative slack when re-checking a solver's plan against its budgets (solver feasibility tolerance).
BUDGET_RTOL = 1e-6


class InfeasibleBudgetError(MpsearchError):
    """No plan meets all budgets; the message gives each budget's minimum achievable value."""

    def __init__(self, message: str, *, budgets: Mapping[str, float], minimums: Mapping[str, float]) -> None:
        super().__init__(message)
        self.budgets = dict(budgets)
        self.minimums = dict(minimums)

    def __reduce__(self):  # keyword-only fields: the default pickling would call cls(message) and fail
        return _rebuild_infeasible, (str(self), self.budgets, self.minimums)


def _rebuild_infeasible(message: str, budgets: Mapping[str, float], minimums: Mapping[str, float]) -> InfeasibleBudgetError:
    return InfeasibleBudgetError(message, budgets=budgets, minimums=minimums)


@dataclass
class SolveResult:
    plan: Plan
    objective: float  # total Ω (+ transition penalties)
    totals: dict[str, float]  # every metric incl. peak_act_bytes (+ "transitions": casts paid)
    status: str  # "optimal" | "feasible" (time limit hit, gap reported)
    solver: str
    gap: float | None
    seconds: float
    budgets: dict[str, float] = field(default_factory=dict)  # resolved absolute budgets


def transition_edges(plan: Plan, edges: Iterable[tuple[str, str]]) -> int:
    """How many edges join layers with different activation formats."""
    return sum(1 for a, b in edges if plan.layers[a].act != plan.layers[b].act)


def plan_totals(costs: CostTable, plan: Plan, *, transitions: Transitions | None = None, graph: LayerGraph | None = None) -> dict[str, float]:
    """Every cost metric of a plan (NaN where the table lacks one), peak activation bytes, casts paid."""
    out: dict[str, float] = {}
    for m in COST_METRICS:
        try:
            out[m] = costs.plan_cost(plan, m)
        except MpsearchError:
            out[m] = float("nan")
    try:
        out["peak_act_bytes"] = costs.peak_act_bytes(plan)
    except MpsearchError:
        out["peak_act_bytes"] = float("nan")
    if transitions is not None and transitions.active:
        edges = transitions.edges if transitions.edges is not None else (list(graph.graph.edges) if graph is not None else [])
        n = transition_edges(plan, edges)
        out["transitions"] = float(n)
        out["latency_s"] += n * transitions.latency_s
    return out


class CompiledSearch:
    """A compiled knapsack plus lazily built solver back ends, re-solvable with new budgets or weights."""

    def __init__(
        self,
        sens: SensitivityTable,
        costs: CostTable,
        constrained: Iterable[str],
        *,
        candidates=None,
        ties: Iterable[Sequence[str]] | None = None,
        transitions: Transitions | None = None,
        graph: LayerGraph | None = None,
        time_limit: float = 10.0,
        solver: str = "auto",
        gap_rel: float = 1e-4,
        prune: bool = True,
        reduced_cost_fixing: bool = True,
    ) -> None:
        self.reduced_cost_fixing = reduced_cost_fixing
        if solver != "auto" and solver not in SOLVERS:
            raise MpsearchError(f"unknown solver {solver!r}", hint=f"use auto or one of {', '.join(SOLVERS)}")
        if not (time_limit > 0):
            raise MpsearchError(f"time_limit must be positive, got {time_limit!r}")
        self.sens, self.costs, self.graph = sens, costs, graph
        self.transitions = transitions or Transitions()
        self.problem: Problem = compile_problem(
            sens, costs, constrained, candidates=candidates, ties=ties, transitions=self.transitions, graph=graph, prune=prune
        )
        self.chain = AUTO_CHAIN if solver == "auto" else (solver,)
        self.time_limit, self.gap_rel = float(time_limit), float(gap_rel)
        self.lp = self.problem.assemble()
        self._backends: dict[str, object] = {}
        self._failed: set[str] = set()
        self._objectives: dict[tuple, np.ndarray] = {}
        self.task = ""

    def __getstate__(self) -> dict:
        """Picklable for spawned frontier workers: solver back ends hold native handles, so they are dropped
        (and rebuilt on the first solve)."""
        state = self.__dict__.copy()
        state["_backends"] = {}
        return state

    def reset_solvers(self) -> None:
        """Drop the back ends and with them every warm start (LP basis, previous plan): the next solve is cold."""
        self._backends = {}

    def _backend(self, name: str):
        if name not in self._backends:
            if name == "highs" and self.reduced_cost_fixing:
                self._backends[name] = CoreSolver(self.problem, self.lp, gap_rel=self.gap_rel)
            else:
                self._backends[name] = make_backend(name, self.lp, time_limit=self.time_limit, gap_rel=self.gap_rel)
        return self._backends[name]

    def _core_solver(self) -> CoreSolver:
        return self._backend("highs")

    def _budget_ub(self, budgets: Mapping[str, float]) -> np.ndarray:
        """Scaled upper bounds of the budget rows, in :class:`CoreSolver`'s row order."""
        p = self.problem
        return np.array(
            [budgets.get(m, math.inf) / p.metric_scale(m) for m in p.constrained for _ in self.lp.groups.get(m, [])], dtype=float
        )

    def _objective(self, objective: Mapping[str, float] | None) -> np.ndarray | None:
        """Cost vector of a weighted objective, assembled once per distinct weighting."""
        if objective is None:
            return None
        key = tuple(sorted(objective.items()))
        if key not in self._objectives:
            self._objectives[key] = self.problem.assemble(objective).c
        return self._objectives[key]

    def _run(self, budgets: Mapping[str, float], c: np.ndarray | None) -> tuple[str, RawSolution]:
        errors: list[str] = []
        for name in self.chain:
            if name in self._failed:
                continue
            try:
                be = self._backend(name)
            except Exception as e:  # solver library missing or broken: try the next one
                self._failed.add(name)
                errors.append(f"{name}: {type(e).__name__}: {e}")
                continue
            if name == "highs" and self.reduced_cost_fixing:
                raw = self._core_solver().solve(
                    self.lp.c if c is None else c, self._budget_ub(budgets), deadline=time.perf_counter() + self.time_limit
                )
                if raw.status in ("optimal", "feasible", "infeasible"):
                    return name, raw
                errors.append(f"{name}: {raw.status} {raw.message}".strip())
                continue
            for m in self.problem.constrained:
                ub = budgets.get(m, math.inf)
                be.set_row_upper(self.lp.groups.get(m, []), ub / self.problem.metric_scale(m))
            be.set_objective(self.lp.c if c is None else c)
            raw = self._solve_fixed(be, budgets, self.lp.c if c is None else c, deadline=time.perf_counter() + self.time_limit)
            if raw.status in ("optimal", "feasible", "infeasible"):
                return name, raw
            errors.append(f"{name}: {raw.status} {raw.message}".strip())
        raise MpsearchError(f"no solver produced a plan within {self.time_limit:g} s ({'; '.join(errors)})", hint="raise the time limit or try solver='highs'")

    def _round(self, x: np.ndarray, budgets: Mapping[str, float], c: np.ndarray) -> tuple[float, np.ndarray] | None:
        """Best feasible plan among the roundings of an LP solution's fractional units (scaled objective).

        A basic LP solution of this knapsack has at most one fractional unit per budget row, so trying
        every combination of their positive-weight candidates is cheap and usually finds the optimum.
        """
        p = self.problem
        base, options = [], []
        for u, (o, cs) in enumerate(zip(p.offsets, p.cands)):
            xu = x[o : o + len(cs)]
            base.append(int(np.argmax(xu)))
            if xu.max() < 1 - 1e-6:
                options.append((u, [int(k) for k in np.nonzero(xu > 1e-6)[0]]))
        if np.prod([len(ks) for _, ks in options], dtype=float) > 4096:
            options = []
        best = None
        for combo in itertools.product(*[ks for _, ks in options]):
            choice = list(base)
            for (u, _), k in zip(options, combo):
                choice[u] = k
            val = self._scaled_value(choice, budgets, c)
            if val is not None and (best is None or val < best[0]):
                best = (val, choice)
        if best is None:
            return None
        # Coordinate descent over the fractional units' full candidate lists: each takes its best
        # candidate given the others (the LP's own mix only tells us where to look).
        val, choice = best
        for _ in range(2):
            improved = False
            for u, _ in options:
                for k in range(len(p.cands[u])):
                    if k == choice[u]:
                        continue
                    trial = list(choice)
                    trial[u] = k
                    v = self._scaled_value(trial, budgets, c)
                    if v is not None and v < val - 1e-15:
                        val, choice, improved = v, trial, True
            if not improved:
                break
        return val, self._column_values(choice)

    def _column_values(self, choice: Sequence[int]) -> np.ndarray:
        """Full column vector (binaries and transition auxiliaries) of a choice, as a MILP start."""
        p = self.problem
        x = np.zeros(len(self.lp.c))
        x[p.offsets + np.asarray(choice)] = 1.0
        acts = [act_format(p.cands[u][k]) for u, k in enumerate(choice)]
        for e, (a, b) in enumerate(p.edges):
            x[p.n_x + e] = 1.0 if acts[a] != acts[b] else 0.0
        return x

    def _scaled_value(self, choice: Sequence[int], budgets: Mapping[str, float], c: np.ndarray) -> float | None:
        """Objective of a choice in the LP's units, or None if it breaks a budget."""
        p = self.problem
        cols = p.offsets + np.asarray(choice)
        acts = [act_format(p.cands[u][k]) for u, k in enumerate(choice)]
        d = np.array([1.0 if acts[a] != acts[b] else 0.0 for a, b in p.edges])
        val = float(c[cols].sum() + (c[p.n_x :] @ d if d.size else 0.0))
        for m, b in budgets.items():
            if m == "peak_act_bytes":
                x = np.zeros(p.n_x)
                x[cols] = 1.0
                tot = max((float(v @ x[cc]) for cc, v in p.cuts), default=0.0)
            else:
                tot = float(p.metric_coef[m][cols].sum())
                if m == "latency_s":
                    tot += p.transitions.latency_s * float(d.sum())
            if tot > b * (1 + 1e-9):
                return None
        return val

    def _solve_fixed(self, be, budgets: Mapping[str, float], c: np.ndarray, *, deadline: float) -> RawSolution:
        """Exact MILP via LP reduced-cost fixing, because MCKP relaxations are nearly integral.

        Solve the LP relaxation (bound ``z``, reduced costs ``rc``); any plan that sets binary ``j`` against
        its LP value costs at least ``z + |rc_j|``. So fix every binary with ``|rc_j| > delta``, solve the
        small MILP left, and accept its answer if it is ``<= z + delta`` (then no fixed binary could beat
        it); otherwise widen ``delta`` ×10 until nothing is fixed. Dense random tables shrink from
        ~16k binaries to a few dozen, which is what makes 500×32 solves take well under a second.
        """
        left = lambda: deadline - time.perf_counter()  # noqa: E731
        if not (self.reduced_cost_fixing and getattr(be, "lp_duals", False)):
            return be.solve(time_limit=left())
        t0 = time.perf_counter()
        relax = be.solve(relax=True, time_limit=left())
        if relax.status == "infeasible":
            return relax  # the relaxation is infeasible, so is the MILP
        if relax.status != "optimal" or relax.rc is None or relax.x is None:
            return be.solve(time_limit=left())
        nx, z = self.problem.n_x, float(relax.objective)
        rc = relax.rc[:nx]
        unit_of_col = np.repeat(np.arange(len(self.problem.cands)), [len(c) for c in self.problem.cands])
        base_ub = np.asarray(self.lp.col_ub, dtype=float)
        rounded = self._round(relax.x, budgets, c)
        start = rounded[1] if rounded is not None else None
        if rounded is not None and rounded[0] - z <= self.gap_rel * abs(rounded[0]) + 1e-12:
            # The rounding is within the requested gap of the LP bound: optimal to tolerance, as a MILP
            # solver would report it, without branching.
            gap = max(0.0, (rounded[0] - z) / max(abs(rounded[0]), 1e-12))
            return RawSolution("optimal", start, gap, time.perf_counter() - t0, objective=rounded[0], bound=z)
        # Start from the rounding's gap (tight fixing); without one, from a small fraction of |z|.
        delta = (rounded[0] - z) + 1e-9 * (1 + abs(z)) if rounded is not None else 1e-5 * max(abs(z), 1e-6)
        delta = max(delta, 1e-12)
        top = float(np.abs(rc).max()) if rc.size else 0.0
        while True:
            full = delta > top
            fix = np.zeros(nx, bool)
            if not full:
                fix |= rc > delta  # moving off 0 costs more than delta
                decided = np.zeros(len(self.problem.cands), bool)
                decided[unit_of_col[rc < -delta]] = True  # moving off 1 costs more than delta: unit decided
                fix |= decided[unit_of_col] & (relax.x[:nx] < 0.5)
            ub = base_ub.copy()
            ub[:nx][fix] = 0.0
            be.set_col_upper(ub)
            try:
                r = be.solve(time_limit=left(), start=start)
            finally:
                be.set_col_upper(base_ub)
            if full or r.status == "error":
                r.seconds = time.perf_counter() - t0
                return r
            if r.status in ("optimal", "feasible") and r.objective <= z + delta - 1e-9 * (1 + abs(z)):
                lb = min(r.bound if r.bound is not None else z, z + delta)
                r.gap = max(0.0, (r.objective - lb) / max(abs(r.objective), 1e-12)) if r.status == "feasible" else r.gap
                r.bound, r.seconds = lb, time.perf_counter() - t0
                return r
            if left() <= 0:
                return RawSolution("nosolution", None, None, time.perf_counter() - t0, "time limit during reduced-cost fixing")
            delta *= 10.0

    def solve(
        self, budgets: Mapping[str, float], *, objective: Mapping[str, float] | None = None, diagnose: bool = True
    ) -> SolveResult:
        """Optimal plan for absolute ``budgets`` (metric -> bound; metrics must be among ``constrained``).

        ``diagnose=False`` skips computing each budget's minimum on infeasibility (a frontier sweep probes
        infeasible budgets on purpose and only needs to know that they are).
        """
        for m in budgets:
            if m not in self.problem.constrained:
                raise MpsearchError(f"budget on {m} was not compiled into this search")
        c = self._objective(objective)
        t0 = time.perf_counter()
        name, raw = self._run(budgets, c)
        if raw.status == "infeasible":
            if not diagnose:
                raise InfeasibleBudgetError("infeasible budgets", budgets=budgets, minimums={})
            raise infeasible_error(self, budgets)
        choice = self._choice(raw.x)
        plan = self.problem.plan_from_choice(choice, task=self.task)
        totals = plan_totals(self.costs, plan, transitions=self.transitions, graph=self.graph)
        omega = self.sens.plan_value(plan) + self.transitions.objective * totals.get("transitions", 0.0)
        for m, b in budgets.items():
            if totals[m] > b * (1 + BUDGET_RTOL) + 1e-300:
                raise MpsearchError(f"solver {name} returned a plan over the {m} budget ({totals[m]:g} > {b:g}); numerical trouble")
        plan.metadata.update({"search": "ilp", "solver": name, "budgets": dict(budgets), "omega": omega})
        return SolveResult(plan, omega, totals, raw.status, name, raw.gap, time.perf_counter() - t0, dict(budgets))

    def _choice(self, x: np.ndarray) -> list[int]:
        p = self.problem
        return [int(np.argmax(x[o : o + len(cs)])) for o, cs in zip(p.offsets, p.cands)]

    def min_metric(self, metric: str) -> float:
        """Smallest value of ``metric`` any plan reaches (exact: solved as its own MILP)."""
        p = self.problem
        if metric == "peak_act_bytes":
            return self._min_peak()
        if metric not in p.metric_coef:
            raise MpsearchError(f"unknown metric {metric!r}")
        coef = p.metric_coef[metric]
        if not (metric == "latency_s" and p.edges and p.transitions.latency_s):
            return float(sum(coef[o : o + len(cs)].min() for o, cs in zip(p.offsets, p.cands)))
        c = p.assemble({metric: 1.0}).c
        _, raw = self._run({}, c)
        plan = p.plan_from_choice(self._choice(raw.x))
        return plan_totals(self.costs, plan, transitions=self.transitions, graph=self.graph)[metric]

    def _min_peak(self) -> float:
        # min over plans of max over cuts: bisection would need many solves, so add t >= every cut instead.
        from mpsearch.search.solvers import HighsBackend, PulpBackend

        p = self.problem
        lp = p.assemble({})
        t = len(lp.c)
        lp.c = np.r_[np.zeros(t), 1.0]
        lp.col_lb, lp.col_ub, lp.integer = np.r_[lp.col_lb, 0.0], np.r_[lp.col_ub, np.inf], np.r_[lp.integer, False]
        s = p.metric_scale("peak_act_bytes")
        for cols, vals in p.cuts:
            lp.add_row([*cols, t], [*(vals / s), -1.0], -np.inf, 0.0)
        for name in self.chain:
            try:
                be = HighsBackend(lp, time_limit=self.time_limit, gap_rel=self.gap_rel) if name == "highs" else PulpBackend(
                    lp, solver=name, time_limit=self.time_limit, gap_rel=self.gap_rel
                )
            except Exception:
                continue
            raw = be.solve()
            if raw.x is not None:
                plan = p.plan_from_choice(self._choice(raw.x[:t]))
                return self.costs.peak_act_bytes(plan)
        raise MpsearchError("could not compute the minimum peak activation memory")


def infeasible_error(search: CompiledSearch, budgets: Mapping[str, float]) -> InfeasibleBudgetError:
    """Name each budget's minimum achievable value and which budget binds."""
    mins = {m: search.min_metric(m) for m in budgets}
    parts, binding = [], []
    for m, b in budgets.items():
        bad = mins[m] > b * (1 + BUDGET_RTOL)
        if bad:
            binding.append(m)
        parts.append(f"{m} <= {b:.4g} (min achievable {mins[m]:.4g}{', binds' if bad else ''})")
    if binding:
        head = f"infeasible budget: {', '.join(binding)} cannot be met by any plan"
    else:
        head = "infeasible budgets: each is achievable alone but not all together"
    return InfeasibleBudgetError(f"{head}: {'; '.join(parts)}", budgets=budgets, minimums=mins)


def resolve_budgets(budgets, costs: CostTable, names: Sequence[str]) -> dict[str, float]:
    """``Budget``s, spellings or a mapping -> ``{metric: absolute bound}``."""
    return {b.metric: resolve_budget(b, costs, names) for b in as_budgets(budgets)}


def solve_ilp(
    sens: SensitivityTable,
    costs: CostTable,
    budgets: Iterable[Budget | str] | Mapping[str, float] | None,
    *,
    candidates=None,
    ties: Iterable[Sequence[str]] | None = None,
    transitions: Transitions | None = None,
    graph: LayerGraph | None = None,
    time_limit: float = 10.0,
    solver: str = "auto",
    gap_rel: float = 1e-4,
    prune: bool = True,
    reduced_cost_fixing: bool = True,
    task: str = "",
) -> SolveResult:
    """The plan of least total Ω meeting every budget (raises :class:`InfeasibleBudgetError` if none)."""
    names = layer_order(sens, costs, graph)
    resolved = resolve_budgets(budgets, costs, names)
    search = CompiledSearch(
        sens, costs, resolved.keys(), candidates=candidates, ties=ties, transitions=transitions, graph=graph,
        time_limit=time_limit, solver=solver, gap_rel=gap_rel, prune=prune, reduced_cost_fixing=reduced_cost_fixing,
    )
    search.task = task
    return search.solve(resolved)

