"""``mpsearch`` command line: optimize, sensitivity, profile, search, compile, report, run, formats, targets.

Every user error is one line on stderr and exit code 2 (no traceback unless ``--debug``); ``--json``
prints a machine-readable summary on stdout instead of the human log.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import typer

from mpsearch.errors import MpsearchError

# torch.export inside TVM's frontend warns about a deprecated torch pytree API on every compile; it is
# not actionable for users and drowns the log.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mixed-precision search and TVM compilation for neural networks.")
_STATE = {"debug": False, "json": False}


def _err(*parts: Any) -> None:
    print(*parts, file=sys.stderr)


def _log(msg: str) -> None:
    if not _STATE["json"]:
        print(msg)


def _emit(data: Any) -> None:
    if _STATE["json"]:
        print(json.dumps(data, indent=2, default=str))


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar per stage; silent in --json mode or when stderr is not a terminal."""
    if _STATE["json"] or not sys.stderr.isatty():
        yield lambda stage, done=None, total=None: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=False) as bar:
        def update(stage: str, done: int | None = None, total: int | None = None) -> None:
            if done is None:  # a one-off message (cost model, compiler): log it above the bars
                bar.console.log(stage)
                return
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
          json_out: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the log.")) -> None:
    _STATE["debug"] = debug
    _STATE["json"] = json_out


def _config(task: str, run_dir: Optional[Path], *, config_file: Optional[Path] = None,
            sens: Optional[list[str]] = None, **kw: Any):
    from mpsearch.pipeline import OptimizeConfig

    name = Path(task).stem if (task.endswith(".py") or ":" in task or "/" in task) else task
    base: dict[str, Any] = {}
    if config_file is not None:
        try:
            base = json.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise MpsearchError(f"config file {str(config_file)!r} not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MpsearchError(f"config file {str(config_file)!r} is not valid JSON ({e})") from None
        if not isinstance(base, dict):
            raise MpsearchError(f"config file {str(config_file)!r} must hold a JSON object")
    base["task"] = task
    if run_dir is not None or "run_dir" not in base:
        base["run_dir"] = str(run_dir or Path("runs") / name.split(":")[0])
    cfg = OptimizeConfig.from_dict(base)
    for k, v in kw.items():
        if v is not None:
            setattr(cfg, k, v)
    if sens:
        cfg.sensitivity = {**cfg.sensitivity, **_key_values(sens, "--sens")}
    return cfg.validate()


def _key_values(items: list[str], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is read as JSON when it parses (numbers, true/false, null), else a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MpsearchError(f"{option} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


CANDS_HELP = "Candidate formats, comma separated: weight or weight/act spellings, e.g. 'int8,int4,e4m3/e4m3'."


def _split(text: Optional[str]) -> Optional[list[str]]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@app.command()
def optimize(
    task: str = typer.Argument(..., help="Built-in task (digits-cnn, fashion-cnn, minilm), file.py:factory, an .onnx file or a HF model directory."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", "-o", help="Run directory (default runs/<task>)."),
    candidates: Optional[str] = typer.Option(None, "--candidates", "-c", help=CANDS_HELP),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Cost-model target (see 'mpsearch targets')."),
    cost_mode: Optional[str] = typer.Option(None, "--cost-mode", help="analytical or measured."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Frontier cost metric: weight_bytes, latency_s, bops, energy_j, peak_act_bytes."),
    points: Optional[int] = typer.Option(None, "--points", help="Frontier points to sweep."),
    budget: Optional[List[str]] = typer.Option(None, "--budget", "-b", help="Budget(s) for the chosen plan, e.g. 'weight_bytes=0.3x:int8' or 'latency=2ms'."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Accuracy drop allowed when choosing from the frontier."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Optuna refinement trials (0 = off)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL (default: sqlite file in the run dir)."),
    random_evals: Optional[int] = typer.Option(None, "--random-evals", help="Random-search baseline evaluations (default: as many as the frontier; 0 = off)."),
    no_compile: bool = typer.Option(False, "--no-compile", help="Skip the TVM compile."),
    compile_target: Optional[str] = typer.Option(None, "--compile-target", help="TVM target: llvm or cuda."),
    verify: Optional[int] = typer.Option(None, "--verify", help="Frontier points to compile and time for predicted-vs-measured (default 3, 0 = off)."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration .npz for an ONNX model."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON file of settings (the keys of a run's config.json); options given here override it."),
    sens: Optional[List[str]] = typer.Option(None, "--sens", help="Sensitivity setting KEY=VALUE, e.g. 'method=fisher', 'tol=0.2', 'time_budget_s=120'."),
    resume: bool = typer.Option(True, "--resume/--fresh", help="Reuse finished stages in the run dir (default) or recompute all."),
) -> None:
    """Run the whole pipeline: sensitivity, costs, ILP frontier, baselines, plan, TVM artifact, report.

    Example: mpsearch optimize digits-cnn --budget weight_bytes=0.25x:int8
    """
    cfg = _config(task, run_dir, candidates=_split(candidates), target=target, cost_mode=cost_mode, frontier_metric=metric,
                  frontier_points=points, budgets=list(budget) if budget else None, max_accuracy_drop=max_drop,
                  optuna_trials=trials, storage=storage, random_evals=random_evals, compile_target=compile_target, seed=seed,
                  verify_points=verify, config_file=config, sens=sens)
    if no_compile:
        cfg.compile = False
    if calib is not None:
        cfg.task_args = {"calib": str(calib)}
    from mpsearch.pipeline import optimize as run_optimize

    with _progress() as progress:
        summary = run_optimize(cfg, resume=resume, progress=progress, log=_log)
    _emit(summary)


@app.command()
def sensitivity(
    task: str = typer.Argument(..., help="Task spec (as for optimize)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", "-o"),
    candidates: Optional[str] = typer.Option(None, "--candidates", "-c", help=CANDS_HELP),
    calib: Optional[Path] = typer.Option(None, "--calib"),
    resume: bool = typer.Option(True, "--resume/--fresh"),
) -> None:
    """Measure per-layer sensitivity (Hessian trace ± CI, Ω per candidate) into RUN/sensitivity.json.

    Example: mpsearch sensitivity digits-cnn -o runs/digits
    """
    from mpsearch.pipeline import open_session, run_sensitivity

    cfg = _config(task, run_dir, candidates=_split(candidates))
    if calib is not None:
        cfg.task_args = {"calib": str(calib)}
    with _progress() as progress:
        s = open_session(cfg, resume=resume)
        table = run_sensitivity(s, resume=resume, progress=progress)
    rows = {n: {k: v for k, v in table.layer_stats.get(n, {}).items() if k in ("trace", "trace_ci95", "trace_samples", "eigenvalue")}
            for n in s.graph.names}
    for n, r in rows.items():
        _log(f"{n:32s} trace {r.get('trace', float('nan')):.4g} ± {r.get('trace_ci95', float('nan')):.2g} (n={r.get('trace_samples')})")
    _emit({"run_dir": str(s.run.path), "layers": rows})


@app.command()
def profile(
    task: str = typer.Argument(..., help="Task spec (as for optimize)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", "-o"),
    target: Optional[str] = typer.Option(None, "--target", "-t"),
    mode: str = typer.Option("measured", "--mode", help="measured (compile and time each layer) or analytical."),
    candidates: Optional[str] = typer.Option(None, "--candidates", "-c", help=CANDS_HELP),
    calib: Optional[Path] = typer.Option(None, "--calib"),
) -> None:
    """Build the per-layer cost table (measured latencies cached by target, shape and format).

    Example: mpsearch profile digits-cnn --mode measured -o runs/digits
    """
    from mpsearch.pipeline import open_session, run_costs

    cfg = _config(task, run_dir, candidates=_split(candidates), target=target, cost_mode=mode)
    if calib is not None:
        cfg.task_args = {"calib": str(calib)}
    with _progress() as progress:
        s = open_session(cfg)
        table = run_costs(s, progress=progress)
    for n, per in table.costs.items():
        _log(f"{n:32s} " + "  ".join(f"{k}:{v['latency_s'] * 1e6:.1f}us" for k, v in per.items()))
    _emit({"run_dir": str(s.run.path), "target": table.target, "source": table.source, "costs": table.costs})


@app.command()
def search(
    run_dir: Path = typer.Argument(..., help="An existing run directory (from optimize)."),
    budget: List[str] = typer.Option(..., "--budget", "-b", help="Budget(s), e.g. 'weight_bytes=0.3x:int8/fp32', 'latency=1ms'."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the plan (default RUN/plan-search.json)."),
) -> None:
    """Re-solve the ILP from the run's cached sensitivity and costs for new budgets (seconds, no model).

    Example: mpsearch search runs/digits-cnn --budget weight_bytes=0.2x:int8
    """
    from mpsearch.graph import LayerGraph
    from mpsearch.rundir import RunDir
    from mpsearch.search import parse_budget, solve_ilp
    from mpsearch.tables import CostTable, SensitivityTable

    run = RunDir(run_dir, create=False)
    sens = SensitivityTable.from_dict(run.read_json("sensitivity.json")["value"])
    costs = CostTable.from_dict(run.read_json("costs.json")["value"])
    graph = LayerGraph.from_dict(run.read_json("graph.json"))
    t0 = time.perf_counter()
    res = solve_ilp(sens, costs, [parse_budget(b) for b in budget], graph=graph)
    seconds = time.perf_counter() - t0
    res.plan.metadata.update({"budgets": list(budget), "omega": res.objective, "graph": graph.fingerprint()})
    path = res.plan.save(out or run.file("plan-search.json"))
    _log(f"solved in {seconds:.2f}s ({res.status}): Ω={res.objective:.4g}; " +
         ", ".join(f"{k}={v:.4g}" for k, v in res.totals.items()) + f"; plan {path}")
    counts: dict[str, int] = {}
    for c in res.plan.layers.values():
        counts[c.key] = counts.get(c.key, 0) + 1
    _log("formats: " + ", ".join(f"{k}×{v}" for k, v in sorted(counts.items())))
    _emit({"plan": str(path), "omega": res.objective, "totals": res.totals, "status": res.status, "seconds": seconds})


@app.command(name="compile")
def compile_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory (its config names the task)."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="Plan JSON (default RUN/plan.json)."),
    target: Optional[str] = typer.Option(None, "--target", help="llvm or cuda."),
    out: Optional[Path] = typer.Option(None, "--out", help="Artifact directory (default RUN/artifact-<plan>)."),
) -> None:
    """Compile a plan with TVM into a runtime-only artifact and check it against the simulation.

    Example: mpsearch compile runs/digits-cnn --plan runs/digits-cnn/plan-search.json
    """
    from mpsearch.pipeline import OptimizeConfig, compile_and_verify, open_session
    from mpsearch.plan import Plan
    from mpsearch.rundir import RunDir

    run = RunDir(run_dir, create=False)
    cfg = OptimizeConfig.from_dict(run.read_json("config.json"))
    if target:
        cfg.compile_target = target
    s = open_session(cfg)
    plan_path = plan or run.file("plan.json")
    p = Plan.load(plan_path, layer_names=s.graph.names)
    dest = out or run.file(f"artifact-{Path(plan_path).stem}")
    with _progress() as progress:
        parity = compile_and_verify(s, p, Path(dest), progress=progress)
    _log(f"artifact {parity['artifact']}: max |artifact - simulation| = {parity['max_abs_diff']:.3g} over {parity['samples']} inputs")
    _emit(parity)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory.")) -> None:
    """Regenerate every plot and report.html from a run directory without recomputing anything.

    Example: mpsearch report runs/digits-cnn
    """
    from mpsearch.report import write_report
    from mpsearch.rundir import RunDir

    RunDir(run_dir, create=False)
    paths = write_report(run_dir)
    for k, v in paths.items():
        _log(f"{k}: {v}")
    _emit({k: str(v) for k, v in paths.items()})


@app.command()
def run(
    artifact: Path = typer.Argument(..., help="Artifact directory (from optimize/compile)."),
    input_file: Path = typer.Argument(..., metavar="INPUT", help="Input tensor as .npy."),
    out: Optional[Path] = typer.Option(None, "--out", help="Save the output as .npy."),
) -> None:
    """Execute an artifact with only the TVM runtime (checksums verified first).

    Example: mpsearch run runs/digits-cnn/artifact x.npy
    """
    import numpy as np

    from backends.artifact import run_artifact
    from mpsearch.atomic import atomic_write_bytes

    if not input_file.is_file():
        raise MpsearchError(f"input file {str(input_file)!r} not found")
    y = run_artifact(artifact, input_file)
    if out:
        import io

        buf = io.BytesIO()
        np.save(buf, y)
        atomic_write_bytes(out, buf.getvalue())
    _log(f"output shape {tuple(y.shape)} dtype {y.dtype}; argmax {np.asarray(y).reshape(y.shape[0], -1).argmax(-1).tolist()}")
    _emit({"shape": list(y.shape), "output": np.asarray(y).tolist()})


@app.command()
def worker(
    run_dir: Path = typer.Argument(..., help="A run directory from 'mpsearch optimize' (copy it to each worker machine)."),
    storage: str = typer.Option(..., "--storage", help="Shared Optuna RDB URL, e.g. postgresql+psycopg2://user@host:5432/db."),
    trials: int = typer.Option(..., "--trials", help="Stop when the study has this many finished trials in total."),
    name: Optional[str] = typer.Option(None, "--name", help="Worker name recorded on its trials (default host:pid)."),
) -> None:
    """Join the run's Optuna study in a shared database and add trials (Optuna's distributed mode).

    Example: mpsearch worker runs/digits-cnn --storage postgresql+psycopg2://opt@db/opt --trials 200
    """
    import socket

    from mpsearch.pipeline import run_worker

    if trials < 1:
        raise MpsearchError(f"--trials must be >= 1, got {trials}")
    who = name or f"{socket.gethostname()}:{os.getpid()}"
    with _progress() as progress:
        out = run_worker(run_dir, storage=storage, n_trials=trials, worker=who, progress=progress)
    _log(f"worker {who}: ran {len(out['my_trials'])} trials in {out['seconds']:.1f}s; the study has {out['trials_total']} "
         f"finished trials, {len(out['points'])} on its Pareto front")
    _emit({k: out[k] for k in ("worker", "my_trials", "trials_total", "seconds", "study", "storage")})


@app.command()
def formats() -> None:
    """List the named numeric formats (parametric families accept more, e.g. int4g64, e3m4)."""
    from mpsearch.formats import list_formats, parse_format

    rows = []
    for s in list_formats():
        f = parse_format(s)
        rows.append({"spelling": f.spelling, "family": f.family, "element_bits": f.element_bits,
                     "effective_bits_4096x4096": round(f.effective_bits((4096, 4096)), 4)})
        _log(f"{f.spelling:12s} {f.family:6s} {f.element_bits} bits/element, {rows[-1]['effective_bits_4096x4096']} effective (4096x4096)")
    _emit(rows)


@app.command()
def targets() -> None:
    """List the hardware targets of the cost model."""
    from backends.targets import list_targets, load_target

    rows = []
    for name in list_targets():
        t = load_target(name)
        desc = getattr(t, "description", "")
        rows.append({"name": name, "description": desc})
        _log(f"{name:20s} {desc}")
    _emit(rows)


GLOBAL_FLAGS = ("--json", "--debug")


def _global_flags_first(args: list[str]) -> list[str]:
    """``--json`` / ``--debug`` are options of the program, accepted anywhere before ``--`` (``mpsearch search
    RUN --json`` as well as ``mpsearch --json search RUN``): no subcommand has options of those names."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: turns MpsearchError into one line + exit 2, never a traceback (unless --debug)."""
    args = _global_flags_first(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        app(args=args, prog_name="mpsearch", standalone_mode=False)
        return 0
    except MpsearchError as e:
        if debug:
            raise
        _err(f"error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        _err("interrupted; finished stages are saved, rerun the same command to resume")
        return 130
    except (typer.Exit, SystemExit) as e:  # --help and friends
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        return int(code or 0)
    except Exception as e:  # click usage errors and anything unexpected
        # typer may ship its own copy of click, so usage errors are recognised by shape, not by class
        if callable(getattr(e, "format_message", None)) and isinstance(getattr(e, "exit_code", None), int):
            _err(f"error: {e.format_message()}")
            return 2
        if type(e).__name__ == "Abort":
            return 130
        if debug:
            raise
        _err(f"internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback; please report it)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
