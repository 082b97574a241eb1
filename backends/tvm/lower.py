"""Lower a (model, plan) pair to a Relax module whose planned Conv/Linear layers are our kernels.

The float model goes through ``torch.export`` and TVM's exported-program frontend, which handles the
surrounding ops (norms, activations, attention, residuals). Its weights become function parameters;
every planned layer's ``conv2d(x, W)`` / ``matmul(x, permute_dims(W))`` is then replaced by a
``call_tir`` to the layer's kernel (act quantization + packed-weight decode + dot product), and W by
the packed arrays. Parameters stay function inputs, so weights live in the artifact's weight file.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from backends.tvm.kernels import KernelSpec, kernel_arrays
from backends.tvm.target import ResolvedTarget
from backends.tvm.timing import layer_kernel
from backends.tvm.weights import ActQuant, PreparedWeight, act_quant, prepare_weight
from mpsearch.errors import MpsearchError
from mpsearch.graph import LayerGraph
from mpsearch.plan import Plan

KERNEL_ATTR = "mpsearch.kernel"


@dataclass
class LoweredLayer:
    name: str
    weight: PreparedWeight
    act: ActQuant | None
    spec: KernelSpec


@dataclass
class Lowered:
    """The Relax module, its parameter arrays (in order) and per-layer lowering records."""

    mod: Any
    param_names: list[str]
    params: dict[str, np.ndarray]
    input_names: list[str]
    layers: dict[str, LoweredLayer] = field(default_factory=dict)
    # float32 gather tables (embeddings) stored as float16: model parameter name -> artifact parameter
    fp16_tables: dict[str, str] = field(default_factory=dict)


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return t.numpy()


class TensorOutputs(torch.nn.Module):
    """Wraps a model so it returns a tuple of tensors (Hugging Face models return ModelOutput objects).

    The wrapped model sits under the attribute ``m``, so parameter names gain the prefix ``m.``.
    """

    PREFIX = "m."

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, *args: Any) -> tuple:
        return tensor_outputs(self.m(*args))


def tensor_outputs(out: Any) -> tuple:
    """The tensors of a model output, in order (tensor, tuple/list, dict or ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, dict) or hasattr(out, "to_tuple"):
        out = out.to_tuple() if hasattr(out, "to_tuple") else tuple(out.values())
    res: list = []
    for o in out:
        res.extend(tensor_outputs(o) if not isinstance(o, torch.Tensor) else [o])
    return tuple(res)


def export_model(model: torch.nn.Module, example_input: tuple) -> Any:
    """torch.export the float model (eval mode, no grad) with a clear error on failure."""
    try:
        with torch.no_grad():
            return torch.export.export(model, tuple(example_input))
    except Exception as e:  # torch raises many types here; the user needs one line
        raise MpsearchError(f"torch.export failed on the model: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None


def lower_plan(model: torch.nn.Module, graph: LayerGraph, plan: Plan, act_amax: dict[str, float] | None,
               example_input: tuple, target: ResolvedTarget, *, fp16_tables: bool = False) -> Lowered:
    """Build the Relax module for ``plan`` (layers absent from the plan stay float, run by TVM's ops).

    ``fp16_tables``: float32 parameters read only as the data of ``take`` (embedding tables) are stored
    as float16 and the gathered rows cast back to float32 (``astype(take(table16, ids))``): MiniLM's
    30522 x 384 word embeddings are 47 MB in fp32, 23 MB in fp16. The values change by the fp16
    rounding of the table; ``compile_plan`` then simulates the model with the same rounded tables.
    """
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator
    from tvm.relax.frontend.torch import from_exported_program

    model = copy.deepcopy(model).eval()
    unknown = [n for n in plan.layers if n not in graph.by_name]
    if unknown:
        raise MpsearchError(f"plan names layers the model does not have: {unknown[:3]}")
    ep = export_model(TensorOutputs(model), example_input)
    try:
        mod = from_exported_program(ep, keep_params_as_input=True)
    except Exception as e:
        raise MpsearchError(f"TVM's torch frontend cannot import the model: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    func = mod["main"]
    num_input = int(func.attrs["num_input"])
    orig_values = list(func.attrs["params"]) if "params" in func.attrs else []
    placeholder_to_fqn = dict(ep.graph_signature.inputs_to_parameters)
    placeholder_to_fqn.update(ep.graph_signature.inputs_to_buffers)
    params: dict[str, np.ndarray] = {}
    weight_var_to_layer: dict[Any, str] = {}
    for var, value in zip(func.params[num_input:], orig_values):
        params[var.name] = _np(value)
        fqn = placeholder_to_fqn.get(var.name, "").removeprefix(TensorOutputs.PREFIX)
        if fqn.endswith(".weight") and fqn[: -len(".weight")] in plan.layers:
            weight_var_to_layer[var] = fqn[: -len(".weight")]
    missing = set(plan.layers) - set(weight_var_to_layer.values())
    if missing:
        raise MpsearchError(f"cannot find the weights of planned layers {sorted(missing)[:3]} in the exported model")

    lowered_layers: dict[str, LoweredLayer] = {}
    new_vars: dict[str, list] = {}
    op_conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    op_conv1d = tvm.ir.Op.get("relax.nn.conv1d")
    op_matmul = tvm.ir.Op.get("relax.matmul")
    op_permute = tvm.ir.Op.get("relax.permute_dims")
    op_gelu = tvm.ir.Op.get("relax.nn.gelu")
    op_reshape = tvm.ir.Op.get("relax.reshape")

    cpu = target.kind == "llvm"

    def prepare(layer: str, in_shape: tuple[int, ...], out_shape: list[int]):
        """Kernel for ``layer`` at the input shape it has in the exported graph (may differ from the
        LayerGraph's shapes when the graph was built at another batch size)."""
        info = graph[layer]
        cand = plan.layers[layer]
        aq = act_quant(cand.act, (act_amax or {}).get(layer))
        weight = model.get_submodule(layer).weight
        pw = prepare_weight(weight, cand.weight, aq)
        lead = tuple(out_shape[:-1]) if info.kind == "linear" and cpu else None
        func_k, spec = layer_kernel(info.kind, in_shape, info.weight_shape, info.attrs, pw, aq, target,
                                    schedule=not cpu, out_lead=lead, pack=cpu)
        if cpu:
            # unscheduled and "out-element-wise fusable" (op_pattern 4): FuseOps merges the element-wise
            # consumers (BatchNorm arithmetic, bias, residual, ReLU/GELU) into the kernel, and
            # schedule_cpu.schedule_kernels_pass schedules the fused function (epilogue in registers)
            func_k = func_k.with_attr("op_pattern", 4).with_attr(KERNEL_ATTR, layer)
        else:
            # pre-scheduled and opaque (op_pattern 8): FuseOps leaves it alone, dlight skips it (is_scheduled)
            func_k = func_k.with_attr("op_pattern", 8).with_attr(KERNEL_ATTR, layer)
        vars_ = []
        for pname, arr in zip(spec.param_names, kernel_arrays(pw, spec)):
            vname = f"q_{_safe(layer)}__{pname}"
            params[vname] = arr
            vars_.append(relax.Var(vname, relax.TensorType(arr.shape, str(arr.dtype))))
        lowered_layers[layer] = LoweredLayer(layer, pw, aq, spec)
        new_vars[layer] = vars_
        return func_k, spec, vars_

    @mutator
    class Rewriter(PyExprMutator):
        def _kernel_call(self, layer: str, x, out_shape: list[int]):
            func_k, spec, vars_ = prepare(layer, tuple(int(v) for v in x.ty.shape), out_shape)
            kname = f"mpsearch_{_safe(layer)}"
            gv = self.builder_.add_func(func_k.with_attr("global_symbol", kname), kname)
            x_shape = [int(s) for s in x.ty.shape]
            want = list(spec.x_shape)
            if x_shape != want:
                x = self.builder_.emit(relax.op.reshape(x, want))
            return relax.call_tir(gv, [x, *vars_], relax.TensorType(spec.out_shape, "float32"))

        def visit_call_(self, call):  # noqa: N802 (TVM's visitor naming)
            call = self.visit_expr_post_order(call)
            if call.op == op_gelu and target.kind == "llvm":
                # x * 0.5 * (1 + erf(x / sqrt 2)) as plain ops (erf legalized vectorizable, see
                # compile._erf_legalize). On reshape(z) (torch's linear on 3-D inputs: a 2-D matmul
                # and a view) it runs on z and is reshaped after: element-wise ops commute with
                # reshapes, and FuseOps then folds the GELU into the producing kernel's epilogue
                x = call.args[0]
                out_ty = call.ty
                src = self.lookup_binding(x) if isinstance(x, relax.Var) else None
                if isinstance(src, relax.Call) and src.op == op_reshape and isinstance(src.args[0].ty, relax.TensorType):
                    x = src.args[0]
                dt = str(x.ty.dtype)
                e = self.builder_.emit(relax.op.erf(relax.op.multiply(x, relax.const(0.7071067811865476, dt))))
                half = self.builder_.emit(relax.op.multiply(x, relax.const(0.5, dt)))
                g = relax.op.multiply(half, relax.op.add(e, relax.const(1.0, dt)))
                if x is not call.args[0]:
                    return relax.op.reshape(self.builder_.emit(g), [int(d) for d in out_ty.shape])
                return g
            if call.op in (op_conv2d, op_conv1d) and call.args[1] in weight_var_to_layer:
                layer = weight_var_to_layer[call.args[1]]
                out_shape = [int(s) for s in call.ty.shape]
                y = self._kernel_call(layer, call.args[0], out_shape)
                if call.op == op_conv1d:
                    y = relax.op.reshape(self.builder_.emit(y), out_shape)
                return y
            if call.op == op_matmul and isinstance(call.args[1], relax.Var):
                src = self.lookup_binding(call.args[1])
                if (src is not None and isinstance(src, relax.Call) and src.op == op_permute
                        and src.args[0] in weight_var_to_layer):
                    layer = weight_var_to_layer[src.args[0]]
                    out_shape = [int(s) for s in call.ty.shape]
                    y = self.builder_.emit(self._kernel_call(layer, call.args[0], out_shape))
                    if [int(s) for s in y.ty.shape] != out_shape:
                        return relax.op.reshape(y, out_shape)
                    return y
            return call

        def run(self, mod_):
            for gv, f in mod_.functions.items():
                if isinstance(f, relax.Function):
                    self.builder_.update_func(gv, self.visit_expr(f))
            return self.builder_.get()

    mod = Rewriter(mod).run(mod)
    tables: dict[str, str] = {}
    if fp16_tables:
        mod, tables = _fp16_tables(mod, num_input, params, placeholder_to_fqn)
    not_lowered = set(plan.layers) - set(lowered_layers)
    if not_lowered:
        raise MpsearchError(f"planned layers {sorted(not_lowered)[:3]} are not plain Conv/Linear calls in the exported graph")
    func = mod["main"]
    extra = [v for layer in lowered_layers for v in new_vars[layer]]
    func = relax.Function(list(func.params) + extra, func.body, func.ret_ty, func.is_pure, func.attrs)
    func = func.without_attr("params") if hasattr(func, "without_attr") else func
    mod["main"] = func
    # BatchNorm (inference) -> broadcast arithmetic that FuseOps merges with the activation/residual ops
    mod = relax.transform.DecomposeOpsForInference()(mod)
    # (out, mean, var)[0] -> out: a tuple between BatchNorm and ReLU would stop FuseOps at the tuple
    mod = relax.transform.CanonicalizeBindings()(mod)
    mod = relax.transform.DeadCodeElimination()(mod)
    func = mod["main"]
    # drop parameters nothing reads any more (the float weights of the planned layers)
    used_vars = {v.name for v in relax.analysis.free_vars(func.body)}
    keep = list(func.params[:num_input]) + [v for v in func.params[num_input:] if v.name in used_vars]
    func = relax.Function(keep, func.body, func.ret_ty, func.is_pure, func.attrs)
    mod["main"] = func
    names = [v.name for v in func.params]
    input_names, param_names = names[:num_input], names[num_input:]
    used = set(param_names)
    return Lowered(mod, param_names, {k: v for k, v in params.items() if k in used}, input_names, lowered_layers,
                   {fqn: v for fqn, v in tables.items() if v in used})


def _fp16_tables(mod: Any, num_input: int, params: dict[str, np.ndarray], placeholder_to_fqn: dict[str, str]):
    """Rewrite ``take(W, ids)`` into ``astype(take(W16, ids), float32)`` for every float32 parameter W
    of ``main`` whose only uses are as ``take``'s data; W16 (W rounded to float16) becomes a new
    parameter (appended), W is left unused. Returns (module, {model parameter name: W16's name})."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, PyExprVisitor, mutator, visitor

    import tvm

    op_take = tvm.ir.Op.get("relax.take")
    func = mod["main"]
    cands = {v for v in func.params[num_input:] if isinstance(v.ty, relax.TensorType) and str(v.ty.dtype) == "float32"}
    uses: dict[Any, list[bool]] = {}

    @visitor
    class Uses(PyExprVisitor):
        def visit_call_(self, call):  # noqa: N802
            for i, a in enumerate(call.args):
                if a in cands:
                    uses.setdefault(a, []).append(call.op == op_take and i == 0)
                else:
                    self.visit_expr(a)

    Uses().visit_expr(func)
    chosen = {v for v, u in uses.items() if u and all(u)}
    if not chosen:
        return mod, {}
    new_vars: dict[Any, Any] = {}
    for v in func.params[num_input:]:
        if v in chosen:
            arr = params[v.name].astype(np.float16)
            name = f"{v.name}__fp16"
            params[name] = arr
            new_vars[v] = relax.Var(name, relax.TensorType(arr.shape, "float16"))

    @mutator
    class Cast(PyExprMutator):
        def visit_call_(self, call):  # noqa: N802
            call = self.visit_expr_post_order(call)
            if call.op == op_take and call.args[0] in new_vars:
                g = self.builder_.emit(relax.Call(op_take, [new_vars[call.args[0]], *call.args[1:]], call.attrs))
                return relax.op.astype(g, "float32")
            return call

    m = Cast(mod)
    m.builder_.update_func(mod.get_global_var("main"), m.visit_expr(func))
    mod = m.builder_.get()
    func = mod["main"]
    func = relax.Function(list(func.params) + list(new_vars.values()), func.body, func.ret_ty, func.is_pure, func.attrs)
    mod["main"] = func
    return mod, {placeholder_to_fqn.get(v.name, v.name).removeprefix(TensorOutputs.PREFIX): nv.name for v, nv in new_vars.items()}
