"""Bad input through the real CLI: one clear line on stderr, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

import textwrap

import pytest

from tests.cli.helpers import mpsearch


def _assert_clean_error(r, *needles: str) -> None:
    assert r.code == 2, (r.code, r.err)
    assert "Traceback" not in r.err
    lines = [l for l in r.err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, r.err
    for n in needles:
        assert n in lines[0], lines[0]


def test_unknown_task(tmp_path):
    _assert_clean_error(mpsearch("optimize", "no-such-task", "-o", tmp_path / "r"), "unknown task", "digits-cnn")


def test_missing_factory_file(tmp_path):
    _assert_clean_error(mpsearch("optimize", f"{tmp_path}/nope.py:make", "-o", tmp_path / "r"), "does not exist")


def _factory(tmp_path, body: str):
    f = tmp_path / "task.py"
    f.write_text(textwrap.dedent(body))
    return f"{f}:make"


def test_factory_raises(tmp_path):
    spec = _factory(tmp_path, """
        def make():
            raise RuntimeError("boom")
    """)
    _assert_clean_error(mpsearch("optimize", spec, "-o", tmp_path / "r"), "raised RuntimeError: boom")


TASK_HEADER = """
    import torch
    from torch import nn
    from mpsearch.task import Task
"""


@pytest.mark.parametrize(
    "model, calib, needle",
    [
        ("nn.Sequential(nn.ReLU())", "[(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))]", "no quantizable layer"),
        ("nn.Sequential(nn.Linear(3, 2))", "[]", "calibration set is empty"),
        ("nn.Sequential(nn.Linear(3, 2))", "[(torch.full((4, 3), float('nan')), torch.zeros(4, dtype=torch.long))]", "NaN"),
    ],
)
def test_bad_task_contents(tmp_path, model, calib, needle):
    spec = _factory(tmp_path, TASK_HEADER + f"""
    def make():
        m = {model}
        return Task("bad", m, (torch.randn(1, 3),), {calib}, lambda m: 1.0,
                    lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]))
    """)
    _assert_clean_error(mpsearch("optimize", spec, "-o", tmp_path / "r", "--no-compile"), needle)


def test_unknown_format(tmp_path):
    _assert_clean_error(mpsearch("optimize", "digits-cnn", "-o", tmp_path / "r", "-c", "int8,int99"), "unknown format")


def test_unknown_target(tmp_path):
    _assert_clean_error(mpsearch("profile", "digits-cnn", "-o", tmp_path / "r", "-t", "tpu9000", "--mode", "analytical"), "tpu9000")


def test_budget_below_minimum(digits_run):
    r = mpsearch("search", digits_run, "--budget", "weight_bytes=10")
    _assert_clean_error(r, "weight_bytes")
    assert "min achievable" in r.err.lower()


def test_malformed_plan(digits_run, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _assert_clean_error(mpsearch("compile", digits_run, "--plan", bad, "--out", tmp_path / "a"), "malformed plan")
    assert not (tmp_path / "a").exists()


def test_search_on_missing_run(tmp_path):
    _assert_clean_error(mpsearch("search", tmp_path / "nothing", "--budget", "weight_bytes=0.5x:int8"), "does not exist")


def test_run_missing_input(digits_run, tmp_path):
    _assert_clean_error(mpsearch("run", digits_run / "artifact", tmp_path / "x.npy"), "not found")
