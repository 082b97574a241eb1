"""Measured latency of one quantized Conv/Linear: the kernel an artifact would run, timed in isolation.

Used by the cost model for measured latency tables. Compiled kernels are cached in memory and as shared
libraries under the user cache dir, keyed by (target, shapes, formats), so a table over many layers of
the same shape compiles each kernel once.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import torch

from backends.tvm.kernels import KernelSpec, conv2d_kernel, kernel_arrays, linear_kernel
from backends.tvm.target import ResolvedTarget, resolve_target
from backends.tvm.weights import ActQuant, PreparedWeight, act_quant, prepare_weight
from mpsearch.cache import user_cache_dir
from mpsearch.errors import MpsearchError
from mpsearch.graph import LayerInfo
from mpsearch.plan import Candidate

KERNEL_CACHE_VERSION = "k9"


def _pair(v, n: int = 2) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return tuple(int(v) for _ in range(n))


def conv_geometry(kind: str, in_shape, weight_shape, attrs) -> dict:
    """Conv attributes as 2-D (conv1d becomes a 1-row conv2d)."""
    if isinstance(attrs.get("padding"), str):
        raise MpsearchError(f"string padding {attrs['padding']!r} is not supported by the TVM backend; use explicit padding")
    if kind == "conv1d":
        b, c, length = in_shape
        return dict(x_shape=(b, c, 1, length), kernel=(1, int(weight_shape[2])), stride=(1, _pair(attrs["stride"], 1)[0]),
                    padding=(0, _pair(attrs["padding"], 1)[0]), dilation=(1, _pair(attrs["dilation"], 1)[0]), groups=int(attrs.get("groups", 1)))
    return dict(x_shape=tuple(int(s) for s in in_shape), kernel=tuple(int(s) for s in weight_shape[2:]), stride=_pair(attrs["stride"]),
                padding=_pair(attrs["padding"]), dilation=_pair(attrs["dilation"]), groups=int(attrs.get("groups", 1)))


def layer_kernel(kind: str, in_shape, weight_shape, attrs, pw: PreparedWeight, aq: ActQuant | None, target: ResolvedTarget,
                 *, schedule: bool = True, out_lead: tuple[int, ...] | None = None, pack: bool = False):
    """PrimFunc + KernelSpec for one layer on ``target``, scheduled unless ``schedule=False`` (the CPU
    pipeline schedules kernels after Relax fused their elementwise consumers into them). ``out_lead``:
    leading output dims of a linear kernel (see ``linear_kernel``). ``pack``: fp32 linear weights in the
    CPU schedule's tile-major layout (``kernels.pack_fp32_weight`` with ``spec.pack_cols``)."""
    if kind == "linear":
        m = int(np.prod(in_shape[:-1])) if len(in_shape) > 1 else 1
        tiles = cols = None
        if target.kind == "llvm":
            from backends.tvm.schedule_cpu import linear_pack_cols, linear_row_tiles

            tiles = linear_row_tiles(target.tvm())
            cols = linear_pack_cols(pw.out_channels, target.tvm()) if pack else None
        func, spec = linear_kernel(m, pw, aq, out_lead, row_tiles=tiles, pack_cols=cols)
        if not schedule:
            return func, spec
        if target.kind == "cuda":
            from backends.tvm.schedule_gpu import schedule_linear_gpu

            return schedule_linear_gpu(func, m, pw), spec
        from backends.tvm.schedule_cpu import schedule_linear_cpu

        return schedule_linear_cpu(func, m, pw.out_channels), spec
    if kind in ("conv1d", "conv2d"):
        g = conv_geometry(kind, in_shape, weight_shape, attrs)
        func, spec = conv2d_kernel(g["x_shape"], g["kernel"], g["stride"], g["padding"], g["dilation"], g["groups"], pw, aq,
                                   index64=target.kind != "cuda")
        if not schedule:
            return func, spec
        if target.kind == "cuda":
            from backends.tvm.schedule_gpu import schedule_generic_gpu

            return schedule_generic_gpu(func), spec
        from backends.tvm.schedule_cpu import schedule_conv2d_cpu

        return schedule_conv2d_cpu(func, spec.out_shape, g["groups"]), spec
    raise MpsearchError(f"the TVM backend handles linear, conv1d and conv2d layers, not {kind!r}")


def _kernel_key(target: ResolvedTarget, spec: KernelSpec, cand: Candidate, pw: PreparedWeight, aq: ActQuant | None) -> str:
    """Everything compiled into the kernel: shapes, formats, the weight layout and the act quantizer
    constants (activation scale and zero point are immediates in the code)."""
    import tvm

    from backends.tvm.kernels import int8_exact_in_fp32

    layout = (pw.mode, pw.bits, pw.coding, pw.offset, pw.group, pw.per_byte, pw.has_zp, tuple(sorted(pw.arrays)),
              int8_exact_in_fp32(pw, aq))
    act = None if aq is None else (aq.spelling, aq.qmin, aq.qmax, float(aq.scale).hex(), float(aq.zero_point).hex())
    ident = f"{KERNEL_CACHE_VERSION}|{tvm.__version__}|{target.name}|{spec.key()}|{cand.key}|{layout}|{act}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


@lru_cache(maxsize=256)
def _load_kernel(path: str):
    import tvm

    return tvm.runtime.load_module(path)


def compiled_kernel(layer: LayerInfo, candidate: Candidate, target: ResolvedTarget, pw: PreparedWeight, aq: ActQuant | None):
    """(runtime module, KernelSpec): from the on-disk kernel cache, or compiled and stored there. The
    kernel takes ``kernels.kernel_arrays(pw, spec)`` (the artifact's weight layout)."""
    import tvm

    # the layout an artifact uses (linear weights tile-major on AVX-512); feed it kernel_arrays(pw, spec)
    func, spec = layer_kernel(layer.kind, layer.in_shape, layer.weight_shape, layer.attrs, pw, aq, target, pack=True)
    folder = user_cache_dir() / "tvm-kernels"
    path = folder / f"{_kernel_key(target, spec, candidate, pw, aq)}.so"
    if not path.is_file():
        lib = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm())
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{path.name}.{id(lib)}.tmp.so"
        lib.export_library(str(tmp))
        tmp.replace(path)
    return _load_kernel(str(path)), spec


def time_layer(layer_info: LayerInfo, candidate: Candidate | str, target="llvm", *, repeats: int = 5, number: int = 10,
               min_repeat_ms: float = 0.0, cold_weights: bool = False) -> float:
    """Median seconds of one call of the layer's kernel (act quantization + weight decode + dot product).

    Weights are random (latency does not depend on values); the activation range is a fixed amax.
    Only the CPU is timed here: CUDA kernels run on the device machine (benchmarks/gpu/).

    ``cold_weights``: before every call the weights (and the output) are flushed from all cache levels,
    the input stays cached (its producer just wrote it): how the kernel runs inside a deployed model whose
    weights do not stay cached between forward passes. Called back to back, a kernel finds its weights
    cached; in MiniLM's whole-model runs its layers took 1.31x (fp32) / 1.07x (int8) those warm timings
    and matched the cold ones within 2%. Each call is timed alone (``repeats * number`` of them).
    """
    import tvm

    cand = candidate if isinstance(candidate, Candidate) else Candidate.parse(str(candidate))
    tgt = resolve_target(target)
    if tgt.kind != "llvm":
        raise MpsearchError("time_layer measures on this machine's CPU only; CUDA kernels are timed on the device (benchmarks/gpu/)")
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(tuple(layer_info.weight_shape), generator=gen) * 0.1
    aq = act_quant(cand.act, 4.0)
    pw = prepare_weight(w, cand.weight, aq)
    mod, spec = compiled_kernel(layer_info, cand, tgt, pw, aq)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal(spec.x_shape).astype(np.float32), dev)]
    args += [tvm.runtime.tensor(a, dev) for a in kernel_arrays(pw, spec)]
    args.append(tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32), dev))
    once = mod.time_evaluator("main", dev, number=1, repeat=1)(*args).mean  # also warms up
    if cold_weights:  # TVM's flush: clflush every argument but the first before each repeat
        calls = max(1, min(int(repeats) * int(number), int(0.1 / max(once, 1e-9))))
        res = mod.time_evaluator("main", dev, number=1, repeat=calls, f_preproc="cache_flush_cpu_non_first_arg")(*args)
        return float(res.median)
    number = max(1, min(int(number), int(0.05 / max(once, 1e-9))))
    res = mod.time_evaluator("main", dev, number=number, repeat=int(repeats), min_repeat_ms=int(min_repeat_ms))(*args)
    return float(res.median)
