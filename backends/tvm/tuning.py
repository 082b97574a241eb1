"""MetaSchedule tuning of the ops around the planned layers, with a persistent database.

The planned Conv/Linear kernels already carry our schedules (``tirx.is_scheduled``); tuning targets the
rest (norms, attention matmuls, activations). Records live in the user cache dir per target, so
``tuning="cached"`` reuses everything ever tuned there, and ``tuning="tune"`` adds to it (slow: minutes
per model; never run in tests). Needs ``psutil`` and ``cloudpickle`` (and ``xgboost`` for the default
cost model; without it a random cost model is used) plus the ``apache-tvm-ffi==0.1.14.post1`` pin.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from mpsearch.cache import user_cache_dir
from mpsearch.errors import MpsearchError


def tuning_dir(target) -> Path:
    return user_cache_dir() / "tvm-tuning" / re.sub(r"[^0-9A-Za-z_.-]", "_", target.name)


def _builder_init() -> None:  # each builder worker imports the tensor intrinsics once (~30 s)
    import tvm.s_tir.tensor_intrin  # noqa: F401


def _legalize(mod: Any, target) -> Any:
    import tvm
    from tvm import relax

    with target.tvm():
        return tvm.transform.Sequential([
            relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
            relax.transform.FuseOps(), relax.transform.FuseTIR(),
        ])(mod)


def apply_tuning(mod: Any, target, *, tune: bool, trials: int = 512, progress: Callable[[str], None] | None = None) -> Any:
    """Legalize + fuse ``mod``, optionally tune it into the database, then apply the database."""
    import tvm
    from tvm import relax

    try:
        import tvm.s_tir.meta_schedule as ms
    except ImportError as e:
        raise MpsearchError(f"MetaSchedule is unavailable in this TVM build: {e}") from None
    say = progress or (lambda _m: None)
    work = tuning_dir(target)
    mod = _legalize(mod, target)
    if tune:
        try:
            import cloudpickle  # noqa: F401
            import psutil  # noqa: F401
        except ImportError as e:
            raise MpsearchError(f"tuning needs psutil and cloudpickle: {e}", hint="pip install psutil cloudpickle") from None
        try:
            import xgboost  # noqa: F401

            cost_model = "xgb"
        except ImportError:
            cost_model = "random"
        work.mkdir(parents=True, exist_ok=True)
        say(f"MetaSchedule: {trials} trials into {work} (cost model {cost_model}); this takes minutes")
        builder = ms.builder.LocalBuilder(max_workers=2, timeout_sec=120, initializer=_builder_init)
        ms.relax_integration.tune_relax(mod=mod, params={}, target=target.tvm(), work_dir=str(work),
                                        max_trials_global=int(trials), builder=builder, cost_model=cost_model)
    if not (work / "database_workload.json").is_file():
        raise MpsearchError(f"no tuning records for target {target.name!r} in {work}", hint="compile once with tuning='tune'")
    with target.tvm(), tvm.transform.PassContext(opt_level=3):
        return relax.transform.MetaScheduleApplyDatabase(str(work))(mod)
