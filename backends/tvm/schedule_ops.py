"""CPU schedules for the ops TVM legalizes around the layer kernels (activations, norms, residuals).

TVM's CPU pipeline leaves these PrimFuncs unscheduled (scalar loops). Element-wise and broadcast
functions — the GELU/ReLU/bias/residual chains FuseOps produced — get their producers inlined and the
output loop nest fused, vectorized by 8 fp32 lanes and, when large, split over the cores. Functions
with a reduction are left to TVM (or to MetaSchedule), except batched matmuls (attention's q.k^T and
p.v: ``schedule_matmul``).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from backends.tvm.schedule_cpu import build_threads

VEC = 8
PARALLEL_MIN_ELEMS = 1 << 15


def _is_spatial(sch: s_tir.Schedule, blk) -> bool:
    return all(int(iv.iter_type) == 0 for iv in sch.get(blk).iter_vars)  # 0 = data-parallel


def schedule_elementwise(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc | None:
    """Vectorized/parallel schedule for an all-spatial function; None if it has a reduction or fails."""
    try:
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if not blocks or not all(_is_spatial(sch, b) for b in blocks):
            return None
        for b in blocks[:-1]:
            sch.compute_inline(b)
        out = sch.get_child_blocks(sch.get_sblock("root"))
        if len(out) != 1:
            return None
        loops = sch.get_loops(out[0])
        if not loops:
            return None
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        n = int(sch.get(fused).extent)
        if n % VEC == 0 and n >= VEC:
            outer, inner = sch.split(fused, [None, VEC])
            sch.vectorize(inner)
            if n >= PARALLEL_MIN_ELEMS and build_threads() > 1:
                sch.parallel(outer)
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    except (s_tir.ScheduleError, ValueError, TypeError):
        return None


def schedule_elementwise_pass():
    """Module pass applying ``schedule_elementwise`` to every unscheduled PrimFunc it fits."""

    @tvm.transform.module_pass(opt_level=0, name="mpsearch.ScheduleElementwiseCPU")
    def _pass(mod, _ctx):
        for gv, func in list(mod.functions.items()):
            if isinstance(func, tvm.tirx.PrimFunc) and "tirx.is_scheduled" not in func.attrs:
                new = schedule_elementwise(func)
                if new is None:
                    new = schedule_matmul(func)
                if new is not None:
                    mod[gv] = new
        return mod

    return _pass


# -- batched matmuls (attention scores q.k^T and probabilities.v) -------------------------------------
def _lanes() -> int:
    from backends.tvm.schedule_cpu import VEC512, has_avx512

    return VEC512 if has_avx512() else VEC


def schedule_matmul(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc | None:
    """``C[..., i, j] = sum_k A[..., i, k] * B[..., k, j]`` (a legalized ``relax.matmul`` that is not a
    layer kernel: attention's q.k^T and p.v, 12 heads x 41 x 41 x 32 in MiniLM). TVM's loop puts k
    innermost (a strided scalar dot per output); here k runs outside j, the row's accumulators live in
    a local buffer (registers), and the contiguous j axis is vectorized (a ragged j is left to LLVM's
    loop vectorizer). Producers/consumers that are element-wise are inlined. None if it does not fit."""
    try:
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        blocks = sch.get_child_blocks(root)
        red = [b for b in blocks if not _is_spatial(sch, b)]
        if len(red) != 1 or sch.get(red[0]).name_hint != "matmul":
            return None
        mm = red[0]
        for b in blocks:
            if not b.same_as(mm):
                try:
                    sch.compute_inline(b)
                except s_tir.ScheduleError:
                    sch.reverse_compute_inline(b)
        loops = sch.get_loops(mm)
        ivs = sch.get(mm).iter_vars
        if len(loops) < 3 or [int(iv.iter_type) for iv in ivs][-1] != 2 or any(int(iv.iter_type) != 0 for iv in ivs[:-1]):
            return None
        *outer, i, j, k = loops
        n = int(sch.get(j).extent)
        lanes = _lanes()
        if n > 8 * lanes:  # long rows: tile j so the accumulators fit in registers
            j, ji = sch.split(j, [None, 4 * lanes])
            sch.reorder(*outer, i, j, k, ji)
            jin = ji
        else:
            sch.reorder(*outer, i, k, j)
            jin = j
        acc = sch.cache_write(mm, 0, "local")
        sch.reverse_compute_at(acc, j if jin is not j else i)
        def vec_inner(blk) -> None:
            lp = sch.get_loops(blk)[-1]
            ext = int(sch.get(lp).extent)
            v = lanes if ext % lanes == 0 else (VEC if ext % VEC == 0 else 0)
            if v:
                if ext > v:
                    o, lp = sch.split(lp, [None, v])
                    sch.unroll(o)
                sch.vectorize(lp)

        vec_inner(mm)
        vec_inner(acc)
        vec_inner(sch.decompose_reduction(mm, k))
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    except (s_tir.ScheduleError, ValueError, TypeError):
        return None
