"""Resolve the ways callers name a target ("llvm", "cuda", a ``backends.targets.Target``, a TVM Target).

TVM 0.27 rejects ``"llvm -mcpu=..."`` strings, so targets are built from JSON dicts. The CPU target is
this machine's CPU (``-mcpu`` from LLVM's host detection) so AVX2/FMA are used; CUDA is sm_90 (H100)
with an llvm host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from mpsearch.errors import MpsearchError

CUDA_ARCH = "sm_90"


@dataclass(frozen=True)
class ResolvedTarget:
    """``kind`` is "llvm" or "cuda"; ``spec`` the JSON dict for ``tvm.target.Target``; ``name`` for manifests."""

    kind: str
    spec: dict
    name: str

    def tvm(self):
        import tvm

        if self.kind == "cuda":
            return tvm.target.Target(self.spec, host=host_spec())
        return tvm.target.Target(self.spec)


def host_spec() -> dict:
    import tvm

    return {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1}


def resolve_target(target: Any) -> ResolvedTarget:
    """Accept "llvm"/"cpu", "cuda"/"gpu"/"h100", a ``backends.targets.Target`` (by its ``kind``) or a dict."""
    if isinstance(target, ResolvedTarget):
        return target
    kind = None
    if isinstance(target, str):
        kind = target.strip().lower()
    elif isinstance(target, dict):
        kind = str(target.get("kind", "")).lower()
    elif hasattr(target, "kind"):
        kind = str(getattr(target, "kind")).lower()
        if kind == "gpu" and "h100" not in str(getattr(target, "name", "h100")).lower():
            raise MpsearchError(f"the TVM backend builds GPU code for the H100 (sm_90) only, not {getattr(target, 'name', target)!r}")
    if kind in ("llvm", "cpu", "x86", "host"):
        spec = host_spec()
        return ResolvedTarget("llvm", spec, f"llvm -mcpu={spec['mcpu']}")
    if kind in ("cuda", "gpu", "h100", "sm_90"):
        return ResolvedTarget("cuda", {"kind": "cuda", "arch": CUDA_ARCH}, f"cuda -arch={CUDA_ARCH}")
    raise MpsearchError(f"unknown target {target!r} for the TVM backend", hint="use 'llvm' (this CPU) or 'cuda' (H100)")
