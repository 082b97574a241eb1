"""Optuna trial throughput with 1, 2 and 4 `mpsearch worker` processes on one PostgreSQL study (issue 10).

Two measurements, side by side in one run:
  * end to end: real `mpsearch worker` processes on the digits task (each trial = a real evaluation of a
    quantized model); throughput = trials / wall time of the optimisation phase (the slowest worker's
    time inside the study, so process start-up and task loading are reported apart);
  * database part: the same study shape (one categorical per layer, two objectives, TPE) with a free
    objective, so only Optuna's sampler and the RDB round trips are timed.

Usage: .venv/bin/python benchmarks/bench_workers.py [--trials 48] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.pgcluster import postgres_cluster  # noqa: E402


def _prepare_run(run: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "mpsearch.cli", "optimize", "digits-cnn", "--run-dir", str(run), "--points", "3",
                    "--no-compile", "--candidates", "fp32,int8,int8/int8,int4,int2,e4m3,e2m1"],
                   check=True, cwd=REPO, env=env, capture_output=True)


def end_to_end(run: Path, url: str, n_workers: int, n_trials: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "mpsearch.cli", "--json", "worker", str(run), "--storage", url,
                               "--trials", str(n_trials), "--name", f"w{i}"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n_workers)]
    outs = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"worker failed: {err}")
        outs.append(json.loads(out))
    wall = time.perf_counter() - t0
    search_s = max(o["seconds"] for o in outs)
    done = outs[0]["trials_total"] if n_workers == 1 else max(o["trials_total"] for o in outs)
    return {"workers": n_workers, "trials": done, "wall_s": wall, "search_s": search_s,
            "startup_s": wall - search_s, "trials_per_s": done / search_s,
            "per_worker": [len(o["my_trials"]) for o in outs]}


def _db_worker(url: str, study: str, n_trials: int, n_layers: int, seed: int) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.load_study(study_name=study, storage=url, sampler=optuna.samplers.TPESampler(seed=seed))
    cands = ["fp32", "int8", "int8/int8", "int4", "int2", "e4m3", "e2m1"]

    def objective(trial):
        xs = [cands.index(trial.suggest_categorical(f"l{i}", cands)) for i in range(n_layers)]
        return float(sum(xs)), float(-sum(xs))

    cap = optuna.study.MaxTrialsCallback(n_trials, states=(optuna.trial.TrialState.COMPLETE,))
    s.optimize(objective, n_trials=n_trials, callbacks=[cap])


def database_only(url: str, n_workers: int, n_trials: int, n_layers: int = 10) -> dict:
    import optuna

    name = f"db-{n_workers}-{time.time_ns()}"
    optuna.create_study(study_name=name, storage=url, directions=["minimize", "minimize"])
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_db_worker, args=(url, name, n_trials, n_layers, i)) for i in range(n_workers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    done = len(optuna.load_study(study_name=name, storage=url).get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    return {"workers": n_workers, "trials": done, "wall_s": wall, "trials_per_s": done / wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=48)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "digits"
        _prepare_run(run)
        dbs = tuple(f"e2e{n}" for n in counts) + ("dbonly",)
        with postgres_cluster(dbs) as urls:
            e2e = [end_to_end(run, urls[f"e2e{n}"], n, args.trials) for n in counts]
            dbo = [database_only(urls["dbonly"], n, args.trials * 4) for n in counts]
    base_e, base_d = e2e[0]["trials_per_s"], dbo[0]["trials_per_s"]
    print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()} {os.cpu_count()} cores, PostgreSQL on loopback")
    print("| workers | e2e trials | trials/s (search phase) | speed-up | efficiency | start-up s | trials per worker | db-only trials/s | db-only speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for e, d in zip(e2e, dbo):
        n = e["workers"]
        su = e["trials_per_s"] / base_e
        print(f"| {n} | {e['trials']} | {e['trials_per_s']:.2f} | {su:.2f}x | {su / n:.2f} | {e['startup_s']:.1f} | "
              f"{e['per_worker']} | {d['trials_per_s']:.1f} | {d['trials_per_s'] / base_d:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"e2e": e2e, "db_only": dbo}, indent=2))


if __name__ == "__main__":
    main()
