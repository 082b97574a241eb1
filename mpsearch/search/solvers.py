"""MILP back ends for a :class:`LinearProgram`: HiGHS through highspy, and CBC / HiGHS through PuLP.

Each back end is built once and then re-solved with new right-hand sides (the frontier sweep) or a new
objective, so model construction is paid once per search, not once per point.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from mpsearch.search.problem import LinearProgram

#: Names accepted by ``solver=``; "auto" tries them in the order of ``AUTO_CHAIN``.
SOLVERS = ("highs", "cbc", "pulp-highs")
AUTO_CHAIN = ("highs", "cbc", "pulp-highs")
UNBOUNDED_RHS = 1e9


@dataclass
class RawSolution:
    status: str  # "optimal" | "feasible" (limit hit, incumbent kept) | "infeasible" | "nosolution" | "error"
    x: np.ndarray | None
    gap: float | None
    seconds: float
    message: str = ""
    objective: float | None = None  # in the LP's (scaled) units
    bound: float | None = None  # proven lower bound on the objective (scaled units)
    rc: np.ndarray | None = None  # reduced costs, LP relaxations only


class HighsBackend:
    """highspy directly: the model is passed once; bounds and costs are changed in place between solves."""

    name = "highs"
    lp_duals = True

    def __init__(self, lp: LinearProgram, *, time_limit: float, gap_rel: float, threads: int | None = 1) -> None:
        import highspy

        self._hs = highspy
        self.h = _quiet_highs(highspy)
        self.h.setOptionValue("output_flag", False)
        self.h.setOptionValue("time_limit", float(time_limit))
        self.h.setOptionValue("mip_rel_gap", float(gap_rel))
        self.h.setOptionValue("mip_abs_gap", 1e-12)
        # Rows are scaled to O(1); default 1e-6 tolerances would let plans exceed a budget by ~1e-6 of the
        # metric's range, which the exact tests (and users) would see.
        self.h.setOptionValue("mip_feasibility_tolerance", 1e-9)
        self.h.setOptionValue("primal_feasibility_tolerance", 1e-9)
        if threads:
            self.h.setOptionValue("threads", int(threads))
        inf = highspy.kHighsInf
        model = highspy.HighsLp()
        model.num_col_ = len(lp.c)
        model.num_row_ = lp.n_rows
        model.col_cost_ = np.asarray(lp.c, dtype=float)
        model.col_lower_ = np.asarray(lp.col_lb, dtype=float)
        model.col_upper_ = np.where(np.isinf(lp.col_ub), inf, lp.col_ub).astype(float)
        model.row_lower_ = np.where(np.isinf(lp.row_lb), -inf, lp.row_lb).astype(float)
        model.row_upper_ = np.where(np.isinf(lp.row_ub), inf, lp.row_ub).astype(float)
        model.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        model.a_matrix_.start_ = np.asarray(lp.starts, dtype=np.int32)
        model.a_matrix_.index_ = np.asarray(lp.index, dtype=np.int32)
        model.a_matrix_.value_ = np.asarray(lp.value, dtype=float)
        model.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous for i in lp.integer]
        self.h.passModel(model)
        self.n = len(lp.c)
        self._int_idx = np.nonzero(lp.integer)[0].astype(np.int32)
        self._ub = np.asarray(lp.col_ub, dtype=float).copy()
        self._lb = np.asarray(lp.col_lb, dtype=float)

    def set_col_upper(self, ub: np.ndarray) -> None:
        ub = np.asarray(ub, dtype=float)
        changed = np.nonzero(ub != self._ub)[0].astype(np.int32)
        if changed.size:
            inf = self._hs.kHighsInf
            self.h.changeColsBounds(changed.size, changed, self._lb[changed], np.where(np.isinf(ub[changed]), inf, ub[changed]))
            self._ub = ub.copy()

    def _set_integrality(self, integer: bool) -> None:
        T = self._hs.HighsVarType
        kind = T.kInteger if integer else T.kContinuous
        self.h.changeColsIntegrality(self._int_idx.size, self._int_idx, np.array([kind] * self._int_idx.size))

    def set_row_upper(self, rows: list[int], ub: float) -> None:
        inf = self._hs.kHighsInf
        u = inf if np.isinf(ub) else float(ub)
        for r in rows:
            self.h.changeRowBounds(int(r), -inf, u)

    def set_objective(self, c: np.ndarray) -> None:
        idx = np.arange(len(c), dtype=np.int32)
        self.h.changeColsCost(len(c), idx, np.asarray(c, dtype=float))

    def solve(self, *, relax: bool = False, time_limit: float | None = None, start: np.ndarray | None = None) -> RawSolution:
        t0 = time.perf_counter()
        if relax:
            self._set_integrality(False)
        try:
            return self._solve(relax, time_limit, t0, start)
        finally:  # restore only after reading: any model change resets HiGHS's solution
            if relax:
                self._set_integrality(True)

    def _solve(self, relax: bool, time_limit: float | None, t0: float, start: np.ndarray | None) -> RawSolution:
        try:
            self.h.clearSolver()  # fresh search after a bound change (no stale basis or incumbent)
            if time_limit is not None:
                self.h.setOptionValue("time_limit", max(float(time_limit), 1e-3))
            if start is not None and not relax:
                sol = self._hs.HighsSolution()
                sol.col_value = [float(v) for v in start]
                sol.value_valid = True
                self.h.setSolution(sol)
            self.h.run()
        except Exception as e:  # a crashing solver must not end the chain
            return RawSolution("error", None, None, time.perf_counter() - t0, f"{type(e).__name__}: {e}")
        dt = time.perf_counter() - t0
        ms = self.h.getModelStatus()
        S = self._hs.HighsModelStatus
        info = self.h.getInfo()
        has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
        sol = self.h.getSolution()
        x = np.asarray(sol.col_value, dtype=float) if has_sol else None
        obj = float(info.objective_function_value) if has_sol else None
        if ms in (S.kInfeasible, S.kUnboundedOrInfeasible):
            return RawSolution("infeasible", None, None, dt)
        if relax:
            if ms != S.kOptimal:
                return RawSolution("nosolution", None, None, dt, self.h.modelStatusToString(ms))
            return RawSolution("optimal", x, 0.0, dt, objective=obj, bound=obj, rc=np.asarray(sol.col_dual, dtype=float))
        bound = float(info.mip_dual_bound) if np.isfinite(info.mip_dual_bound) else None
        gap = float(info.mip_gap) if np.isfinite(info.mip_gap) else None
        if ms == S.kOptimal:
            return RawSolution("optimal", x, max(0.0, gap or 0.0), dt, objective=obj, bound=bound)
        if has_sol:
            return RawSolution("feasible", x, gap, dt, self.h.modelStatusToString(ms), objective=obj, bound=bound)
        return RawSolution("nosolution", None, None, dt, self.h.modelStatusToString(ms))


class PulpBackend:
    """PuLP model (CBC bundled with PuLP, or PuLP's HiGHS interface); RHS edits change constraint constants."""

    def __init__(self, lp: LinearProgram, *, solver: str, time_limit: float, gap_rel: float, threads: int | None = 1) -> None:
        import pulp

        self._pulp = pulp
        self.name = solver
        self.time_limit = float(time_limit)
        self.gap_rel = float(gap_rel)
        self.threads = threads
        prob = pulp.LpProblem("mpsearch", pulp.LpMinimize)
        new_var = getattr(prob, "add_variable", None) or pulp.LpVariable  # PuLP 3.3+ prefers add_variable
        xs = [
            new_var(f"x{i}", lowBound=float(lb), upBound=None if np.isinf(ub) else float(ub), cat=pulp.LpInteger if integ else pulp.LpContinuous)
            for i, (lb, ub, integ) in enumerate(zip(lp.col_lb, lp.col_ub, lp.integer))
        ]
        self.xs = xs
        self.c = np.asarray(lp.c, dtype=float)
        prob.setObjective(pulp.LpAffineExpression([(xs[i], float(v)) for i, v in enumerate(lp.c) if v != 0.0]))
        self.rows: dict[int, object] = {}
        for r in range(lp.n_rows):
            idx, val = lp.row(r)
            expr = pulp.LpAffineExpression([(xs[i], v) for i, v in zip(idx, val)])
            lb, ub = lp.row_lb[r], lp.row_ub[r]
            if np.isinf(lb) and np.isinf(ub):  # an unset budget row: never binds until it gets a bound
                con = pulp.LpConstraint(expr, pulp.LpConstraintLE, rhs=UNBOUNDED_RHS, name=f"r{r}")
            elif lb == ub:
                con = pulp.LpConstraint(expr, pulp.LpConstraintEQ, rhs=lb, name=f"r{r}")
            elif np.isinf(ub):
                con = pulp.LpConstraint(expr, pulp.LpConstraintGE, rhs=lb, name=f"r{r}")
            else:
                con = pulp.LpConstraint(expr, pulp.LpConstraintLE, rhs=ub, name=f"r{r}")
            prob.addConstraint(con)
            self.rows[r] = con
        self.prob = prob
        self.n = len(xs)

    def set_row_upper(self, rows: list[int], ub: float) -> None:
        # PuLP has no infinite RHS; rows are scaled to O(1) coefficients, so 1e9 never binds.
        for r in rows:
            self.rows[r].constant = -(UNBOUNDED_RHS if np.isinf(ub) else float(ub))

    def set_col_upper(self, ub: np.ndarray) -> None:
        for v, u in zip(self.xs, ub):
            v.upBound = None if np.isinf(u) else float(u)

    def set_objective(self, c: np.ndarray) -> None:
        self.c = np.asarray(c, dtype=float)
        p = self._pulp
        self.prob.setObjective(p.LpAffineExpression([(self.xs[i], float(v)) for i, v in enumerate(c) if v != 0.0]))

    def _solver(self, relax: bool, time_limit: float):
        p = self._pulp
        tl = max(float(time_limit), 1e-3)
        if self.name == "cbc":
            with warnings.catch_warnings():  # PuLP 3.3 deprecates its bundled-CBC class; it is still the one that ships CBC
                warnings.simplefilter("ignore", DeprecationWarning)
                return p.PULP_CBC_CMD(msg=False, mip=not relax, timeLimit=tl, gapRel=self.gap_rel, threads=self.threads, options=["primalT 1e-9", "integerT 1e-9"])
        return p.HiGHS(msg=False, mip=not relax, timeLimit=tl, gapRel=self.gap_rel, gapAbs=1e-12, threads=self.threads)

    @property
    def lp_duals(self) -> bool:
        return self.name == "cbc"  # PuLP reads CBC's reduced costs; its HiGHS interface does not

    def solve(self, *, relax: bool = False, time_limit: float | None = None, start: np.ndarray | None = None) -> RawSolution:
        p = self._pulp
        t0 = time.perf_counter()
        try:
            solver = self._solver(relax, self.time_limit if time_limit is None else time_limit)
            if start is not None and not relax and self.name == "cbc":
                for v, val in zip(self.xs, start):
                    v.setInitialValue(float(val))
                solver.optionsDict["warmStart"] = True
            if not solver.available():
                return RawSolution("error", None, None, 0.0, f"{self.name} is not available")
            self.prob.solve(solver)
        except Exception as e:
            return RawSolution("error", None, None, time.perf_counter() - t0, f"{type(e).__name__}: {e}")
        dt = time.perf_counter() - t0
        status, sol = self.prob.status, self.prob.sol_status
        if status == p.LpStatusInfeasible or sol == p.LpSolutionInfeasible:
            return RawSolution("infeasible", None, None, dt)
        values = [v.varValue for v in self.xs]
        if any(v is None for v in values) or sol not in (p.LpSolutionOptimal, p.LpSolutionIntegerFeasible):
            return RawSolution("nosolution", None, None, dt, p.LpStatus.get(status, str(status)))
        x = np.asarray(values, dtype=float)
        obj = float(self.c @ x)
        if relax:
            rc = np.asarray([v.dj if v.dj is not None else 0.0 for v in self.xs], dtype=float) if self.lp_duals else None
            return RawSolution("optimal", x, 0.0, dt, objective=obj, bound=obj, rc=rc)
        gap: float | None = None
        model = getattr(self.prob, "solverModel", None)
        if self.name == "pulp-highs" and model is not None:
            try:
                gap = float(model.getInfo().mip_gap)
            except Exception:
                gap = None
        if sol == p.LpSolutionOptimal:
            return RawSolution("optimal", x, gap if gap is not None and np.isfinite(gap) else 0.0, dt, objective=obj, bound=obj)
        return RawSolution("feasible", x, gap, dt, "stopped at the time limit", objective=obj)


def make_backend(name: str, lp: LinearProgram, *, time_limit: float, gap_rel: float):
    if name == "highs":
        return HighsBackend(lp, time_limit=time_limit, gap_rel=gap_rel)
    return PulpBackend(lp, solver=name, time_limit=time_limit, gap_rel=gap_rel)


def _quiet_highs(highspy):
    """``highspy.Highs()`` prints a licence banner on stdout from C++ before any option can be set; it
    would corrupt ``--json`` output, so fd 1 points at /dev/null while the object is built."""
    import os
    import sys

    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real fd 1 (some embedded interpreters): accept the banner
        return highspy.Highs()
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            return highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)

