"""Compact spellings <-> Format objects, shared by the CLI, plan JSON and reports."""

from __future__ import annotations

import re
from functools import lru_cache

from mpsearch.errors import MpsearchError
from mpsearch.formats.base import Format
from mpsearch.formats.floating import FloatFormat
from mpsearch.formats.integer import IntFormat

_INT = re.compile(r"^(u?)int([2-8])(?:(t)|g(\d+))?$")


@lru_cache(maxsize=None)
def parse_format(spelling: str) -> Format:
    """Return the Format for ``spelling`` or raise MpsearchError naming the valid spellings."""
    if not isinstance(spelling, str):
        raise MpsearchError(f"format spelling must be a string, got {type(spelling).__name__}")
    s = spelling.strip().lower()
    if s in ("fp32", "fp16", "bf16"):
        return FloatFormat(s)
    m = _INT.match(s)
    if m:
        group = int(m.group(4)) if m.group(4) else None
        if group is not None and group < 1:
            raise MpsearchError(f"format {spelling!r}: group size must be >= 1")
        return IntFormat(int(m.group(2)), group=group, per_tensor=bool(m.group(3)), asymmetric=bool(m.group(1)))
    raise MpsearchError(f"unknown format {spelling!r}", hint=f"known: {', '.join(list_formats())}")


def list_formats() -> list[str]:
    """Named spellings users can pick from (parametric families accept more, e.g. int4g64)."""
    return ["fp32", "fp16", "bf16", "int8", "int6", "int4", "int3", "int2", "int8t", "int4g128", "uint8t"]
