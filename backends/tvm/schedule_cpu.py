"""Hand-written CPU (llvm) schedules for the layer kernels in ``kernels.py``, alone or fused.

Register-tiled implicit GEMM: an ``mt x nt`` accumulator tile lives in a local buffer (registers after
unrolling), the output-channel axis is vectorized (weights are laid out ``[K, O]`` so that axis is
contiguous; fp32 linear weights in artifacts built for AVX-512 are tile-major ``[O/nt, K, nt]``), the
weight decode is inlined into the reduction (or hoisted per output tile when several row tiles reuse
it), and the outer tiles run in parallel when the layer is big enough and the build is for more than
one thread (``build_threads``). AVX-512 targets get 16-lane vectors and up to 6 x 64 linear tiles.
"""

from __future__ import annotations

import os

import tvm
from tvm import s_tir

VEC = 8  # fp32 lanes of an AVX2 register
VEC512 = 16  # fp32 lanes of an AVX-512 register (linear kernels only)

#: AVX-512 linear tiles: up to 6 rows x 64 channels (24 of the 32 zmm registers as accumulators)
LINEAR_COLS_AVX512 = (64, 48, 32, 16)
#: a hoisted (non-trivial) weight decode writes a [kb, nt] local slice; kept within L1 (32 KB)
DECODE_SLICE_FLOATS = 8192

#: reductions longer than this are blocked (weight slice of a 16-wide output tile: 512 x 16 x 4 B = 32 KB)
K_BLOCK_MAX = 512
K_BLOCKS = (256, 384, 192, 128, 64)

#: below this many multiply-adds a kernel runs on one thread (waking the pool costs ~10 us)
PARALLEL_MIN_MACS = 1 << 18


def build_threads() -> int:
    """Threads the compiled code will run with, as the build sees it: ``TVM_NUM_THREADS`` if set, else
    the core count. With one thread a ``parallel`` loop only costs: TVM outlines it into a closure
    called through the thread pool, and LLVM then optimizes the body worse (MiniLM's 41 x 384 x 1536
    linear: 76 vs 107 GFLOP/s on one Zen 4 core), so kernels are parallelized only when this is > 1."""
    env = os.environ.get("TVM_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return os.cpu_count() or 1


def _parallel_ok(work: int) -> bool:
    return work >= PARALLEL_MIN_MACS and build_threads() > 1


def has_avx512(target=None) -> bool:
    """True if ``target`` (default: the current target, else this machine's CPU) has AVX-512F."""
    from tvm.target import codegen

    tgt = target or tvm.target.Target.current(allow_none=True)
    if tgt is None:
        tgt = tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
    if str(tgt.kind.name) != "llvm":
        return False
    try:
        return bool(codegen.target_has_features("avx512f", tgt))
    except Exception:  # an LLVM without the query: stay on the AVX2 tiles
        return False


def linear_row_tiles(target=None) -> tuple[int, ...]:
    """Register-tile rows the linear schedule uses on ``target`` (``kernels.linear_kernel`` pads to them)."""
    from backends.tvm.kernels import ROW_TILES, ROW_TILES_AVX512

    return ROW_TILES_AVX512 if has_avx512(target) else ROW_TILES


def linear_pack_cols(out_channels: int, target=None) -> int | None:
    """Output tile of the AVX-512 linear schedule for ``out_channels`` (the tile-major weight layout of
    ``kernels.linear_kernel``), or None where weights stay ``[K, O]`` (AVX2; channels not a multiple of 16)."""
    if not has_avx512(target) or out_channels % VEC512:
        return None
    return _pick_tile(out_channels, LINEAR_COLS_AVX512)


def _pick_tile(extent: int, prefs: tuple[int, ...]) -> int:
    """Largest preferred tile that divides ``extent`` (no tail predicates, so loops vectorize)."""
    for p in prefs:
        if extent % p == 0:
            return p
    return 1


def _has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except s_tir.ScheduleError:
        return False


def _vectorize_tail(sch: s_tir.Schedule, blk, vec: int = VEC) -> None:
    inner = sch.get_loops(blk)[-1]
    ext = int(sch.get(inner).extent)
    if ext % vec == 0 and ext > 1:
        if ext > vec:
            _, inner = sch.split(inner, [None, vec])
        sch.vectorize(inner)
    elif vec > VEC:
        _vectorize_tail(sch, blk, VEC)


def _root_stage(sch: s_tir.Schedule, name: str) -> None:
    """Vectorize the innermost loop of an elementwise prologue stage computed at root."""
    if _has_block(sch, name):
        _vectorize_tail(sch, sch.get_sblock(name))


def _hoist_decode(sch: s_tir.Schedule, loop, vec: int = VEC) -> None:
    """Decode the weight slice of one output tile once, into a local buffer, under ``loop``."""
    dec = sch.get_sblock("mps_decode")
    sch.compute_at(dec, loop)
    sch.set_scope(dec, 0, "local")
    _vectorize_tail(sch, dec, vec)


def kernel_info(sch: s_tir.Schedule) -> dict:
    ann = sch.get(sch.get_sblock("mps_acc")).annotations
    return {"kind": str(ann["mps_kind"]), "rows": int(ann["mps_rows"]), "groups": int(ann["mps_groups"])}


#: the kernel's own stages before the reduction; everything else but the output block is inlined
_PROLOGUE = ("mps_xpad", "mps_pad", "mps_act_q", "mps_decode", "mps_acc")


def _fold_epilogue(sch: s_tir.Schedule):
    """Inline every stage except the kernel's prologue/reduction into the block writing the output.

    A kernel alone ends in ``mps_y`` (+ ``mps_view``); after Relax fused its element-wise consumers
    (BatchNorm arithmetic, bias, residual add, ReLU/GELU) the function ends in their last block. Either
    way one output block remains, computing ``epilogue(acc)`` per element; returns it.
    """
    root = sch.get_sblock("root")

    def writes_output(b) -> bool:  # writes a buffer the function does not allocate: a parameter
        local = sch.get(root).alloc_buffers
        return any(not any(w.source.same_as(a) for a in local) for w in sch.get(b).writes)

    changed = True
    while changed:
        changed = False
        for b in sch.get_child_blocks(root):
            if sch.get(b).name_hint in _PROLOGUE or writes_output(b):
                continue
            try:
                sch.compute_inline(b)
                changed = True
            except s_tir.ScheduleError:
                pass
    blocks = sch.get_child_blocks(root)
    rest = [sch.get(b).name_hint for b in blocks if sch.get(b).name_hint not in _PROLOGUE and not writes_output(b)]
    sinks = [b for b in blocks if writes_output(b)]
    if rest or len(sinks) != 1:
        raise ValueError(f"cannot fold the epilogue: stages {rest} left, {len(sinks)} output blocks")
    return sinks[0]


def schedule_kernel_cpu(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """Schedule a layer kernel, alone or with fused element-wise consumers; the kind comes from the
    ``mps_acc`` block annotation."""
    sch = s_tir.Schedule(func)
    info = kernel_info(sch)
    y = _fold_epilogue(sch)
    if info["kind"] == "linear":
        loops = sch.get_loops(y)
        if len(loops) > 2:  # [*lead, o] output: one row loop over the leading dims
            sch.fuse(*loops[:-1])
        _linear(sch, y)
    else:
        _conv2d(sch, info["groups"], y)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_kernels_pass():
    """Module pass: schedule every (possibly fused) layer kernel that is not scheduled yet."""
    import warnings

    @tvm.transform.module_pass(opt_level=0, name="mpsearch.ScheduleKernelsCPU")
    def _pass(mod, _ctx):
        for gv, func in list(mod.functions.items()):
            if (isinstance(func, tvm.tirx.PrimFunc) and "tirx.is_scheduled" not in func.attrs
                    and is_layer_kernel(func)):
                try:
                    mod[gv] = schedule_kernel_cpu(func)
                except (s_tir.ScheduleError, ValueError) as e:  # stays correct, only slow
                    warnings.warn(f"mpsearch: kernel {gv.name_hint} left unscheduled: {str(e).splitlines()[0][:200]}")
        return mod

    return _pass


def _linear(sch: s_tir.Schedule, y) -> None:
    """Output-channel tiles outermost so a tile's weight slice stays in L1 across all row tiles.

    AVX2: 4 x 16 register tile (8 ymm accumulators). AVX-512: up to 6 x 64 (24 zmm accumulators, ~105
    GFLOP/s on one Zen 4 core for MiniLM's 41 x 384 x 1536 vs ~70 with the AVX2 tile). fp32 weights are
    read in place (no copy); other decodes are hoisted into a local slice per tile when rows reuse it."""
    wide = has_avx512()
    vec = VEC512 if wide else VEC
    if _has_block(sch, "mps_xpad"):
        sch.compute_inline(sch.get_sblock("mps_xpad"))
    acc = sch.get_sblock("mps_acc")
    i, j, k = sch.get_loops(acc)
    m, n = int(sch.get(i).extent), int(sch.get(j).extent)
    mt = _pick_tile(m, (6, 4, 3, 2, 1) if wide else (4, 3, 2, 1))
    nt = _pick_tile(n, LINEAR_COLS_AVX512 + (VEC, 4, 2, 1) if wide else (2 * VEC, VEC, 4, 2, 1))
    if wide and _has_block(sch, "mps_decode") and (_trivial_decode(sch) or _cheap_decode(sch)):
        sch.compute_inline(sch.get_sblock("mps_decode"))  # read in place (tile-major, see linear_pack_cols)
    hoist = _has_block(sch, "mps_decode") and m > mt
    if _has_block(sch, "mps_decode") and not hoist:
        sch.compute_inline(sch.get_sblock("mps_decode"))
    kext = int(sch.get(k).extent)
    big = _parallel_ok(m * n * kext)
    io, ii = sch.split(i, [None, mt])
    jo, ji = sch.split(j, [None, nt])
    kmax = max(64, DECODE_SLICE_FLOATS // nt) if hoist else K_BLOCK_MAX
    kb = kext
    if kext > kmax and m > mt:
        kb = _pick_tile(kext, tuple(b for b in K_BLOCKS if b <= kmax) or (64,))
        kb = kext if kb == 1 else kb
    if kb < kext:
        # long reductions: block K so the weight slice [kb, nt] stays in L1 while all row tiles use it;
        # the [rows, nt] accumulator lives in a local buffer across the K blocks
        ko, ki = sch.split(k, [None, kb])
        sch.reorder(jo, ko, io, ki, ii, ji)
        sch.set_scope(acc, 0, "local")
        sch.reverse_compute_at(y, jo)
        if hoist:
            _hoist_decode(sch, ko, vec)
        if big:
            sch.parallel(jo)
        red_outer = ko
    else:
        sch.reorder(jo, io, k, ii, ji)
        sch.set_scope(acc, 0, "local")
        sch.reverse_compute_at(y, io)
        if hoist:
            _hoist_decode(sch, jo, vec)
            if big:
                sch.parallel(jo)
        elif big:
            sch.parallel(sch.fuse(jo, io))
        red_outer = k
    sch.unroll(ii)
    lanes = vec if nt % vec == 0 else VEC
    if nt % lanes == 0:
        jv_o, jv = sch.split(ji, [None, lanes])
        sch.unroll(jv_o)
        sch.vectorize(jv)
    init = sch.decompose_reduction(acc, red_outer)
    _vectorize_tail(sch, init, vec)
    _vectorize_tail(sch, y, vec)
    _root_stage(sch, "mps_act_q")


def _cheap_decode(sch: s_tir.Schedule) -> bool:
    """The kernel marks decodes of one load + convert (``kernels.cheap_decode``)."""
    ann = sch.get(sch.get_sblock("mps_acc")).annotations
    return "mps_cheap_decode" in ann and int(ann["mps_cheap_decode"]) == 1


def _trivial_decode(sch: s_tir.Schedule) -> bool:
    """True if ``mps_decode`` is a plain fp32 load (fp32 weights): nothing to hoist, read in place."""
    if not _has_block(sch, "mps_decode"):
        return False
    val = sch.get(sch.get_sblock("mps_decode")).body.value
    return type(val).__name__ in ("TensorLoad", "BufferLoad") and str(val.ty) == "float32"


def loops_below(sch: s_tir.Schedule, blk, loop) -> list | None:
    """The loops of ``blk`` nested below ``loop`` (None when ``loop`` does not enclose ``blk``)."""
    loops = sch.get_loops(blk)
    target = sch.get(loop)
    for i, lp in enumerate(loops):
        if sch.get(lp).same_as(target):
            return loops[i + 1 :]
    return None


def _conv2d(sch: s_tir.Schedule, groups: int, y) -> None:
    """Register tile (out-channel x output rows x output columns): out-channels vectorized, up to 4
    output pixels (a row piece, or a 2x2 block on small maps), reduction over (c, r, s) in registers;
    the epilogue (BatchNorm, residual, ReLU: whatever Relax fused in) runs on the tile, vectorized along
    the contiguous output columns."""
    acc = sch.get_sblock("mps_acc")
    n_, oc, yy, xx, rc, rr, rs = sch.get_loops(acc)
    b, o, oh, ow = (int(sch.get(v).extent) for v in (n_, oc, yy, xx))
    ot = _pick_tile(o, (2 * VEC, VEC, 4, 2, 1)) if groups == 1 else 1
    xt = _pick_tile(ow, (4, 8, 3, 2, 1))
    yt = _pick_tile(oh, tuple(t for t in (4, 3, 2, 1) if t * xt <= 4)) if xt == ow else 1
    if _trivial_decode(sch):
        sch.compute_inline(sch.get_sblock("mps_decode"))
    # a real decode (int/LUT/fp16 codes) runs once per weight either way; as its own vectorized loop
    # into a local slice it stays out of the unrolled FMA body (inlined there it is scalarized)
    hoist = _has_block(sch, "mps_decode")
    oo, oi = sch.split(oc, [None, ot])
    yo, yi = sch.split(yy, [None, yt])
    xo, xi = sch.split(xx, [None, xt])
    sch.reorder(oo, n_, yo, xo, rc, rr, rs, yi, xi, oi)
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(y, xo)
    red = int(sch.get(rc).extent) * int(sch.get(rr).extent) * int(sch.get(rs).extent)
    big = _parallel_ok(b * o * oh * ow * red)
    if hoist:
        _hoist_decode(sch, oo)
        if big:
            sch.parallel(oo)
    else:
        outer = sch.fuse(oo, n_, yo)
        if big:
            sch.parallel(outer)
    sch.unroll(yi)
    sch.unroll(xi)
    sch.unroll(rs)
    if ot % VEC == 0:
        ov_o, ov = sch.split(oi, [None, VEC])
        sch.unroll(ov_o)
        sch.vectorize(ov)
    sch.decompose_reduction(acc, rc)
    _conv_epilogue(sch, y, xo, yt, xt, ow)
    for name in ("mps_pad", "mps_act_q"):
        _root_stage(sch, name)


def _conv_epilogue(sch: s_tir.Schedule, y, xo, yt: int, xt: int, ow: int) -> None:
    """Vectorize the tile's epilogue along output columns (contiguous in NCHW); unroll the channels."""
    try:
        below = loops_below(sch, y, xo)
        loops = sch.get_loops(y) if below is None else below
        ext = [int(sch.get(lp).extent) for lp in loops]
        if len(loops) >= 2 and yt > 1 and xt == ow and ext[-2:] == [yt, xt]:
            loops = loops[:-2] + [sch.fuse(loops[-2], loops[-1])]
            ext = ext[:-2] + [yt * xt]
        if ext and ext[-1] in (4, 8):
            sch.vectorize(loops[-1])
            if len(loops) >= 2 and ext[-2] <= 4 * VEC:
                sch.unroll(loops[-2])
    except (s_tir.ScheduleError, ValueError):  # an unusual fused epilogue: leave it scalar
        pass


# -- compatibility entry points (standalone kernels) ----------------------------------------------------
def schedule_linear_cpu(func: tvm.tirx.PrimFunc, m: int = 0, n: int = 0) -> tvm.tirx.PrimFunc:
    return schedule_kernel_cpu(func)


def schedule_conv2d_cpu(func: tvm.tirx.PrimFunc, out_shape=None, groups: int = 1) -> tvm.tirx.PrimFunc:
    return schedule_kernel_cpu(func)


def is_layer_kernel(func: tvm.tirx.PrimFunc) -> bool:
    """True if ``func`` contains a layer kernel's reduction block."""
    try:
        s_tir.Schedule(func).get_sblock("mps_acc")
        return True
    except (s_tir.ScheduleError, ValueError):
        return False
