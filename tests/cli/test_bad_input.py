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


def test_missing_onnx_file(tmp_path):
    _assert_clean_error(mpsearch("optimize", tmp_path / "nope.onnx", "-o", tmp_path / "r"), "does not exist")


def test_corrupt_onnx_file(tmp_path):
    import numpy as np

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage, not a protobuf")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.zeros((4, 3), np.float32))
    _assert_clean_error(mpsearch("optimize", bad, "--calib", calib, "-o", tmp_path / "r"), "not a valid ONNX model")
    assert not (tmp_path / "r" / "sensitivity.json").exists()


def test_nan_loss(tmp_path):
    spec = _factory(tmp_path, TASK_HEADER + """
    def make():
        m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        return Task("nanloss", m, (torch.randn(1, 3),), [(torch.randn(8, 3), torch.zeros(8, dtype=torch.long))],
                    lambda m: 1.0, lambda m, b: m(b[0]).sum() * float("nan"))
    """)
    _assert_clean_error(mpsearch("optimize", spec, "-o", tmp_path / "r", "--no-compile", "-c", "fp32,int8,int4"), "NaN")
    assert not (tmp_path / "r" / "sensitivity.json").exists()


def test_contradictory_budgets(digits_run):
    _assert_clean_error(mpsearch("search", digits_run, "-b", "weight_bytes=1e9", "-b", "weight_bytes=10"), "two budgets")


def test_infeasible_combination_names_the_binding_budget(digits_run):
    r = mpsearch("search", digits_run, "-b", "weight_bytes=0.3x:int8", "-b", "latency=0.1x:int8")
    _assert_clean_error(r, "infeasible", "min achievable", "binds")


def test_unsupported_op_for_the_backend(tmp_path):
    spec = _factory(tmp_path, TASK_HEADER + """
    class FFTHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return torch.fft.rfft(self.fc(x)).abs()

    def make():
        return Task("fft", FFTHead(), (torch.randn(1, 8),), [(torch.randn(4, 8), torch.zeros(4, dtype=torch.long))],
                    lambda m: 1.0, lambda m, b: m(b[0]).pow(2).mean())
    """)
    r = mpsearch("optimize", spec, "-o", tmp_path / "r", "-c", "fp32,int8", "--points", "2")
    _assert_clean_error(r, "cannot import the model", "fft")
    assert not (tmp_path / "r" / "artifact").exists()


def _artifact_copy(digits_run, tmp_path, edit=None):
    import json
    import shutil

    import numpy as np

    art = tmp_path / "art"
    shutil.copytree(digits_run / "artifact", art)
    if edit is not None:
        m = json.loads((art / "manifest.json").read_text())
        edit(m)
        (art / "manifest.json").write_text(json.dumps(m))
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 1, 8, 8), np.float32))
    return art, x


def test_artifact_from_another_format_version(digits_run, tmp_path):
    art, x = _artifact_copy(digits_run, tmp_path, lambda m: m.update(mpsearch_artifact=99))
    _assert_clean_error(mpsearch("run", art, x), "format version 99")


def test_artifact_from_another_tvm(digits_run, tmp_path):
    art, x = _artifact_copy(digits_run, tmp_path, lambda m: m["versions"].update(tvm="0.99.0"))
    _assert_clean_error(mpsearch("run", art, x), "TVM '0.99.0'")


def test_artifact_for_another_target(digits_run, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine can run CUDA artifacts")
    art, x = _artifact_copy(digits_run, tmp_path, lambda m: m.update(target="cuda -arch=sm_90", target_kind="cuda"))
    _assert_clean_error(mpsearch("run", art, x), "CUDA")


def test_tampered_artifact(digits_run, tmp_path):
    art, x = _artifact_copy(digits_run, tmp_path)
    with open(art / "weights.safetensors", "ab") as f:
        f.write(b"\0")
    _assert_clean_error(mpsearch("run", art, x), "sha256")


def test_unknown_option_is_a_usage_error(tmp_path):
    _assert_clean_error(mpsearch("formats", "--no-such-option"), "No such option", "--no-such-option")


@pytest.mark.parametrize("args, needle", [
    (["--points", "1"], "frontier_points must be >= 2"),
    (["--metric", "furlongs"], "unknown frontier metric 'furlongs'"),
    (["--budget", "weight=banana"], "cannot read value 'banana'"),
    (["--trials", "2", "--storage", "nosuchdb://host/x"], "cannot use Optuna storage 'nosuchdb://host/x'"),
])
def test_search_settings_fail_before_any_work(tmp_path, args, needle):
    """Settings the search stages would reject are checked before the model is loaded: no stage is written."""
    run = tmp_path / "r"
    _assert_clean_error(mpsearch("optimize", "digits-cnn", "-o", run, *args), needle)
    assert not (run / "sensitivity.json").exists() and not (run / "graph.json").exists()
