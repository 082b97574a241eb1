"""Exact multiple-choice knapsack solves through HiGHS: LP bound, strong incumbent, small reduced-cost core.

Why this shape: the LP relaxation of a multiple-choice knapsack is almost integral (a basic solution has
at most one fractional unit per budget row), and its bound ``z`` is usually within ~1e-4 of the optimum.
Any plan that takes binary ``j`` against its LP value costs at least ``z + |rc_j|``, so once an incumbent
``U`` is known, every binary with ``rc_j > U·(1 - gap_rel) - z`` can be fixed: plans using it are already
within the requested gap of ``U``. The better ``U``, the smaller the MILP left for HiGHS to prove, so most
of the work here goes into a cheap, strong incumbent:

1. the LP solution's roundings (its few fractional units), and the previous solve's plan when it still
   fits (a frontier sweep moves the budget monotonically, so the neighbour's plan is a feasible start);
2. local search on those: the best single-unit change, then the best two-unit exchange among the
   lowest-reduced-cost candidates, repeated while the objective drops;
2b. when that is not yet within the gap, a beam DP (:meth:`CoreSolver._beam_dp`) over the DP_COLUMNS
   lowest-penalty moves off the LP's choice, keeping one state per cell of the final slack: it finds the
   several-unit changes that fill the last slack, which the exchanges above cannot.

Then the reduced-cost core is built as its own small HiGHS model (fixed columns substituted out, objective
offset kept so relative gaps mean the same thing) and the bound is ``min(core bound, z + delta)``. HiGHS
is a poor primal heuristic on these cores and slow on large ones, so the core solves are staged:

3. a *probe*: the core of the ~150 lowest reduced costs, a 100-node limit, HiGHS's objective bound set to
   the cutoff ``U·(1 - gap_rel)``, stopping after a few (PROBE_SOLUTIONS) plans below it: the first is often
   weak and the next ones come cheap from the same tree. It proves nothing, but it usually finds a better
   ``U``, and with it a much smaller proof core (probes repeat while they improve);
3b. a proof core of at most CORE_DP_MAX binaries first goes to a relaxation DP (:meth:`CoreSolver._dp_core`)
   over its units: states merge per slack cell keeping their least cost and widest slack, so when every
   state is pruned by the cutoff the core is proven (milliseconds, against HiGHS's model build, presolve
   and tree); its best real plan often beats ``U``. Only when it neither proves nor improves is HiGHS asked;
4. the *proof* core for the current ``U``, again with the cutoff as HiGHS's objective bound (subtrees that
   cannot beat it are pruned without closing HiGHS's own gap there) and stopping at the first better plan,
   after which the core is rebuilt around it; each core's proof stands alone, so ``delta`` shrinks. A proof
   has a node cap (PROOF_NODES, x4 per retry): HiGHS sometimes spends tens of thousands of nodes before its
   first plan below the cutoff, so a stalled proof is dropped for a probe twice the size, then retried.

The LP is a persistent HiGHS instance, so frontier re-solves start from the previous basis (dual simplex,
tens of iterations instead of a cold start).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mpsearch.search.problem import LinearProgram, Problem, act_format
from mpsearch.search.solvers import RawSolution, _quiet_highs

#: Candidates (beyond the LP's support) offered to the two-unit exchange search, smallest reduced cost first.
PAIR_POOL = 600
#: Free binaries (beyond one per unit) up to which the core is proven exactly rather than to gap_rel (small
#: problems then report their true gap). Kept small: an exact proof of a 100-300 binary core can take HiGHS
#: 1-2 s where the gap_rel proof takes milliseconds, which made 50-100 layer frontiers slower than 500-layer
#: ones (2026-12-02: 100 layers x 32 candidates, noisy tables, 30 points at gap 1e-3: 10.4 s at 300, 2.8 s at 60).
EXACT_CORE_MAX = 60
#: Core binaries in the probe that looks for a better incumbent before a larger proof core.
PROBE_BINARIES = 150
#: Branch-and-bound nodes a probe may spend (HiGHS sometimes wanders for seconds in a small core).
PROBE_NODES = 100
#: Improving plans a probe may collect before it stops: HiGHS's first plan below the cutoff is often a weak
#: one, and the next few cost little more in the same tree, while each probe restart re-pays presolve.
PROBE_SOLUTIONS = 5
#: Nodes the first proof core may spend before it is abandoned for a larger probe (then x4 per retry): HiGHS
#: occasionally searches tens of thousands of nodes before it finds a plan below the cutoff that a probe of
#: the right size finds at its root; the geometric caps bound the work lost to restarts.
PROOF_NODES = 1000
#: Beam DP incumbent: non-LP columns it may use (lowest Lagrangian penalty first; 0 turns it off), states kept
#: per unit, and the resolution of its slack cells (a fraction of |z| per budget row, through the row dual).
DP_COLUMNS = 100
DP_STATES = 300
DP_CELL = 1e-6
#: Relaxation DP over a proof core (:meth:`CoreSolver._dp_core`): slack cells kept per unit at full resolution
#: (the rest merge into coarser cells); 0 leaves every proof to HiGHS.
CORE_DP_STATES = 2000
#: Core binaries up to which the relaxation DP is tried before HiGHS (its time grows fast with the core).
CORE_DP_MAX = 150
#: Multiples of the LP duals whose Lagrangian bounds prune the relaxation DP's states.
DP_RHO = np.array([-1.0, -0.5, -0.25, -0.1, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
#: Local-search rounds (each applies one improving move).
MAX_MOVES = 400
#: Budget rows above which exchanges are skipped (peak-activation cuts add one row per cut).
PAIR_MAX_ROWS = 16
#: The core MILP's objective is rescaled so the LP bound is about this large.
CORE_OBJ_SCALE = 1.0
_FEAS_TOL = 1e-12  # scaled rows are O(1); incumbents are kept strictly feasible
_INT_MAX = 2**31 - 1  # HiGHS's "no limit" for integer options


@dataclass
class Incumbent:
    value: float  # scaled objective
    choice: np.ndarray  # candidate index per unit


class CoreSolver:
    """LP relaxation + incumbent heuristics + reduced-cost core MILP, for one compiled problem."""

    def __init__(self, problem: Problem, lp: LinearProgram, *, gap_rel: float, threads: int = 1) -> None:
        import highspy

        self._hs = highspy
        self.p, self.lp = problem, lp
        self.gap_rel = float(gap_rel)
        self.threads = threads
        p = problem
        self.nx, self.ncol = p.n_x, len(lp.c)
        self.sizes = np.array([len(c) for c in p.cands], dtype=np.int64)
        self.offsets = np.asarray(p.offsets, dtype=np.int64)
        self.n_units = len(self.sizes)
        self.unit_of_col = np.repeat(np.arange(self.n_units), self.sizes)
        self.A = sp.csr_matrix(
            (np.asarray(lp.value, float), np.asarray(lp.index, np.int64), np.asarray(lp.starts, np.int64)),
            shape=(lp.n_rows, self.ncol),
        )
        self.row_lb = np.asarray(lp.row_lb, float)
        self.row_ub = np.asarray(lp.row_ub, float)
        self.col_lb = np.asarray(lp.col_lb, float)
        self.col_ub = np.asarray(lp.col_ub, float)
        self.budget_rows = np.array([r for m in p.constrained for r in lp.groups.get(m, [])], dtype=np.int64)
        Bfull = self.A[self.budget_rows] if self.budget_rows.size else sp.csr_matrix((0, self.ncol))
        self.B = Bfull[:, : self.nx].toarray() if self.budget_rows.size <= 64 else None  # dense, for local search
        self.B_aux = Bfull[:, self.nx :].tocsr()
        self.B_sp = Bfull.tocsr()
        acts = {a: i for i, a in enumerate(dict.fromkeys(act_format(k) for cs in p.cands for k in cs))}
        self.col_act = np.array([acts[act_format(k)] for cs in p.cands for k in cs], dtype=np.int64)
        self.ea = np.array([a for a, _ in p.edges], dtype=np.int64)
        self.eb = np.array([b for _, b in p.edges], dtype=np.int64)
        self.has_aux = self.ncol > self.nx
        self._lp_h = None
        self._lp_c: np.ndarray | None = None
        self._lp_rub: np.ndarray | None = None
        self._core_h = None
        self._lp_row_dual: np.ndarray | None = None
        self.last: np.ndarray | None = None  # previous solve's choice: a warm start for the next
        self.stats: dict[str, float] = {}

    # ----------------------------------------------------------------------------------------- HiGHS
    def _highs(self):
        h = _quiet_highs(self._hs)
        for k, v in (
            ("output_flag", False), ("threads", int(self.threads)), ("mip_feasibility_tolerance", 1e-9),
            ("primal_feasibility_tolerance", 1e-9), ("dual_feasibility_tolerance", 1e-9), ("mip_abs_gap", 1e-12),
            ("mip_allow_restart", False),  # cores are small and short-lived: a restart's re-presolve does not pay
        ):
            h.setOptionValue(k, v)
        return h

    def _model(self, c, lb, ub, A: sp.csr_matrix, rlb, rub, integer: np.ndarray | None, offset: float = 0.0):
        hs = self._hs
        inf = hs.kHighsInf
        m = hs.HighsLp()
        m.num_col_, m.num_row_ = int(len(c)), int(A.shape[0])
        m.col_cost_ = np.asarray(c, float)
        m.col_lower_ = np.asarray(lb, float)
        m.col_upper_ = np.where(np.isinf(ub), inf, ub).astype(float)
        m.row_lower_ = np.where(np.isinf(rlb), -inf, rlb).astype(float)
        m.row_upper_ = np.where(np.isinf(rub), inf, rub).astype(float)
        m.offset_ = float(offset)
        m.a_matrix_.format_ = hs.MatrixFormat.kRowwise
        m.a_matrix_.start_ = A.indptr.astype(np.int32)
        m.a_matrix_.index_ = A.indices.astype(np.int32)
        m.a_matrix_.value_ = A.data.astype(float)
        if integer is not None:
            T = hs.HighsVarType
            m.integrality_ = [T.kInteger if i else T.kContinuous for i in integer]
        return m

    def _solve_lp(self, c: np.ndarray, rub: np.ndarray, time_limit: float):
        """Warm-started LP relaxation: (status, z, x, rc)."""
        hs = self._hs
        if self._lp_h is None:
            self._lp_h = self._highs()
            self._lp_h.passModel(self._model(c, self.col_lb, self.col_ub, self.A, self.row_lb, rub, None))
            self._lp_c, self._lp_rub = c.copy(), rub.copy()
        h = self._lp_h
        if not np.array_equal(c, self._lp_c):
            idx = np.nonzero(c != self._lp_c)[0].astype(np.int32)
            h.changeColsCost(idx.size, idx, c[idx].astype(float))
            self._lp_c = c.copy()
        if not np.array_equal(rub, self._lp_rub):
            idx = np.nonzero(rub != self._lp_rub)[0].astype(np.int32)
            inf = hs.kHighsInf
            h.changeRowsBounds(idx.size, idx, np.where(np.isinf(self.row_lb[idx]), -inf, self.row_lb[idx]),
                               np.where(np.isinf(rub[idx]), inf, rub[idx]).astype(float))
            self._lp_rub = rub.copy()
        h.setOptionValue("time_limit", max(float(time_limit), 1e-3))
        h.run()
        S = hs.HighsModelStatus
        ms = h.getModelStatus()
        if ms in (S.kInfeasible, S.kUnboundedOrInfeasible):
            return "infeasible", None, None, None
        if ms != S.kOptimal:
            h.clearSolver()  # do not warm start from a failed solve
            return "nosolution", None, None, None
        sol = h.getSolution()
        self._lp_row_dual = np.asarray(sol.row_dual, float)
        return "optimal", float(h.getInfo().objective_function_value), np.asarray(sol.col_value, float), np.asarray(sol.col_dual, float)

    # ------------------------------------------------------------------------------------ evaluation
    def columns(self, choice: np.ndarray) -> np.ndarray:
        """Full column vector of a choice (binaries and transition auxiliaries)."""
        x = np.zeros(self.ncol)
        x[self.offsets + choice] = 1.0
        if self.has_aux:
            acts = self.col_act[self.offsets + choice]
            x[self.nx :] = (acts[self.ea] != acts[self.eb]).astype(float)
        return x

    def evaluate(self, choice: np.ndarray, c: np.ndarray, bud_ub: np.ndarray) -> float | None:
        """Scaled objective of a choice, or None if it breaks a budget row."""
        x = self.columns(choice)
        if self.budget_rows.size and np.any(self.B_sp @ x > bud_ub + _FEAS_TOL):
            return None
        return float(c @ x)

    def choice_of(self, x: np.ndarray) -> np.ndarray:
        xb = x[: self.nx]
        return np.array([int(np.argmax(xb[o : o + k])) for o, k in zip(self.offsets, self.sizes)], dtype=np.int64)

    # ----------------------------------------------------------------------------------- heuristics
    def _roundings(self, x: np.ndarray, c: np.ndarray, bud_ub: np.ndarray) -> tuple[Incumbent | None, np.ndarray]:
        """Best feasible rounding of the LP's fractional units (every combination of their candidates)."""
        base = self.choice_of(x)
        xb = x[: self.nx]
        frac = [u for u in range(self.n_units) if xb[self.offsets[u] + base[u]] < 1 - 1e-6]
        options = [[int(k) for k in np.nonzero(xb[self.offsets[u] : self.offsets[u] + self.sizes[u]] > 1e-6)[0]] for u in frac]
        if np.prod([len(o) for o in options], dtype=float) > 4096:
            options = [o[:1] for o in options]
        best = None
        for combo in itertools.product(*options):
            ch = base.copy()
            ch[frac] = combo
            v = self.evaluate(ch, c, bud_ub)
            if v is not None and (best is None or v < best.value):
                best = Incumbent(v, ch)
        return best, base

    def _repair(self, choice: np.ndarray, c: np.ndarray, bud_ub: np.ndarray) -> Incumbent | None:
        """Greedy single-unit moves that shrink the total budget violation (no transition edges)."""
        B, ch = self.B, choice.copy()
        cb = c[: self.nx]
        for _ in range(MAX_MOVES):
            cur = self.offsets + ch
            load = B[:, cur].sum(axis=1)
            viol = np.maximum(load - bud_ub, 0.0).sum()
            if viol <= 0:
                return Incumbent(float(cb[cur].sum()), ch)
            curc = cur[self.unit_of_col]
            new_load = load[:, None] + (B - B[:, curc])
            v = np.maximum(new_load - bud_ub[:, None], 0.0).sum(axis=0)
            dc = cb - cb[curc]
            better = v < viol - 1e-15
            if not better.any():
                return None
            # steepest descent in violation, ties by objective
            score = np.where(better, v + 1e-9 * (dc - dc.min()) / (np.ptp(dc) + 1e-300), np.inf)
            j = int(np.argmin(score))
            ch[self.unit_of_col[j]] = j - self.offsets[self.unit_of_col[j]]
        return None

    def _local_search(self, inc: Incumbent, c: np.ndarray, bud_ub: np.ndarray, pool: np.ndarray) -> Incumbent:
        """Best improving single-unit change, else best two-unit exchange within ``pool``, until none."""
        B, ch = self.B, inc.choice.copy()
        cb = c[: self.nx]
        uoc = self.unit_of_col
        pairs = B.shape[0] <= PAIR_MAX_ROWS and pool.size > 1
        for _ in range(MAX_MOVES):
            cur = self.offsets + ch
            slack = bud_ub - B[:, cur].sum(axis=1) + _FEAS_TOL
            curc = cur[uoc]
            dc = cb - cb[curc]
            da = B - B[:, curc]
            ok = np.all(da <= slack[:, None], axis=0) & (dc < -1e-15)
            if ok.any():
                j = int(np.argmin(np.where(ok, dc, np.inf)))
                ch[uoc[j]] = j - self.offsets[uoc[j]]
                continue
            if not pairs:
                break
            P = pool[pool != curc[pool]]
            dp = dc[P]
            I = P[dp < -1e-15]  # noqa: E741 - one side of an improving exchange gains
            if not I.size:
                break
            tot = dc[I][:, None] + dp[None, :]
            good = (tot < -1e-15) & (uoc[I][:, None] != uoc[P][None, :])
            for r in range(B.shape[0]):
                good &= (da[r, I][:, None] + da[r, P][None, :]) <= slack[r]
            if not good.any():
                break
            k = int(np.argmin(np.where(good, tot, np.inf)))
            a, b = int(I[k // P.size]), int(P[k % P.size])
            ch[uoc[a]] = a - self.offsets[uoc[a]]
            ch[uoc[b]] = b - self.offsets[uoc[b]]
        cur = self.offsets + ch
        return Incumbent(float(cb[cur].sum()), ch)

    def _beam_dp(
        self, x: np.ndarray, rc: np.ndarray, c: np.ndarray, bud_ub: np.ndarray, U: float | None,
        columns: int = DP_COLUMNS, states: int = DP_STATES,
    ) -> Incumbent | None:
        """Approximate DP over the lowest-penalty moves away from the LP's choice, one unit at a time.

        Why: local search stalls where the last slack needs three or more units changed together; HiGHS's
        root heuristics find those plans but cost a model build each. With row duals ``lam``, any plan costs
        ``zb + sum(pen) + lam·s`` (``pen`` = a unit's reduced cost above its LP column's, ``s`` = final slack),
        so states carry (penalty, slack); per stage those that cannot end feasible (per-row bounds on what
        the remaining units can free) or cannot beat ``U`` are dropped, one state per slack cell is kept, and
        at most ``states`` by their lower bound. Units with large moves come first, fine ones last.
        """
        lam_all = self._lp_row_dual
        if lam_all is None or columns <= 0:
            return None
        fin = np.isfinite(bud_ub)
        B, bub = self.B[fin], bud_ub[fin]
        lam = np.maximum(-lam_all[self.budget_rows][fin], 0.0)  # HiGHS: row duals of binding <= rows are <= 0
        nx, uoc, off = self.nx, self.unit_of_col, self.offsets
        base = self.choice_of(x)
        basecol = off + base
        cb, rcb = c[:nx], rc[:nx]
        pen = rcb - rcb[basecol][uoc]
        p0 = bub - B[:, basecol].sum(axis=1)
        zb = float(cb[basecol].sum() - lam @ p0)
        lim = U - zb if U is not None else np.inf
        nonbase = np.ones(nx, bool)
        nonbase[basecol] = False
        cand = np.nonzero(nonbase & (pen < lim))[0]
        if cand.size > columns:
            cand = cand[np.argpartition(pen[cand], columns - 1)[:columns]]
        if not cand.size:
            return None
        alts = []
        for u in np.unique(uoc[cand]):
            cols = np.r_[basecol[u], cand[uoc[cand] == u]]
            alts.append((cols, B[:, cols] - B[:, [basecol[u]]], cb[cols] - cb[basecol[u]], np.maximum(pen[cols], 0.0)))
        alts.sort(key=lambda a: -float(np.max(np.abs(lam @ a[1]))))
        R = B.shape[0]
        zeros = np.zeros((1, R))
        suf_min = np.vstack([np.cumsum(np.array([a[1].min(axis=1) for a in alts])[::-1], axis=0)[::-1], zeros])
        suf_max = np.vstack([np.cumsum(np.array([a[1].max(axis=1) for a in alts])[::-1], axis=0)[::-1], zeros])
        cell = np.where(lam > 1e-12, DP_CELL * max(abs(zb), 1e-12) / np.maximum(lam, 1e-300), np.inf)
        binding = np.isfinite(cell)
        P, PEN, DC = p0[None, :], np.zeros(1), np.zeros(1)
        parents, picks = [], []
        for i, (cols, d, dc, pn) in enumerate(alts):
            k, n = len(cols), len(PEN)
            Pn = (P[:, None, :] - d.T[None, :, :]).reshape(-1, R)
            PENn = (PEN[:, None] + pn[None, :]).ravel()
            lb = PENn + (np.maximum(Pn - suf_max[i + 1], 0.0) * lam).sum(axis=1)
            ok = np.all(Pn - suf_min[i + 1] >= -_FEAS_TOL, axis=1) & (lb < lim)
            if not ok.any():
                return None
            idx = np.nonzero(ok)[0]
            keys = np.floor(Pn[idx][:, binding] / cell[binding])
            o = np.lexsort((lb[idx], *keys.T[::-1]))
            ks = keys[o]
            o = idx[o[np.r_[True, np.any(ks[1:] != ks[:-1], axis=1)]]]
            if o.size > states:
                o = o[np.argpartition(lb[o], states - 1)[:states]]
            P, PEN, DC = Pn[o], PENn[o], (DC[:, None] + dc[None, :]).ravel()[o]
            parents.append(o // k)
            picks.append(o % k)
        feas = np.all(P >= -_FEAS_TOL, axis=1)
        if not feas.any():
            return None
        j = int(np.argmin(np.where(feas, DC, np.inf)))
        ch = base.copy()
        for i in range(len(alts) - 1, -1, -1):
            col = int(alts[i][0][picks[i][j]])
            ch[uoc[col]] = col - off[uoc[col]]
            j = int(parents[i][j])
        v = self.evaluate(ch, c, bud_ub)
        return Incumbent(v, ch) if v is not None else None

    def _dp_core(
        self, free: np.ndarray, cnt: np.ndarray, x: np.ndarray, c: np.ndarray, bud_ub: np.ndarray, cutoff: float,
        max_states: int | None = None,
    ) -> tuple[float, Incumbent | None]:
        """Exact-relaxation DP over the core's free columns: (lower bound on plans in the core, best plan seen).

        Units with one free column are fixed; each other unit picks one of its free columns. With row duals
        ``lam >= 0`` and a base column per unit, a plan costs exactly ``zb + sum(pen) + lam·s`` (``pen`` =
        cost change plus ``lam`` times budget use change against the base, ``s`` = final slack), whatever
        ``lam`` is. States are *relaxations*: each stands for every partial plan merged into it and keeps the
        least ``pen`` sum, the least slack (what the cost term can be at best) and the largest slack (what
        feasibility can be at best) of its members. States are pruned when no completion can be feasible
        (per-row bounds on what the remaining units can free) or cost below ``cutoff``, and merged per cell of
        their least slack in each row with ``lam > 0``; when more than ``max_states`` cells survive, the best
        ``max_states`` by bound stay and the others merge into coarser cells, so the bound stays valid, only
        weaker. Besides the dominance-free bound (own pen sum plus the least pen of the rest plus ``lam`` times
        the slack the rest cannot use up), states are pruned by Lagrangian bounds of the rest at ``rho = t·lam``
        (DP_RHO). Each state also follows one real member (the one with the lowest own bound), whose complete
        plan is the heuristic answer. The returned bound is +inf when every state was pruned: no plan in the
        core costs less than ``cutoff``.
        """
        lam_all = self._lp_row_dual
        max_states = CORE_DP_STATES if max_states is None else max_states
        if lam_all is None or max_states <= 0:
            return -np.inf, None
        fin = np.isfinite(bud_ub)
        B, bub = self.B[fin], bud_ub[fin]
        R = B.shape[0]
        lam = np.maximum(-lam_all[self.budget_rows][fin], 0.0)
        nx, uoc, off = self.nx, self.unit_of_col, self.offsets
        cb = c[:nx]
        xb = x[:nx]
        base = np.empty(self.n_units, np.int64)
        for u in range(self.n_units):  # the LP's column when free, else the unit's first free column
            o, k = off[u], self.sizes[u]
            fu = free[o : o + k]
            j = int(np.argmax(xb[o : o + k]))
            base[u] = o + (j if fu[j] else int(np.argmax(fu)))
        p0 = bub - B[:, base].sum(axis=1)
        zb = float(cb[base].sum() - lam @ p0)
        lim = cutoff - zb
        scale = max(abs(zb), abs(cutoff) if np.isfinite(cutoff) else 0.0, 1e-12)
        ptol = 1e-12 * scale  # prune only what is clearly at or above the cutoff
        stol = 1e-9
        alts = []
        for u in np.nonzero(cnt > 1)[0]:
            cols = np.nonzero(free[off[u] : off[u] + self.sizes[u]])[0] + off[u]
            d = B[:, cols] - B[:, [base[u]]]
            dc = cb[cols] - cb[base[u]]
            alts.append((cols, d, dc + lam @ d))
        if not alts:
            v = self.evaluate(base - off, c, bud_ub)
            return (np.inf, None) if v is None or v >= cutoff else (v, Incumbent(v, base - off))
        alts.sort(key=lambda a: -float(np.max(np.abs(lam @ a[1]))))
        n = len(alts)
        suf_min = np.zeros((n + 1, R))
        suf_max = np.zeros((n + 1, R))
        suf_pen = np.zeros(n + 1)
        for i in range(n - 1, -1, -1):
            suf_min[i] = suf_min[i + 1] + alts[i][1].min(axis=1)
            suf_max[i] = suf_max[i + 1] + alts[i][1].max(axis=1)
            suf_pen[i] = suf_pen[i + 1] + alts[i][2].min()
        # Lagrangian bounds on what the remaining units add: for rho <= lam (per row) and slack s now, the rest
        # costs >= G(rho) + rho·s, G(rho) = sum over them of min_j (pen_j - rho·d_j); a few rho = t·lam.
        rho = DP_RHO[:, None] * lam[None, :]
        G = np.zeros((n + 1, len(rho)))
        for i in range(n - 1, -1, -1):
            G[i] = G[i + 1] + (alts[i][2][None, :] - rho @ alts[i][1]).min(axis=1)
        rho_p, rho_n = np.maximum(rho, 0.0).T, np.minimum(rho, 0.0).T
        binding = lam > 1e-12
        cell = np.where(binding, DP_CELL * scale / np.maximum(lam, 1e-300), np.inf)[binding]
        PEN, LO, HI = np.zeros(1), p0[None, :].copy(), p0[None, :].copy()  # relaxed state
        RP, RS = np.zeros(1), p0[None, :].copy()  # its real member: pen sum and slack
        parents, picks = [], []
        for i, (cols, d, pn) in enumerate(alts):
            k = len(cols)
            PENn = (PEN[:, None] + pn[None, :]).ravel()
            LOn = (LO[:, None, :] - d.T[None, :, :]).reshape(-1, R)
            HIn = (HI[:, None, :] - d.T[None, :, :]).reshape(-1, R)
            RPn = (RP[:, None] + pn[None, :]).ravel()
            RSn = (RS[:, None, :] - d.T[None, :, :]).reshape(-1, R)
            rest_pen, rest_max, rest_min = suf_pen[i + 1], suf_max[i + 1], suf_min[i + 1]
            lb = PENn + np.maximum(rest_pen + np.maximum(LOn - rest_max, 0.0) @ lam, (G[i + 1] + LOn @ rho_p + HIn @ rho_n).max(axis=1))
            ok = np.all(HIn - rest_min >= -stol, axis=1) & (lb < lim - ptol)
            idx = np.nonzero(ok)[0]
            if not idx.size:
                return np.inf, None
            RSi = RSn[idx]
            rlb = RPn[idx] + np.maximum(rest_pen + np.maximum(RSi - rest_max, 0.0) @ lam, (G[i + 1] + RSi @ rho.T).max(axis=1))
            rlb = np.where(np.all(RSn[idx] - rest_min >= -stol, axis=1), rlb, np.inf)
            lbi = lb[idx]

            def merge(sel, width):
                """Merge candidates ``idx[sel]`` per cell of ``width``: (min pen, min slack, max slack, real member)."""
                keys = np.floor(LOn[idx[sel]][:, binding] / width).astype(np.int64)
                o = np.lexsort((rlb[sel], *keys.T[::-1]))
                ks = keys[o]
                first = np.r_[True, np.any(ks[1:] != ks[:-1], axis=1)]
                st = np.nonzero(first)[0]
                g, gi = idx[sel[o]], sel[o]
                cell_of = np.empty(idx.size, np.int64)
                cell_of[gi] = np.cumsum(first) - 1
                return (np.minimum.reduceat(PENn[g], st), np.minimum.reduceat(LOn[g], st, axis=0),
                        np.maximum.reduceat(HIn[g], st, axis=0), g[st], np.minimum.reduceat(lbi[gi], st), cell_of)

            PEN, LO, HI, rep, glb, cell_of = merge(np.arange(idx.size), cell)
            if rep.size > max_states:
                # Too many cells: the best max_states (by bound) stay, the others' candidates merge into coarser
                # cells (a weaker but valid relaxation, for the states least likely to matter).
                keep = np.argpartition(glb, max_states - 1)[:max_states]
                kept = np.zeros(rep.size, bool)
                kept[keep] = True
                sel = np.nonzero(~kept[cell_of])[0]
                width = cell * 8.0
                for _ in range(30):
                    extra = merge(sel, width)
                    if extra[3].size <= max(max_states // 4, 1):
                        break
                    width = width * 4.0
                else:
                    extra = merge(sel, np.full_like(cell, np.inf))  # one cell for all of them
                PEN, LO, HI, rep = (np.concatenate([a[keep], e]) for a, e in zip((PEN, LO, HI, rep), extra[:4], strict=True))
            RP, RS = RPn[rep], RSn[rep]
            parents.append(rep // k)
            picks.append(rep % k)
        feas = np.all(HI >= -stol, axis=1)
        bound = zb + float(np.min(np.where(feas, PEN + np.maximum(LO, 0.0) @ lam, np.inf)))
        rfeas = np.all(RS >= -_FEAS_TOL, axis=1)
        if not rfeas.any():
            return bound, None
        j = int(np.argmin(np.where(rfeas, RP + RS @ lam, np.inf)))
        ch = base - off
        for i in range(n - 1, -1, -1):
            col = int(alts[i][0][picks[i][j]])
            ch[uoc[col]] = col - off[uoc[col]]
            j = int(parents[i][j])
        v = self.evaluate(ch, c, bud_ub)
        return bound, (Incumbent(v, ch) if v is not None else None)

    # ----------------------------------------------------------------------------------------- core
    def _free(self, delta: float, x: np.ndarray, rc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Binaries a plan within ``delta`` of the LP bound may use, and how many each unit keeps."""
        uoc = self.unit_of_col
        rcb, xb = rc[: self.nx], x[: self.nx]
        free = rcb <= delta
        decided = np.zeros(self.n_units, bool)
        decided[uoc[rcb < -delta]] = True  # leaving its LP column costs more than delta: unit decided
        free &= ~(decided[uoc] & (xb < 0.5))
        cnt = np.bincount(uoc[free], minlength=self.n_units)
        if np.any(cnt == 0):  # numerical corner: keep the unit's LP column
            for u in np.nonzero(cnt == 0)[0]:
                free[self.offsets[u] + int(np.argmax(xb[self.offsets[u] : self.offsets[u] + self.sizes[u]]))] = True
            cnt = np.bincount(uoc[free], minlength=self.n_units)
        return free, cnt

    def _core_size(self, delta: float, x: np.ndarray, rc: np.ndarray) -> int:
        """Binaries left in the core of ``delta`` (units with a single free column are fixed)."""
        _, cnt = self._free(delta, x, rc)
        return int(cnt[cnt > 1].sum())

    def _probe_delta(self, delta: float, x: np.ndarray, rc: np.ndarray, binaries: int = PROBE_BINARIES) -> float:
        """Largest threshold below ``delta`` whose core has at most ``binaries`` binaries (bisection)."""
        lo, hi = 0.0, delta
        if self._core_size(hi, x, rc) <= binaries:
            return delta
        for _ in range(20):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self._core_size(mid, x, rc) <= binaries else (lo, mid)
        return lo

    def _core(
        self, delta: float, x: np.ndarray, rc: np.ndarray, c: np.ndarray, rub: np.ndarray, cutoff: float,
        stop_early: bool, time_limit: float, max_nodes: int = _INT_MAX, max_sols: int | None = None,
    ):
        """MILP over binaries with ``rc <= delta`` (others fixed to their LP value), fixed columns substituted.

        ``cutoff`` (scaled objective, +inf for none) is passed to HiGHS as its objective bound: only plans
        below it can change the answer, so subtrees whose bound reaches it are pruned without closing
        HiGHS's own gap there (it also replaces passing the incumbent as a start). With ``stop_early``
        HiGHS stops at its first plan below the cutoff (status "improved"): a better incumbent shrinks
        ``delta``, and a smaller core is much cheaper to finish than this one; ``max_sols`` overrides how many
        improving plans it may collect. ``max_nodes`` bounds a probe or a capped proof (status "nodelimit").
        Returns (status, x_full or None, objective, bound); the bound is capped at ``cutoff`` (pruned
        subtrees are only known to lie above it) and is +inf when nothing in the core is feasible and no
        cutoff was given.
        """
        hs = self._hs
        nx = self.nx
        free, cnt = self._free(delta, x, rc)
        single = free & (cnt[self.unit_of_col] == 1)
        keep_bin = free & ~single
        keep = np.r_[keep_bin, np.ones(self.ncol - nx, bool)]
        ones = np.zeros(self.ncol)
        ones[:nx][single] = 1.0
        act = self.A @ ones
        Ak = self.A[:, keep].tocsr()
        rlb, rub2 = self.row_lb - act, rub - act
        used = np.diff(Ak.indptr) > 0
        tol = 1e-9
        if np.any(rlb[~used] > tol) or np.any(rub2[~used] < -tol):
            return "infeasible", None, None, cutoff
        self.stats["core_binaries"] = int(keep_bin.sum())
        if not keep.any():  # everything fixed: the fixed plan is the only one left in the core
            return "optimal", ones, float(c @ ones), float(c @ ones)
        Ak, rlb, rub2 = Ak[used], rlb[used], rub2[used]
        cols = np.nonzero(keep)[0]
        integer = np.r_[np.ones(int(keep_bin.sum()), bool), np.zeros(self.ncol - nx, bool)]
        if self._core_h is None:
            self._core_h = self._highs()
        h = self._core_h
        h.setOptionValue("mip_rel_gap", self.gap_rel)
        h.setOptionValue("time_limit", max(float(time_limit), 1e-3))
        # HiGHS's absolute tolerances assume O(1) objectives; the core's spread is ~gap·|z|, so scale it up.
        f = CORE_OBJ_SCALE / max(abs(float(c @ x)), 1e-12)
        h.setOptionValue("objective_bound", float(cutoff * f) if np.isfinite(cutoff) else hs.kHighsInf)
        h.setOptionValue("mip_max_improving_sols", int(max_sols) if max_sols is not None else 1 if stop_early else _INT_MAX)
        h.setOptionValue("mip_max_nodes", int(max_nodes))
        h.passModel(self._model(c[cols] * f, self.col_lb[cols], self.col_ub[cols], Ak, rlb, rub2, integer, float(c @ ones) * f))
        h.run()
        S = hs.HighsModelStatus
        ms = h.getModelStatus()
        info = h.getInfo()
        if ms in (S.kInfeasible, S.kUnboundedOrInfeasible, S.kObjectiveBound):
            return "infeasible", None, None, cutoff
        bound = min(float(info.mip_dual_bound) / f if np.isfinite(info.mip_dual_bound) else -np.inf, cutoff)
        if info.primal_solution_status != 2:
            return "nosolution", None, None, bound
        xf = ones.copy()
        xf[cols] = np.asarray(h.getSolution().col_value, float)
        st = {S.kOptimal: "optimal", S.kSolutionLimit: "improved"}.get(ms, "feasible")
        if st == "improved" and max_nodes < _INT_MAX and info.mip_node_count >= max_nodes:
            st = "nodelimit"  # HiGHS reports node and improving-plan limits alike
        return st, xf, float(info.objective_function_value) / f, bound

    # ---------------------------------------------------------------------------------------- solve
    def solve(self, c: np.ndarray, bud_ub: np.ndarray, *, deadline: float) -> RawSolution:
        """Minimise ``c·x`` with the budget rows' upper bounds ``bud_ub`` (scaled), within ``gap_rel``."""
        t0 = time.perf_counter()
        left = lambda: deadline - time.perf_counter()  # noqa: E731
        c = np.asarray(c, float)
        rub = self.row_ub.copy()
        rub[self.budget_rows] = bud_ub
        status, z, x, rc = self._solve_lp(c, rub, left())
        self.stats = {"lp_s": time.perf_counter() - t0}
        if status != "optimal":
            return RawSolution(status, None, None, time.perf_counter() - t0, "LP relaxation: " + status)
        g = self.gap_rel
        eps = 1e-9 * (1.0 + abs(z))
        searchable = not self.has_aux and self.B is not None
        if searchable:
            nonsupport = np.nonzero(x[: self.nx] <= 1e-9)[0]
            k = min(PAIR_POOL, nonsupport.size)
            pool = nonsupport[np.argpartition(rc[nonsupport], k - 1)[:k]] if k else nonsupport
            pool = np.union1d(pool, np.nonzero(x[: self.nx] > 1e-9)[0])
        polish = (lambda s: self._local_search(s, c, bud_ub, pool)) if searchable else (lambda s: s)  # noqa: E731
        # Incumbent: roundings of the LP, the previous plan, each improved by local search.
        inc, base = self._roundings(x, c, bud_ub)
        starts = [inc] if inc is not None else []
        if self.last is not None and len(self.last) == self.n_units:
            v = self.evaluate(self.last, c, bud_ub)
            if v is not None:
                starts.append(Incumbent(v, self.last.copy()))
        if searchable and inc is None:  # no rounding fits: repair the LP's integral part greedily
            rep = self._repair(base, c, bud_ub)
            if rep is not None:
                starts.append(rep)
        inc = min((polish(s) for s in starts), key=lambda s: s.value, default=None)
        if searchable and (inc is None or inc.value - z > g * abs(inc.value) + eps):
            dp = self._beam_dp(x, rc, c, bud_ub, None if inc is None else inc.value)
            if dp is not None and (inc is None or dp.value < inc.value):
                inc = polish(dp)
        self.stats["heur_s"] = time.perf_counter() - t0 - self.stats["lp_s"]
        self.stats["incumbent_gap"] = (inc.value - z) / max(abs(inc.value), 1e-12) if inc is not None else np.inf
        top = float(rc[: self.nx].max(initial=0.0)) if self.nx else 0.0
        top = max(top, float(-rc[: self.nx].min(initial=0.0)))
        delta, stop_early, probe = None, True, True
        use_dp = searchable and CORE_DP_STATES > 0
        probe_bin, proof_nodes = PROBE_BINARIES, PROOF_NODES
        while True:
            if inc is not None:
                if inc.value - z <= g * abs(inc.value) + eps:
                    # Within the requested gap of the LP bound: optimal to tolerance, without branching.
                    return self._done("optimal", inc, max(0.0, (inc.value - z) / max(abs(inc.value), 1e-12)), z, t0)
                # Plans using a column with rc > delta cost >= z + delta = U (1 - gap): within the gap of U,
                # so the core only has to rule out plans below that cutoff. When the exact threshold
                # (delta = U - z, nothing better hidden) keeps the core small, prove that instead, so small
                # problems report their true gap rather than gap_rel. Each core's proof stands alone, so
                # delta shrinks with every better incumbent.
                delta = inc.value - z + eps
                cutoff = inc.value
                if np.count_nonzero(rc[: self.nx] <= delta) > self.n_units + EXACT_CORE_MAX:
                    delta = inc.value - g * abs(inc.value) - z + eps
                    cutoff = z + delta
                if use_dp and self._core_size(delta, x, rc) <= CORE_DP_MAX:
                    # The relaxation DP over a small proof core: it proves or improves in milliseconds where HiGHS
                    # pays a model build, presolve and a tree; only when it does neither is HiGHS asked. (On
                    # larger cores it is slower than HiGHS's probes and seldom conclusive.)
                    td = time.perf_counter()
                    lb_dp, plan = self._dp_core(*self._free(delta, x, rc), x, c, bud_ub, cutoff)
                    self.stats["dp_s"] = self.stats.get("dp_s", 0.0) + time.perf_counter() - td
                    self.stats["dps"] = self.stats.get("dps", 0) + 1
                    if plan is not None and plan.value < inc.value - eps:
                        inc = polish(plan)
                        continue
                    use_dp = False  # no better plan: HiGHS takes over, the DP is retried after a better plan
                    if lb_dp >= cutoff:  # no plan in the core below the cutoff: proven as a core solve would
                        lb = min(cutoff, z + delta)
                        return self._done("optimal", inc, max(0.0, (inc.value - lb) / max(abs(inc.value), 1e-12)), lb, t0)
                # A weak incumbent makes that core large and slow even to improve on. Probe first: the core of
                # the PROBE_BINARIES lowest reduced costs usually holds a plan below the cutoff, and a better
                # incumbent shrinks the proof core. A probe proves nothing; without a plan it is not repeated.
                small = self._probe_delta(delta, x, rc, probe_bin) if probe else delta
                is_probe = small < delta
                delta = small
            else:
                delta = 1e-5 * max(abs(z), 1e-6) if delta is None else delta * 10.0
                cutoff, is_probe = np.inf, False
            full = delta > top
            tc = time.perf_counter()
            capped = inc is not None and not is_probe and proof_nodes < _INT_MAX
            st, xf, _, bound = self._core(
                delta, x, rc, c, rub, cutoff, stop_early and inc is not None, left(),
                max_nodes=PROBE_NODES if is_probe else proof_nodes if capped else _INT_MAX,
                max_sols=PROBE_SOLUTIONS if is_probe else None,
            )
            self.stats["core_s"] = self.stats.get("core_s", 0.0) + time.perf_counter() - tc
            self.stats["cores"] = self.stats.get("cores", 0) + 1
            improved = False
            if xf is not None:
                ch = self.choice_of(xf)
                val = self.evaluate(ch, c, bud_ub)
                if val is not None and (inc is None or val < inc.value):
                    improved = inc is None or val < inc.value - eps
                    inc = polish(Incumbent(val, ch))
                    use_dp = searchable and CORE_DP_STATES > 0
            if is_probe:
                probe = improved
                continue
            if st == "nodelimit" and left() > 0:
                # The proof core stalled. With a better plan its rebuilt core is smaller; without one, look for a
                # plan with a larger probe and retry the proof with a larger cap (geometric: bounded rework).
                if not improved:
                    probe_bin, proof_nodes, probe = 2 * probe_bin, min(4 * proof_nodes, _INT_MAX), True
                continue
            if st == "improved" and left() > 0:
                stop_early = improved  # HiGHS's plan did not beat ours (tolerances): finish this core instead
                continue  # re-fix around the better incumbent: a smaller core
            if st not in ("optimal", "infeasible"):  # the core stopped at the time limit
                if inc is None:
                    return RawSolution("nosolution", None, None, time.perf_counter() - t0, "time limit")
                lb = bound if full else min(bound, z + delta)
                if st in ("improved", "nodelimit"):
                    lb = z  # stopped early: only the LP bound is proven
                return self._done("feasible", inc, max(0.0, (inc.value - lb) / max(abs(inc.value), 1e-12)), lb, t0)
            if inc is None:
                if full:
                    return RawSolution("infeasible", None, None, time.perf_counter() - t0)
                continue  # no plan among the free columns: widen
            lb = bound if full else min(bound, z + delta)
            gap = max(0.0, (inc.value - lb) / max(abs(inc.value), 1e-12))
            if gap <= g + 1e-12 or inc.value - lb <= eps or full or bound <= z + delta:
                # within the gap, or the core's own bound decides (HiGHS closed it to its tolerance)
                return self._done("optimal", inc, gap, lb, t0)
            if left() <= 0:
                return self._done("feasible", inc, gap, lb, t0)
            # fixed columns may still hide plans within the gap: widen to the new incumbent's threshold

    def _done(self, status: str, inc: Incumbent, gap: float, bound: float, t0: float) -> RawSolution:
        self.last = inc.choice.copy()
        self.stats["total_s"] = time.perf_counter() - t0
        return RawSolution(status, self.columns(inc.choice), gap, time.perf_counter() - t0, objective=inc.value, bound=bound)
