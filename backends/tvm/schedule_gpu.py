"""CUDA schedules for the layer kernels: TVM's dlight GPU rules applied per kernel.

The rules are tried in order (int8/fp16 tensor-core Matmul, low-batch GEMV, GEMV, Fallback) on the
kernel alone, before it joins the Relax module, so the module's own dlight pass leaves it alone
(``tirx.is_scheduled``). Fallback always applies, so every kernel gets a valid (if not fast) schedule.
"""

from __future__ import annotations

import tvm

from backends.tvm.target import resolve_target


def _apply_rules(func: tvm.tirx.PrimFunc, rules) -> tvm.tirx.PrimFunc:
    """The first rule that schedules ``func``. A rule whose analysis fails on the kernel (dlight asserts
    instead of declining, e.g. Reduction on the table lookup of a 4-bit float decode: the table is read
    at a data-dependent index) counts as not applying, so the next rule, finally Fallback, takes it."""
    from tvm.s_tir import dlight as dl

    target = resolve_target("cuda").tvm()
    for rule in rules:
        mod = tvm.IRModule({"main": func})
        try:
            with target:
                mod = dl.ApplyDefaultSchedule(rule)(mod)
        except (AssertionError, RuntimeError, IndexError, ValueError, tvm.error.InternalError):
            continue
        if mod["main"].attrs is not None and "tirx.is_scheduled" in mod["main"].attrs:
            return mod["main"]
    return func.with_attr("tirx.is_scheduled", True)  # no rule applied (Fallback always does)


def schedule_linear_gpu(func: tvm.tirx.PrimFunc, m: int, pw) -> tvm.tirx.PrimFunc:
    from tvm.s_tir import dlight as dl

    if m <= 4:
        return _apply_rules(func, [dl.gpu.LowBatchGEMV(), dl.gpu.GEMV(), dl.gpu.Fallback()])
    return _apply_rules(func, [dl.gpu.Matmul(), dl.gpu.Fallback()])


def schedule_generic_gpu(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    from tvm.s_tir import dlight as dl

    return _apply_rules(func, [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()])
