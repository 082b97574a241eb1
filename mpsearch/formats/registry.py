"""Compact spellings <-> Format objects, shared by the CLI, plan JSON and reports.

Grammar (case-insensitive; options are ``-``-separated and printed in this order in canonical spellings):

* float: ``fp32``, ``fp16``, ``bf16`` (no quantization).
* integer: ``[u]int{b}[t|g{G}][-mse|-p{pct}]``, b in 2..8. ``int4`` per output channel, ``int8t`` per tensor,
  ``int4g128`` per group of 128 along the reduction axis, ``u`` = asymmetric with a zero point (``uint8t``);
  scale estimator: absolute max by default, ``-mse`` (MSE-optimal clipping search), ``-p99.9``
  (nearest-rank percentile of |x|).
* minifloat: ``e{E}m{M}[t|g{G}][-ieee|-fn|-fnuz|-fin][-b{bias}][-nosub][-nosat][-mse|-p{pct}]`` with
  ``1+E+M`` in 3..8 (see :mod:`.minifloat` for defaults): ``e4m3`` (= OCP E4M3FN), ``e5m2``, ``e2m3``,
  ``e3m2``, ``e2m1`` (OCP FP6/FP4, finite-only), generic ``e3m4``; ``e4m3-fnuz`` (= ml_dtypes
  float8_e4m3fnuz), ``e4m3-fnuz-b11`` (= float8_e4m3b11fnuz), ``e4m3-ieee`` (= float8_e4m3).
  Aliases (ml_dtypes names): ``e4m3fn`` -> ``e4m3``, ``e4m3fnuz`` -> ``e4m3-fnuz``, ``e5m2fnuz``,
  ``e4m3b11fnuz``, ``e2m3fn``, ``e3m2fn``, ``e2m1fn``,
  ``fp8`` -> ``e4m3``, ``fp6`` -> ``e2m3``, ``fp4`` -> ``e2m1``.
* block: ``mxfp8`` (e4m3), ``mxfp8e5m2``, ``mxfp6`` (e2m3), ``mxfp6e3m2``, ``mxfp4`` (e2m1), ``mxint8``
  (block 32, E8M0 scales), ``nvfp4`` (e2m1, block 16, E4M3 scales + float32 per-tensor scale).

``parse_format(f.spelling).spelling == f.spelling`` for every format.
"""

from __future__ import annotations

import re
from functools import lru_cache

from mpsearch.errors import MpsearchError
from mpsearch.formats.base import Format
from mpsearch.formats.block import mx_format, nvfp4_format
from mpsearch.formats.floating import FloatFormat
from mpsearch.formats.integer import IntFormat
from mpsearch.formats.minifloat import POLICIES, MiniFloat, MiniFloatFormat
from mpsearch.formats.scaling import ScaleMethod

_INT = re.compile(r"^(u?)int([0-9]+)(?:(t)|g([0-9]+))?((?:-[a-z0-9.]+)*)$")
_MINI = re.compile(r"^e([0-9]+)m([0-9]+)(?:(t)|g([0-9]+))?((?:-[a-z0-9.]+)*)$")
_PCT = re.compile(r"^p([0-9]+(?:\.[0-9]+)?)$")
_BIAS = re.compile(r"^b([0-9]+)$")
_ALIASES = {
    "e4m3fn": "e4m3",
    "e4m3fnuz": "e4m3-fnuz",
    "e5m2fnuz": "e5m2-fnuz",
    "e4m3b11fnuz": "e4m3-fnuz-b11",
    "e2m3fn": "e2m3",
    "e3m2fn": "e3m2",
    "e2m1fn": "e2m1",
    "fp8": "e4m3",
    "fp6": "e2m3",
    "fp4": "e2m1",
    "mxfp8e4m3": "mxfp8",
    "mxfp6e2m3": "mxfp6",
    "mxfp4e2m1": "mxfp4",
}
_BLOCK = {
    "mxfp8": lambda: mx_format("fp8"),
    "mxfp8e5m2": lambda: mx_format("fp8e5m2"),
    "mxfp6": lambda: mx_format("fp6"),
    "mxfp6e3m2": lambda: mx_format("fp6e3m2"),
    "mxfp4": lambda: mx_format("fp4"),
    "mxint8": lambda: mx_format("int8"),
    "nvfp4": nvfp4_format,
}


def _method(tok: str, spelling: str) -> ScaleMethod | None:
    if tok == "mse":
        return ScaleMethod("mse")
    m = _PCT.match(tok)
    if m:
        try:
            return ScaleMethod("percentile", percentile=float(m.group(1)))
        except MpsearchError as err:
            raise _bad(spelling, str(err)) from None
    return None


def _bad(spelling: str, why: str, hint: str | None = None) -> MpsearchError:
    return MpsearchError(f"unknown format {spelling!r}: {why}", hint=hint)


def _group(text: str | None, spelling: str) -> int | None:
    if text is None:
        return None
    g = int(text)
    if g < 1:
        raise _bad(spelling, "group size must be >= 1")
    return g


def _options(text: str, spelling: str, category) -> list[str]:
    """Option tokens, rejecting two options of the same kind (e.g. two policies)."""
    toks = [t for t in text.split("-") if t] if text else []
    seen: dict[str, str] = {}
    for t in toks:
        cat = category(t)
        if cat in seen:
            raise _bad(spelling, f"options -{seen[cat]} and -{t} conflict")
        seen[cat] = t
    return toks


def _category(tok: str) -> str:
    if tok in POLICIES:
        return "policy"
    if tok == "mse" or _PCT.match(tok):
        return "method"
    if _BIAS.match(tok):
        return "bias"
    return tok


def _parse_int(m: re.Match, spelling: str) -> Format:
    bits = int(m.group(2))
    if not 2 <= bits <= 8:
        raise _bad(spelling, "integer formats have 2 to 8 bits")
    method = ScaleMethod()
    for tok in _options(m.group(5), spelling, _category):
        got = _method(tok, spelling)
        if got is None:
            raise _bad(spelling, f"unknown option -{tok}", hint="integer options: -mse, -p<percentile>")
        method = got
    return IntFormat(
        bits, group=_group(m.group(4), spelling), per_tensor=bool(m.group(3)), asymmetric=bool(m.group(1)), method=method
    )


def _parse_mini(m: re.Match, spelling: str) -> Format:
    e, mm = int(m.group(1)), int(m.group(2))
    kw: dict = {}
    method = ScaleMethod()
    for tok in _options(m.group(5), spelling, _category):
        if tok in POLICIES:
            kw["policy"] = tok
        elif tok == "nosub":
            kw["subnormals"] = False
        elif tok == "nosat":
            kw["saturate"] = False
        elif _BIAS.match(tok):
            kw["bias"] = int(tok[1:])
        elif _method(tok, spelling) is not None:
            method = _method(tok, spelling)
        else:
            raise _bad(
                spelling,
                f"unknown option -{tok}",
                hint="minifloat options: -ieee/-fn/-fnuz/-fin, -b<bias>, -nosub, -nosat, -mse, -p<percentile>",
            )
    try:
        codec = MiniFloat(e, mm, **kw)
    except MpsearchError as err:
        msg = str(err)
        raise _bad(spelling, msg.split(": ", 1)[1] if msg.startswith(f"e{e}m{mm}") else msg) from None
    return MiniFloatFormat(codec, group=_group(m.group(4), spelling), per_tensor=bool(m.group(3)), method=method)


@lru_cache(maxsize=None)
def parse_format(spelling: str) -> Format:
    """Return the Format for ``spelling`` or raise MpsearchError naming the valid spellings."""
    if not isinstance(spelling, str):
        raise MpsearchError(f"format spelling must be a string, got {type(spelling).__name__}")
    s = spelling.strip().lower()
    s = _ALIASES.get(s, s)
    if s in ("fp32", "fp16", "bf16"):
        return FloatFormat(s)
    if s in _BLOCK:
        return _BLOCK[s]()
    m = _INT.match(s)
    if m:
        return _parse_int(m, spelling)
    m = _MINI.match(s)
    if m:
        return _parse_mini(m, spelling)
    raise MpsearchError(f"unknown format {spelling!r}", hint=f"known: {', '.join(list_formats())}; see mpsearch.formats.registry")


def list_formats() -> list[str]:
    """Named spellings users can pick from (parametric families accept more, e.g. int4g64, e3m4, e4m3-nosub)."""
    return [
        "fp32", "fp16", "bf16",
        "int8", "int6", "int4", "int3", "int2", "int8t", "int4g128", "int4g128-mse", "uint8t", "uint4g128",
        "e4m3", "e5m2", "e3m4", "e2m3", "e3m2", "e2m1", "e4m3-fnuz", "e5m2-fnuz",
        "mxfp8", "mxfp8e5m2", "mxfp6", "mxfp6e3m2", "mxfp4", "mxint8", "nvfp4",
    ]  # fmt: skip
