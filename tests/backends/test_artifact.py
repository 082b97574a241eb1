"""Artifact integrity: the loader refuses tampered files, other versions and other targets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from backends.artifact import load_artifact, read_safetensors, run_artifact
from backends.tvm import compile_plan
from mpsearch.artifact import MANIFEST_NAME, Artifact
from mpsearch.errors import MpsearchError
from mpsearch.plan import Candidate, Plan
from mpsearch.simulate import calibrate_act_ranges


@pytest.fixture(scope="module")
def built(digits_task, digits_graph, tmp_path_factory):
    t = digits_task
    amax = calibrate_act_ranges(t.model, digits_graph.names, t.calib_batches, t.run_forward)
    plan = Plan.uniform(digits_graph.names, Candidate("int8", "int8"))
    out = tmp_path_factory.mktemp("art") / "digits"
    compile_plan(t.model, digits_graph, plan, amax, t.example_input, target="llvm", out_dir=out)
    return out


@pytest.fixture
def copy(built, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(built, dst)
    return dst


def test_manifest_lists_every_file_with_sha256(built):
    man = Artifact.load(built)
    assert set(man.files) == {"model.so", "weights.safetensors", "plan.json", "reference.npz"}
    assert all(len(h) == 64 for h in man.files.values())
    assert man.target_kind == "llvm" and man.versions["mpsearch"]
    assert Plan.from_dict(json.loads((built / "plan.json").read_text())).to_dict() == man.plan
    assert set(read_safetensors(built / "weights.safetensors")) == set(man.param_names)


@pytest.mark.parametrize("victim", ["model.so", "weights.safetensors", "plan.json", "reference.npz"])
def test_tampered_file_is_refused(copy, victim):
    p = copy / victim
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(MpsearchError, match="sha256"):
        load_artifact(copy)


def test_missing_file_is_refused(copy):
    (copy / "weights.safetensors").unlink()
    with pytest.raises(MpsearchError, match="missing"):
        load_artifact(copy)


def test_other_mpsearch_version_is_refused(copy):
    m = json.loads((copy / MANIFEST_NAME).read_text())
    m["versions"]["mpsearch"] = "0.0.0-other"
    (copy / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(MpsearchError, match="built by mpsearch 0.0.0-other"):
        load_artifact(copy)


def test_other_target_is_refused(copy):
    with pytest.raises(MpsearchError, match="targets 'llvm', not 'cuda'"):
        load_artifact(copy, target="cuda")
    m = json.loads((copy / MANIFEST_NAME).read_text())
    m["extra"]["host_cpu"] = "some-other-cpu"
    (copy / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(MpsearchError, match="compiled for CPU 'some-other-cpu'"):
        load_artifact(copy)


def test_manifest_path_escape_is_refused(copy):
    m = json.loads((copy / MANIFEST_NAME).read_text())
    m["files"]["../outside"] = "0" * 64
    (copy / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(MpsearchError, match="outside the artifact"):
        load_artifact(copy)


def test_not_an_artifact(tmp_path):
    with pytest.raises(MpsearchError, match="manifest.json is missing"):
        load_artifact(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(MpsearchError, match="corrupt"):
        load_artifact(tmp_path)


def test_run_artifact_from_npy(built, digits_task, tmp_path):
    x = digits_task.example_input[0].numpy()
    np.save(tmp_path / "x.npy", x)
    out = run_artifact(built, tmp_path / "x.npy")
    assert out.shape == (1, 10)
    np.testing.assert_array_equal(out, load_artifact(built).run(x))
    with pytest.raises(MpsearchError, match="must have shape"):
        np.save(tmp_path / "bad.npy", np.zeros((2, 1, 8, 8), np.float32))
        run_artifact(built, tmp_path / "bad.npy")
