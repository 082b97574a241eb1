"""Optuna refinement: a multi-objective study over per-layer candidates, measured for real.

Why: Ω is an additive second-order prediction; accuracy is not additive. The ILP frontier seeds the study
(``enqueue_trial``) and a seeded sampler explores around it, each trial measuring accuracy with the
caller's ``evaluate_plan``. The study lives in an RDB (a SQLite file by default) so an interrupted run
resumes: finished trials are never re-run and ``n_trials`` counts the study's total.
"""

from __future__ import annotations

import hashlib

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from mpsearch.errors import MpsearchError
from mpsearch.plan import Candidate, Plan
from mpsearch.search.budget import BUDGET_METRICS, Budget
from mpsearch.search.ilp import plan_totals, resolve_budgets
from mpsearch.tables import CostTable


@dataclass
class RefinedPoint:
    plan: Plan
    accuracy: float  # measured by evaluate_plan
    cost: float  # the study's cost metric
    totals: dict[str, float]
    trial: int
    warm_start: bool
    feasible: bool = True


@dataclass
class OptunaResult:
    pareto: list[RefinedPoint]  # feasible, non-dominated (max accuracy, min cost)
    trials: list[RefinedPoint]  # every finished trial
    study_name: str
    storage: str | None
    new_trials: int  # run in this call (the rest came from storage)
    extra: dict[str, Any] = field(default_factory=dict)


def _storage_url(storage: str | Path | None) -> str | None:
    if storage is None:
        return None
    s = str(storage)
    if "://" in s:
        return s
    Path(s).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(s).resolve()}"


def _per_layer(candidates_per_layer: Mapping[str, Iterable[Candidate | str]]) -> dict[str, list[str]]:
    out = {}
    for n, cs in candidates_per_layer.items():
        keys = list(dict.fromkeys(c.key if isinstance(c, Candidate) else Candidate.parse(c).key for c in cs))
        if not keys:
            raise MpsearchError(f"layer {n!r} has no candidate to search over")
        out[n] = keys
    if not out:
        raise MpsearchError("optuna_refine needs at least one layer")
    return out


def optuna_refine(
    evaluate_plan: Callable[[Plan], float],
    costs: CostTable,
    candidates_per_layer: Mapping[str, Iterable[Candidate | str]],
    *,
    metric: str,
    warm_start: Sequence[Plan] = (),
    n_trials: int = 50,
    storage: str | Path | None = None,
    study_name: str = "mpsearch",
    seed: int = 0,
    budgets: Iterable[Budget | str] | Mapping[str, float] = (),
    sampler: str = "tpe",
    task: str = "",
    worker: str | None = None,
) -> OptunaResult:
    """Run the study up to ``n_trials`` finished trials in total and return its feasible Pareto set.

    Objectives: maximise ``evaluate_plan(plan)``, minimise ``metric`` from the cost table. Plans over a
    budget are still measured (so the sampler learns the boundary via Optuna's ``constraints_func``) but
    never enter the Pareto set. A plan already measured in the study is not measured again.

    Several processes may run this on one RDB study at once (Optuna's distributed mode): ``n_trials``
    then caps the study's total, each ``worker`` gets its own sampler seed and tags its trials.
    """
    import optuna

    if metric not in BUDGET_METRICS:
        raise MpsearchError(f"unknown cost metric {metric!r}", hint=f"known: {', '.join(BUDGET_METRICS)}")
    if n_trials < 0:
        raise MpsearchError(f"n_trials must be >= 0, got {n_trials}")
    layers = _per_layer(candidates_per_layer)
    names = list(layers)
    bounds = resolve_budgets(budgets, costs, names)
    url = _storage_url(storage)
    optuna.logging.set_verbosity(logging.WARNING)

    def totals_of(plan: Plan) -> dict[str, float]:
        return plan_totals(costs, plan)

    def violation(tot: Mapping[str, float]) -> list[float]:
        return [tot[m] / b - 1.0 for m, b in bounds.items()]  # <= 0 means within budget

    def constraints(trial: "optuna.trial.FrozenTrial") -> list[float]:
        return list(trial.user_attrs.get("violation", [0.0]))

    # Seed depends on how many trials exist, so a resumed run is itself reproducible.
    probe = optuna.create_study(study_name=study_name, storage=url, load_if_exists=True, directions=["maximize", "minimize"])
    done = [t for t in probe.get_trials(deepcopy=False) if t.state.is_finished()]
    n_done = sum(1 for t in done if t.state == optuna.trial.TrialState.COMPLETE)
    # Optuna >= 5 takes constraints from the trial (set_constraint); older versions from the sampler.
    per_trial = hasattr(optuna.trial.Trial, "set_constraint")
    # Distinct workers starting together must not draw the same sequence: fold the worker name in.
    wseed = 0 if worker is None else int.from_bytes(hashlib.sha256(worker.encode()).digest()[:4], "little")
    kw: dict[str, Any] = {"seed": (seed + n_done + wseed) % 2**32}
    if bounds and not per_trial:
        kw["constraints_func"] = constraints
    if sampler == "tpe":
        smp = optuna.samplers.TPESampler(**kw)
    elif sampler == "nsga2":
        smp = optuna.samplers.NSGAIISampler(**kw)
    else:
        raise MpsearchError(f"unknown sampler {sampler!r}; use tpe or nsga2")
    study = optuna.create_study(study_name=study_name, storage=url, load_if_exists=True, directions=["maximize", "minimize"], sampler=smp)
    if study.user_attrs.get("layers") not in (None, names):
        raise MpsearchError(f"study {study_name!r} in {storage} was made for other layers; use a new study name or storage")
    study.set_user_attr("layers", names)
    study.set_user_attr("metric", metric)

    def params_of(plan: Plan) -> dict[str, str]:
        missing = [n for n in names if n not in plan.layers]
        if missing:
            raise MpsearchError(f"warm-start plan lacks layer {missing[0]!r}")
        p = {n: plan.layers[n].key for n in names}
        for n, k in p.items():
            if k not in layers[n]:
                raise MpsearchError(f"warm-start plan uses {k!r} for layer {n!r}, which is not among its candidates")
        return p

    # Enqueue warm starts not already in the study (finished or waiting), so a resume does not repeat them.
    present = [dict(t.params) for t in study.get_trials(deepcopy=False)]
    present += [dict(t.system_attrs.get("fixed_params", {})) for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.WAITING]
    warm_keys = set()
    for plan in warm_start:
        p = params_of(plan)
        warm_keys.add(tuple(p.values()))
        if p not in present:
            study.enqueue_trial(p, user_attrs={"warm_start": True})
            present.append(p)

    measured: dict[tuple[str, ...], float] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if all(n in t.params for n in names):
            measured[tuple(t.params[n] for n in names)] = t.values[0]

    def objective(trial: "optuna.trial.Trial") -> tuple[float, float]:
        choice = {n: trial.suggest_categorical(n, layers[n]) for n in names}
        plan = Plan({n: Candidate.parse(k) for n, k in choice.items()}, task=task)
        tot = totals_of(plan)
        trial.set_user_attr("totals", tot)
        if worker is not None:
            trial.set_user_attr("worker", worker)
        trial.set_user_attr("violation", violation(tot))
        if bounds and per_trial:
            for m, v in zip(bounds, violation(tot)):
                trial.set_constraint(m, v)
        key = tuple(choice[n] for n in names)
        if key in measured:
            trial.set_user_attr("reused", True)
            acc = measured[key]
        else:
            acc = float(evaluate_plan(plan))
            measured[key] = acc
        return acc, tot[metric]

    n_new = max(0, n_trials - n_done)
    if n_new:
        # Stop at n_trials finished trials in the whole study, however many workers share it.
        cap = optuna.study.MaxTrialsCallback(n_trials, states=(optuna.trial.TrialState.COMPLETE,))
        study.optimize(objective, n_trials=n_new, gc_after_trial=False, callbacks=[cap])

    trials: list[RefinedPoint] = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        plan = Plan({n: Candidate.parse(t.params[n]) for n in names}, task=task, metadata={"search": "optuna", "trial": t.number,
                                                                                         "worker": t.user_attrs.get("worker")})
        tot = dict(t.user_attrs.get("totals", {})) or totals_of(plan)
        feas = all(v <= 1e-9 for v in t.user_attrs.get("violation", []))
        warm = bool(t.user_attrs.get("warm_start", False)) or tuple(t.params[n] for n in names) in warm_keys
        trials.append(RefinedPoint(plan, float(t.values[0]), float(t.values[1]), tot, t.number, warm, feas))
    from mpsearch.search.frontier import pareto_front

    pareto = pareto_front([p for p in trials if p.feasible], ["cost", "-accuracy"])
    return OptunaResult(pareto, trials, study_name, url, n_new, {"sampler": sampler, "seed": seed})
