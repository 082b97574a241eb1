"""SIGKILL a real `mpsearch optimize` at several points, resume it, and get the uninterrupted result (issue 9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cli.conftest import DIGITS_ARGS
from tests.cli.helpers import REPO, mpsearch

# Kill points, in pipeline order: a file (relative to the run dir) whose appearance means that stage is
# under way, and how long to let it run after that before the SIGKILL.
KILL_POINTS = [
    ("act_amax.json", 0.5),  # during sensitivity (activation statistics / Hutchinson probes)
    ("sensitivity.json", 0.0),  # during the cost table / frontier solve
    ("costs.json", 1.0),  # while frontier points are being evaluated for real
    ("frontier.json", 1.5),  # during the TVM compile
]


def _comparable(frontier: dict) -> dict:
    """The frontier minus wall-clock fields."""
    return {k: v for k, v in frontier.items() if k != "solve_seconds"}


def _kill_when(run: Path, marker: str, delay: float, timeout: float = 300) -> bool:
    """Start optimize, SIGKILL it ``delay`` s after ``marker`` appears; False if it finished first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen([sys.executable, "-m", "mpsearch.cli", "optimize", "digits-cnn", "--run-dir", str(run), *DIGITS_ARGS],
                         cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t_end = time.monotonic() + timeout
    try:
        while not (run / marker).exists():
            if p.poll() is not None:
                assert p.returncode == 0, p.stderr.read()
                return False
            assert time.monotonic() < t_end, f"{marker} never appeared"
            time.sleep(0.02)
        time.sleep(delay)
        if p.poll() is not None:
            assert p.returncode == 0, p.stderr.read()
            return False
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        assert p.returncode == -signal.SIGKILL
        return True
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_sigkill_then_resume_gives_the_uninterrupted_result(digits_run, tmp_path):
    run = tmp_path / "killed"
    kills = 0
    stamps: dict[str, int] = {}
    for marker, delay in KILL_POINTS:
        kills += _kill_when(run, marker, delay)
        for name in ("act_amax.json", "sensitivity.json", "costs.json"):  # finished stages: never rewritten
            p = run / name
            if p.exists():
                assert stamps.setdefault(name, p.stat().st_mtime_ns) == p.stat().st_mtime_ns, f"{name} was recomputed"
        for p in run.rglob("*.json"):  # no half-written checkpoint, whatever the moment of the kill
            json.loads(p.read_text())
    assert kills >= 3, "the run finished before most kill points; the test no longer exercises resumption"
    r = mpsearch("optimize", "digits-cnn", "--run-dir", run, *DIGITS_ARGS)
    assert r.code == 0, r.err + r.out
    for name, ns in stamps.items():
        assert (run / name).stat().st_mtime_ns == ns, f"{name} was recomputed on resume"

    ref = json.loads((digits_run / "frontier.json").read_text())["value"]
    got = json.loads((run / "frontier.json").read_text())["value"]
    assert _comparable(got) == _comparable(ref)
    assert json.loads((run / "plan.json").read_text())["layers"] == json.loads((digits_run / "plan.json").read_text())["layers"]
    assert (run / "artifact" / "manifest.json").is_file()
    assert not list(run.glob(".*staging*")), "a staging directory was left behind"
