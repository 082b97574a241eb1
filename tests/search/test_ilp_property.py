"""The ILP equals brute-force enumeration on random small instances (every constraint type, ties, casts)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpsearch.search import InfeasibleBudgetError, Transitions, solve_ilp
from tests.search.tables import brute_force, make_tables

CANDS = ["fp32/fp32", "int8/fp32", "int4/fp32", "int8/int8"]
METRICS = ["weight_bytes", "latency_s", "peak_act_bytes", "bops", "energy_j"]


@st.composite
def instances(draw):
    n_layers = draw(st.integers(1, 5))
    n_cands = draw(st.integers(1, 4))
    names = [f"L{i}" for i in range(n_layers)]
    ints = st.integers(0, 20)
    spec = {n: {k: tuple(draw(ints) for _ in range(6)) for k in CANDS[:n_cands]} for n in names}
    cuts = draw(st.lists(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True), max_size=3))
    metrics = draw(st.lists(st.sampled_from(METRICS), min_size=1, max_size=3, unique=True))
    # half-integer budgets: no plan sits exactly on a bound, so solver tolerances cannot matter
    budgets = {m: draw(st.integers(0, 60)) + 0.5 for m in metrics}
    tie = draw(st.sampled_from([None, *[(a, b) for a in names for b in names if a < b]]))
    edges = [(a, b) for a, b in zip(names, names[1:])]
    t_obj = draw(st.sampled_from([0, 0, 3]))
    t_lat = draw(st.sampled_from([0, 0, 2]))
    return spec, cuts, budgets, tie, edges, t_obj, t_lat


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.sampled_from(["highs", "cbc"]))
def test_ilp_matches_brute_force(inst, solver):
    spec, cuts, budgets, tie, edges, t_obj, t_lat = inst
    sens, costs = make_tables(spec, cuts)
    ties = [list(tie)] if tie else []
    trans = Transitions(objective=t_obj, latency_s=t_lat, edges=tuple(edges)) if (t_obj or t_lat) else None
    ref = brute_force(sens, costs, budgets, ties=ties, transition=(edges, t_obj, t_lat) if trans else None)
    if ref is None:
        with pytest.raises(InfeasibleBudgetError):
            solve_ilp(sens, costs, budgets, ties=ties, transitions=trans, solver=solver, gap_rel=0.0)
        return
    r = solve_ilp(sens, costs, budgets, ties=ties, transitions=trans, solver=solver, gap_rel=0.0)
    assert r.objective == pytest.approx(ref[0], abs=1e-6)
    for m, b in budgets.items():
        assert r.totals[m] <= b
    for a, b in ties:
        assert r.plan.layers[a] == r.plan.layers[b]


def _random_tables(seed: int, n_layers: int = 40, n_cands: int = 8):
    import numpy as np

    rng = np.random.default_rng(seed)
    spec = {}
    for i in range(n_layers):
        size = rng.integers(1, 50)
        spec[f"L{i}"] = {
            f"int{b}/{a}": (
                float(rng.lognormal()) * 4.0 ** (-b) * rng.uniform(0.5, 1.5), size * b, size * b * rng.uniform(0.5, 1.5),
                size * b * (8 if a == "int8" else 32), b, size * (1 if a == "int8" else 4),
            )
            for b in range(2, 2 + n_cands // 2) for a in ("int8", "fp32")
        }
    return make_tables(spec, [[f"L{i}", f"L{i+1}"] for i in range(n_layers - 1)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reduced_cost_fixing_and_pruning_keep_the_optimum(seed):
    sens, costs = _random_tables(seed)
    budgets = ["weight=0.6x:int5/fp32", "latency=0.6x:int5/fp32", "act=0.5x:int2/fp32"]
    plain = solve_ilp(sens, costs, budgets, gap_rel=0.0, reduced_cost_fixing=False, prune=False, solver="highs")
    fast = solve_ilp(sens, costs, budgets, gap_rel=0.0, solver="highs")
    assert fast.objective == pytest.approx(plain.objective, rel=1e-9, abs=1e-12)
    assert plain.status == fast.status == "optimal"


def _assert_warm_sweep_within_gap(second: str = "act=0.5x:int3/fp32", gap: float = 1e-4) -> None:
    """A warm 6-point latency sweep of one compiled search (120 layers x 16 candidates; weight and ``second``
    budgets fixed) against a cold exact MILP at each budget: optimal, within ``gap``, honest reported gap."""
    from mpsearch.search.ilp import CompiledSearch, resolve_budgets

    sens, costs = _random_tables(3, n_layers=120, n_cands=16)
    names = list(costs.costs)
    fixed = resolve_budgets(["weight=0.5x:int5/fp32", second], costs, names)
    lo, hi = (resolve_budgets([f"latency={f}x:int5/fp32"], costs, names)["latency_s"] for f in (0.35, 0.7))
    warm = CompiledSearch(sens, costs, ["latency_s", *fixed], gap_rel=gap, solver="highs")
    for b in np.geomspace(lo, hi, 6):
        budgets = {**fixed, "latency_s": float(b)}
        r = warm.solve(budgets)
        cold = CompiledSearch(sens, costs, ["latency_s", *fixed], gap_rel=0.0, solver="highs", reduced_cost_fixing=False).solve(budgets)
        assert r.status == cold.status == "optimal"
        assert cold.objective * (1 - 1e-9) <= r.objective <= cold.objective * (1 + gap) + 1e-12
        assert r.gap <= gap + 1e-9


def test_warm_sweep_with_probes_and_cutoffs_matches_cold_milp(monkeypatch):
    """A re-used CoreSolver (previous plan and LP basis as warm starts, probe cores, HiGHS cutoffs that stop at
    the first better plan) must land within gap_rel of the plain MILP at every budget of a sweep."""
    from mpsearch.search.mckp import CoreSolver

    kinds = []
    core = CoreSolver._core

    def spy(self, *args, **kw):
        out = core(self, *args, **kw)
        kinds.append(("probe" if kw.get("max_sols") is not None else "proof", out[0]))
        return out

    monkeypatch.setattr(CoreSolver, "_core", spy)
    _assert_warm_sweep_within_gap()
    assert {k for k, _ in kinds} == {"probe", "proof"} and ("proof", "improved") in kinds


def test_capped_proof_cores_escalate_and_stay_within_gap(monkeypatch):
    """Proof cores stopped at a tiny node cap (then larger probes, x4 caps) must still end within gap_rel of
    the plain MILP, with an honest bound: the cap only changes how the answer is reached."""
    from mpsearch.search import mckp

    statuses = []
    core = mckp.CoreSolver._core

    def spy(self, *args, **kw):
        out = core(self, *args, **kw)
        statuses.append(out[0])
        return out

    monkeypatch.setattr(mckp.CoreSolver, "_core", spy)
    monkeypatch.setattr(mckp, "PROOF_NODES", 1)
    monkeypatch.setattr(mckp, "PROBE_BINARIES", 20)
    _assert_warm_sweep_within_gap()
    assert "nodelimit" in statuses


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_beam_dp_plans_are_feasible_and_never_beat_brute_force(seed):
    """The beam DP incumbent on small random knapsacks: feasible, never below the brute-force optimum, and with
    a wide enough beam (every column, every state) equal to it."""
    core, status, x, c, bud, best, _free, _cnt, rc = _small_core(seed)
    if status != "optimal":
        assert best is None
        return
    narrow = core._beam_dp(x, rc, c, bud, None, columns=5, states=4)
    if narrow is not None:
        assert core.evaluate(narrow.choice, c, bud) == pytest.approx(narrow.value)
        assert narrow.value >= best - 1e-12
    wide = core._beam_dp(x, rc, c, bud, None, columns=10**6, states=10**6)
    if best is not None:
        assert wide is not None and wide.value == pytest.approx(best, rel=1e-9, abs=1e-12)


def _small_core(seed):
    import itertools

    import numpy as np

    from mpsearch.search import mckp
    from mpsearch.search.ilp import CompiledSearch, resolve_budgets

    sens, costs = _random_tables(seed, n_layers=6, n_cands=6)
    names = list(costs.costs)
    budgets = resolve_budgets(["weight=0.6x:int4/fp32", "latency=0.6x:int4/fp32"], costs, names)
    search = CompiledSearch(sens, costs, list(budgets), gap_rel=0.0, solver="highs", prune=False)
    core = mckp.CoreSolver(search.problem, search.lp, gap_rel=0.0)
    c, bud = np.asarray(search.lp.c, float), search._budget_ub(budgets)
    rub = core.row_ub.copy()
    rub[core.budget_rows] = bud
    status, z, x, rc = core._solve_lp(c, rub, 10.0)
    best = None
    for combo in itertools.product(*[range(k) for k in core.sizes]):
        v = core.evaluate(np.array(combo), c, bud)
        if v is not None and (best is None or v < best):
            best = v
    free = np.ones(core.nx, bool)
    cnt = core.sizes.copy()
    return core, status, x, c, bud, best, free, cnt, rc


@pytest.mark.parametrize("seed", range(12))
def test_relaxation_dp_bound_and_plans_against_brute_force(seed):
    """The relaxation DP over every column: its bound never exceeds the brute-force optimum, its plans are
    feasible and never beat it, a cutoff at the optimum is proven (nothing below it), a cutoff just above is
    not, and with room for every state it finds the optimum itself."""
    core, status, x, c, bud, best, free, cnt, _rc = _small_core(seed)
    if status != "optimal" or best is None:
        return
    scale = abs(best)
    for states in (1, 3, 10**6):
        lb, plan = core._dp_core(free, cnt, x, c, bud, np.inf, max_states=states)
        assert lb <= best + 1e-9 * scale
        if plan is not None:
            assert core.evaluate(plan.choice, c, bud) == pytest.approx(plan.value)
            assert plan.value >= best - 1e-12 * scale
        lb, plan = core._dp_core(free, cnt, x, c, bud, best - 1e-9 * scale, max_states=states)
        assert plan is None or plan.value >= best - 1e-12 * scale  # nothing feasible lies below the optimum
        lb, plan = core._dp_core(free, cnt, x, c, bud, best + 1e-6 * scale, max_states=states)
        assert lb < best + 1e-6 * scale  # the optimum is below this cutoff: no proof may be claimed
    lb, plan = core._dp_core(free, cnt, x, c, bud, best + 1e-6 * scale, max_states=10**6)
    assert plan is not None and plan.value == pytest.approx(best, rel=1e-9, abs=1e-12)
    lb, plan = core._dp_core(free, cnt, x, c, bud, best - 1e-6 * scale, max_states=10**6)
    assert lb == np.inf and plan is None


def test_warm_sweep_with_relaxation_dp_proofs_stays_within_gap(monkeypatch):
    """A warm sweep where small proof cores go to the relaxation DP first (and state caps force its coarse
    merges) must land within gap_rel of the plain MILP at every budget, with DP proofs among the solves."""
    from mpsearch.search import mckp

    monkeypatch.setattr(mckp, "CORE_DP_MAX", 10**6)
    monkeypatch.setattr(mckp, "CORE_DP_STATES", 50)
    proofs = []
    dp = mckp.CoreSolver._dp_core

    def spy(self, *args, **kw):
        out = dp(self, *args, **kw)
        proofs.append(out[0] >= args[-1])
        return out

    monkeypatch.setattr(mckp.CoreSolver, "_dp_core", spy)
    _assert_warm_sweep_within_gap("bops=0.5x:int5/fp32")
    assert any(proofs)


def test_default_frontier_points_are_within_the_frontier_gap_of_a_cold_milp():
    """ilp_frontier's default gap (FRONTIER_GAP) is what every point reports and what it is within of the exact
    optimum at its own budget; mid-size cores (more than EXACT_CORE_MAX free binaries) are proven to the gap."""
    from mpsearch.search import ilp_frontier
    from mpsearch.search.frontier import FRONTIER_GAP
    from mpsearch.search.ilp import CompiledSearch, resolve_budgets

    sens, costs = _random_tables(5, n_layers=60, n_cands=16)
    names = list(costs.costs)
    fixed = resolve_budgets(["weight=0.5x:int5/fp32"], costs, names)
    front = ilp_frontier(sens, costs, "latency_s", n_points=6, fixed_budgets=fixed, workers=1)
    assert len(front) >= 4
    assert any(p.gap > 0 for p in front)  # some points were proven to the gap, not exactly
    exact = CompiledSearch(sens, costs, ["latency_s", *fixed], gap_rel=0.0, solver="highs", reduced_cost_fixing=False)
    for p in front:
        assert p.status == "optimal" and p.gap <= FRONTIER_GAP + 1e-9
        cold = exact.solve({**fixed, "latency_s": p.budget})
        assert cold.objective * (1 - 1e-9) <= p.objective <= cold.objective * (1 + FRONTIER_GAP) + 1e-12
