"""Shared fixture: one real digits-CNN optimize run for the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.helpers import mpsearch

# The options of the shared run; the kill/resume test reruns exactly these and compares the results.
DIGITS_ARGS = ("--points", "6", "--random-evals", "4", "--candidates", "fp32,int8,int8/int8,int4,int2,e4m3,e2m1")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """One real `mpsearch optimize digits-cnn` run shared by the CLI tests."""
    run = tmp_path_factory.mktemp("cli") / "digits"
    r = mpsearch("optimize", "digits-cnn", "--run-dir", run, *DIGITS_ARGS)
    assert r.code == 0, r.err + r.out
    return run
