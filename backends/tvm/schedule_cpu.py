"""Hand-written CPU (llvm) schedules for the layer kernels in ``kernels.py``, alone or fused.

Register-tiled implicit GEMM: an ``mt x nt`` accumulator tile lives in a local buffer (registers after
unrolling), the output-channel axis is vectorized (weights are laid out ``[K, O]`` so that axis is
contiguous), the weight decode is inlined into the reduction (or hoisted per output tile when several
row tiles reuse it), and the outer tiles run in parallel when the layer is big enough.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

VEC = 8  # fp32 lanes of an AVX2 register

#: reductions longer than this are blocked (weight slice of a 16-wide output tile: 512 x 16 x 4 B = 32 KB)
K_BLOCK_MAX = 512
K_BLOCKS = (256, 384, 192, 128, 64)

#: below this many multiply-adds a kernel runs on one thread (waking the pool costs ~10 us)
PARALLEL_MIN_MACS = 1 << 18


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


def _vectorize_tail(sch: s_tir.Schedule, blk) -> None:
    inner = sch.get_loops(blk)[-1]
    ext = int(sch.get(inner).extent)
    if ext % VEC == 0 and ext > 1:
        if ext > VEC:
            _, inner = sch.split(inner, [None, VEC])
        sch.vectorize(inner)


def _root_stage(sch: s_tir.Schedule, name: str) -> None:
    """Vectorize the innermost loop of an elementwise prologue stage computed at root."""
    if _has_block(sch, name):
        _vectorize_tail(sch, sch.get_sblock(name))


def _hoist_decode(sch: s_tir.Schedule, loop) -> None:
    """Decode the weight slice of one output tile once, into a local buffer, under ``loop``."""
    dec = sch.get_sblock("mps_decode")
    sch.compute_at(dec, loop)
    sch.set_scope(dec, 0, "local")
    _vectorize_tail(sch, dec)


def kernel_info(sch: s_tir.Schedule) -> dict:
    ann = sch.get(sch.get_sblock("mps_acc")).annotations
    return {"kind": str(ann["mps_kind"]), "rows": int(ann["mps_rows"]), "groups": int(ann["mps_groups"])}


def schedule_kernel_cpu(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """Schedule a layer kernel; the kind comes from the ``mps_acc`` block annotation."""
    sch = s_tir.Schedule(func)
    info = kernel_info(sch)
    if info["kind"] == "linear":
        _linear(sch)
    else:
        _conv2d(sch, info["groups"])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _linear(sch: s_tir.Schedule) -> None:
    """Output-channel tiles outermost so a tile's weight slice stays in L1 across all row tiles."""
    if _has_block(sch, "mps_xpad"):
        sch.compute_inline(sch.get_sblock("mps_xpad"))
    acc = sch.get_sblock("mps_acc")
    y = sch.get_sblock("mps_y")
    i, j, k = sch.get_loops(acc)
    m, n = int(sch.get(i).extent), int(sch.get(j).extent)
    mt = _pick_tile(m, (4, 3, 2, 1))
    nt = _pick_tile(n, (2 * VEC, VEC, 4, 2, 1))
    hoist = _has_block(sch, "mps_decode") and m > mt
    if _has_block(sch, "mps_decode") and not hoist:
        sch.compute_inline(sch.get_sblock("mps_decode"))
    kext = int(sch.get(k).extent)
    big = m * n * kext >= PARALLEL_MIN_MACS
    io, ii = sch.split(i, [None, mt])
    jo, ji = sch.split(j, [None, nt])
    kb = _pick_tile(kext, K_BLOCKS) if kext > K_BLOCK_MAX and m > mt else kext
    if kb < kext:
        # long reductions: block K so the weight slice [kb, nt] stays in L1 while all row tiles use it;
        # the [rows, nt] accumulator lives in a local buffer across the K blocks
        ko, ki = sch.split(k, [None, kb])
        sch.reorder(jo, ko, io, ki, ii, ji)
        sch.set_scope(acc, 0, "local")
        sch.reverse_compute_at(y, jo)
        if hoist:
            _hoist_decode(sch, ko)
        if big:
            sch.parallel(jo)
        red_outer = ko
    else:
        sch.reorder(jo, io, k, ii, ji)
        sch.set_scope(acc, 0, "local")
        sch.reverse_compute_at(y, io)
        if hoist:
            _hoist_decode(sch, jo)
            if big:
                sch.parallel(jo)
        else:
            fused = sch.fuse(jo, io)
            if big:
                sch.parallel(fused)
        red_outer = k
    sch.unroll(ii)
    if nt % VEC == 0:
        jv_o, jv = sch.split(ji, [None, VEC])
        sch.unroll(jv_o)
        sch.vectorize(jv)
    init = sch.decompose_reduction(acc, red_outer)
    _vectorize_tail(sch, init)
    _vectorize_tail(sch, y)
    _root_stage(sch, "mps_act_q")


def _conv2d(sch: s_tir.Schedule, groups: int) -> None:
    """Tile (out-channel x output-column), vectorize out-channels, reduce over (c, r, s) in registers."""
    acc = sch.get_sblock("mps_acc")
    y = sch.get_sblock("mps_y")
    n_, oc, yy, xx, rc, rr, rs = sch.get_loops(acc)
    b, o, oh, ow = (int(sch.get(v).extent) for v in (n_, oc, yy, xx))
    ot = _pick_tile(o, (2 * VEC, VEC, 4, 2, 1)) if groups == 1 else 1
    xt = _pick_tile(ow, (4, 8, 3, 2, 1))
    hoist = _has_block(sch, "mps_decode") and b * oh * ow > xt
    if _has_block(sch, "mps_decode") and not hoist:
        sch.compute_inline(sch.get_sblock("mps_decode"))
    oo, oi = sch.split(oc, [None, ot])
    xo, xi = sch.split(xx, [None, xt])
    sch.reorder(oo, n_, yy, xo, rc, rr, rs, xi, oi)
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(y, xo)
    red = int(sch.get(rc).extent) * int(sch.get(rr).extent) * int(sch.get(rs).extent)
    big = b * o * oh * ow * red >= PARALLEL_MIN_MACS
    if hoist:
        _hoist_decode(sch, oo)
        if big:
            sch.parallel(oo)
    else:
        outer = sch.fuse(oo, n_, yy)
        if big:
            sch.parallel(outer)
    sch.unroll(xi)
    sch.unroll(rs)
    if ot % VEC == 0:
        ov_o, ov = sch.split(oi, [None, VEC])
        sch.unroll(ov_o)
        sch.vectorize(ov)
    sch.decompose_reduction(acc, rc)
    for name in ("mps_pad", "mps_act_q"):
        _root_stage(sch, name)


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
