"""Measured per-layer latency: compile each (layer shape, candidate) alone, time it, cache it on disk.

The timer is ``backends.tvm.time_layer`` when the TVM backend provides it, else ``tvm_backend_time_layer``
(the backend's own scheduled kernels for one layer), else ``tvm_time_layer`` (a single Linear/Conv in the
candidate's storage formats through the default Relax pipeline, untuned, timed with the VM). Any callable with the same signature can be
injected (``timer=``), e.g. a torch-on-GPU timer on the device machine.

Cache: one JSON file per (target, timer, layer shape, batch, candidate) under
``<cache_dir>/cost-measured/<target>/``, written atomically, so a second table build re-times nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from backends.targets import Target
from mpsearch.atomic import atomic_write_json
from mpsearch.cache import user_cache_dir
from mpsearch.errors import MpsearchError
from mpsearch.formats import parse_format
from mpsearch.graph import LayerGraph, LayerInfo
from mpsearch.plan import Candidate


class LayerTimer(Protocol):
    def __call__(self, layer: LayerInfo, candidate: Candidate, target: Target, *, repeats: int = ..., number: int = ...) -> float: ...


@dataclasses.dataclass(frozen=True)
class MeasureConfig:
    """How many timings per entry: median of ``repeats`` runs of ``number`` calls each; with ``rounds`` > 1
    every new entry is timed again in each later round (all entries once per round, so the rounds are
    spread in time) and the fastest round is kept. On a shared machine another job's burst inflates a
    whole median; the minimum over time-separated rounds is what the kernel costs when it has the core."""

    repeats: int = 5
    number: int = 10
    rounds: int = 1


def scaled_layer(layer: LayerInfo, batch: int) -> LayerInfo:
    """The layer with its activation shapes at ``batch`` samples (the graph holds the example batch)."""
    if not layer.in_shape or layer.in_shape[0] == batch:
        return layer
    f = batch / max(int(layer.in_shape[0]), 1)
    return dataclasses.replace(
        layer,
        in_shape=(batch, *layer.in_shape[1:]),
        out_shape=(batch, *layer.out_shape[1:]),
        macs=int(round(layer.macs * f)),
    )


def timer_id(timer: Callable[..., float]) -> str:
    return f"{getattr(timer, '__module__', '?')}.{getattr(timer, '__qualname__', type(timer).__name__)}"


def timer_version(timer: Callable[..., float]) -> str:
    """What the timer compiles, as a version string: the timer's ``cache_version`` attribute, else its
    module's ``KERNEL_CACHE_VERSION`` (``backends.tvm.timing`` bumps it whenever the kernels change).

    Part of the cache key: latencies timed with older kernels must not be served for newer ones (stale
    entries once made MiniLM's fp32 Linears read 10x slower than the kernels the artifacts run)."""
    import sys

    v = getattr(timer, "cache_version", None)
    if v is None:
        v = getattr(sys.modules.get(getattr(timer, "__module__", "") or ""), "KERNEL_CACHE_VERSION", None)
    return "" if v is None else str(v)


def cache_key(layer: LayerInfo, cand: Candidate, target: Target, timer: Callable[..., float], *, cold: bool = False) -> str:
    """Entries are shared by every layer with the same shape: MiniLM's 36 Linears time as 4 shapes.
    ``cold``: timed with the weights flushed from the caches (a different quantity, a different key)."""
    ident = {
        "target": target.name,
        "timer": timer_id(timer),
        "kind": layer.kind,
        "w": list(layer.weight_shape),
        "in": list(layer.in_shape),
        "out": list(layer.out_shape),
        "bias": layer.has_bias,
        "attrs": layer.attrs,
        "cand": cand.key,
    }
    version = timer_version(timer)
    if version:  # absent for unversioned timers: their keys stay as before
        ident["timer_version"] = version
    if cold:  # absent for warm timings: their keys stay as before
        ident["cold_weights"] = True
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]


def default_timer() -> Callable[..., float]:
    """``backends.tvm.time_layer`` if the TVM backend has it; else ``tvm_backend_time_layer`` (the backend's
    scheduled kernels) when those modules exist; else this module's plain ``tvm_time_layer``."""
    try:
        from backends.tvm import time_layer  # type: ignore[attr-defined]

        return time_layer
    except (ImportError, AttributeError):
        pass
    try:
        import backends.tvm.kernels  # noqa: F401
        import backends.tvm.schedule_cpu  # noqa: F401

        return tvm_backend_time_layer
    except ImportError:
        return tvm_time_layer


def measure_latencies(
    graph: LayerGraph,
    entries: dict[str, list[Candidate]],
    target: Target,
    *,
    batch: int = 1,
    cache_dir: str | Path | None = None,
    timer: Callable[..., float] | None = None,
    config: MeasureConfig = MeasureConfig(),
    progress: Callable[[str], None] | None = None,
    cold: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Seconds per (layer, candidate) for the requested entries; returns (latencies, info).

    Candidates in ``cold`` are timed with their weights flushed from the caches before every call
    (``timer(..., cold_weights=True)``): the condition inside a deployed model whose weights do not stay
    cached (see ``build_cost_table(residency="deployed")``). A timer without that keyword refuses them.

    ``info`` says how many entries were timed now vs. read from cache, and which ones the timer refused
    (an MpsearchError from the timer: the candidate is left out, like unsupported ones).
    """
    timer = timer or default_timer()
    root = Path(cache_dir) if cache_dir is not None else user_cache_dir()
    folder = root / "cost-measured" / _safe(target.name)
    out: dict[str, dict[str, float]] = {}
    info: dict[str, Any] = {"timer": timer_id(timer), "timed": 0, "cached": 0, "refused": [], "cache_dir": str(folder)}
    rounds = max(1, int(getattr(config, "rounds", 1)))
    pending: dict[str, dict[str, Any]] = {}  # cache key -> first-round timing of an entry timed now
    slots: list[tuple[str, str, str | float]] = []  # (layer, candidate, seconds or pending cache key)

    def checked(seconds: float, name: str, cand: Candidate) -> float:
        if not (seconds > 0 and np.isfinite(seconds)):
            raise MpsearchError(f"timer returned {seconds!r} s for layer {name!r} / {cand.key}; expected a positive time")
        return seconds

    def call(layer: LayerInfo, cand: Candidate) -> float:
        kw = {"cold_weights": True} if cand.key in cold else {}
        try:
            return float(timer(layer, cand, target, repeats=config.repeats, number=config.number, **kw))
        except TypeError as e:
            if kw and "cold_weights" in str(e):
                raise MpsearchError(f"timer {info['timer']} cannot time with cold weights") from e
            raise

    def time_once(layer: LayerInfo, name: str, cand: Candidate) -> float:
        return checked(call(layer, cand), name, cand)

    def save(p: dict[str, Any], n_rounds: int) -> None:
        atomic_write_json(p["path"], {"latency_s": p["seconds"], "layer_kind": p["layer"].kind, "candidate": p["cand"].key,
                                      "target": target.name, "timer": info["timer"], "timer_version": timer_version(timer),
                                      "repeats": config.repeats, "number": config.number, "rounds": n_rounds,
                                      "cold_weights": p["cand"].key in cold})
        info["timed"] += 1
        if progress:
            progress(f"timed {p['name']} {p['cand'].key}: {p['seconds'] * 1e6:.1f} us")

    for name, cands in entries.items():
        layer = scaled_layer(graph[name], batch)
        out[name] = {}
        for cand in cands:
            key = cache_key(layer, cand, target, timer, cold=cand.key in cold)
            if key in pending:  # same shape as a layer timed in this call
                info["cached"] += 1
                slots.append((name, cand.key, key))
                continue
            path = folder / f"{key}.json"
            seconds = _read(path)
            if seconds is not None:
                info["cached"] += 1
                slots.append((name, cand.key, seconds))
                continue
            try:
                seconds = call(layer, cand)
            except MpsearchError as e:  # the timer refuses this candidate: left out, like unsupported ones
                info["refused"].append({"layer": name, "candidate": cand.key, "reason": str(e)})
                continue
            seconds = checked(seconds, name, cand)
            pending[key] = {"layer": layer, "name": name, "cand": cand, "path": path, "seconds": seconds}
            slots.append((name, cand.key, key))
            if rounds == 1:  # final now: checkpoint at once, so a killed profile keeps every finished entry
                save(pending[key], 1)
    for _ in range(1, rounds):
        for p in pending.values():
            p["seconds"] = min(p["seconds"], time_once(p["layer"], p["name"], p["cand"]))
    if rounds > 1:  # an entry is final (and cached) only once every round has seen it
        for p in pending.values():
            save(p, rounds)
    for name, cand_key, value in slots:
        out[name][cand_key] = pending[value]["seconds"] if isinstance(value, str) else value
    return out, info


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _read(path: Path) -> float | None:
    if not path.is_file():
        return None
    try:
        v = float(json.loads(path.read_text())["latency_s"])
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None  # a corrupt entry is re-timed and overwritten
    return v if v > 0 else None


# -- the fallback timer: one layer compiled with TVM for this CPU -------------------------------------
_TVM_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def tvm_time_layer(layer: LayerInfo, candidate: Candidate, target: Target, *, repeats: int = 5, number: int = 10) -> float:
    """Compile one Linear/Conv2d with the candidate's storage formats via ``tvm.compile`` and time it.

    Operands arrive in their storage form: INT activations as int8 codes (the producer's epilogue
    quantizes), INT2/INT4 weights packed in uint8 and unpacked in the kernel, other INT weights as int8,
    float formats in their dtype. The MACs run in the compute type ``target.execution`` picks (int8 with
    int32 accumulation, or fp32); conversions to it happen inside the kernel, so they are timed.
    """
    import tvm
    from tvm import relax

    if target.kind != "cpu":
        raise MpsearchError(f"the built-in TVM timer runs on this CPU only, not on {target.kind} target {target.name!r}",
                            hint="pass timer= for other devices")
    ex = target.execution(candidate)
    if ex is None:
        raise MpsearchError(f"target {target.name!r} cannot run {candidate.key}")
    if layer.kind not in ("linear", "conv2d"):
        raise MpsearchError(f"the built-in TVM timer handles linear and conv2d layers, not {layer.kind}")
    compute = ex.compute.name
    if compute not in ("fp32", "int8"):
        raise MpsearchError(f"the built-in TVM timer computes in fp32 or int8, not {compute}")
    bb = relax.BlockBuilder()
    args, params, feed = _operands(layer, candidate, compute)
    with bb.function("main", params):
        with bb.dataflow():
            x = _prepare_act(bb, args["x"], candidate.act, compute)
            w = _prepare_weight(bb, args, layer, candidate.weight, compute)
            acc = _mac(bb, x, w, layer, compute)
            y = _epilogue(bb, acc, args, layer, compute)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    tvm_target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    exe = tvm.compile(mod, tvm_target)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(exe, dev)
    inputs = [tvm.runtime.tensor(a, dev) for a in feed]
    once = vm.time_evaluator("main", dev, number=1, repeat=1)(*inputs).mean  # warm-up and a first estimate
    number = max(1, min(number, int(0.05 / max(once, 1e-9))))  # slow kernels: fewer calls per repeat
    res = vm.time_evaluator("main", dev, number=number, repeat=repeats)(*inputs)
    return float(res.median)


def _flat_in(layer: LayerInfo) -> tuple[int, ...]:
    if layer.kind == "linear":
        m = int(np.prod(layer.in_shape[:-1])) if len(layer.in_shape) > 1 else 1
        return (m, int(layer.in_shape[-1]))
    return tuple(int(s) for s in layer.in_shape)


def _operands(layer: LayerInfo, cand: Candidate, compute: str):
    """Relax parameters and random inputs in the candidate's storage forms."""
    from tvm import relax

    rng = np.random.default_rng(0)
    wf, af = parse_format(cand.weight), parse_format(cand.act)
    n_out = int(layer.weight_shape[0])
    k_flat = int(np.prod(layer.weight_shape[1:]))
    in_shape = _flat_in(layer)
    specs: list[tuple[str, tuple[int, ...], str, np.ndarray]] = []
    if af.family == "int":
        x = rng.integers(-(2 ** (af.element_bits - 1)) + 1, 2 ** (af.element_bits - 1), size=in_shape).astype(np.int8)
        specs.append(("x", in_shape, "int8", x))
    else:
        specs.append(("x", in_shape, _TVM_DTYPE[af.spelling], rng.standard_normal(in_shape).astype(np.float32)))
    if wf.family == "int":
        bits = wf.element_bits
        codes = rng.integers(0, 2**bits, size=(n_out, k_flat)).astype(np.uint8)
        if bits in (2, 4):
            per = 8 // bits
            pad = (-k_flat) % per
            c = np.pad(codes, ((0, 0), (0, pad))).reshape(n_out, -1, per)
            packed = np.zeros(c.shape[:2], np.uint8)
            for j in range(per):
                packed |= (c[:, :, j] << (bits * j)).astype(np.uint8)
            specs.append(("wq", packed.shape, "uint8", packed))
        else:
            specs.append(("wq", (n_out, k_flat), "int8", (codes.astype(np.int16) - 2 ** (bits - 1)).astype(np.int8)))
        specs.append(("ws", (n_out,), "float32", rng.random(n_out).astype(np.float32) * 0.01 + 1e-3))
    else:
        specs.append(("wq", tuple(int(s) for s in layer.weight_shape), _TVM_DTYPE[wf.spelling],
                      rng.standard_normal(layer.weight_shape).astype(np.float32)))
    if layer.has_bias:
        specs.append(("b", (n_out,), "float32", rng.standard_normal(n_out).astype(np.float32)))
    args, params, feed = {}, [], []
    import ml_dtypes

    np_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "int8": np.int8, "uint8": np.uint8}
    for name, shape, dtype, value in specs:
        v = relax.Var(name, relax.TensorType(shape, dtype))
        args[name] = v
        params.append(v)
        feed.append(np.ascontiguousarray(value.astype(np_dtype[dtype])))
    return args, params, feed


def _prepare_act(bb, x, act: str, compute: str):
    from tvm import relax

    af = parse_format(act)
    if compute == "int8":
        return x  # int8 codes already
    if af.family == "int":  # dequantize per tensor into fp32
        return bb.emit(relax.op.multiply(relax.op.astype(x, "float32"), relax.const(0.05, "float32")))
    return x if af.spelling == "fp32" else bb.emit(relax.op.astype(x, "float32"))


def _prepare_weight(bb, args, layer: LayerInfo, weight: str, compute: str):
    """Weight in the compute type and the layer's weight shape (unpacking / dequantizing as needed)."""
    from tvm import relax, te

    wf = parse_format(weight)
    shape = tuple(int(s) for s in layer.weight_shape)
    if wf.family != "int":
        w = args["wq"]
        return w if wf.spelling == "fp32" else bb.emit(relax.op.astype(w, "float32"))
    bits = wf.element_bits
    n_out, k_flat = shape[0], int(np.prod(shape[1:]))
    if bits in (2, 4):
        per, mask, off = 8 // bits, (1 << bits) - 1, 1 << (bits - 1)

        def unpack(p):
            return te.compute(
                (n_out, k_flat),
                lambda n, k: (((p[n, k // per] >> ((k % per) * bits).astype("uint8")) & mask).astype("int8") - off).astype("int8"),
                name="unpack",
            )

        codes = bb.emit_te(unpack, args["wq"])
    else:
        codes = args["wq"]
    if compute == "float32" or compute == "fp32":
        scale = relax.op.reshape(args["ws"], (n_out, 1))
        codes = bb.emit(relax.op.multiply(relax.op.astype(codes, "float32"), scale))
    return bb.emit(relax.op.reshape(codes, shape)) if len(shape) > 2 else codes


def _mac(bb, x, w, layer: LayerInfo, compute: str):
    from tvm import relax

    out_dtype = "int32" if compute == "int8" else "float32"
    if layer.kind == "linear":
        return bb.emit(relax.op.matmul(x, relax.op.permute_dims(w), out_dtype=out_dtype))
    a = layer.attrs
    pad = a.get("padding", [0, 0])
    if isinstance(pad, str):
        raise MpsearchError(f"the built-in TVM timer needs numeric conv padding, layer {layer.name!r} has {pad!r}")
    return bb.emit(relax.op.nn.conv2d(x, w, strides=a.get("stride", [1, 1]), padding=pad, dilation=a.get("dilation", [1, 1]),
                                      groups=a.get("groups", 1), out_dtype=out_dtype))


def _epilogue(bb, acc, args, layer: LayerInfo, compute: str):
    """Back to fp32 output: per-channel weight scale x activation scale for int8 MACs, plus bias."""
    from tvm import relax

    n_out = int(layer.weight_shape[0])
    bshape = (1, n_out) if layer.kind == "linear" else (1, n_out, 1, 1)
    y = acc
    if compute == "int8":
        s = relax.op.reshape(relax.op.multiply(args["ws"], relax.const(0.05, "float32")), bshape)
        y = bb.emit(relax.op.multiply(relax.op.astype(acc, "float32"), s))
    if "b" in args:
        y = bb.emit(relax.op.add(y, relax.op.reshape(args["b"], bshape)))
    return y


def tvm_backend_time_layer(layer: LayerInfo, candidate: Candidate, target: Target, *, repeats: int = 5, number: int = 10) -> float:
    """Time the TVM backend's own scheduled CPU kernel for one layer (``backends.tvm.kernels`` +
    ``schedule_cpu``): the kernels an artifact would run, with activation quantization inside the kernel
    and weights in the backend's packed layout. Used until ``backends.tvm.time_layer`` exists."""
    import tvm
    import torch

    from backends.tvm.kernels import conv2d_kernel, linear_kernel
    from backends.tvm.schedule_cpu import schedule_conv2d_cpu, schedule_linear_cpu
    from backends.tvm.weights import act_quant, prepare_weight

    if target.kind != "cpu":
        raise MpsearchError(f"the TVM backend timer runs on this CPU only, not on {target.kind} target {target.name!r}")
    if target.execution(candidate) is None:
        raise MpsearchError(f"target {target.name!r} cannot run {candidate.key}")
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(tuple(layer.weight_shape), generator=gen) * 0.1
    aq = act_quant(candidate.act, 4.0)
    pw = prepare_weight(w, candidate.weight, aq)
    if layer.kind == "linear":
        m = int(np.prod(layer.in_shape[:-1])) if len(layer.in_shape) > 1 else 1
        func, spec = linear_kernel(m, pw, aq)
        func = schedule_linear_cpu(func, m, pw.out_channels)
    elif layer.kind == "conv2d":
        a = layer.attrs
        if isinstance(a.get("padding"), str):
            raise MpsearchError(f"layer {layer.name!r}: string padding is not supported by the timer")
        func, spec = conv2d_kernel(tuple(layer.in_shape), tuple(layer.weight_shape[2:]), tuple(a["stride"]), tuple(a["padding"]),
                                   tuple(a["dilation"]), int(a["groups"]), pw, aq)
        func = schedule_conv2d_cpu(func, spec.out_shape, int(a["groups"]))
    else:
        raise MpsearchError(f"the TVM backend timer handles linear and conv2d layers, not {layer.kind}")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(
        {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}))
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal(spec.x_shape).astype(np.float32), dev)]
    args += [tvm.runtime.tensor(pw.arrays[n], dev) for n in spec.param_names]
    args.append(tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32), dev))
    mod = lib.jit() if hasattr(lib, "jit") else lib
    once = mod.time_evaluator("main", dev, number=1, repeat=1)(*args).mean
    number = max(1, min(number, int(0.05 / max(once, 1e-9))))
    return float(mod.time_evaluator("main", dev, number=number, repeat=repeats)(*args).median)
