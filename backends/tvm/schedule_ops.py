"""CPU schedules for the ops TVM legalizes around the layer kernels (activations, norms, residuals).

TVM's CPU pipeline leaves these PrimFuncs unscheduled (scalar loops). Element-wise and broadcast
functions — the GELU/ReLU/bias/residual chains FuseOps produced — get their producers inlined and the
output loop nest fused, vectorized by 8 fp32 lanes and, when large, split over the cores. Functions
with a reduction get ``schedule_matmul`` (attention's batched q.k^T and p.v) or ``schedule_rows``
(layer norm, softmax: one loop over rows, vector partial sums); what fits none is left to TVM.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from backends.tvm.schedule_cpu import build_threads, loops_below

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
                if new is None:
                    new = schedule_rows(func)
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


# -- row-wise reductions (layer norm, softmax) ------------------------------------------------------------
_COSTLY = ("exp", "erf", "tanh", "log", "sqrt", "pow", "sigmoid", "sin", "cos")


def _has_call(sch: s_tir.Schedule, blk) -> bool:
    """True if the stage computes a transcendental (worth computing once, not inlined into each use)."""
    text = str(sch.get(blk).body)
    return any(f"{name}(" in text for name in _COSTLY)


def schedule_rows(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc | None:
    """Functions whose stages all share the leading (row) axes and reduce or map along the last one:
    layer norm (sum, mean, sum of squares, normalize) and softmax (max, exp, sum, divide). Every stage
    runs per row inside one row loop (the row's intermediates stay in L1), element-wise stages with one
    consumer are inlined (not those with a transcendental such as exp), map stages are vectorized along the
    row and reductions whose length is a multiple of the vector are split into vector partial sums
    (rfactor: a different summation order, float-rounding level). None if the function does not fit."""
    try:
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        blocks = sch.get_child_blocks(root)
        if all(_is_spatial(sch, b) for b in blocks) or any(sch.get(b).name_hint == "matmul" for b in blocks):
            return None
        for b in blocks[:-1]:  # inline a stage into its only consumer, unless it computes a transcendental
            if _is_spatial(sch, b) and not _has_call(sch, b) and len(sch.get_consumers(b)) <= 1:
                try:
                    sch.compute_inline(b)
                except s_tir.ScheduleError:
                    pass
        blocks = sch.get_child_blocks(root)
        out = blocks[-1]
        if _is_spatial(sch, out) and len(blocks) > 1:
            try:  # a trailing copy / broadcast (softmax's broadcast_to) into its producer
                sch.reverse_compute_inline(out)
            except s_tir.ScheduleError:
                pass
        blocks = sch.get_child_blocks(root)
        out = blocks[-1]
        if not _is_spatial(sch, out):
            return None
        loops = sch.get_loops(out)
        if len(loops) < 2:
            return None
        lead = [int(sch.get(lp).extent) for lp in loops[:-1]]
        for b in blocks[:-1]:
            ivs = sch.get(b).iter_vars
            if [int(iv.dom.extent) for iv in ivs[: len(lead)]] != lead or any(int(iv.iter_type) != 0 for iv in ivs[: len(lead)]):
                return None
        lanes = _lanes()

        def width(ext: int) -> int:
            return lanes if ext % lanes == 0 else (VEC if ext % VEC == 0 else 0)

        rfs = []
        for b in blocks[:-1]:  # vector partial sums, factored while each stage still has its own loops
            bl = sch.get_loops(b)
            if _is_spatial(sch, b) or len(bl) != len(lead) + 1:
                continue
            ext = int(sch.get(bl[-1]).extent)
            v = width(ext)
            if v and ext >= 2 * v:
                _, ki = sch.split(bl[-1], [None, v])
                rf = sch.rfactor(ki, len(lead))
                sch.set_scope(rf, 0, "local")
                rfs.append(rf)
        loops = sch.get_loops(out)
        if not rfs and not width(int(sch.get(loops[-1]).extent)):
            return None  # nothing to vectorize (softmax over 41 tokens): TVM's loops were faster
        row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        for b in reversed(sch.get_child_blocks(root)[:-1]):
            sch.compute_at(b, row, preserve_unit_loops=False)
        rf_names = {sch.get(r).name_hint for r in rfs}
        for b in sch.get_child_blocks(root):
            inner = loops_below(sch, b, row) or []
            if sch.get(b).name_hint in rf_names and len(inner) == 2:
                a, c = (int(sch.get(lp).extent) for lp in inner)
                if width(c) == c or width(a) == a:  # (ko, ki) or (ki, ko): the lane axis innermost
                    if width(a) == a and a <= lanes:
                        sch.reorder(inner[1], inner[0])
                    lp = sch.get_loops(b)[-1]
                    sch.vectorize(lp)
                    sch.decompose_reduction(b, sch.get_loops(b)[-2])
                continue
            if len(inner) != 1 or not _is_spatial(sch, b):
                continue
            lp = inner[0]
            ext = int(sch.get(lp).extent)
            v = width(ext)
            if v:
                if ext > v:
                    _, lp = sch.split(lp, [None, v])
                sch.vectorize(lp)
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    except (s_tir.ScheduleError, ValueError, TypeError):
        return None
