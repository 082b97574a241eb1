"""ONNX QDQ export of plans on the digits CNN, run by ONNX Runtime and compared with apply_plan."""

from __future__ import annotations

import onnx
import pytest
import torch

from backends.onnx_export import check_against_simulation, export_qdq, read_metadata, run_onnx
from mpsearch.errors import MpsearchError
from mpsearch.plan import Candidate, Plan
from mpsearch.simulate import calibrate_act_ranges

MIXED = ["int8/int8", "int4/fp32", "uint8t/uint8t", "int2/int4", "int3/int6", "uint4/int4", "int6/uint8t", "int4/int8",
         "int8t/int8t", "fp32"]


@pytest.fixture(scope="module")
def setup(digits_task, digits_graph):
    amax = calibrate_act_ranges(digits_task.model, digits_graph.names, digits_task.calib_batches, digits_task.run_forward)
    x = torch.cat([b[0] for b in digits_task.calib_batches])
    return digits_task, digits_graph, amax, x


def _initializer_types(path) -> dict[str, int]:
    return {i.name: i.data_type for i in onnx.load(str(path)).graph.initializer}


def test_int8_plan_matches_simulation(setup, tmp_path):
    task, graph, amax, x = setup
    plan = Plan.uniform(graph.names, Candidate.parse("int8/int8"))
    path = export_qdq(task.model, graph, plan, amax, task.example_input, tmp_path / "int8.onnx")
    check = check_against_simulation(path, task.model, plan, amax, x)
    # Bit-faithful up to accumulation order: ORT's float Conv sums in another order than torch, so an
    # activation that sits on a rounding boundary can land one int8 code away (seen with ORT 1.32: 0.3%
    # of outputs, 0.15% of the output range). More than that is a real export bug.
    assert check.ok() and check.frac_close >= 0.99 and check.max_rel_diff < 5e-3 and check.argmax_agreement == 1.0
    assert check.float_mean_abs_diff > 1000 * check.mean_abs_diff  # ORT carries the quantization, not the float model
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == len(graph) and ops.count("DequantizeLinear") == 2 * len(graph)
    types = _initializer_types(path)
    assert types["stem.w_q"] == onnx.TensorProto.INT8
    w_dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "stem.w_q")
    assert [a.i for a in w_dq.attribute if a.name == "axis"] == [0]
    meta = read_metadata(path)
    assert meta["mpsearch.baked_weights"] == [] and meta["mpsearch.emulated"] == []
    assert Plan.from_dict(meta["mpsearch.plan"]).layers == plan.layers


def test_mixed_plan_with_native_int4(setup, tmp_path):
    task, graph, amax, x = setup
    plan = Plan({n: Candidate.parse(MIXED[i % len(MIXED)]) for i, n in enumerate(graph.names)})
    path = export_qdq(task.model, graph, plan, amax, task.example_input, tmp_path / "mixed.onnx")
    check = check_against_simulation(path, task.model, plan, amax, x)
    assert check.argmax_agreement >= 0.99
    assert check.mean_abs_diff < 0.05 * check.float_mean_abs_diff
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 21
    types = _initializer_types(path)
    int4_layer = graph.names[1]  # int4/fp32
    assert types[f"{int4_layer}.w_q.int4"] == onnx.TensorProto.INT4
    meta = read_metadata(path)
    assert f"{graph.names[3]}:weight:int2" in meta["mpsearch.emulated"]
    assert meta["mpsearch.lowering"][graph.names[2]]["act_storage"] == "uint8"


def test_float8_plan_matches_simulation(setup, tmp_path):
    task, graph, amax, x = setup
    plan = Plan({n: Candidate.parse(("e4m3/e4m3", "e5m2/int8", "int8/e4m3")[i % 3]) for i, n in enumerate(graph.names)})
    path = export_qdq(task.model, graph, plan, amax, task.example_input, tmp_path / "fp8.onnx")
    check = check_against_simulation(path, task.model, plan, amax, x)
    assert check.argmax_agreement >= 0.99 and check.mean_abs_diff < 0.05 * check.float_mean_abs_diff
    types = _initializer_types(path)
    assert types[f"{graph.names[0]}.w_q.float8e4m3fn"] == onnx.TensorProto.FLOAT8E4M3FN
    assert types[f"{graph.names[1]}.w_q.float8e5m2"] == onnx.TensorProto.FLOAT8E5M2


def test_group_wise_weights_are_baked_and_say_so(setup, tmp_path):
    task, graph, amax, x = setup
    plan = Plan.uniform(graph.names, Candidate.parse("int4g128/fp32"))
    path = export_qdq(task.model, graph, plan, amax, task.example_input, tmp_path / "g.onnx")
    assert read_metadata(path)["mpsearch.baked_weights"] == graph.names
    check = check_against_simulation(path, task.model, plan, amax, x)
    assert check.frac_close == 1.0  # weight-only: no activation rounding to flip
    assert "stem.w_values" in _initializer_types(path)


def test_errors(setup, tmp_path):
    task, graph, amax, x = setup
    plan = Plan.uniform(graph.names, Candidate.parse("int8/int8"))
    with pytest.raises(MpsearchError, match="no calibrated range"):
        export_qdq(task.model, graph, plan, {}, task.example_input, tmp_path / "a.onnx")
    with pytest.raises(MpsearchError, match="no ONNX QDQ lowering"):
        export_qdq(task.model, graph, Plan.uniform(graph.names, Candidate.parse("int8/e2m1")), amax, task.example_input,
                   tmp_path / "b.onnx")
    with pytest.raises(MpsearchError, match="not in the model graph"):
        export_qdq(task.model, graph, Plan({"nope": Candidate.parse("int8")}), amax, task.example_input, tmp_path / "c.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    with pytest.raises(MpsearchError, match="cannot load"):
        run_onnx(bad, x)


def test_transformer_linears_export_through_matmul(tmp_path):
    """A small BERT (random weights, real architecture): 3-D Linear inputs, two model inputs, ModelOutput."""
    from transformers import BertConfig, BertModel

    from mpsearch.graph import build_layer_graph

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=64, attn_implementation="eager")
    model = BertModel(cfg, add_pooling_layer=False).eval()
    ids = torch.randint(0, 100, (4, 12))
    mask = torch.ones_like(ids)
    mask[2:, 9:] = 0
    graph = build_layer_graph(model, (ids[:1], mask[:1]))
    assert len(graph) == 12
    amax = calibrate_act_ranges(model, graph.names, [(ids, mask)], lambda m, b: m(*b))
    weight_only = Plan({n: Candidate.parse(("int4/fp32", "int8/fp32", "e4m3/fp32")[i % 3]) for i, n in enumerate(graph.names)})
    path = export_qdq(model, graph, weight_only, amax, (ids[:1], mask[:1]), tmp_path / "bert.onnx",
                      input_names=["input_ids", "attention_mask"])
    check = check_against_simulation(path, model, weight_only, amax, (ids, mask))
    assert check.frac_close == 1.0 and check.float_mean_abs_diff > 100 * check.mean_abs_diff
    assert read_metadata(path)["mpsearch.ort_graph_optimization_level"] == "basic"
    with_acts = Plan.uniform(graph.names, Candidate.parse("int8/int8"))
    path = export_qdq(model, graph, with_acts, amax, (ids[:1], mask[:1]), tmp_path / "bert8.onnx",
                      input_names=["input_ids", "attention_mask"])
    check = check_against_simulation(path, model, with_acts, amax, (ids, mask))
    assert check.mean_abs_diff < 0.1 * check.float_mean_abs_diff
