"""End-to-end latency of a compiled model: the quantizable layers plus a modelled residual.

The cost table prices only the quantizable layers (Conv/Linear). A compiled model also runs the ops
around them -- activations, residual adds, pooling, layer norm, softmax, the attention matmuls, GELU --
and pays the runtime's dispatch for every kernel call. ``model_ops`` lists those ops from the Relax
module the TVM backend builds for a plan (after TVM's legalization and fusion, so one entry = one
kernel call), with their bytes and FLOPs. ``ResidualModel`` prices them with a small roofline::

    t_op = op_overhead + max(flops / R_kind, bytes / B)        kind: "vectorized" | "generic"

(``vectorized``: element-wise functions the backend schedules; ``generic``: TVM's default loops, e.g.
reductions) and adds ``dispatch_s`` per kernel call of the whole model (layers included);
``calibrate_dispatch`` measures it on a synthetic chain of tiny kernels run by the same Relax VM, so no
model's own timing enters its prediction. A layer kernel in the model also runs the element-wise ops
Relax fused into it (bias, batch norm, ReLU, residual add): ``epilogue_seconds`` times each fused layer
kernel alone and subtracts the bare kernel the cost table times (``time_layer``); it does not depend on
the layer's candidate (the epilogue works on the fp32 output), so it is a per-layer constant. Ops can
instead be timed alone (``time_op``) and their times used (``ResidualModel.measured``): on this CPU the
untuned ops defeat a roofline (two attention matmuls of identical FLOPs and bytes differ 19x; GELU's
scalar ``erf`` costs 28 ns per element). ``fit_ops`` fits the roofline to timed ops; ``fit_dispatch``
takes the per-call cost from a whole-model timing of *another* model, so an end-to-end prediction
never uses the whole-model timing it predicts.

    predicted e2e = sum of predicted layer latencies (cost table) + sum of t_op + n_calls x dispatch_s
                    + sum of the layers' fused epilogues
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from mpsearch.errors import MpsearchError

KINDS = ("vectorized", "generic")


@dataclass(frozen=True)
class OpWork:
    """One non-layer kernel call of a compiled model."""

    name: str
    kind: str  # "vectorized" | "generic"
    bytes: float  # every buffer argument once (inputs + outputs)
    flops: float
    signature: str = ""  # identical ops (same function body and shapes) share it

    def features(self) -> tuple[float, float]:
        return self.bytes, self.flops


@dataclass
class ModelOps:
    """The kernel calls of a compiled model: how many are layer kernels, and the other ops."""

    layer_calls: int
    ops: list[OpWork]
    funcs: dict[str, Any] = field(default_factory=dict, repr=False)  # signature -> PrimFunc (for timing)
    #: (graph layer name, scheduled PrimFunc of its kernel with the fused epilogue), one per layer call
    layer_funcs: list[tuple[str, Any]] = field(default_factory=list, repr=False)

    @property
    def calls(self) -> int:
        return self.layer_calls + len(self.ops)


def _nbytes(buf) -> float:
    import tvm

    n = 1
    for s in buf.shape:
        n *= int(s)
    return float(n * tvm.runtime.DataType(buf.dtype).bits // 8)


def _flops(func) -> float:
    import tvm

    try:
        from tvm.s_tir.analysis import estimate_tir_flops
    except ImportError:  # older TVM
        from tvm.tir.analysis import estimate_tir_flops
    try:
        return float(estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception:  # noqa: BLE001 -- ops whose loops it cannot analyse count as pure data movement
        return 0.0


def model_ops(model, graph, example_input: tuple, plan=None, act_amax: dict[str, float] | None = None) -> ModelOps:
    """Lower ``plan`` (default: every layer fp32) with the TVM backend for this CPU and list the kernel
    calls of its main function after TVM's legalization, fusion and the backend's element-wise schedules.
    Layer kernels are the functions holding the backend's reduction block ``mps_acc``."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from backends.tvm.lower import lower_plan
    from backends.tvm.target import resolve_target
    from mpsearch.plan import Candidate, Plan

    try:
        from backends.tvm.schedule_cpu import schedule_kernels_pass
        from backends.tvm.schedule_ops import schedule_elementwise_pass
        extra = [schedule_kernels_pass(), schedule_elementwise_pass()]
    except ImportError:
        extra = []
    tgt = resolve_target("llvm")
    if plan is None:
        plan = Plan.uniform(graph.names, Candidate.parse("fp32"))
    if not isinstance(example_input, tuple):
        example_input = (example_input,)
    lowered = lower_plan(model, graph, plan, act_amax, example_input, tgt)
    with tgt.tvm():
        mod = tvm.transform.Sequential(cpu.library_dispatch_passes(tgt.tvm()) + cpu.legalize_passes(tgt.tvm()) + extra
                                       + [relax.transform.RewriteDataflowReshape()])(lowered.mod)
    call_tir = tvm.ir.Op.get("relax.call_tir")
    calls: list[Any] = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: calls.append(e) if isinstance(e, relax.Call) and e.op.same_as(call_tir) else None)
    layer_calls, ops, funcs, layer_funcs = 0, [], {}, []
    for c in calls:
        gv = c.args[0]
        f = mod[gv]
        text = f.script()
        if '"mps_acc' in text or 'mps_kind' in text:  # scheduled kernels decompose the block (mps_acc_init, ...)
            layer_calls += 1
            name = layer_of_kernel(gv.name_hint, graph.names)
            if name is not None:
                layer_funcs.append((name, f))
            continue
        kind = "vectorized" if "tirx.is_scheduled" in f.attrs or "tir.is_scheduled" in f.attrs else "generic"
        sig = f"{kind}|{hashlib.sha1(text.encode()).hexdigest()[:16]}"
        funcs.setdefault(sig, f)
        ops.append(OpWork(gv.name_hint, kind, sum(_nbytes(p) for p in f.params), _flops(f), sig))
    return ModelOps(layer_calls, ops, funcs, layer_funcs)


def layer_of_kernel(kernel_name: str, layer_names: Sequence[str]) -> str | None:
    """The graph layer a (fused) layer kernel computes: the backend names it ``mpsearch_<layer>`` (non
    alphanumerics as ``_``) and fusion prefixes ``fused_`` and appends the consumers' names; the longest
    layer name that matches up to a ``_`` boundary wins (``layer1_conv1`` is not ``layer1_conv10``)."""
    import re

    best = None
    for n in layer_names:
        safe = "mpsearch_" + re.sub(r"[^0-9A-Za-z_]", "_", n)
        i = kernel_name.find(safe)
        if i < 0:
            continue
        rest = kernel_name[i + len(safe):]
        if (rest == "" or rest.startswith("_")) and (best is None or len(n) > len(best)):
            best = n
    return best


def epilogue_seconds(mops: ModelOps, graph, candidate, *, rounds: int = 3,
                     layer_timer=None, op_timer=None) -> dict[str, float]:
    """Seconds per layer of the element-wise ops fused into its kernel: the fused kernel timed alone
    (``time_op``) minus the bare kernel (``time_layer`` of ``candidate``), min over ``rounds`` each, at
    least 0. Both alone and warm: what fusion adds, not what the weights' residency changes."""
    from mpsearch.plan import Candidate

    if layer_timer is None:
        from backends.tvm.timing import time_layer as layer_timer
    op_timer = op_timer or time_op
    cand = candidate if isinstance(candidate, Candidate) else Candidate.parse(str(candidate))
    fused: dict[Any, float] = {}
    bare: dict[Any, float] = {}
    out: dict[str, float] = {}
    for name, f in mops.layer_funcs:
        layer = graph[name]
        key = (layer.kind, tuple(layer.weight_shape), tuple(layer.in_shape), str(layer.attrs),
               f.with_attr("global_symbol", "k").script())  # same body and shapes: timed once
        if key not in fused:
            fused[key] = min(op_timer(f, repeats=1, number=3) for _ in range(rounds))
            bare[key] = min(layer_timer(layer, cand, repeats=1, number=3) for _ in range(rounds))
        out[name] = max(fused[key] - bare[key], 0.0)
    return out


def time_op(func, *, repeats: int = 5, number: int = 10) -> float:
    """Median seconds of one call of a PrimFunc compiled alone for this CPU (random float inputs, zero
    integer inputs so index tensors stay in range)."""
    import tvm

    from backends.tvm.target import resolve_target

    tgt = resolve_target("llvm")
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=tgt.tvm())
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = []
    for p in func.params:
        shape = tuple(int(s) for s in p.shape)
        dt = str(p.dtype)
        arr = rng.standard_normal(shape).astype(dt) if dt.startswith(("float", "bfloat")) else np.zeros(shape, dt)
        args.append(tvm.runtime.tensor(arr, dev))
    mod = lib.jit() if hasattr(lib, "jit") else lib
    once = mod.time_evaluator("main", dev, number=1, repeat=1)(*args).mean
    number = max(1, min(int(number), int(0.05 / max(once, 1e-9))))
    return float(mod.time_evaluator("main", dev, number=number, repeat=int(repeats))(*args).median)


@dataclass
class ResidualModel:
    """Roofline of the non-layer ops plus a per-call dispatch cost (see the module docstring)."""

    op_overhead_s: float = 0.3e-6
    dispatch_s: float = 1.0e-6
    flops_per_s: dict[str, float] = field(default_factory=lambda: {"vectorized": 20e9, "generic": 2e9})
    bandwidth_Bps: float = 20e9
    #: timed ops (signature -> seconds): used instead of the roofline for those ops
    measured: dict[str, float] = field(default_factory=dict)
    #: seconds of the element-wise ops fused into each layer's kernel (layer name -> s; ``epilogue_seconds``)
    epilogue: dict[str, float] = field(default_factory=dict)

    def op_s(self, op: OpWork) -> float:
        if op.signature in self.measured:
            return float(self.measured[op.signature])
        rate = self.flops_per_s.get(op.kind, self.flops_per_s["generic"])
        return self.op_overhead_s + max(op.flops / rate, op.bytes / self.bandwidth_Bps)

    def ops_s(self, ops: Sequence[OpWork]) -> float:
        return float(sum(self.op_s(o) for o in ops))

    def residual_s(self, mops: ModelOps) -> float:
        """Seconds the compiled model spends outside the layer kernels (and in their fused epilogues)."""
        return self.ops_s(mops.ops) + mops.calls * self.dispatch_s + self.epilogue_total_s(mops)

    def epilogue_total_s(self, mops: ModelOps) -> float:
        return float(sum(self.epilogue.get(name, 0.0) for name, _ in mops.layer_funcs))

    def to_dict(self) -> dict[str, Any]:
        return {"op_overhead_s": self.op_overhead_s, "dispatch_s": self.dispatch_s, "flops_per_s": dict(self.flops_per_s),
                "bandwidth_Bps": self.bandwidth_Bps, "measured": dict(self.measured),
                "epilogue": dict(self.epilogue)}


def fit_ops(ops: Sequence[OpWork], seconds: Sequence[float], prior: ResidualModel | None = None, *, ridge: float = 1e-2) -> ResidualModel:
    """Least squares on log latency of timed ops: overhead, one FLOP rate per kind, bandwidth.

    A ridge on the log-factors relative to ``prior`` keeps a rate at its prior when no op of that kind
    was timed."""
    from scipy.optimize import least_squares

    if len(ops) != len(seconds) or len(ops) < 2:
        raise MpsearchError("fitting the residual model needs at least two timed ops")
    p = prior or ResidualModel()
    b = np.array([o.bytes for o in ops])
    fl = np.array([o.flops for o in ops])
    kind = np.array([KINDS.index(o.kind) if o.kind in KINDS else 1 for o in ops])
    meas = np.log(np.asarray(seconds, dtype=float))
    base = np.array([p.op_overhead_s, p.flops_per_s["vectorized"], p.flops_per_s["generic"], p.bandwidth_Bps])

    def pred(theta):
        v = base * np.exp(theta)
        rate = np.where(kind == 0, v[1], v[2])
        return v[0] + np.maximum(fl / rate, b / v[3])

    def obj(theta):
        return np.concatenate([np.log(pred(theta)) - meas, math.sqrt(ridge) * theta])

    best = None
    for s0 in (0.0, -2.0, 2.0):
        r = least_squares(obj, np.array([0.0, s0, s0, s0]), method="trf", loss="soft_l1", f_scale=0.25)
        if best is None or r.cost < best.cost:
            best = r
    v = base * np.exp(best.x)
    return ResidualModel(float(v[0]), p.dispatch_s, {"vectorized": float(v[1]), "generic": float(v[2])}, float(v[3]), dict(p.measured), dict(p.epilogue))


def fit_dispatch(model: ResidualModel, whole_s: float, layers_s: float, mops: ModelOps) -> ResidualModel:
    """Per-call dispatch cost from one whole-model timing: what the model took beyond its layer kernels
    (``layers_s``, their own timings) and its ops (as ``model`` prices them), spread over its calls."""
    left = whole_s - layers_s - model.ops_s(mops.ops)
    d = max(left / max(mops.calls, 1), 0.0)
    return ResidualModel(model.op_overhead_s, d, dict(model.flops_per_s), model.bandwidth_Bps, dict(model.measured), dict(model.epilogue))


def calibrate_dispatch(n_calls: int = 256, elems: int = 64, *, rounds: int = 5) -> float:
    """Seconds the Relax VM adds per kernel call (instruction dispatch, argument packing, the output's
    allocation), from a synthetic module: a chain of ``n_calls`` tiny element-wise kernels (kept unfused),
    timed whole, minus ``n_calls`` x that kernel timed alone. The min over ``rounds`` of both (a shared
    machine only ever adds time)."""
    import tvm
    from tvm import relax, te

    from backends.tvm.target import resolve_target

    tgt = resolve_target("llvm")
    x = te.placeholder((elems,), "float32", name="x")
    y = te.compute((elems,), lambda i: x[i] * 0.5 + 1.0, name="y")
    # opaque: FuseOps must not merge the chain into one kernel
    prim = te.create_prim_func([x, y]).with_attr("op_pattern", 8).with_attr("global_symbol", "step")
    bb = relax.BlockBuilder()
    inp = relax.Var("x", relax.TensorType((elems,), "float32"))
    with bb.function("main", [inp]):
        with bb.dataflow():
            gv = bb.add_func(prim, "step")
            cur = inp
            for _ in range(int(n_calls)):
                cur = bb.emit(relax.call_tir(gv, [cur], relax.TensorType((elems,), "float32")))
            out = bb.emit_output(cur)
        bb.emit_func_output(out)
    mod = bb.get()
    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.compile(mod, target=tgt.tvm()), dev)
    step = tvm.compile(tvm.IRModule({"main": prim.with_attr("global_symbol", "main")}), target=tgt.tvm())
    step = step.jit() if hasattr(step, "jit") else step
    a = tvm.runtime.tensor(np.ones(elems, "float32"), dev)
    b = tvm.runtime.tensor(np.zeros(elems, "float32"), dev)
    vm["main"](a)
    whole = min(min(vm.time_evaluator("main", dev, number=10, repeat=3)(a).results) for _ in range(rounds))
    one = min(min(step.time_evaluator("main", dev, number=1000, repeat=3)(a, b).results) for _ in range(rounds))
    return max((whole - n_calls * one) / n_calls, 0.0)


__all__ = ["KINDS", "ModelOps", "OpWork", "ResidualModel", "calibrate_dispatch", "epilogue_seconds", "fit_dispatch", "fit_ops",
           "layer_of_kernel", "model_ops", "time_op"]
