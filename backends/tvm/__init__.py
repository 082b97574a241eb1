"""TVM backend: compile a Plan into a verified, runtime-only deployment artifact (llvm CPU, CUDA sm_90).

Entry points: ``compile_plan`` (plan -> artifact directory) and ``time_layer`` (measured latency of one
quantized layer's kernel, for cost tables). The loader lives in ``backends.artifact`` (runtime only).
"""

from __future__ import annotations

from typing import Any

__all__ = ["compile_plan", "time_layer"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not load the TVM compiler
    if name == "time_layer":
        from backends.tvm.timing import time_layer

        return time_layer
    if name == "compile_plan":
        from backends.tvm.compile import compile_plan

        return compile_plan
    raise AttributeError(name)
