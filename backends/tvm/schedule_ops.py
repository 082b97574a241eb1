"""CPU schedules for the ops TVM legalizes around the layer kernels (activations, norms, residuals).

TVM's CPU pipeline leaves these PrimFuncs unscheduled (scalar loops). Element-wise and broadcast
functions — the GELU/ReLU/bias/residual chains FuseOps produced — get their producers inlined and the
output loop nest fused, vectorized by 8 fp32 lanes and, when large, split over the cores. Functions
with a reduction (softmax, layer norm, attention matmuls) are left to TVM (or to MetaSchedule).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

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
            if n >= PARALLEL_MIN_ELEMS:
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
                if new is not None:
                    mod[gv] = new
        return mod

    return _pass
