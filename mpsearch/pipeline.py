"""The whole pipeline, stage by stage, checkpointed in a run directory.

Task -> LayerGraph -> SensitivityTable -> CostTable -> frontier/Plan -> Artifact -> report.
This is the only ``mpsearch`` module (with the CLI) that imports ``sensitivity`` and ``backends``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from mpsearch.errors import MpsearchError
from mpsearch.graph import LayerGraph, build_layer_graph
from mpsearch.plan import Candidate, Plan, parse_candidates
from mpsearch.rundir import RunDir, fingerprint
from mpsearch.simulate import apply_plan, calibrate_act_ranges
from mpsearch.tables import CostTable, SensitivityTable
from mpsearch.task import Task, load_task

DEFAULT_CANDIDATES = ["fp32", "int8", "int8/int8", "int6", "int4", "int3", "int2", "e4m3", "e4m3/e4m3", "e3m2", "e2m1"]
BASELINES = {"uniform int8": "int8", "uniform int4": "int4", "uniform fp8": "e4m3"}

# progress(stage, done, total) for bars; progress(message) alone for one-off messages from backends.
Progress = Callable[..., None]


@dataclass
class OptimizeConfig:
    """Everything ``mpsearch optimize`` needs; resolved and written to ``config.json`` in the run dir."""

    task: str = "digits-cnn"
    run_dir: str = "runs/default"
    candidates: list[str] = field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    target: str = "x86-avx2"
    cost_mode: str = "analytical"
    frontier_metric: str = "weight_bytes"
    frontier_points: int = 12
    budgets: list[str] = field(default_factory=list)
    max_accuracy_drop: float = 0.01
    sensitivity: dict[str, Any] = field(default_factory=dict)
    optuna_trials: int = 0
    storage: str | None = None
    random_evals: int | None = None  # None: as many real evaluations as the search used (frontier + Optuna trials)
    compile: bool = True
    compile_target: str = "llvm"
    verify_points: int = 3
    seed: int = 0
    task_args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OptimizeConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise MpsearchError(f"unknown config keys {sorted(unknown)}", hint=f"known: {', '.join(sorted(known))}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> "OptimizeConfig":
        """Type-check every field so a hand-edited config.json fails with one line, not deep inside a stage."""
        def bad(name: str, want: str) -> MpsearchError:
            return MpsearchError(f"config: {name!r} must be {want}, got {getattr(self, name)!r}")

        for name in ("task", "run_dir", "target", "cost_mode", "frontier_metric", "compile_target"):
            if not isinstance(getattr(self, name), str):
                raise bad(name, "a string")
        for name in ("candidates", "budgets"):
            v = getattr(self, name)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise bad(name, "a list of strings")
        for name in ("frontier_points", "optuna_trials", "random_evals", "seed", "verify_points"):
            v = getattr(self, name)
            if name == "random_evals" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(name, "a non-negative integer")
        if isinstance(self.max_accuracy_drop, bool) or not isinstance(self.max_accuracy_drop, (int, float)) or not self.max_accuracy_drop >= 0:
            raise bad("max_accuracy_drop", "a non-negative number")
        for name in ("sensitivity", "task_args"):
            if not isinstance(getattr(self, name), dict):
                raise bad(name, "an object")
        if self.storage is not None and not isinstance(self.storage, str):
            raise bad("storage", "a string or null")
        if not isinstance(self.compile, bool):
            raise bad("compile", "true or false")
        if self.cost_mode not in ("analytical", "measured"):
            raise MpsearchError(f"config: cost_mode must be 'analytical' or 'measured', got {self.cost_mode!r}")
        self._validate_search_settings()
        return self

    def _validate_search_settings(self) -> None:
        """What the search stages would reject only after the model is loaded and sensitivity measured:
        checked up front, so a typo costs a second, not the sensitivity pass."""
        from mpsearch.search.budget import BUDGET_METRICS, parse_budget

        if self.frontier_metric not in BUDGET_METRICS:
            raise MpsearchError(f"config: unknown frontier metric {self.frontier_metric!r}", hint=f"known: {', '.join(BUDGET_METRICS)}")
        if self.frontier_points < 2:
            raise MpsearchError(f"config: frontier_points must be >= 2, got {self.frontier_points}")
        for b in self.budgets:
            parse_budget(b)
        parse_candidates(self.candidates)
        if self.storage is not None and self.optuna_trials:
            _check_storage_url(self.storage)


def _check_storage_url(url: str) -> None:
    """An Optuna storage URL that SQLAlchemy cannot parse, or whose dialect is unknown: one line, before any work."""
    if "://" not in url:
        return  # a plain path: a SQLite file
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        sqlalchemy.engine.make_url(url).get_dialect()
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise MpsearchError(f"cannot use Optuna storage {_redact(url)!r}: {str(e).splitlines()[0]}",
                            hint="use sqlite:///path/optuna.db or postgresql+psycopg2://user@host:5432/db") from None


@dataclass
class Session:
    """A loaded task plus everything derived from it so far (filled in stage by stage)."""

    config: OptimizeConfig
    run: RunDir
    task: Task
    graph: LayerGraph
    candidates: list[Candidate]
    act_amax: dict[str, float]
    sens: SensitivityTable | None = None
    costs: CostTable | None = None
    float_score: float | None = None
    persist_evals: bool = True  # False for Optuna workers: many processes must not race on evals.json
    _evals: dict[str, float] | None = None

    # -- real evaluation, cached per plan so a resumed run re-evaluates nothing --------------------
    def evaluate_plan(self, plan: Plan) -> float:
        if self._evals is None:
            self._evals = self.run.read_json("evals.json") if self.persist_evals and self.run.file("evals.json").is_file() else {}
        key = plan_key(plan)
        if key not in self._evals:
            score = float(self.task.evaluate(apply_plan(self.task.model, plan, self.act_amax)))
            if not np.isfinite(score):
                raise MpsearchError(f"task {self.task.name!r}: evaluate() returned {score} for a quantized model")
            self._evals[key] = score
            if self.persist_evals:
                self.run.write_json("evals.json", self._evals)
        return self._evals[key]


def plan_key(plan: Plan) -> str:
    return fingerprint({n: c.key for n, c in sorted(plan.layers.items())})


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def open_session(config: OptimizeConfig, *, resume: bool = True, progress: Progress | None = None) -> Session:
    """Load the task, extract the graph and calibrate activation ranges (checkpointed)."""
    config.validate()
    _seed_everything(config.seed)
    run = RunDir(config.run_dir)
    candidates = parse_candidates(config.candidates)
    task = load_task_spec(config.task, **config.task_args)
    graph = build_layer_graph(task.model, task.example_input)
    run.write_json("config.json", asdict(config))
    run.write_json("graph.json", graph.to_dict())
    act_amax, _ = run.stage(
        "act_amax.json", {"graph": graph.fingerprint(), "task": config.task, "seed": config.seed},
        lambda: calibrate_act_ranges(task.model, graph.names, task.calib_batches, task.run_forward),
        dump=lambda v: v, load=lambda v: v, resume=resume,
    )
    bad = [n for n, v in act_amax.items() if not np.isfinite(v)]
    if bad:
        raise MpsearchError(f"activations of layer {bad[0]!r} are NaN/Inf on the calibration data; check the model and data")
    return Session(config, run, task, graph, candidates, act_amax)


def load_task_spec(spec: str, **kwargs: Any) -> Task:
    """A built-in name, ``file.py:factory``, an ``.onnx`` file (needs ``calib``) or a HF model directory."""
    p = Path(spec)
    if spec.endswith(".onnx"):
        from mpsearch.tasks.onnx_task import onnx_task

        if not p.is_file():
            raise MpsearchError(f"ONNX file {spec!r} does not exist")
        calib = kwargs.pop("calib", None)
        if calib is None:
            raise MpsearchError("an ONNX model needs calibration data", hint="pass --calib data.npz")
        return onnx_task(spec, calib, **kwargs).validate()
    if p.is_dir():
        from mpsearch.tasks.hf_text import hf_text_task

        if not (p / "config.json").is_file():
            raise MpsearchError(f"directory {spec!r} is not a Hugging Face model directory (no config.json)")
        return hf_text_task(spec, **kwargs).validate()
    return load_task(spec, **kwargs)


def run_sensitivity(s: Session, *, resume: bool = True, progress: Progress | None = None) -> SensitivityTable:
    from sensitivity import SensitivityConfig, compute_sensitivity

    try:
        cfg = SensitivityConfig(**{"seed": s.config.seed, **s.config.sensitivity})
    except TypeError as e:
        known = ", ".join(f for f in SensitivityConfig.__dataclass_fields__ if f != "extra")
        raise MpsearchError(f"bad sensitivity setting: {e}", hint=f"known settings: {known}") from None
    key = {"graph": s.graph.fingerprint(), "task": s.config.task, "cands": [c.key for c in s.candidates], "cfg": repr(cfg)}
    s.sens, _ = s.run.stage(
        "sensitivity.json", key,
        lambda: compute_sensitivity(s.task, s.graph, s.candidates, cfg, act_amax=s.act_amax,
                                    cache_dir=s.run.file("cache/sensitivity"), progress=progress),
        dump=lambda t: t.to_dict(), load=SensitivityTable.from_dict, resume=resume,
    )
    return s.sens


def run_costs(s: Session, *, resume: bool = True, progress: Progress | None = None) -> CostTable:
    from backends.cost import build_cost_table
    from backends.targets import load_target

    target = load_target(s.config.target)
    key = {"graph": s.graph.fingerprint(), "cands": [c.key for c in s.candidates], "target": s.config.target,
           "mode": s.config.cost_mode}
    s.costs, _ = s.run.stage(
        "costs.json", key,
        lambda: build_cost_table(s.graph, s.candidates, target, mode=s.config.cost_mode,
                                 cache_dir=s.run.file("cache/costs"), progress=progress),
        dump=lambda t: t.to_dict(), load=CostTable.from_dict, resume=resume,
    )
    if not any(s.costs.costs.values()):
        raise MpsearchError(f"target {s.config.target!r} can run none of the candidate formats")
    return s.costs


def _point_dict(plan: Plan, objective: float, totals: dict[str, float], **extra: Any) -> dict[str, Any]:
    return {"plan": plan.to_dict(), "omega": objective, "totals": totals, **extra}


def search_frontier(s: Session, *, progress: Progress | None = None) -> dict[str, Any]:
    """ILP frontier + baselines, every point evaluated for real (evaluations cached per plan)."""
    from mpsearch import search

    assert s.sens is not None and s.costs is not None
    metric = s.config.frontier_metric
    t0 = time.perf_counter()
    fixed = [search.parse_budget(b) for b in s.config.budgets if search.parse_budget(b).metric != metric]
    names = s.graph.names
    hawq_keys = sorted({k for n in names for k in s.costs.costs.get(n, {}) if k.split("/")[0] in search.HAWQ_V3_WEIGHTS})
    hawq = (search.ilp_frontier(s.sens, s.costs, metric, n_points=max(4, s.config.frontier_points // 2),
                                fixed_budgets=fixed, candidates=hawq_keys, graph=s.graph, task=s.task.name)
            if hawq_keys else [])
    uniform = {label: Plan.uniform(names, Candidate.parse(spelling), task=s.task.name) for label, spelling in BASELINES.items()
               if all(Candidate.parse(spelling).key in s.costs.costs.get(n, {}) for n in names)}
    # the frontier also holds a point at each deterministic baseline's exact cost: "what do the bytes of
    # uniform INT4 buy" is then answered by a plan solved for that budget, not by the next cheaper sweep point
    at_cost = [s.costs.plan_cost(p, metric) for p in uniform.values()] + [pt.totals[metric] for pt in hawq]
    points = search.ilp_frontier(s.sens, s.costs, metric, n_points=s.config.frontier_points, fixed_budgets=fixed,
                                 graph=s.graph, extra_budgets=at_cost)
    solve_seconds = time.perf_counter() - t0
    if s.float_score is None:
        s.float_score = float(s.task.evaluate(s.task.model))
    out: dict[str, Any] = {"metric": metric, "float_score": s.float_score, "metric_name": s.task.metric_name,
                           "solve_seconds": solve_seconds, "frontier": [], "baselines": {}, "hawq_v3": [], "random": []}
    total = len(points)
    for i, pt in enumerate(points):
        acc = s.evaluate_plan(pt.plan)
        out["frontier"].append(_point_dict(pt.plan, pt.objective, pt.totals, score=acc))
        if progress:
            progress("evaluate frontier", i + 1, total)
    for label, plan in uniform.items():
        totals = {m: s.costs.plan_cost(plan, m) for m in _metrics(s.costs)}
        out["baselines"][label] = _point_dict(plan, s.sens.plan_value(plan), totals, score=s.evaluate_plan(plan))
    for i, pt in enumerate(hawq):
        out["hawq_v3"].append(_point_dict(pt.plan, pt.objective, pt.totals, score=s.evaluate_plan(pt.plan)))
        if progress:
            progress("evaluate HAWQ-V3 baseline", i + 1, len(hawq))
    n_random = default_random_evals(s.config, len(out["frontier"]))
    if n_random:
        rnd = search.random_search(s.evaluate_plan, s.costs, _cands_per_layer(s), n_random, fixed or None,
                                   seed=s.config.seed, layer_names=names, task=s.task.name)
        out["random"] = [_point_dict(p.plan, s.sens.plan_value(p.plan), p.totals, score=p.accuracy) for p in rnd.points]
    return out


def default_random_evals(config: OptimizeConfig, frontier_evals: int) -> int:
    """Random search's budget of real evaluations: what mpsearch spent, so the baseline is a fair one.

    That is one per ILP frontier point plus one per Optuna trial (an upper bound: warm-start trials re-use
    the frontier's measurements), unless the user set ``random_evals``.
    """
    if config.random_evals is not None:
        return config.random_evals
    return frontier_evals + config.optuna_trials


def _random_key(config: OptimizeConfig) -> Any:
    """The frontier stage's cache key for random search: unchanged from older runs unless Optuna adds trials."""
    if config.random_evals is None and config.optuna_trials:
        return ["frontier+optuna", config.optuna_trials]
    return config.random_evals


def _metrics(costs: CostTable) -> list[str]:
    any_layer = next(iter(costs.costs.values()))
    any_cand = next(iter(any_layer.values()))
    return list(any_cand) + ["peak_act_bytes"]


def _cands_per_layer(s: Session) -> dict[str, list[Candidate]]:
    return {n: [c for c in s.candidates if c.key in s.costs.costs.get(n, {})] for n in s.graph.names}


def choose_plan(s: Session, frontier: dict[str, Any]) -> tuple[Plan, dict[str, Any]]:
    """With budgets: the ILP optimum under them, or an Optuna trial within them that measured better.
    Without: the cheapest measured frontier point within the allowed accuracy drop."""
    from mpsearch import search

    if s.config.budgets:
        res = search.solve_ilp(s.sens, s.costs, [search.parse_budget(b) for b in s.config.budgets], graph=s.graph)
        plan = res.plan
        info = {"how": f"ILP under budgets {s.config.budgets}", "omega": res.objective, "totals": res.totals,
                "score": s.evaluate_plan(plan), "status": res.status}
        # the study ran under the same budgets, so its Pareto points all fit them
        trials = [p for p in (frontier.get("optuna") or {}).get("points", []) if p.get("feasible", True)]
        best = max(trials, key=lambda p: p["score"], default=None)
        if best is not None and best["score"] > info["score"]:
            plan = Plan.from_dict(best["plan"])
            info = {"how": f"Optuna trial {best.get('trial')} under budgets {s.config.budgets} (measured above the ILP "
                           f"optimum's {info['score']:.4g})", "omega": best["omega"], "totals": best["totals"],
                    "score": best["score"], "status": "measured"}
    else:
        floor = frontier["float_score"] - s.config.max_accuracy_drop
        candidates = measured_frontier(frontier)
        ok = [p for p in candidates if p["score"] >= floor]
        pool = ok or candidates
        best = min(pool, key=lambda p: (p["totals"][frontier["metric"]], -p["score"])) if ok else max(pool, key=lambda p: p["score"])
        plan = Plan.from_dict(best["plan"])
        source = " (found by Optuna)" if best.get("search") == "optuna" else ""
        info = {"how": f"cheapest frontier point within {s.config.max_accuracy_drop:g} of float{source}", "omega": best["omega"],
                "totals": best["totals"], "score": best["score"]}
    plan.task = s.task.name
    plan.metadata.update({"graph": s.graph.fingerprint(), "target": s.config.target, **{k: v for k, v in info.items() if k != "totals"}})
    return plan, info


def measured_frontier(frontier: dict[str, Any]) -> list[dict[str, Any]]:
    """The points a plan is chosen from: the ILP frontier, plus the Optuna study's feasible Pareto points.

    Optuna measures accuracy for real, so where it found a plan that scores better at no more cost than
    an ILP point (Ω is only a prediction), that plan is the one to deploy.
    """
    ilp = list(frontier["frontier"])
    opt = [dict(p, search="optuna") for p in (frontier.get("optuna") or {}).get("points", [])]
    if not opt:
        return ilp
    from mpsearch.search.frontier import pareto_front

    metric = frontier["metric"]
    return pareto_front(ilp + opt, [lambda p: p["totals"][metric], lambda p: -p["score"]])


def compile_and_verify(s: Session, plan: Plan, out_dir: Path, *, progress: Progress | None = None) -> dict[str, Any]:
    """Compile ``plan`` with TVM and compare the artifact with the PyTorch simulation on real inputs."""
    from backends.artifact import load_artifact
    from backends.tvm import compile_plan
    from backends.tvm.lower import tensor_outputs

    art = compile_plan(s.task.model, s.graph, plan, s.act_amax, s.task.example_input, target=s.config.compile_target,
                       out_dir=out_dir, progress=progress)
    manifest = getattr(art, "manifest_path", None) and str(art.manifest_path)
    if s.config.compile_target == "cuda":
        from backends.artifact import cuda_device_available

        if not cuda_device_available():  # cross-compiled (e.g. on a CPU build machine): parity is checked on the GPU
            return {"artifact": str(out_dir), "target": "cuda", "max_abs_diff": None, "samples": 0, "manifest": manifest,
                    "deferred": "no CUDA device here; on the GPU machine, load_artifact(ARTIFACT).check_reference() "
                                "compares it with the simulation's outputs stored in reference.npz"}
    loaded = load_artifact(out_dir)
    sim = apply_plan(s.task.model, plan, s.act_amax)
    # single rows of the calibration batches when they are tensors; otherwise (dict batches such as a text
    # task's query/document pairs) the example input, which has the artifact's input signature by definition
    inputs: list[tuple[torch.Tensor, ...]] = []
    for batch in list(s.task.calib_batches)[:2]:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(x, torch.Tensor):
            inputs += [(x[i : i + 1],) for i in range(min(4, x.shape[0]))]
    if not inputs:
        inputs = [tuple(s.task.example_input)]
    diffs, scale = [], 0.0
    with torch.no_grad():
        for args in inputs:
            ref = tensor_outputs(sim(*args))[0].detach().numpy()
            got = np.asarray(loaded.run(*[a.numpy() for a in args]))
            diffs.append(float(np.max(np.abs(got - ref))))
            scale = max(scale, float(np.max(np.abs(ref))))
    tol = art.parity or {}
    bound = float(tol.get("atol", 1e-4)) + float(tol.get("rtol", 1e-3)) * scale
    if max(diffs) > bound:  # a plan that compiles but computes something else must not ship silently
        raise MpsearchError(f"compiled artifact disagrees with the simulation on calibration inputs: max abs diff "
                            f"{max(diffs):.3g} > tolerance {bound:.3g}", hint="rerun with --debug and report it")
    return {"artifact": str(out_dir), "max_abs_diff": max(diffs), "output_scale": scale, "tolerance": bound,
            "samples": len(diffs), "target": s.config.compile_target, "manifest": manifest}


def verify_frontier(s: Session, frontier: dict[str, Any], k: int, *, progress: Progress | None = None) -> dict[str, Any]:
    """Compile ``k`` frontier points spread from cheap to expensive, time them here, and put each
    measurement (accuracy, artifact latency, packed weight bytes) next to its prediction."""
    import tempfile
    from types import SimpleNamespace

    from backends.artifact import load_artifact
    from backends.tvm import compile_plan
    from mpsearch import search

    pts = sorted(frontier["frontier"], key=lambda p: p["totals"][frontier["metric"]])
    points = [SimpleNamespace(plan=Plan.from_dict(p["plan"]), objective=p["omega"], totals=p["totals"]) for p in pts]
    x = [t.detach().cpu().numpy() for t in s.task.example_input]
    done = [0]

    def measure(plan: Plan) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(dir=s.run.path, prefix=".verify-") as d:
            art = compile_plan(s.task.model, s.graph, plan, s.act_amax, s.task.example_input, target=s.config.compile_target,
                               out_dir=Path(d) / "artifact", progress=None)
            loaded = load_artifact(Path(d) / "artifact")
            latency = loaded.time(*x)
        done[0] += 1
        if progress:
            progress("verify frontier points (compile + time)", done[0], min(k, len(points)))
        wbytes = sum(int(v.get("weight_bytes", 0)) for v in art.extra.get("layers", {}).values())
        return {"latency_s": latency, "weight_bytes": wbytes, "max_abs_diff": (art.parity or {}).get("max_abs_diff")}

    ver = search.verify_points(points, s.evaluate_plan, k, select="spread", measure=measure)
    rows = [{"plan": v.plan.to_dict(), "predicted": {"omega": v.predicted_objective, **v.predicted},
             "measured": {"score": v.measured_accuracy, **v.measured}} for v in ver]
    lat_p = [r["predicted"].get("latency_s", float("nan")) for r in rows]
    lat_m = [r["measured"]["latency_s"] for r in rows]
    wb_err = [abs(r["measured"]["weight_bytes"] / r["predicted"]["weight_bytes"] - 1) for r in rows
              if r["predicted"].get("weight_bytes") and r["measured"]["weight_bytes"]]
    if len(rows) >= 2:
        from scipy.stats import spearmanr

        lat_rho = float(spearmanr(lat_p, lat_m)[0])
    else:
        lat_rho = float("nan")
    return {"points": rows, "summary": {"points": len(rows), "latency_spearman": lat_rho,
                                        "omega_vs_score_spearman": search.rank_agreement(ver),
                                        "max_weight_bytes_error": max(wb_err) if wb_err else float("nan"),
                                        "target": s.config.compile_target, "cost_target": s.config.target}}


def optimize(config: OptimizeConfig, *, resume: bool = True, progress: Progress | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """``mpsearch optimize``: every stage, checkpointed; returns the summary also written to summary.json."""
    from mpsearch.report import write_report

    t0 = time.perf_counter()
    s = open_session(config, resume=resume, progress=progress)
    log(f"task {s.task.name}: {len(s.graph)} quantizable layers, {s.graph.total_params:,} params, "
        f"{s.graph.total_macs:,} MACs; {len(s.candidates)} candidates")
    run_sensitivity(s, resume=resume, progress=progress)
    run_costs(s, resume=resume, progress=progress)
    frontier, _ = s.run.stage(
        "frontier.json", {"sens": fingerprint(s.sens.to_dict()), "costs": fingerprint(s.costs.to_dict()),
                          "cfg": [config.frontier_metric, config.frontier_points, config.budgets, _random_key(config), config.seed]},
        lambda: search_frontier(s, progress=progress), dump=lambda v: v, load=lambda v: v, resume=resume,
    )
    log(f"frontier: {len(frontier['frontier'])} points (ILP sweep {frontier['solve_seconds']:.2f}s); "
        f"float {frontier['metric_name']} {frontier['float_score']:.4f}")
    if config.optuna_trials:
        frontier["optuna"] = run_optuna(s, frontier, progress=progress)
        s.run.write_json("optuna.json", frontier["optuna"])
    plan, info = choose_plan(s, frontier)
    plan.save(s.run.file("plan.json"))
    log(f"chosen plan ({info['how']}): {frontier['metric_name']} {info['score']:.4f}, "
        f"{config.frontier_metric} {info['totals'].get(config.frontier_metric, float('nan')):.4g}")
    summary: dict[str, Any] = {"task": s.task.name, "run_dir": str(s.run.path), "plan": str(s.run.file("plan.json")),
                               "chosen": info, "float_score": frontier["float_score"], "metric": frontier["metric"]}
    if config.compile:
        key = {"plan": plan_key(plan), "target": config.compile_target}
        parity, reused = s.run.stage("parity.json", key, lambda: compile_and_verify(s, plan, s.run.file("artifact"), progress=progress),
                                     dump=lambda v: v, load=lambda v: v, resume=resume and s.run.file("artifact/manifest.json").is_file())
        summary["parity"] = parity
        # a parity.json reused from an older run may predate the recorded bound
        bound = f"tolerance {parity['tolerance']:.3g}, " if "tolerance" in parity else ""
        if parity.get("deferred"):
            log(f"compiled for {config.compile_target}: artifact {parity['artifact']}; parity not checked: {parity['deferred']}")
        else:
            log(f"compiled for {config.compile_target}: artifact {parity['artifact']}; max |artifact - simulation| = "
                f"{parity['max_abs_diff']:.3g} over {parity['samples']} inputs ({bound}output scale {parity['output_scale']:.3g})")
    if config.compile and config.verify_points and config.compile_target == "llvm":
        key = {"frontier": fingerprint(frontier["frontier"]), "k": config.verify_points, "target": config.compile_target}
        ver, _ = s.run.stage("verify.json", key, lambda: verify_frontier(s, frontier, config.verify_points, progress=progress),
                             dump=lambda v: v, load=lambda v: v, resume=resume)
        summary["verified"] = ver["summary"]
        log(f"verified {len(ver['points'])} frontier points compiled and timed: latency rank agreement (Spearman) "
            f"{ver['summary']['latency_spearman']:.2f}, weight bytes within {ver['summary']['max_weight_bytes_error']:.1%}")
    paths = write_report(s.run.path)
    summary["report"] = {k: str(v) for k, v in paths.items()}
    summary["seconds"] = time.perf_counter() - t0
    s.run.write_json("summary.json", summary)
    log(f"frontier plot {paths['frontier_png']}; report {paths['html']}")
    return summary


def run_optuna(s: Session, frontier: dict[str, Any], *, progress: Progress | None = None) -> dict[str, Any]:
    """Refine the ILP frontier with a multi-objective Optuna study stored in the run dir (resumable)."""
    from mpsearch import search

    storage = s.config.storage or f"sqlite:///{s.run.file('optuna.db').resolve()}"
    warm = [Plan.from_dict(p["plan"]) for p in frontier["frontier"]]
    with _storage_errors(storage):
        res = search.optuna_refine(s.evaluate_plan, s.costs, _cands_per_layer(s), metric=s.config.frontier_metric,
                                   warm_start=warm, n_trials=s.config.optuna_trials, storage=storage,
                                   study_name=study_name(s), seed=s.config.seed, budgets=s.config.budgets,
                                   task=s.task.name)
    return optuna_dict(res, s.sens)


@contextlib.contextmanager
def _storage_errors(storage: str) -> Iterator[None]:
    """A database that is down, a bad URL or a missing driver: one line naming the storage, not a traceback."""
    try:
        yield
    except MpsearchError:
        raise
    except Exception as e:
        mod = type(e).__module__
        if mod.startswith(("sqlalchemy", "psycopg", "optuna")) or isinstance(e, (ImportError, ModuleNotFoundError)):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MpsearchError(f"cannot use Optuna storage {_redact(storage)!r}: {first}",
                                hint="check the URL, that the database is up, and that its driver is installed "
                                     "(pip install 'mpsearch[postgres]' for PostgreSQL)") from None
        raise


def _init_storage(url: str, attempts: int = 6) -> None:
    """Create the Optuna schema, tolerating workers that start at the same moment on an empty database.

    Optuna's RDB storage creates its tables on first use; two processes doing that together make one of
    them fail on a duplicate catalogue entry. The loser just retries, by then the tables exist.
    """
    import optuna
    import sqlalchemy.exc

    for i in range(attempts):
        try:
            optuna.storages.RDBStorage(url)
            return
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.InternalError):
            if i == attempts - 1:
                raise
            time.sleep(0.2 * (i + 1))


def study_name(s: Session) -> str:
    """Stable per (task, graph, candidates): every worker on the same run config joins the same study."""
    return f"mpsearch-{s.task.name}-{fingerprint([s.graph.fingerprint(), [c.key for c in s.candidates]])[:12]}"


def optuna_dict(res: Any, sens: SensitivityTable | None) -> dict[str, Any]:
    """JSON form of an OptunaResult: Pareto points (for plots) and every trial."""
    def pt(p: Any) -> dict[str, Any]:
        omega = sens.plan_value(p.plan) if sens is not None else None
        return _point_dict(p.plan, omega, p.totals, score=p.accuracy, trial=p.trial, warm_start=p.warm_start,
                           feasible=p.feasible, worker=p.plan.metadata.get("worker"))

    return {"study": res.study_name, "storage": _redact(res.storage), "new_trials": res.new_trials,
            "points": [pt(p) for p in res.pareto], "trials": [pt(p) for p in res.trials]}


def _redact(url: str | None) -> str | None:
    """Drop a password from a database URL before it is written into reports."""
    if not url or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    return f"{scheme}://{cred.split(':')[0]}:***@{host}" if ":" in cred else url


def load_tables(run: RunDir) -> tuple[LayerGraph, SensitivityTable, CostTable]:
    """The graph, sensitivity and cost tables a finished (or sensitivity+profile'd) run saved."""
    for name in ("graph.json", "sensitivity.json", "costs.json"):
        if not run.file(name).is_file():
            raise MpsearchError(f"run directory {str(run.path)!r} has no {name}",
                                hint="run 'mpsearch optimize' (or 'sensitivity' and 'profile') on it first")
    try:
        graph = LayerGraph.from_dict(run.read_json("graph.json"))
        sens = SensitivityTable.from_dict(run.read_json("sensitivity.json")["value"])
        costs = CostTable.from_dict(run.read_json("costs.json")["value"])
    except (KeyError, TypeError) as e:
        raise MpsearchError(f"run directory {str(run.path)!r} has a malformed table ({e}); rerun the stage with --fresh") from None
    return graph, sens, costs


def run_worker(run_dir: str | Path, *, storage: str, n_trials: int, worker: str,
               progress: Progress | None = None) -> dict[str, Any]:
    """``mpsearch worker``: join the run's Optuna study in a shared RDB and add trials until it has ``n_trials``.

    Any number of processes on any machines may run this against one database (Optuna's own distributed
    mode); each needs a copy of the run directory (task config, sensitivity and cost tables).
    """
    from mpsearch import search

    run = RunDir(run_dir, create=False)
    cfg = OptimizeConfig.from_dict(run.read_json("config.json"))
    graph, sens, costs = load_tables(run)
    s = open_session(cfg, resume=True)
    if s.graph.fingerprint() != graph.fingerprint():
        raise MpsearchError(f"the task no longer matches run {str(run.path)!r} (its layer graph changed); rerun optimize")
    s.sens, s.costs, s.persist_evals = sens, costs, False
    t0 = time.perf_counter()
    with _storage_errors(storage):
        _init_storage(storage)
        res = search.optuna_refine(s.evaluate_plan, s.costs, _cands_per_layer(s), metric=cfg.frontier_metric,
                                   n_trials=n_trials, storage=storage, study_name=study_name(s), seed=cfg.seed,
                                   budgets=cfg.budgets, task=s.task.name, worker=worker)
    mine = [p.trial for p in res.trials if p.plan.metadata.get("worker") == worker]
    out = optuna_dict(res, sens)
    out.update({"worker": worker, "seconds": time.perf_counter() - t0, "trials_total": len(res.trials), "my_trials": mine})
    return out
