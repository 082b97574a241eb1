"""Several `mpsearch worker` processes on one Optuna study in a real PostgreSQL server (issue 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.helpers import REPO, mpsearch
from tests.pgcluster import PostgresUnavailable, free_port, postgres_cluster

N_WORKERS = 4
N_TRIALS = 24


@pytest.fixture(scope="module")
def postgres_url():
    """A real PostgreSQL server on a loopback port, started here and stopped at the end."""
    try:
        with postgres_cluster() as urls:
            yield urls["optuna"]
    except PostgresUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def search_run(tmp_path_factory) -> Path:
    """A finished run (sensitivity, costs, frontier) for workers to join; no compile needed here."""
    run = tmp_path_factory.mktemp("workers") / "digits"
    r = mpsearch("optimize", "digits-cnn", "--run-dir", run, "--points", "3", "--no-compile",
                 "--candidates", "fp32,int8,int8/int8,int4,int2,e4m3,e2m1")
    assert r.code == 0, r.err + r.out
    return run


def test_four_workers_share_one_study(search_run, postgres_url):
    import optuna

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "mpsearch.cli", "--json", "worker", str(search_run), "--storage", postgres_url,
                          "--trials", str(N_TRIALS), "--name", f"w{i}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        for i in range(N_WORKERS)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    study_name = outs[0]["study"]
    assert all(o["study"] == study_name for o in outs)

    study = optuna.load_study(study_name=study_name, storage=postgres_url)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    numbers = [t.number for t in done]
    # The cap is checked after each trial, so concurrent workers may overshoot by at most one trial each.
    assert N_TRIALS <= len(done) <= N_TRIALS + N_WORKERS - 1
    assert len(set(numbers)) == len(numbers)
    # No trial lost or duplicated: the study is exactly the disjoint union of what each worker reports.
    per_worker = [set(o["my_trials"]) for o in outs]
    assert sum(len(s) for s in per_worker) == len(done)
    assert set().union(*per_worker) == set(numbers)
    by_attr = {t.number: t.user_attrs.get("worker") for t in done}
    for i, mine in enumerate(per_worker):
        assert all(by_attr[n] == f"w{i}" for n in mine)
    assert sum(1 for s in per_worker if s) >= 2, "the work should be spread over several workers"
    assert all(len(t.params) > 0 and 0.0 <= t.values[0] <= 1.0 for t in done)


def test_worker_with_unreachable_database_fails_cleanly(search_run):
    r = mpsearch("worker", search_run, "--storage", f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/none",
                 "--trials", "2")
    assert r.code != 0
    assert "cannot use Optuna storage" in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) <= 2
