"""ONNX input path: conversion round trip against ONNX Runtime and torch, metrics, and bad-input errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mpsearch.errors import MpsearchError
from mpsearch.graph import build_layer_graph
from mpsearch.plan import Candidate, Plan
from mpsearch.simulate import apply_plan, calibrate_act_ranges
from mpsearch.tasks.onnx_task import load_calibration, load_onnx_module, onnx_task


class Tiny(nn.Module):
    """Covers Conv, BatchNormalization, Relu, MaxPool, AveragePool, Reshape, Gemm and a constant MatMul."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(8, 16)
        self.proj = nn.Parameter(torch.randn(16, 10) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv1(x))), 2)  # 12 -> 6
        x = nn.functional.avg_pool2d(torch.relu(self.conv2(x)), 3)  # 6 -> 3 -> 1
        x = x.reshape(-1, 8)
        return torch.relu(self.fc1(x)) @ self.proj


def _export(model: nn.Module, path, example) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}})


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():  # non-trivial BN statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    d = tmp_path_factory.mktemp("onnx")
    x = torch.rand(96, 1, 12, 12)
    _export(model, d / "tiny.onnx", x[:1])
    with torch.no_grad():
        labels = model(x).argmax(1)
    np.savez(d / "labeled.npz", inputs=x.numpy(), labels=labels.numpy())
    np.savez(d / "unlabeled.npz", inputs=x.numpy())
    return model, x, d


def test_conversion_matches_torch_and_exposes_real_layers(tiny_files):
    model, x, d = tiny_files
    conv, _ = load_onnx_module(d / "tiny.onnx")
    with torch.no_grad():
        np.testing.assert_allclose(conv(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)
    kinds = {type(m).__name__ for m in conv.modules()}
    assert {"Conv2d", "Linear"} <= kinds
    graph = build_layer_graph(conv, (x[:1],))
    assert [l.kind for l in graph.layers] == ["conv2d", "conv2d", "linear", "linear"]
    assert graph.edge_source == "torch.fx" and len(graph.graph.edges) == 3


def test_labeled_task_uses_accuracy_and_cross_entropy(tiny_files):
    _, x, d = tiny_files
    task = onnx_task(d / "tiny.onnx", d / "labeled.npz").validate()
    assert task.metric_name == "top-1 accuracy"
    assert task.metadata["calib_size"] == 48 and task.metadata["eval_size"] == 48
    assert task.evaluate(task.model) == 1.0  # labels are the float model's own predictions
    batch = task.calib_batches[0]
    assert torch.equal(batch[0], x[: len(batch[0])])
    assert float(task.loss(task.model, batch).detach()) > 0.0


def test_unlabeled_task_scores_fidelity_and_quantization_lowers_it(tiny_files):
    _, _, d = tiny_files
    task = onnx_task(d / "tiny.onnx", d / "unlabeled.npz").validate()
    assert task.metric_name.startswith("output fidelity")
    assert task.evaluate(task.model) == pytest.approx(1.0, abs=1e-6)
    assert float(task.loss(task.model, task.calib_batches[0]).detach()) == pytest.approx(0.0, abs=1e-10)
    graph = build_layer_graph(task.model, task.example_input)
    amax = calibrate_act_ranges(task.model, graph.names, task.calib_batches, task.run_forward)
    sim = apply_plan(task.model, Plan.uniform(graph.names, Candidate.parse("int2/int4")), amax)
    assert task.evaluate(sim) < 0.99
    assert float(task.loss(sim, task.calib_batches[0]).detach()) > 0.0


def test_missing_and_corrupt_onnx(tmp_path, tiny_files):
    _, _, d = tiny_files
    with pytest.raises(MpsearchError, match="not found"):
        onnx_task(tmp_path / "nope.onnx", d / "labeled.npz")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf model" * 3)
    with pytest.raises(MpsearchError, match="not a valid ONNX model") as e:
        onnx_task(bad, d / "labeled.npz")
    assert "\n" not in str(e.value)


def test_unsupported_op_is_named(tmp_path):
    class Sine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.sin(self.fc(x))

    _export(Sine().eval(), tmp_path / "sin.onnx", torch.rand(1, 4))
    with pytest.raises(MpsearchError, match="'Sin'"):
        load_onnx_module(tmp_path / "sin.onnx")


def test_corrupt_and_malicious_npz(tmp_path, tiny_files):
    _, x, d = tiny_files
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(MpsearchError, match="not a readable .npz"):
        load_calibration(junk)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, inputs=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(MpsearchError, match="not a readable .npz"):
        load_calibration(pickled)  # object arrays need pickle, which is never allowed
    with pytest.raises(MpsearchError, match="not found"):
        load_calibration(tmp_path / "missing.npz")
    two = tmp_path / "two.npz"
    np.savez(two, a=x.numpy(), b=x.numpy())
    with pytest.raises(MpsearchError, match="no array 'inputs'"):
        load_calibration(two)
    wrong_labels = tmp_path / "wl.npz"
    np.savez(wrong_labels, inputs=x.numpy(), labels=np.zeros(3, dtype=np.int64))
    with pytest.raises(MpsearchError, match="integer class indices"):
        load_calibration(wrong_labels)
    with pytest.raises(MpsearchError, match="no array 'targets'"):
        load_calibration(d / "labeled.npz", labels_key="targets")


def test_asymmetric_pads_match_onnx_runtime(tmp_path):
    """Hand-built graph: Conv and MaxPool with asymmetric pads (as TF converters emit) vs ONNX Runtime."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[0, 0, 1, 1], strides=[2, 2], name="conv"),
        helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 0, 0], name="pool"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 7, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = tmp_path / "asym.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.normal(size=(2, 2, 7, 7)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    module, _ = load_onnx_module(path)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert isinstance(module.get_submodule("conv").inner, nn.Conv2d)


def test_inputs_of_the_wrong_shape(tmp_path, tiny_files):
    _, _, d = tiny_files
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, inputs=np.zeros((4, 3, 5, 5), np.float32))
    with pytest.raises(MpsearchError, match="failed on the calibration inputs"):
        onnx_task(d / "tiny.onnx", wrong)


def test_default_dynamo_export_loads(tmp_path, tiny_files):
    """torch's default exporter emits different ops (ReduceMean, MatMul-based linears, opset 18 axes inputs)."""
    model, x, _ = tiny_files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:1],), str(tmp_path / "dyn.onnx"), dynamo=True, input_names=["x"],
                          dynamic_shapes=({0: "n"},), verbose=False)
    conv, _ = load_onnx_module(tmp_path / "dyn.onnx")
    with torch.no_grad():
        np.testing.assert_allclose(conv(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)
    assert [l.kind for l in build_layer_graph(conv, (x[:1],)).layers] == ["conv2d", "conv2d", "linear", "linear"]
