"""ONNX input path: an ``.onnx`` file plus calibration data (``.npz``) becomes a Task.

The ONNX graph is converted to a torch ``nn.Module`` in which every Conv becomes a real ``nn.Conv1d`` /
``nn.Conv2d`` and every Gemm / MatMul with a constant 2-D weight a real ``nn.Linear``, so sensitivity,
search and simulation find and quantize them like any PyTorch model. The conversion is checked against
ONNX Runtime on calibration inputs before the task is returned.

Supported ops: Conv, Gemm, MatMul, Add, Sub, Mul, Div, Relu, LeakyRelu, Sigmoid, Tanh, Clip, Flatten,
Reshape, Transpose, Concat, MaxPool, AveragePool, GlobalAveragePool, ReduceMean, ReduceSum, Squeeze,
Unsqueeze, BatchNormalization, Softmax, Identity, Dropout, Constant (shapes and axes must be constant).
Both torch exporters' output loads (TorchScript ``dynamo=False`` and the default ``dynamo=True``). (``onnx2torch`` was tried first; it imports torchvision, which this
torch 2.13 CPU environment does not have, so this small converter is used instead.)

The ``.npz`` holds ``inputs`` (N, ...) and optionally ``labels`` (N,) of class indices; it is read with
``allow_pickle=False``. The samples are split deterministically: the first ``calib_fraction`` calibrate,
the rest evaluate. Without labels the metric is output fidelity (mean cosine similarity to the float
model's outputs) and the loss the MSE to them; with labels, top-1 accuracy and cross-entropy.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from mpsearch.errors import MpsearchError
from mpsearch.task import Task

_LAYER_OPS = {"Conv", "Gemm", "MatMul", "BatchNormalization"}


# -- converter --------------------------------------------------------------------------------------


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pads_to_torch(pads: list[int], nd: int) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """ONNX pads ``[b1, b2, ..., e1, e2, ...]`` -> symmetric torch padding, or explicit F.pad when asymmetric."""
    begin, end = pads[:nd], pads[nd:]
    if begin == end:
        return tuple(begin), None
    explicit: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        explicit += [b, e]
    return (0,) * nd, tuple(explicit)


class _Op(nn.Module):
    """A parameter-free ONNX op as a module, so the converted model is a plain tree of modules."""

    def __init__(self, fn: Callable[..., torch.Tensor], op_type: str) -> None:
        super().__init__()
        self.fn = fn
        self.op_type = op_type

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.fn(*xs)

    def extra_repr(self) -> str:
        return self.op_type


class _Padded(nn.Module):
    """Asymmetric ONNX padding in front of a Conv / pool."""

    def __init__(self, pad: tuple[int, ...], inner: nn.Module, value: float = 0.0) -> None:
        super().__init__()
        self.pad, self.inner, self.value = pad, inner, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(nn.functional.pad(x, self.pad, value=self.value))


class OnnxModule(nn.Module):
    """Executes a converted ONNX graph node by node; layers are attributes named after the ONNX nodes."""

    def __init__(self, model_proto) -> None:
        super().__init__()
        from onnx import numpy_helper

        g = model_proto.graph
        try:
            from onnx import shape_inference

            inferred = shape_inference.infer_shapes(model_proto).graph
            infos = list(inferred.value_info) + list(inferred.input) + list(inferred.output)
            self.ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in infos if v.type.tensor_type.HasField("shape")}
        except Exception:  # shapes are an optimisation for tracing only
            self.ranks = {}
        self.consts: dict[str, torch.Tensor] = {
            i.name: torch.from_numpy(np.array(numpy_helper.to_array(i))) for i in g.initializer
        }
        self.input_names = [i.name for i in g.input if i.name not in self.consts]
        if len(self.input_names) != 1:
            raise MpsearchError(f"the ONNX model has {len(self.input_names)} inputs; the ONNX input path supports exactly one")
        self.output_names = [o.name for o in g.output]
        self.steps: list[tuple[str, list[str], list[str]]] = []  # (module attr, inputs, outputs)
        used: set[str] = set()
        for idx, node in enumerate(g.node):
            if node.op_type == "Constant":
                self.consts[node.output[0]] = torch.from_numpy(np.array(numpy_helper.to_array(_attrs(node)["value"])))
                continue
            module, inputs = self._convert(node)
            attr = _unique(_module_name(node, idx), used)
            self.add_module(attr, module)
            self.steps.append((attr, inputs, list(node.output)))
        # constants the remaining ops read at run time (shapes, scalars) travel as buffers
        self._const_attr: dict[str, str] = {}
        for name in dict.fromkeys(i for _, ins, _ in self.steps for i in ins if i in self.consts):
            attr = _unique("const_" + re.sub(r"\W", "_", name), used)
            self.register_buffer(attr, self.consts[name], persistent=False)
            self._const_attr[name] = attr
        del self.consts

    # each converter returns (module, names of the node inputs the module is called with)
    consts: dict[str, torch.Tensor]

    def _convert(self, node) -> tuple[nn.Module, list[str]]:
        op, a, ins = node.op_type, _attrs(node), list(node.input)
        c = self.consts
        if op == "Conv":
            return self._conv(node, a, ins), ins[:1]
        if op == "Gemm" and ins[1] in c and (len(ins) < 3 or ins[2] == "" or ins[2] in c):
            return self._gemm(a, ins), ins[:1]
        if op == "MatMul" and ins[1] in c and c[ins[1]].dim() == 2:
            w = c[ins[1]].float()
            lin = nn.Linear(w.shape[0], w.shape[1], bias=False)
            lin.weight.data.copy_(w.t())
            return lin, ins[:1]
        if op == "BatchNormalization":
            scale, bias, mean, var = (c[n].float() for n in ins[1:5])
            bn = nn.BatchNorm2d(scale.numel(), eps=float(a.get("epsilon", 1e-5)))
            bn.weight.data.copy_(scale)
            bn.bias.data.copy_(bias)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            return bn.eval(), ins[:1]
        if op == "GlobalAveragePool":
            rank = self.ranks.get(ins[0])  # static rank keeps the op traceable by torch.fx
            dims = tuple(range(2, rank)) if rank else None
            return _Op(lambda x: x.mean(dim=dims or tuple(range(2, x.dim())), keepdim=True), op), ins[:1]
        if op in ("ReduceMean", "ReduceSum", "Squeeze", "Unsqueeze"):
            axes = a.get("axes")
            if axes is None and len(ins) > 1 and ins[1] != "":  # opset >= 13/18: axes is an input
                if ins[1] not in c:
                    raise MpsearchError(f"ONNX {op} {node.name!r} has computed axes; only constant axes are supported")
                axes = [int(v) for v in c[ins[1]].reshape(-1).tolist()]
            return _Op(_axes_op(op, axes, a), op), ins[:1]
        if op == "Reshape" and ins[1] in c:
            return _Op(_reshape([int(d) for d in c[ins[1]].tolist()], int(a.get("allowzero", 0))), op), ins[:1]
        if op in ("MaxPool", "AveragePool"):
            return self._pool(op, a), ins[:1]
        fn = _functional(op, a, node)
        return _Op(fn, op), [i for i in ins if i != ""]

    def _conv(self, node, a: dict[str, Any], ins: list[str]) -> nn.Module:
        if ins[1] not in self.consts:
            raise MpsearchError(f"ONNX Conv {node.name!r} has a non-constant weight; only constant weights are supported")
        w = self.consts[ins[1]].float()
        nd = w.dim() - 2
        if nd not in (1, 2):
            raise MpsearchError(f"ONNX Conv {node.name!r} is {nd}-D; only 1-D and 2-D convolutions are supported")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise MpsearchError(f"ONNX Conv {node.name!r} uses auto_pad; re-export with explicit pads")
        groups = int(a.get("group", 1))
        pad, explicit = _pads_to_torch(list(a.get("pads", [0] * 2 * nd)), nd)
        cls = nn.Conv1d if nd == 1 else nn.Conv2d
        has_bias = len(ins) > 2 and ins[2] != ""
        conv = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=tuple(a.get("strides", [1] * nd)),
                   padding=pad, dilation=tuple(a.get("dilations", [1] * nd)), groups=groups, bias=has_bias)
        conv.weight.data.copy_(w)
        if has_bias:
            conv.bias.data.copy_(self.consts[ins[2]].float())
        return _Padded(explicit, conv) if explicit else conv

    def _gemm(self, a: dict[str, Any], ins: list[str]) -> nn.Module:
        if int(a.get("transA", 0)):
            raise MpsearchError("ONNX Gemm with transA=1 is not supported")
        w = self.consts[ins[1]].float()
        w = w if int(a.get("transB", 0)) else w.t()
        w = w * float(a.get("alpha", 1.0))
        has_bias = len(ins) > 2 and ins[2] != ""
        lin = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
        lin.weight.data.copy_(w)
        if has_bias:
            lin.bias.data.copy_((self.consts[ins[2]].float() * float(a.get("beta", 1.0))).expand(w.shape[0]))
        return lin

    def _pool(self, op: str, a: dict[str, Any]) -> nn.Module:
        k = tuple(a["kernel_shape"])
        nd = len(k)
        pad, explicit = _pads_to_torch(list(a.get("pads", [0] * 2 * nd)), nd)
        strides = tuple(a.get("strides", [1] * nd))
        ceil = bool(a.get("ceil_mode", 0))
        if op == "MaxPool":
            cls = nn.MaxPool1d if nd == 1 else nn.MaxPool2d
            pool = cls(k, strides, pad, dilation=tuple(a.get("dilations", [1] * nd)), ceil_mode=ceil)
            return _Padded(explicit, pool, value=float("-inf")) if explicit else pool
        cls = nn.AvgPool1d if nd == 1 else nn.AvgPool2d
        pool = cls(k, strides, pad, ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))
        return _Padded(explicit, pool) if explicit else pool

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        # one named argument keeps the module traceable by torch.fx (data-flow edges for the LayerGraph)
        env: dict[str, torch.Tensor] = {n: getattr(self, a) for n, a in self._const_attr.items()}
        env[self.input_names[0]] = x
        for attr, inputs, outputs in self.steps:
            out = getattr(self, attr)(*(env[i] for i in inputs))
            env[outputs[0]] = out
        outs = tuple(env[o] for o in self.output_names)
        return outs[0] if len(outs) == 1 else outs


def _flatten(axis: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """ONNX Flatten: 2-D (prod(shape[:axis]), prod(shape[axis:])); written with torch.flatten for fx."""

    def f(x: torch.Tensor) -> torch.Tensor:
        ax = axis if axis >= 0 else axis % x.dim()
        if ax == 0:
            return x.reshape(1, -1)
        return torch.flatten(torch.flatten(x, ax), 0, ax - 1)

    return f


def _reshape(dims: list[int], allowzero: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """ONNX Reshape with a constant target shape (0 copies the input's dim unless allowzero)."""

    def f(x: torch.Tensor) -> torch.Tensor:
        return x.reshape([x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(dims)])

    return f


def _axes_op(op: str, axes: list[int] | None, a: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Reductions and (un)squeezes with constant axes (attribute before opset 13/18, input after)."""
    if op in ("ReduceMean", "ReduceSum"):
        keep = bool(a.get("keepdims", 1))
        reduce = torch.mean if op == "ReduceMean" else torch.sum
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return lambda x: x
            return lambda x: reduce(x, dim=tuple(range(x.dim())), keepdim=keep)
        return lambda x: reduce(x, dim=tuple(axes), keepdim=keep)
    if op == "Squeeze":
        return (lambda x: torch.squeeze(x)) if not axes else (lambda x: torch.squeeze(x, tuple(axes)))
    if axes is None:
        raise MpsearchError("ONNX Unsqueeze without axes is invalid")

    def unsqueeze(x: torch.Tensor) -> torch.Tensor:
        for ax in sorted(axes):  # ONNX axes refer to the output rank
            x = torch.unsqueeze(x, ax)
        return x

    return unsqueeze


def _functional(op: str, a: dict[str, Any], node) -> Callable[..., torch.Tensor]:
    F = nn.functional
    simple: dict[str, Callable[..., torch.Tensor]] = {
        "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div,
        "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
        "Identity": lambda x: x, "Dropout": lambda x, *_: x, "MatMul": torch.matmul,
    }
    if op in simple:
        return simple[op]
    if op == "LeakyRelu":
        return lambda x, s=float(a.get("alpha", 0.01)): F.leaky_relu(x, s)
    if op == "Softmax":
        return lambda x, ax=int(a.get("axis", -1)): torch.softmax(x, ax)
    if op == "Flatten":
        return _flatten(int(a.get("axis", 1)))
    if op == "Reshape":
        raise MpsearchError(f"ONNX Reshape {node.name!r} has a computed shape; only constant shapes are supported")
    if op == "Transpose":
        perm = a.get("perm")
        return lambda x: x.permute(*(perm if perm is not None else reversed(range(x.dim()))))
    if op == "Concat":
        return lambda *xs, ax=int(a["axis"]): torch.cat(xs, ax)
    if op == "Clip":
        return lambda x, lo=None, hi=None: torch.clamp(x, lo, hi)
    if op == "Gemm":  # non-constant operands: plain matrix product
        al, be = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        ta, tb = int(a.get("transA", 0)), int(a.get("transB", 0))
        return lambda x, w, b=None: al * ((x.t() if ta else x) @ (w.t() if tb else w)) + (be * b if b is not None else 0)
    raise MpsearchError(f"ONNX op {op!r} (node {node.name!r}) is not supported by the ONNX input path")


def _module_name(node, idx: int) -> str:
    base = re.sub(r"\W+", "_", node.name.strip("/")).strip("_") if node.name else ""
    return base or f"{node.op_type.lower()}_{idx}"


def _unique(name: str, used: set[str]) -> str:
    out, k = name, 1
    while out in used or not out.isidentifier():
        out = f"{name}_{k}" if name.isidentifier() else f"n_{name}_{k}"
        k += 1
    used.add(out)
    return out


def load_onnx_module(model_path: str | Path) -> tuple[nn.Module, Any]:
    """Read and check an ONNX file and convert it; returns ``(module, model_proto)``."""
    import onnx

    p = Path(model_path)
    if not p.is_file():
        raise MpsearchError(f"ONNX model {str(p)!r} not found")
    try:
        proto = onnx.load(str(p))
        onnx.checker.check_model(proto)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MpsearchError(f"{str(p)!r} is not a valid ONNX model: {msg}") from None
    return OnnxModule(proto).eval(), proto


# -- data and task ----------------------------------------------------------------------------------


def load_calibration(npz_path: str | Path, *, inputs_key: str = "inputs", labels_key: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs (and labels when present) from an ``.npz``, never unpickling anything."""
    p = Path(npz_path)
    if not p.is_file():
        raise MpsearchError(f"calibration file {str(p)!r} not found")
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise MpsearchError(f"{str(p)!r} is not a readable .npz of plain arrays: {str(e).splitlines()[0]}") from None
    want_labels = labels_key or ("labels" if "labels" in arrays else None)
    if labels_key is not None and labels_key not in arrays:
        raise MpsearchError(f"{str(p)!r} has no array {labels_key!r}", hint=f"arrays: {', '.join(sorted(arrays))}")
    if inputs_key not in arrays:
        others = [k for k in arrays if k != want_labels]
        if len(others) != 1:
            raise MpsearchError(f"{str(p)!r} has no array {inputs_key!r}", hint=f"arrays: {', '.join(sorted(arrays))}")
        inputs_key = others[0]
    x = arrays[inputs_key]
    if x.ndim < 1 or len(x) == 0:
        raise MpsearchError(f"{str(p)!r}: {inputs_key!r} must hold at least one sample along axis 0")
    if not np.issubdtype(x.dtype, np.number):
        raise MpsearchError(f"{str(p)!r}: {inputs_key!r} has non-numeric dtype {x.dtype}")
    y = None
    if want_labels is not None:
        y = arrays[want_labels]
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise MpsearchError(f"{str(p)!r}: {want_labels!r} must be {len(x)} integer class indices, got {y.dtype} {y.shape}")
    return x, y


def _cosine_fidelity(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(out.reshape(len(out), -1), ref.reshape(len(ref), -1), dim=1).mean())


def onnx_task(
    model_path: str | Path,
    calib_npz: str | Path,
    *,
    labels_key: str | None = None,
    inputs_key: str = "inputs",
    calib_fraction: float = 0.5,
    batch_size: int = 64,
    check_tolerance: float = 1e-3,
) -> Task:
    """Task from an ONNX file and an ``.npz`` of inputs (and optional labels); see the module docstring."""
    model, proto = load_onnx_module(model_path)
    x_np, y_np = load_calibration(calib_npz, inputs_key=inputs_key, labels_key=labels_key)
    x = torch.from_numpy(np.ascontiguousarray(x_np)).float()
    if not 0.0 < calib_fraction <= 1.0:
        raise MpsearchError(f"calib_fraction must be in (0, 1], got {calib_fraction}")
    with torch.no_grad():
        try:
            ref = model(x[:batch_size])
        except Exception as e:
            raise MpsearchError(f"the ONNX model failed on the calibration inputs {tuple(x.shape)}: {type(e).__name__}: {e}") from None
        ref = torch.cat([ref] + [model(x[i : i + batch_size]) for i in range(batch_size, len(x), batch_size)])
    _check_against_ort(model_path, model.input_names[0], x[:batch_size], ref[:batch_size], check_tolerance)
    n_cal = max(1, int(round(calib_fraction * len(x))))
    held_out = n_cal < len(x)
    first_eval = n_cal if held_out else 0  # with a single sample (or fraction 1) evaluation reuses the calibration set
    ex, eref = x[first_eval:], ref[first_eval:]
    if y_np is not None:
        targets = torch.from_numpy(y_np).long()
        ey = targets[first_eval:]
        metric = "top-1 accuracy"

        def evaluate(m: nn.Module) -> float:
            with torch.no_grad():
                out = torch.cat([m(ex[i : i + 256]) for i in range(0, len(ex), 256)])
            return float((out.argmax(-1) == ey).float().mean())

        def loss(m: nn.Module, batch) -> torch.Tensor:
            return nn.functional.cross_entropy(m(batch[0]), batch[1])

        def logits(m: nn.Module, batch) -> torch.Tensor:
            return m(batch[0])
    else:
        logits = None
        targets = ref
        metric = "output fidelity (cosine to float)"

        def evaluate(m: nn.Module) -> float:
            with torch.no_grad():
                out = torch.cat([m(ex[i : i + 256]) for i in range(0, len(ex), 256)])
            return _cosine_fidelity(out, eref)

        def loss(m: nn.Module, batch) -> torch.Tensor:
            return nn.functional.mse_loss(m(batch[0]), batch[1])

    calib = [(x[i : min(i + batch_size, n_cal)], targets[i : min(i + batch_size, n_cal)]) for i in range(0, n_cal, batch_size)]
    return Task(
        name=Path(model_path).stem,
        model=model,
        example_input=(x[:1],),
        calib_batches=calib,
        evaluate=evaluate,
        loss=loss,
        logits=logits,
        metric_name=metric,
        metadata={
            "source": "onnx", "model_path": str(model_path), "calib_path": str(calib_npz),
            "calib_size": n_cal, "eval_size": len(ex), "held_out": held_out, "labels": y_np is not None,
            "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0),
        },
    )


def _check_against_ort(path: str | Path, input_name: str, x: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """The converted module must reproduce ONNX Runtime, or the search would optimize a different model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        out = sess.run(None, {input_name: x.numpy()})[0]
    except Exception as e:
        raise MpsearchError(f"ONNX Runtime cannot run {str(path)!r}: {str(e).splitlines()[0]}") from None
    err = float(np.abs(out - ref.numpy()).max()) / max(float(np.abs(out).max()), 1e-12)
    if err > tol:
        raise MpsearchError(f"the torch conversion of {str(path)!r} differs from ONNX Runtime (relative error {err:.2e})")
