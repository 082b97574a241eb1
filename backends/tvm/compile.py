"""``compile_plan``: plan -> Relax -> compiled library + packed weights + manifest, checked for parity.

Parity is measured, not assumed: after building, the artifact is loaded back through the runtime loader
(checksums included) and run on the example input, and its output is compared with
``apply_plan(model, plan, act_amax)``. The max abs difference is stored in the manifest; beyond the
tolerance the build fails.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from backends.tvm.lower import lower_plan, tensor_outputs
from backends.tvm.target import resolve_target
from mpsearch.artifact import MPSEARCH_VERSION, Artifact, TensorSpec
from mpsearch.atomic import atomic_write_text
from mpsearch.errors import MpsearchError
from mpsearch.graph import LayerGraph
from mpsearch.plan import Plan
from mpsearch.simulate import apply_plan


@dataclass(frozen=True)
class ParityTolerance:
    """|artifact - simulation| <= atol + rtol * max|simulation| (float summation order differs)."""

    atol: float = 1e-4
    rtol: float = 2e-3

    def bound(self, ref: np.ndarray) -> float:
        return self.atol + self.rtol * float(np.abs(ref).max(initial=0.0))


def _write_safetensors(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    os.replace(tmp, path)


def build_module(mod: Any, target, tuning: str = "none", progress: Callable[[str], None] | None = None,
                 tuning_trials: int = 512, fast_math: bool = False, cuda_graph: bool = False,
                 exact_erf: bool = False) -> Any:
    """Compile the Relax module for ``target`` (a ResolvedTarget); returns the executable.

    ``exact_erf`` (llvm): libm's scalar erf instead of the vectorizable one (see ``_erf_legalize``).

    ``cuda_graph`` (CUDA only): TVM's ``RewriteCUDAGraph`` captures the static parts of ``main`` (kernel
    launches and their memory) into CUDA graphs on the first call and replays them afterwards."""
    import tvm

    if tuning not in ("none", "cached", "tune"):
        raise MpsearchError(f"tuning must be 'none', 'cached' or 'tune', got {tuning!r}")
    if tuning != "none":
        from backends.tvm.tuning import apply_tuning

        mod = apply_tuning(mod, target, tune=tuning == "tune", trials=tuning_trials, progress=progress)
    if target.kind == "cuda":
        from backends.tvm.cuda_build import cuda_build_env

        import contextlib

        ctx = (tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": True}) if cuda_graph
               else contextlib.nullcontext())
        with cuda_build_env(), target.tvm(), ctx:
            return tvm.compile(mod, target=target.tvm())
    if cuda_graph:
        raise MpsearchError("cuda_graph applies to CUDA targets only")
    return tvm.compile(mod, target=target.tvm(), relax_pipeline=cpu_pipeline(target.tvm(), fast_math, exact_erf))


def _erf_legalize(bb, call):
    """``relax.erf`` -> TVM's rational erf (``topi.fast_erf``: clamp, two polynomials, one division):
    vectorizable, unlike the scalar libm ``erff`` call of the exact legalization (MiniLM's GELU took
    3.6 of 18 ms). Max error 5 ulp / 3.4e-7 abs; a GELU built on it is within 1.0e-6 of the exact one,
    closer than torch's own CPU GELU (1.2e-6, what the simulation runs), so it is the default for
    plans with float activations. Plans that quantize activations keep libm's erf (``compile_plan``):
    there a GELU feeds a rounding step, and a value that moves across a code boundary flips a code that
    cascades through the later quantized layers (MiniLM int8/int8 on its example input: 0.18 max abs
    diff with this erf, 1.1e-6 with libm's). Neither is bit-faithful to torch's GELU (on 1M N(0, 2)
    inputs libm's differs from it in 33% of the outputs, this one in 45%, both by <= 1.4e-6); libm's
    is kept there because it is the one that passes that parity check."""
    from tvm import topi

    return bb.call_te(topi.fast_erf, call.args[0], primfunc_name_hint="erf")


def cpu_pipeline(target, fast_math: bool = False, exact_erf: bool = False) -> Any:
    """TVM's CPU pipeline with the backend's schedules: layer kernels with their fused epilogues
    (``schedule_cpu``), vectorized element-wise functions, softmax / layer norm / attention matmuls
    (``schedule_ops``) and a vectorizable erf (``_erf_legalize``; ``exact_erf`` keeps libm's). With
    ``fast_math`` also TVM's approximate exp/tanh (not bit-faithful: an int8-activation layer after a
    softmax can then round some inputs to the neighbouring code, which the parity check catches)."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from backends.tvm.schedule_cpu import schedule_kernels_pass
    from backends.tvm.schedule_ops import schedule_elementwise_pass

    @tvm.transform.module_pass(opt_level=0, name="mpsearch.CPUPipeline")
    def pipeline(mod, _ctx):
        with target:
            legalize = cpu.legalize_passes(target)
            if not exact_erf:
                legalize = [relax.transform.LegalizeOps({"relax.erf": _erf_legalize})] + legalize[1:]
            seq = tvm.transform.Sequential(
                cpu.library_dispatch_passes(target) + ([relax.transform.FastMathTransform()] if fast_math else [])
                + legalize + [schedule_kernels_pass(), schedule_elementwise_pass()]
                + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
            return seq(mod)

    return pipeline


def fp16_rounded_tables(model: torch.nn.Module, names) -> torch.nn.Module:
    """A copy of ``model`` whose parameters ``names`` are rounded to float16 (kept float32): the float
    model an artifact built with ``fp16_tables`` computes."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for n in names:
            p = m.get_parameter(n)
            p.copy_(p.half().float())
    return m


def compile_plan(model: torch.nn.Module, graph: LayerGraph, plan: Plan, act_amax: dict[str, float] | None,
                 example_input: tuple, *, target: Any = "llvm", out_dir: str | Path, tuning: str = "none",
                 progress: Callable[[str], None] | None = None, tolerance: ParityTolerance = ParityTolerance(),
                 check_parity: bool = True, tuning_trials: int = 512, fast_math: bool = False,
                 fp16_tables: bool = False, cuda_graph: bool = False) -> Artifact:
    """Compile ``plan`` for ``target`` into ``out_dir`` and return its verified manifest.

    ``example_input`` fixes the input shapes of the compiled model. On llvm the artifact is run back and
    compared with the PyTorch simulation (``check_parity``); CUDA artifacts carry ``reference.npz`` and are
    checked on the device (``LoadedArtifact.check_reference``). ``tuning``: "none" (our schedules for the
    planned layers, TVM defaults elsewhere), "cached" (apply the MetaSchedule database in the user cache
    dir), "tune" (run ``tuning_trials`` MetaSchedule trials first; minutes). ``fast_math``: approximate
    erf/exp/tanh on llvm (see ``cpu_pipeline``; without it erf is already the vectorizable one unless the
    plan quantizes activations, ``extra["erf"]``). ``fp16_tables``: store float32 embedding
    tables (parameters read only by ``take``) as float16 (half the bytes; see ``lower_plan``); the
    reference is then the simulation of the model with those tables rounded to float16, and the
    manifest lists them under ``extra["fp16_tables"]``. ``cuda_graph``: see ``build_module``.
    """
    say = progress or (lambda _m: None)
    tgt = resolve_target(target)
    if not isinstance(example_input, tuple):
        example_input = (example_input,)
    if not all(isinstance(x, torch.Tensor) for x in example_input):
        raise MpsearchError("compile_plan needs example_input as a tuple of tensors")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise MpsearchError(f"output directory {str(out)!r} exists and is not an artifact; refusing to overwrite it")
    say(f"lowering {len(plan.layers)} planned layers to Relax for {tgt.name}")
    lowered = lower_plan(model, graph, plan, act_amax, example_input, tgt, fp16_tables=fp16_tables)
    say("compiling")
    # the vectorizable erf moves GELU outputs by ~1e-6: harmless in float, but an integer activation
    # quantizer downstream would round some of them to the neighbouring code (see _erf_legalize)
    exact_erf = any(l.act is not None for l in lowered.layers.values())
    ex = build_module(lowered.mod, tgt, tuning, progress, tuning_trials, fast_math, cuda_graph, exact_erf)

    import tvm

    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    ex.export_library(str(staging / "model.so"))
    _write_safetensors(staging / "weights.safetensors", lowered.params)
    atomic_write_text(staging / "plan.json", plan.to_json())
    ref_model = fp16_rounded_tables(model, lowered.fp16_tables) if lowered.fp16_tables else model
    with torch.no_grad():
        ref_out = apply_plan(ref_model, plan, act_amax)(*example_input)
    ref_list = list(tensor_outputs(ref_out))
    layers_info = {
        n: {"candidate": plan.layers[n].key, "mode": l.weight.mode, "bits": l.weight.bits, "group": l.weight.group,
            "weight_bytes": l.weight.storage_bytes()}
        for n, l in lowered.layers.items()
    }
    ref_arrays = {f"input{i}": x.detach().cpu().numpy() for i, x in enumerate(example_input)}
    ref_arrays.update({f"output{i}": r.detach().cpu().numpy() for i, r in enumerate(ref_list)})
    with open(staging / "reference.npz", "wb") as f:  # lets the target check parity (e.g. on the H100)
        np.savez(f, **ref_arrays)
    art = Artifact(
        directory=staging,
        target=tgt.name,
        target_kind=tgt.kind,
        plan=plan.to_dict(),
        files={"model.so": "", "weights.safetensors": "", "plan.json": "", "reference.npz": ""},
        versions={"mpsearch": MPSEARCH_VERSION, "tvm": tvm.__version__, "torch": torch.__version__, "python": platform.python_version()},
        param_names=list(lowered.param_names),
        inputs=[TensorSpec(n, tuple(int(s) for s in x.shape), str(x.dtype).replace("torch.", ""))
                for n, x in zip(lowered.input_names, example_input)],
        outputs=[TensorSpec(f"output{i}", tuple(int(s) for s in t.shape), "float32") for i, t in enumerate(ref_list)],
        extra={"host_cpu": tgt.spec.get("mcpu") if tgt.kind == "llvm" else None, "tuning": tuning, "fast_math": fast_math,
               "erf": ("fast" if fast_math or not exact_erf else "exact") if tgt.kind == "llvm" else None,
               "layers": layers_info, "fp16_tables": sorted(lowered.fp16_tables),
               "cuda_graph": cuda_graph},
    )
    art.save()
    art.parity = {"atol": tolerance.atol, "rtol": tolerance.rtol, "reference": "mpsearch.simulate.apply_plan on reference.npz"}
    if check_parity and tgt.kind == "llvm":
        from backends.artifact import load_artifact

        diff, bound = load_artifact(staging).check_reference()
        art.parity.update({"input": "example_input", "max_abs_diff": diff, "bound": bound})
        say(f"parity vs simulation: max abs diff {diff:.3g} (bound {bound:.3g})")
        if diff > bound:
            raise MpsearchError(f"compiled artifact disagrees with the simulation: max abs diff {diff:.3g} > {bound:.3g}")
    art.save()
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    art.directory = out
    say(f"artifact written to {out}")
    return art


def layer_parity(model: torch.nn.Module, graph: LayerGraph, plan: Plan, act_amax: dict[str, float] | None,
                 example_input: tuple) -> dict[str, dict[str, float]]:
    """Per-layer parity on request: each planned layer's compiled kernel (llvm) vs its simulated layer.

    The simulation is run once with hooks that record every planned layer's input and output; each
    kernel then gets the recorded input, and its output (+ bias) is compared with the recorded one.
    Returns ``{layer: {"max_abs_diff", "bound", "ok"}}``; localises a parity failure of a whole model.
    """
    import tvm

    from backends.tvm.kernels import kernel_arrays
    from backends.tvm.timing import compiled_kernel
    from backends.tvm.target import resolve_target
    from backends.tvm.weights import act_quant, prepare_weight

    tgt = resolve_target("llvm")
    sim = apply_plan(model, plan, act_amax)
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    hooks = []
    for name in plan.layers:
        def hook(_m, inputs, out, name=name):
            seen.setdefault(name, (inputs[0].detach().float().numpy(), out.detach().float().numpy()))
        hooks.append(sim.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            sim(*example_input)
    finally:
        for h in hooks:
            h.remove()
    tol = ParityTolerance()
    result: dict[str, dict[str, float]] = {}
    for name, cand in plan.layers.items():
        if name not in seen:
            continue
        x, ref = seen[name]
        info = graph[name]
        mod = model.get_submodule(name)
        aq = act_quant(cand.act, (act_amax or {}).get(name))
        pw = prepare_weight(mod.weight, cand.weight, aq)
        kern, spec = compiled_kernel(info, cand, tgt, pw, aq)
        dev = tvm.cpu()
        args = [tvm.runtime.tensor(np.ascontiguousarray(x.reshape(spec.x_shape)), dev)]
        args += [tvm.runtime.tensor(a, dev) for a in kernel_arrays(pw, spec)]
        args.append(tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32), dev))
        kern["main"](*args)
        got = args[-1].numpy()
        if getattr(mod, "bias", None) is not None:
            b = mod.bias.detach().float().numpy()
            got = got + (b.reshape(1, -1, 1, 1) if spec.kind == "conv2d" else b)
        got = got.reshape(ref.shape)
        diff = float(np.abs(got - ref).max())
        result[name] = {"max_abs_diff": diff, "bound": tol.bound(ref), "ok": diff <= tol.bound(ref)}
    return result
