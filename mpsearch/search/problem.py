"""The multiple-choice knapsack behind every search, compiled once into solver-neutral arrays.

Why a separate compile step: the frontier re-solves the same model dozens of times with only the budget
changing, so layers, ties, pruning and the constraint matrix are built once and only the right-hand sides
move. Tied layers (one format for the whole group) become one *unit* whose costs are the group's sums, so
ties cost no extra variables or rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from mpsearch.errors import MpsearchError
from mpsearch.graph import LayerGraph
from mpsearch.plan import Candidate, Plan
from mpsearch.tables import COST_METRICS, CostTable, SensitivityTable

ADDITIVE = ("latency_s", "weight_bytes", "bops", "energy_j")


@dataclass(frozen=True)
class Transitions:
    """Cost of a cast/requantize on a data-flow edge whose two layers use different activation formats.

    ``objective`` is added to Ω and ``latency_s`` to the latency total for every such edge. ``edges``
    defaults to the LayerGraph's edges.
    """

    objective: float = 0.0
    latency_s: float = 0.0
    edges: tuple[tuple[str, str], ...] | None = None

    @property
    def active(self) -> bool:
        return self.objective != 0.0 or self.latency_s != 0.0


def act_format(key: str) -> str:
    return key.split("/", 1)[1] if "/" in key else "fp32"


def _key(c: Candidate | str) -> str:
    return c.key if isinstance(c, Candidate) else Candidate.parse(c).key


def layer_order(sens: SensitivityTable | None, costs: CostTable, graph: LayerGraph | None) -> list[str]:
    """Layers to plan: the graph's order if given, else the cost table's; every one must have Ω and costs."""
    names = graph.names if graph is not None else list(costs.costs)
    if not names:
        raise MpsearchError("the cost table has no layers; nothing to search")
    for n in names:
        if n not in costs.costs:
            raise MpsearchError(f"layer {n!r} has no costs; rebuild the cost table for this model")
        if sens is not None and n not in sens.omega:
            raise MpsearchError(f"layer {n!r} has no sensitivity; re-run sensitivity for this model")
    return names


def allowed_candidates(
    names: Sequence[str],
    sens: SensitivityTable | None,
    costs: CostTable,
    candidates: Iterable[Candidate | str] | Mapping[str, Iterable[Candidate | str]] | None,
) -> dict[str, list[str]]:
    """Per layer: candidate keys present in both tables (and in ``candidates`` if given), in table order."""
    if candidates is None:
        restrict: dict[str, set[str]] | None = None
    elif isinstance(candidates, Mapping):
        restrict = {n: {_key(c) for c in cs} for n, cs in candidates.items()}
    else:
        keys = {_key(c) for c in candidates}
        restrict = {n: keys for n in names}
    out: dict[str, list[str]] = {}
    for n in names:
        ks = [k for k in costs.costs[n] if sens is None or k in sens.omega[n]]
        if restrict is not None and n in restrict:
            ks = [k for k in ks if k in restrict[n]]
        if not ks:
            raise MpsearchError(f"layer {n!r} has no candidate with both a sensitivity and a cost", hint="check the candidate list")
        out[n] = ks
    return out


def graph_ties(
    graph: LayerGraph, rules: Iterable[str] = (), *, same_inputs: bool = True, same_outputs: bool = False
) -> list[list[str]]:
    """Groups of layers that must share one candidate.

    * ``same_inputs``: layers reading the same tensor (same non-empty predecessor set and input shape),
      e.g. fused q/k/v projections or a block's first conv and its shortcut conv.
    * ``same_outputs``: layers whose outputs meet in one add (same non-empty successor set and output shape).
    * ``rules``: regular expressions over layer names; matching layers are grouped by the values of the
      rule's capture groups (no groups: all matches form one group), e.g.
      ``r"encoder\\.layer\\.(\\d+)\\.attention\\.self\\.(?:query|key|value)"`` ties q/k/v per block.
    """
    parent = {n: n for n in graph.names}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(group: Sequence[str]) -> None:
        for other in group[1:]:
            ra, rb = find(group[0]), find(other)
            if ra != rb:
                parent[rb] = ra

    g = graph.graph
    buckets: dict[tuple, list[str]] = {}
    for n in graph.names:
        info = graph[n]
        if same_inputs and g.in_degree(n) > 0:
            buckets.setdefault(("in", frozenset(g.predecessors(n)), info.in_shape), []).append(n)
        if same_outputs and g.out_degree(n) > 0:
            buckets.setdefault(("out", frozenset(g.successors(n)), info.out_shape), []).append(n)
    for i, rule in enumerate(rules):
        try:
            rx = re.compile(rule)
        except re.error as e:
            raise MpsearchError(f"tie rule {rule!r} is not a valid regular expression: {e}") from None
        for n in graph.names:
            m = rx.fullmatch(n)
            if m:
                buckets.setdefault(("rule", i, m.groups()), []).append(n)
    for members in buckets.values():
        if len(members) > 1:
            union(members)
    groups: dict[str, list[str]] = {}
    for n in graph.names:
        groups.setdefault(find(n), []).append(n)
    return [m for m in groups.values() if len(m) > 1]


@dataclass
class LinearProgram:
    """Row-wise sparse MILP in solver-neutral form: min c·x, row_lb <= A x <= row_ub, bounds, integrality."""

    c: np.ndarray
    col_lb: np.ndarray
    col_ub: np.ndarray
    integer: np.ndarray  # bool per column
    starts: list[int]
    index: list[int]
    value: list[float]
    row_lb: list[float]
    row_ub: list[float]
    groups: dict[str, list[int]] = field(default_factory=dict)  # metric -> its budget rows

    @property
    def n_rows(self) -> int:
        return len(self.row_lb)

    def add_row(self, idx: Sequence[int], val: Sequence[float], lb: float, ub: float, group: str | None = None) -> int:
        self.index.extend(int(i) for i in idx)
        self.value.extend(float(v) for v in val)
        self.starts.append(len(self.index))
        self.row_lb.append(lb)
        self.row_ub.append(ub)
        r = len(self.row_lb) - 1
        if group is not None:
            self.groups.setdefault(group, []).append(r)
        return r

    def row(self, r: int) -> tuple[list[int], list[float]]:
        a, b = self.starts[r], self.starts[r + 1]
        return self.index[a:b], self.value[a:b]


@dataclass
class Problem:
    """Units (tied layer groups), their surviving candidates and per-candidate coefficients."""

    names: list[str]
    units: list[tuple[str, ...]]
    cands: list[list[str]]
    offsets: np.ndarray  # first column of each unit
    omega: np.ndarray  # per column, summed over the unit's layers
    metric_coef: dict[str, np.ndarray]  # additive metric -> per column
    cuts: list[tuple[np.ndarray, np.ndarray]]  # per act cut: (columns, act bytes)
    edges: list[tuple[int, int]]  # unit edges carrying a transition cost
    transitions: Transitions
    constrained: tuple[str, ...]
    pruned: int

    @property
    def n_x(self) -> int:
        return int(self.omega.size)

    def plan_from_choice(self, choice: Sequence[int], task: str = "") -> Plan:
        layers: dict[str, Candidate] = {}
        for u, k in enumerate(choice):
            cand = Candidate.parse(self.cands[u][k])
            for n in self.units[u]:
                layers[n] = cand
        return Plan({n: layers[n] for n in self.names}, task=task)

    def metric_scale(self, metric: str) -> float:
        """An upper bound on the metric over all plans, so scaled rows have coefficients <= 1."""
        if metric == "peak_act_bytes":
            s = max((float(v.sum()) for _, v in self.cuts), default=0.0)
        else:
            s = float(sum(self.metric_coef[metric][o : o + len(c)].max() for o, c in zip(self.offsets, self.cands)))
            if metric == "latency_s":
                s += self.transitions.latency_s * len(self.edges)
        return s if s > 0 else 1.0

    def omega_scale(self) -> float:
        s = float(np.abs(self.omega).max()) if self.omega.size else 0.0
        s = max(s, abs(self.transitions.objective))
        return s if s > 0 else 1.0

    def assemble(self, objective: Mapping[str, float] | None = None) -> LinearProgram:
        """Columns: one binary per (unit, candidate), then one [0, 1] aux per transition edge.

        ``objective`` maps ``"omega"`` or a metric name to its weight (default ``{"omega": 1}``); each term
        is scaled to O(1) so the solvers' absolute tolerances do not swamp tiny Ω values. Budget rows are
        created for every constrained metric with an infinite bound; set their RHS per solve.
        """
        objective = dict(objective or {"omega": 1.0})
        n_d = len(self.edges)
        n = self.n_x + n_d
        c = np.zeros(n)
        for term, w in objective.items():
            if w == 0:
                continue
            if term == "omega":
                s = self.omega_scale()
                c[: self.n_x] += w * self.omega / s
                c[self.n_x :] += w * self.transitions.objective / s
            elif term in self.metric_coef:
                s = self.metric_scale(term)
                c[: self.n_x] += w * self.metric_coef[term] / s
                if term == "latency_s":
                    c[self.n_x :] += w * self.transitions.latency_s / s
            else:
                raise MpsearchError(f"cannot use {term!r} as an objective term; use omega or an additive metric")
        lp = LinearProgram(
            c=c, col_lb=np.zeros(n), col_ub=np.ones(n), integer=np.r_[np.ones(self.n_x, bool), np.zeros(n_d, bool)],
            starts=[0], index=[], value=[], row_lb=[], row_ub=[],
        )
        for o, cs in zip(self.offsets, self.cands):  # exactly one candidate per unit
            lp.add_row(range(o, o + len(cs)), [1.0] * len(cs), 1.0, 1.0)
        for e, (a, b) in enumerate(self.edges):  # d_e >= y_a,f - y_b,f for every act format f of unit a
            col = self.n_x + e
            fa = self._by_act(a)
            fb = self._by_act(b)
            for f, cols_a in fa.items():
                cols_b = fb.get(f, [])
                lp.add_row([col, *cols_a, *cols_b], [1.0, *([-1.0] * len(cols_a)), *([1.0] * len(cols_b))], 0.0, np.inf)
        for m in self.constrained:
            s = self.metric_scale(m)
            if m == "peak_act_bytes":
                for cols, vals in self.cuts:
                    lp.add_row(cols, vals / s, -np.inf, np.inf, group=m)
            else:
                coef = self.metric_coef[m]
                nz = np.nonzero(coef)[0]
                idx, val = list(nz), list(coef[nz] / s)
                if m == "latency_s" and self.transitions.latency_s and n_d:
                    idx += list(range(self.n_x, n))
                    val += [self.transitions.latency_s / s] * n_d
                lp.add_row(idx, val, -np.inf, np.inf, group=m)
        return lp

    def _by_act(self, u: int) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for k, key in enumerate(self.cands[u]):
            out.setdefault(act_format(key), []).append(int(self.offsets[u]) + k)
        return out


def compile_problem(
    sens: SensitivityTable,
    costs: CostTable,
    constrained: Iterable[str],
    *,
    candidates: Iterable[Candidate | str] | Mapping[str, Iterable[Candidate | str]] | None = None,
    ties: Iterable[Sequence[str]] | None = None,
    transitions: Transitions | None = None,
    graph: LayerGraph | None = None,
    prune: bool = True,
) -> Problem:
    """Build units, drop dominated candidates, and lay out the coefficient arrays."""
    names = layer_order(sens, costs, graph)
    allowed = allowed_candidates(names, sens, costs, candidates)
    constrained = tuple(dict.fromkeys(constrained))
    transitions = transitions or Transitions()

    # Units from ties (union of overlapping groups), in layer order.
    parent = {n: n for n in names}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for group in ties or ():
        group = list(group)
        for n in group:
            if n not in parent:
                raise MpsearchError(f"tie group names unknown layer {n!r}")
        for n in group[1:]:
            ra, rb = find(group[0]), find(n)
            if ra != rb:
                parent[rb] = ra
    unit_of_root: dict[str, int] = {}
    units: list[list[str]] = []
    for n in names:
        r = find(n)
        if r not in unit_of_root:
            unit_of_root[r] = len(units)
            units.append([])
        units[unit_of_root[r]].append(n)
    unit_of = {n: unit_of_root[find(n)] for n in names}

    # Transition edges between different units.
    edge_set: list[tuple[int, int]] = []
    if transitions.active:
        raw = transitions.edges if transitions.edges is not None else (list(graph.graph.edges) if graph is not None else None)
        if raw is None:
            raise MpsearchError("transition costs need edges: pass graph= or Transitions(edges=...)")
        for a, b in raw:
            if a not in unit_of or b not in unit_of:
                raise MpsearchError(f"transition edge ({a!r}, {b!r}) names a layer that is not planned")
            ua, ub = unit_of[a], unit_of[b]
            if ua != ub:
                edge_set.append((ua, ub))  # parallel edges each cost once, like separate casts
    has_edge = {u for e in edge_set for u in e}

    cut_members = [[n for n in cut] for cut in (costs.act_cuts or [[n] for n in names])]
    for cut in cut_members:
        for n in cut:
            if n not in unit_of:
                raise MpsearchError(f"activation cut names unknown layer {n!r}; rebuild the cost table for this model")
    cuts_of_unit: dict[int, list[int]] = {}
    for ci, cut in enumerate(cut_members):
        for u in dict.fromkeys(unit_of[n] for n in cut):
            cuts_of_unit.setdefault(u, []).append(ci)

    cut_sets = [set(c) for c in cut_members]
    prune_in: list[tuple[np.ndarray, list[str] | None]] = []
    unit_cands: list[list[str]] = []
    feats_all: list[dict[str, np.ndarray]] = []
    pruned = 0
    for u, members in enumerate(units):
        common = allowed[members[0]] if len(members) == 1 else [k for k in allowed[members[0]] if all(k in allowed[m] for m in members[1:])]
        if not common:
            raise MpsearchError(f"tied layers {members[:3]} share no candidate; loosen the tie or the candidate list")
        per_layer = {m: _layer_matrix(sens, costs, m, common) for m in members}  # K × (1 + metrics)
        mat = sum(per_layer.values())
        om = mat[:, 0]
        if not np.all(np.isfinite(om)):
            raise MpsearchError(f"non-finite sensitivity in layer {members[0]!r}; re-run sensitivity")
        mc = {met: mat[:, 1 + i] for i, met in enumerate(COST_METRICS)}
        for met in (*constrained, *(["act_bytes"] if "peak_act_bytes" in constrained else [])):
            if met in mc and not np.all(np.isfinite(mc[met])):
                raise MpsearchError(f"the cost table has no finite {met} for layer {members[0]!r}; it cannot be budgeted")
        cut_coef = {
            ci: sum(per_layer[m][:, _ACT_COL] for m in members if m in cut_sets[ci]) for ci in cuts_of_unit.get(u, [])
        }
        cols = [om] + [mc[m] for m in constrained if m != "peak_act_bytes"]
        if "peak_act_bytes" in constrained:
            cols += list(cut_coef.values())
        # A different act format may save a cast, so never compare candidates across act formats there.
        acts = [act_format(k) for k in common] if (u in has_edge and transitions.active) else None
        prune_in.append((np.stack(cols, axis=1), acts))
        unit_cands.append(list(common))
        feats_all.append({"omega": om, **mc, **{f"cut{ci}": v for ci, v in cut_coef.items()}})

    if prune:
        keeps = _undominated_batch(prune_in)
        for u, keep in enumerate(keeps):
            if not keep.all():
                pruned += int((~keep).sum())
                idx = np.nonzero(keep)[0]
                unit_cands[u] = [unit_cands[u][i] for i in idx]
                feats_all[u] = {k: v[idx] for k, v in feats_all[u].items()}

    sizes = [len(c) for c in unit_cands]
    offsets = np.r_[0, np.cumsum(sizes)[:-1]].astype(int)
    omega = np.concatenate([f["omega"] for f in feats_all])
    metric_coef = {m: np.concatenate([f[m] for f in feats_all]) for m in COST_METRICS}
    parts: list[tuple[list, list]] = [([], []) for _ in cut_members]
    for u, cis in cuts_of_unit.items():
        for ci in cis:
            parts[ci][0].append(np.arange(offsets[u], offsets[u] + sizes[u]))
            parts[ci][1].append(feats_all[u][f"cut{ci}"])
    cuts = [
        (np.concatenate(cols_l) if cols_l else np.zeros(0, int), np.concatenate(vals_l) if vals_l else np.zeros(0))
        for cols_l, vals_l in parts
    ]
    return Problem(
        names=names, units=[tuple(m) for m in units], cands=unit_cands, offsets=offsets, omega=omega,
        metric_coef=metric_coef, cuts=cuts, edges=edge_set if transitions.active else [], transitions=transitions,
        constrained=constrained, pruned=pruned,
    )


_ACT_COL = 1 + COST_METRICS.index("act_bytes")


def _layer_matrix(sens: SensitivityTable, costs: CostTable, layer: str, keys: Sequence[str]) -> np.ndarray:
    """Rows: candidates; columns: Ω then every COST_METRICS entry (NaN where the table lacks it)."""
    om, table = sens.omega[layer], costs.costs[layer]
    nan = float("nan")
    try:
        rows = [table[k] for k in keys]
        cols = [[om[k] for k in keys]] + [[r.get(met, nan) for r in rows] for met in COST_METRICS]
        return np.array(cols, dtype=float).T
    except (TypeError, ValueError):
        raise MpsearchError(f"layer {layer!r} has a non-numeric sensitivity or cost entry") from None


def _cost(costs: CostTable, layer: str, key: str, metric: str) -> float:
    """A cost entry, NaN when the table lacks that metric (fine unless it is budgeted)."""
    try:
        return float(costs.costs[layer][key][metric])
    except KeyError:
        return float("nan")
    except (TypeError, ValueError):
        raise MpsearchError(f"cost {metric} of layer {layer!r} / {key!r} is not a number") from None


def _undominated_batch(items: Sequence[tuple[np.ndarray, Sequence[str] | None]]) -> list[np.ndarray]:
    """:func:`_undominated` for many units at once, padded to one array (one numpy pass, not 500)."""
    if not items:
        return []
    kmax = max(f.shape[0] for f, _ in items)
    nf = max(f.shape[1] for f, _ in items)
    big = np.full((len(items), kmax, nf), np.inf)
    grp = np.full((len(items), kmax), -1, dtype=np.int64)
    for u, (f, acts) in enumerate(items):
        big[u, : f.shape[0], : f.shape[1]] = f
        big[u, : f.shape[0], f.shape[1] :] = 0.0  # missing features: equal for every candidate of the unit
        if acts is None:
            grp[u, : f.shape[0]] = 0
        else:
            names = {a: i for i, a in enumerate(dict.fromkeys(acts))}
            grp[u, : f.shape[0]] = [names[a] for a in acts]
    le = np.ones((len(items), kmax, kmax), bool)
    lt = np.zeros((len(items), kmax, kmax), bool)
    for c in range(nf):
        col = big[:, :, c]
        le &= col[:, :, None] <= col[:, None, :]
        lt |= col[:, :, None] < col[:, None, :]
    earlier = np.tri(kmax, k=-1, dtype=bool).T
    same = (grp[:, :, None] == grp[:, None, :]) & (grp[:, :, None] >= 0)
    dom = le & (lt | earlier[None]) & same
    dom[:, np.arange(kmax), np.arange(kmax)] = False
    dominated = dom.any(axis=1)
    return [~dominated[u, : f.shape[0]] for u, (f, _) in enumerate(items)]


def _undominated(f: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Rows of ``f`` (candidates × features, lower is better) not dominated within their group.

    j dominates k when j <= k on every feature and (j < k somewhere, or j == k everywhere and j comes
    first): such a k can be swapped for j in any plan without raising Ω or breaking a budget.
    """
    n = len(f)
    le = np.ones((n, n), bool)  # le[j, k]: j <= k on every feature
    lt = np.zeros((n, n), bool)  # lt[j, k]: j < k on some feature
    for col in f.T:
        le &= col[:, None] <= col[None, :]
        lt |= col[:, None] < col[None, :]
    earlier = np.tri(n, k=-1, dtype=bool).T  # earlier[j, k] = j < k
    g = np.asarray(groups)
    same = g[:, None] == g[None, :]
    dom = le & (lt | earlier) & same
    np.fill_diagonal(dom, False)
    return ~dom.any(axis=0)
