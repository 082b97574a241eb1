"""ONNX QDQ export of a Plan, so a mixed-precision choice runs in ONNX Runtime or any QDQ-aware runtime.

Each planned layer becomes ``DequantizeLinear(stored weights) -> Conv/Gemm`` with per-output-channel
scales (``axis=0``), and its input gets ``[Clip ->] QuantizeLinear -> DequantizeLinear`` with the
calibrated static range. How each format is stored (recorded per layer in ``metadata_props``):

- int8/uint8 weights and activations (per channel or per tensor): native INT8/UINT8 QDQ.
- int2-int4 / uint2-uint4 weights: ONNX INT4/UINT4 initializers (opset 21); int5-int7 weights: INT8.
  The stored integers are exactly the format's, so only the container is wider (listed as ``emulated``).
- int2-int7 activations: 8-bit QDQ behind a ``Clip`` to the narrower format's range (``emulated``).
- e4m3 / e5m2 weights and activations (per channel / per tensor): FLOAT8E4M3FN / FLOAT8E5M2 QDQ.
- any other weight format (group-wise scales, fp16/bf16, MX/NV blocks, other minifloats): the
  fake-quantized weights are stored as float32 initializers and listed under ``mpsearch.baked_weights``.
- any other activation format: refused with an MpsearchError, never silently dropped.

Every native lowering is verified when it is chosen: weights must dequantize bit-exactly to
``fmt.fake_quant``, activations must reproduce ``fmt.fake_quant(x, amax=...)`` on a probe; otherwise the
weight is baked or the activation refused. The TorchScript ONNX exporter is used because
``torch.autograd.Function.symbolic`` lets each wrapper emit exactly these nodes. ``check_against_simulation``
runs the file in ONNX Runtime and compares it with ``mpsearch.simulate.apply_plan``.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from mpsearch.atomic import atomic_write_bytes
from mpsearch.errors import MpsearchError
from mpsearch.formats import Format, parse_format
from mpsearch.graph import LayerGraph
from mpsearch.plan import Plan
from mpsearch.simulate import apply_plan

ORT_LEVEL_KEY = "mpsearch.ort_graph_optimization_level"
EXPORT_OPSET = 17  # what the TorchScript exporter emits; raised to 21 only when INT4/FLOAT8 tensors are present
INT4_OPSET = 21


# -- lowering decisions -----------------------------------------------------------------------------

# ONNX element types this exporter stores, with (signed, qmin, qmax) for the integer ones.
_INT_TYPES = {"int8": (True, -128, 127), "uint8": (False, 0, 255), "int4": (True, -8, 7), "uint4": (False, 0, 15)}
_FP8_TYPES = {"e4m3": ("float8e4m3fn", "float8_e4m3fn", 448.0), "e5m2": ("float8e5m2", "float8_e5m2", 57344.0)}


@dataclass
class WeightLowering:
    """How one weight is stored: ``native`` codes + DequantizeLinear, or ``baked`` float32 values.

    For native storage ``q`` holds the stored values (integers, or float8 bit patterns as uint8),
    ``scale``/``zero_point`` the DequantizeLinear parameters (per output channel, or one per tensor).
    """

    mode: str  # "native" | "baked"
    onnx_type: str  # "int8" | "uint8" | "int4" | "uint4" | "float8e4m3fn" | "float8e5m2" | "float32"
    values: torch.Tensor  # the dequantized weight, equal to fmt.fake_quant(w, channel_axis=0)
    q: np.ndarray | None = None
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None


@dataclass(frozen=True)
class ActLowering:
    """Per-tensor static QDQ of a layer input: optional clip range, scale, zero point and ONNX type."""

    onnx_type: str  # "int8" | "uint8" | "float8e4m3fn" | "float8e5m2"
    lo: float
    hi: float
    scale: float
    zero_point: int


def _fp8_kind(fmt: Format) -> str | None:
    """``e4m3``/``e5m2`` when ``fmt`` is exactly ONNX's FLOAT8E4M3FN / FLOAT8E5M2 with a plain scale."""
    if fmt.family != "fp" or fmt.element_bits != 8 or getattr(fmt, "group", None):
        return None
    codec = getattr(fmt, "codec", None)
    base = fmt.spelling[:4]
    if base not in _FP8_TYPES or codec is None or float(getattr(codec, "max", 0.0)) != _FP8_TYPES[base][2]:
        return None
    return base


def _per_channel(scales: np.ndarray, channels: int) -> np.ndarray | None:
    s = np.asarray(scales, dtype=np.float32).reshape(-1)
    if s.size == 1:
        return np.asarray(s.reshape(()))
    return s if s.size == channels else None


def weight_lowering(fmt: Format, w: torch.Tensor) -> WeightLowering:
    """Pick native QDQ storage when it reproduces ``fmt.fake_quant`` bit for bit, else bake the values."""
    w = w.detach().float()
    ref = fmt.fake_quant(w, channel_axis=0)
    baked = WeightLowering("baked", "float32", ref)
    group = getattr(fmt, "group", None)
    if fmt.family == "int" and not group:
        enc = fmt.encode(w, channel_axis=0)
        scale = _per_channel(enc.scales, w.shape[0])
        if scale is None:
            return baked
        zp = np.asarray(np.round(np.asarray(enc.zero_points, dtype=np.float32).reshape(scale.shape)))
        bshape = (-1,) + (1,) * (w.dim() - 1) if scale.ndim else ()
        s_t, zp_t = torch.from_numpy(scale).reshape(bshape), torch.from_numpy(zp).reshape(bshape)
        q = torch.round(ref / s_t + zp_t)
        signed = not getattr(fmt, "asymmetric", False)
        onnx_type = ("int4" if signed else "uint4") if fmt.element_bits <= 4 else ("int8" if signed else "uint8")
        _, lo, hi = _INT_TYPES[onnx_type]
        deq = (q - zp_t) * s_t
        if not torch.equal(deq, ref) or q.min() < lo or q.max() > hi:
            return baked
        return WeightLowering("native", onnx_type, ref, q.numpy().astype(np.int32), scale, zp.astype(np.int32))
    kind = _fp8_kind(fmt)
    if kind is not None:
        import ml_dtypes

        onnx_type, np_name, _ = _FP8_TYPES[kind]
        enc = fmt.encode(w, channel_axis=0)
        scale = _per_channel(enc.scales, w.shape[0])
        if scale is None:
            return baked
        codes = np.ascontiguousarray(enc.codes.astype(np.uint8))
        vals = codes.view(getattr(ml_dtypes, np_name)).astype(np.float32)
        bshape = (-1,) + (1,) * (w.dim() - 1) if scale.ndim else ()
        deq = torch.from_numpy(vals) * torch.from_numpy(scale).reshape(bshape)
        if not torch.equal(deq, ref):
            return baked
        return WeightLowering("native", onnx_type, ref, codes, scale, None)
    return baked


def _emulate_act(low: ActLowering, x: np.ndarray) -> np.ndarray:
    """ONNX Clip -> QuantizeLinear -> DequantizeLinear semantics, in numpy float32."""
    xs = np.clip(x, np.float32(low.lo), np.float32(low.hi)) / np.float32(low.scale)
    if low.onnx_type in _INT_TYPES:
        _, qlo, qhi = _INT_TYPES[low.onnx_type]
        q = np.clip(np.rint(xs) + low.zero_point, qlo, qhi)
        return ((q - low.zero_point) * np.float32(low.scale)).astype(np.float32)
    import ml_dtypes

    np_name, fmax = {v[0]: (v[1], v[2]) for v in _FP8_TYPES.values()}[low.onnx_type]
    q = np.clip(xs, -fmax, fmax).astype(getattr(ml_dtypes, np_name)).astype(np.float32)  # saturate=1
    return (q * np.float32(low.scale)).astype(np.float32)


def act_lowering(fmt: Format, amax: float, layer: str) -> ActLowering:
    """Static per-tensor QDQ for a layer input, verified against ``fmt.fake_quant`` on a probe."""
    a = float(amax)
    kind = _fp8_kind(fmt)
    if fmt.family == "int" and fmt.element_bits <= 8:
        qmin, qmax = int(fmt.qmin), int(fmt.qmax)  # type: ignore[attr-defined]
        if getattr(fmt, "asymmetric", False):
            scale = np.float32(2 * a / (qmax - qmin)) if a > 0 else np.float32(1.0)
            zp = int(np.clip(np.rint(np.float32(a) / scale), qmin, qmax))
            low = ActLowering("uint8", float((qmin - zp) * scale), float((qmax - zp) * scale), float(scale), zp)
        else:
            scale = np.float32(np.float32(a) / np.float32(qmax)) if a > 0 else np.float32(1.0)
            low = ActLowering("int8", float(qmin * scale), float(qmax * scale), float(scale), 0)
    elif kind is not None:
        onnx_type, _, fmax = _FP8_TYPES[kind]
        scale = np.float32(np.float32(a) / np.float32(fmax)) if a > 0 else np.float32(1.0)
        big = float(np.finfo(np.float32).max)
        low = ActLowering(onnx_type, -big, big, float(scale), 0)
    else:
        raise MpsearchError(
            f"layer {layer!r}: activation format {fmt.spelling!r} has no ONNX QDQ lowering",
            hint="integer and e4m3/e5m2 activations export; keep this layer's activations in fp32",
        )
    rng = np.random.default_rng(0)
    probe = np.concatenate([np.linspace(-1.5 * a, 1.5 * a, 8193), rng.normal(0, a / 3 + 1e-6, 4096)]).astype(np.float32)
    want = fmt.fake_quant(torch.from_numpy(probe), channel_axis=None, amax=a).numpy()
    got = _emulate_act(low, probe)
    if not np.allclose(got, want, rtol=0, atol=1e-6 * max(a, 1e-12)):
        raise MpsearchError(
            f"layer {layer!r}: activation format {fmt.spelling!r} cannot be expressed exactly as ONNX QDQ",
            hint="keep this layer's activations in fp32 or use an integer / e4m3 / e5m2 activation format",
        )
    return low


# -- torch wrappers whose ONNX export is the QDQ pattern --------------------------------------------


class _DequantizeWeight(torch.autograd.Function):
    """Returns the precomputed dequantized weight; exported as DequantizeLinear(q, scale[, zp])."""

    @staticmethod
    def forward(ctx, values, q, scale, zp, axis: int, has_zp: bool):  # type: ignore[override]
        return values.clone()

    @staticmethod
    def symbolic(g, values, q, scale, zp, axis, has_zp):  # noqa: D102 - ONNX export hook
        inputs = (q, scale, zp) if has_zp else (q, scale)
        return g.op("DequantizeLinear", *inputs, axis_i=axis)


class _FakeQuantAct(torch.autograd.Function):
    """Clip to the format's range, then QuantizeLinear/DequantizeLinear with a static scale."""

    @staticmethod
    def forward(ctx, x, lo, hi, scale, zp, emulate, clip: bool):  # type: ignore[override]
        return torch.from_numpy(emulate(x.detach().cpu().numpy().astype(np.float32)))

    @staticmethod
    def symbolic(g, x, lo, hi, scale, zp, emulate, clip):  # noqa: D102 - ONNX export hook
        # float8 QuantizeLinear saturates by itself; ORT's Clip+Q fusion also rejects float8 zero points
        clipped = g.op("Clip", x, lo, hi) if clip else x
        return g.op("DequantizeLinear", g.op("QuantizeLinear", clipped, scale, zp), scale, zp)


class QDQExportLayer(nn.Module):
    """Export-time stand-in for a Conv/Linear: stored weights + DequantizeLinear, optional input QDQ.

    Sub-byte and float8 codes travel through the TorchScript exporter as int8/uint8 initializers named
    ``<layer>.w_q`` / ``<layer>.w_zp`` / ``<layer>.a_zp`` and are retyped afterwards (see ``_retype``).
    """

    def __init__(self, inner: nn.Module, name: str, weight_format: Format, act: ActLowering | None) -> None:
        super().__init__()
        self.inner = inner
        self.layer_name = name
        self.lowering = weight_lowering(weight_format, inner.weight)
        low = self.lowering
        self.register_buffer("w_values", low.values.contiguous())
        if low.mode == "native":
            signed = low.onnx_type in ("int8", "int4")
            self.register_buffer("w_q", torch.from_numpy(low.q.astype(np.int8 if signed else np.uint8)))
            self.register_buffer("w_scale", torch.from_numpy(np.asarray(low.scale, dtype=np.float32)))
            zp = low.zero_point if low.zero_point is not None else np.zeros(low.scale.shape, np.int32)
            self.register_buffer("w_zp", torch.from_numpy(zp.astype(np.int8 if signed else np.uint8)))
        self.act = act
        if act is not None:
            self.register_buffer("a_lo", torch.tensor(act.lo, dtype=torch.float32))
            self.register_buffer("a_hi", torch.tensor(act.hi, dtype=torch.float32))
            self.register_buffer("a_scale", torch.tensor(act.scale, dtype=torch.float32))
            self.register_buffer("a_zp", torch.tensor(act.zero_point, dtype=torch.int8 if act.onnx_type == "int8" else torch.uint8))

    def weight(self) -> torch.Tensor:
        low = self.lowering
        if low.mode == "native":
            return _DequantizeWeight.apply(self.w_values, self.w_q, self.w_scale, self.w_zp, 0, low.zero_point is not None)
        return self.w_values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            emulate = lambda v, low=self.act: _emulate_act(low, v)  # noqa: E731
            clip = self.act.onnx_type in _INT_TYPES
            x = _FakeQuantAct.apply(x, self.a_lo, self.a_hi, self.a_scale, self.a_zp, emulate, clip)
        w = self.weight()
        if isinstance(self.inner, nn.Linear):
            return nn.functional.linear(x, w, self.inner.bias)
        return self.inner._conv_forward(x, w, self.inner.bias)  # Conv1d / Conv2d


class _FirstOutput(nn.Module):
    """Export adapter: positional inputs in, the model's first tensor out (HF models return ModelOutput)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return _first_tensor(self.model(*args))


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):  # transformers' ModelOutput is an OrderedDict
        return next(iter(out.values()))
    return out[0]


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def build_export_model(
    model: nn.Module, graph: LayerGraph, plan: Plan, act_amax: dict[str, float] | None
) -> tuple[nn.Module, dict[str, Any]]:
    """Deep copy of ``model`` with planned layers replaced by QDQExportLayer; returns (model, lowering report)."""
    unknown = [n for n in plan.layers if n not in graph.by_name]
    if unknown:
        raise MpsearchError(f"plan names layers not in the model graph: {unknown[:3]}")
    m = copy.deepcopy(model).eval()
    report: dict[str, Any] = {"layers": {}, "baked_weights": [], "emulated": []}
    for name, cand in plan.layers.items():
        wf, af = parse_format(cand.weight), parse_format(cand.act)
        if wf.spelling == "fp32" and af.is_float:
            continue
        act = None
        if not af.is_float:
            amax = (act_amax or {}).get(name)
            if amax is None:
                raise MpsearchError(
                    f"layer {name!r} quantizes activations ({af.spelling}) but has no calibrated range",
                    hint="pass act_amax from mpsearch.simulate.calibrate_act_ranges",
                )
            act = act_lowering(af, amax, name)
        layer = QDQExportLayer(m.get_submodule(name), name, wf, act)
        _set_submodule(m, name, layer)
        wl = layer.lowering
        report["layers"][name] = {
            "weight": cand.weight, "act": cand.act, "weight_storage": wl.onnx_type,
            "act_storage": act.onnx_type if act is not None else "float32",
        }
        if wl.mode == "baked":
            report["baked_weights"].append(name)
        elif wl.mode == "native" and wf.element_bits not in (4, 8):
            report["emulated"].append(f"{name}:weight:{wf.spelling}")
        if act is not None and af.family == "int" and af.element_bits < 8:
            report["emulated"].append(f"{name}:act:{af.spelling}")
    return m, report


# -- export -----------------------------------------------------------------------------------------


_ONNX_DTYPES = {"int4": "INT4", "uint4": "UINT4", "float8e4m3fn": "FLOAT8E4M3FN", "float8e5m2": "FLOAT8E5M2"}


def _retype(model_proto, wanted: dict[str, str]) -> None:
    """Give the tensors named in ``wanted`` (exported as int8/uint8) their real type, e.g. INT4 or FLOAT8.

    The TorchScript exporter de-duplicates equal initializers (all-zero zero points are shared, reached
    through Identity nodes), so every retyped input gets a fresh initializer and unused ones are dropped.
    """
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in model_proto.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in model_proto.graph.node if n.op_type == "Identity"}

    def resolve(name: str):
        while name not in inits and name in alias:
            name = alias[name]
        return inits[name]

    created: set[str] = set()
    for node in model_proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue  # Identity aliases are shared between layers: retype only at the consuming Q/DQ node
        for slot, name in enumerate(node.input):
            if name not in wanted:
                continue
            kind = wanted[name]
            new_name = f"{name}.{kind}"
            if new_name not in created:
                arr = numpy_helper.to_array(resolve(name))
                dtype = getattr(onnx.TensorProto, _ONNX_DTYPES[kind])
                if kind.startswith("float8"):
                    t = onnx.helper.make_tensor(new_name, dtype, list(arr.shape), arr.astype(np.uint8).tobytes(), raw=True)
                else:
                    t = onnx.helper.make_tensor(new_name, dtype, list(arr.shape), arr.astype(np.int32).reshape(-1).tolist())
                model_proto.graph.initializer.append(t)
                created.add(new_name)
            node.input[slot] = new_name
    del model_proto.graph.value_info[:]  # exporter's shape/type hints still say int8/uint8; ORT re-infers
    _drop_unused(model_proto)


def _strip_prefix(model_proto, prefix: str) -> None:
    """Rename tensors ``prefix + name`` -> ``name`` (initializers and Identity aliases of them, with their uses).

    The export adapter module adds the prefix; without it tensor names are the user's module paths."""
    names = {i.name for i in model_proto.graph.initializer} | {o for n in model_proto.graph.node for o in n.output}
    rename = {n: n[len(prefix):] for n in names if n.startswith(prefix) and n[len(prefix):] not in names}
    for init in model_proto.graph.initializer:
        init.name = rename.get(init.name, init.name)
    for node in model_proto.graph.node:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
        for k, name in enumerate(node.output):
            if name in rename:
                node.output[k] = rename[name]


def _drop_unused(model_proto) -> None:
    """Remove Identity nodes and initializers nothing reads any more (repeat until stable)."""
    while True:
        outputs = {o.name for o in model_proto.graph.output}
        used = {i for n in model_proto.graph.node for i in n.input} | outputs
        nodes = [n for n in model_proto.graph.node if n.op_type != "Identity" or n.output[0] in used]
        inits = [i for i in model_proto.graph.initializer if i.name in used]
        if len(nodes) == len(model_proto.graph.node) and len(inits) == len(model_proto.graph.initializer):
            return
        del model_proto.graph.node[:]
        model_proto.graph.node.extend(nodes)
        del model_proto.graph.initializer[:]
        model_proto.graph.initializer.extend(inits)


def export_qdq(
    model: nn.Module,
    graph: LayerGraph,
    plan: Plan,
    act_amax: dict[str, float] | None,
    example_input: Sequence[torch.Tensor] | torch.Tensor,
    path: str | Path,
    *,
    input_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``plan`` applied to ``model`` as an ONNX QDQ model at ``path`` (atomically); returns the path."""
    import onnx

    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    qmodel, report = build_export_model(model, graph, plan, act_amax)
    names = list(input_names) if input_names else [f"input_{i}" if len(args) > 1 else "input" for i in range(len(args))]
    dyn = {n: {0: "batch"} for n in names} if dynamic_batch else None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        try:
            torch.onnx.export(
                _FirstOutput(qmodel), args, buf, dynamo=False, opset_version=EXPORT_OPSET, input_names=names,
                output_names=["output"], dynamic_axes=dyn, do_constant_folding=False,
            )
        except Exception as e:
            raise MpsearchError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    proto = onnx.load_from_string(buf.getvalue())
    _strip_prefix(proto, "model.")  # initializers keep the user's module paths, e.g. ``stem.w_q``
    wanted: dict[str, str] = {}
    for name, info in report["layers"].items():
        wt, at = info["weight_storage"], info["act_storage"]
        if wt in _ONNX_DTYPES:
            wanted[f"{name}.w_q"] = wt
            if wt in ("int4", "uint4"):
                wanted[f"{name}.w_zp"] = wt
        if at in _ONNX_DTYPES:
            wanted[f"{name}.a_zp"] = at
    if wanted:  # INT4 needs opset 21, FLOAT8 opset 19
        from onnx import version_converter

        proto = version_converter.convert_version(proto, INT4_OPSET)
        _retype(proto, wanted)
    else:
        _drop_unused(proto)
    meta = {
        "mpsearch.plan": plan.to_json(),
        "mpsearch.lowering": json.dumps(report["layers"]),
        "mpsearch.baked_weights": json.dumps(report["baked_weights"]),
        "mpsearch.emulated": json.dumps(report["emulated"]),
        "mpsearch.note": "weights listed in baked_weights are stored as fake-quantized float32; "
        "entries in emulated use an 8-bit QDQ container clipped to the narrower format's range",
    }
    # ONNX Runtime's extended optimizations (1.32) rewrite DequantizeLinear -> MatMul into integer kernels
    # that also quantize the *activations* dynamically, and its QDQ fusions assume integer types: measured on
    # MiniLM, weight-only int8 drifted from the plan by 0.007 mean (vs 3e-7 at the basic level), and float8
    # activations on the digits CNN by 1.7. The basic level (constant folding, no QDQ fusion) is faithful.
    meta[ORT_LEVEL_KEY] = "basic"
    onnx.helper.set_model_props(proto, meta)
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise MpsearchError(f"exported ONNX model failed the checker: {str(e).splitlines()[0]}") from None
    return atomic_write_bytes(path, proto.SerializeToString())


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``mpsearch.*`` metadata of an exported model, JSON values decoded."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise MpsearchError(f"cannot load {str(path)!r} as an ONNX model: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    out: dict[str, Any] = {}
    for p in proto.metadata_props:
        if p.key.startswith("mpsearch."):
            try:
                out[p.key] = json.loads(p.value)
            except json.JSONDecodeError:
                out[p.key] = p.value
    return out


def run_onnx(path: str | Path, inputs: Sequence[torch.Tensor] | torch.Tensor) -> np.ndarray:
    """Run the model at ``path`` on CPU with ONNX Runtime (one intra-op thread, deterministic)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    level = read_metadata(path).get(ORT_LEVEL_KEY) if Path(path).is_file() else None
    if level is not None:
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        }.get(str(level), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise MpsearchError(f"ONNX Runtime cannot load {str(path)!r}: {str(e).splitlines()[0]}") from None
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    feed = {i.name: a.detach().cpu().numpy() for i, a in zip(sess.get_inputs(), args)}
    return sess.run(None, feed)[0]


@dataclass
class ExportCheck:
    """ONNX Runtime output vs ``apply_plan`` output on the same inputs.

    Exact equality is not expected: float convolutions sum in a different order in ORT and torch, and a
    last-bit difference can move a value across a rounding boundary of the next layer's activation
    quantizer (one quantization step). Exact ties are common when weights have few mantissa bits (fp16,
    baked formats), so such plans show more of these flips. The check therefore reports how many outputs
    agree closely and compares the mean error with the quantization error itself, not only the max.
    """

    max_abs_diff: float
    mean_abs_diff: float  # mean |ort - sim|
    float_mean_abs_diff: float  # mean |ort - float model|: the quantization effect the export must carry
    max_rel_diff: float  # max |ort - sim| / max |sim|
    frac_close: float  # fraction of output elements with |ort - sim| <= 1e-4 * max |sim|
    argmax_agreement: float  # fraction of rows whose arg-max agrees (classification outputs)
    float_rel_diff: float  # max |ort - float model| / max |sim|: how far quantization moved the outputs

    def ok(self, *, min_close: float = 0.99, min_agreement: float = 0.99) -> bool:
        return self.frac_close >= min_close and self.argmax_agreement >= min_agreement


@torch.no_grad()
def check_against_simulation(
    path: str | Path,
    model: nn.Module,
    plan: Plan,
    act_amax: dict[str, float] | None,
    inputs: torch.Tensor | Sequence[torch.Tensor],
) -> ExportCheck:
    """Compare ONNX Runtime on the exported file with the PyTorch simulation of the same plan.

    ``inputs`` are the model's positional inputs (one tensor, or a tuple such as ``(input_ids, mask)``);
    the first output is compared.
    """
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    ort_out = torch.from_numpy(run_onnx(path, args))
    sim_out = _first_tensor(apply_plan(model, plan, act_amax)(*args))
    float_out = _first_tensor(model.eval()(*args))
    diff = (ort_out - sim_out).abs()
    scale = float(sim_out.abs().max().clamp(min=1e-12))
    agree = float((ort_out.argmax(-1) == sim_out.argmax(-1)).float().mean()) if sim_out.dim() >= 2 else 1.0
    return ExportCheck(
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        float_mean_abs_diff=float((ort_out - float_out).abs().mean()),
        max_rel_diff=float(diff.max()) / scale,
        frac_close=float((diff <= 1e-4 * scale).float().mean()),
        argmax_agreement=agree,
        float_rel_diff=float((ort_out - float_out).abs().max()) / scale,
    )
