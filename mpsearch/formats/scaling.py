"""Scale granularity and scale estimation shared by the INT and minifloat formats.

Granularity: a tensor is viewed as ``(rows, elements-per-scale)``: one row for per-tensor scaling, one row
per output channel (``channel_axis``), or one row per group of ``group`` consecutive elements of a channel
(the channel's other axes flattened in C order, i.e. along the GEMM reduction axis). Block formats use
the same view with the block size as group; without a channel axis their blocks run along the last axis.
A partial last group is zero-padded (zeros count in percentile statistics, and quantize to zero).

Estimation (``ScaleMethod``): the clipping range of a row is its absolute max (``max``), the nearest-rank
percentile of ``|x|`` (``p99.9``), or the range ``alpha * max`` minimising the squared quantization
error over the grid ``alpha = 1, 1 - 1/grid, ...`` (``mse``, as in GPTQ/AWQ-style clipping search).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mpsearch.errors import MpsearchError


@dataclass(frozen=True)
class ScaleMethod:
    """How a clipping range is estimated from data (ignored when a static ``amax`` is given)."""

    kind: str = "max"  # "max" | "percentile" | "mse"
    percentile: float | None = None  # for kind="percentile", in (0, 100]
    grid: int = 100  # MSE search resolution
    max_shrink: float = 0.8  # MSE search tries alpha down to 1 - max_shrink

    def __post_init__(self) -> None:
        if self.kind not in ("max", "percentile", "mse"):
            raise MpsearchError(f"unknown scale method {self.kind!r}: use max, percentile or mse")
        if self.kind == "percentile":
            p = self.percentile
            if p is None or not (0.0 < float(p) <= 100.0) or math.isnan(float(p)):
                raise MpsearchError(f"percentile must be in (0, 100], got {p!r}")

    @property
    def suffix(self) -> str:
        """Spelling suffix: ``""`` for max, ``-mse``, or ``-p{percentile}``."""
        if self.kind == "mse":
            return "-mse"
        if self.kind == "percentile":
            return "-p" + np.format_float_positional(float(self.percentile), trim="-")
        return ""

    def alphas(self) -> list[float]:
        """Shrink factors tried by the MSE search, largest first."""
        return [1.0 - i / self.grid for i in range(max(1, int(round(self.max_shrink * self.grid))))]


@dataclass
class Rows:
    """A tensor viewed as (rows, elements per scale) and the way back to its own shape."""

    rows: torch.Tensor
    shape: tuple[int, ...]
    channel_axis: int | None
    base_shape: tuple[int, ...]  # the 2-D (or moved) shape before grouping
    cols: int  # valid elements per base row (before padding)
    group: int | None
    moved: bool

    def back(self, y: torch.Tensor) -> torch.Tensor:
        """Reshape a tensor laid out like ``rows`` back to the original shape (dropping padding)."""
        if self.group:
            y = y.reshape(self.base_shape[0], -1)[:, : self.cols]
        if self.moved:
            moved_shape = (self.shape[self.channel_axis],) + tuple(
                s for i, s in enumerate(self.shape) if i != self.channel_axis
            )
            return y.reshape(moved_shape).movedim(0, self.channel_axis)
        return y.reshape(self.shape)


def to_rows(
    x: torch.Tensor,
    *,
    channel_axis: int | None,
    group: int | None = None,
    per_tensor: bool = False,
    last_axis_blocks: bool = False,
) -> Rows:
    """View ``x`` as rows sharing one scale each (see module docstring)."""
    shape = tuple(x.shape)
    if x.dim() == 0:
        x = x.reshape(1)
    axis = None
    if channel_axis is not None and not per_tensor:
        if not -x.dim() <= channel_axis < x.dim():
            raise MpsearchError(f"channel_axis {channel_axis} is out of range for a {x.dim()}-D tensor")
        axis = channel_axis % x.dim()
    moved = False
    if axis is not None:
        base = x.movedim(axis, 0) if axis else x
        moved = axis != 0
        base = base.reshape(base.shape[0], -1)
    elif group and last_axis_blocks:
        base = x.reshape(-1, x.shape[-1])
    else:
        base = x.reshape(1, -1)
        group = None if not last_axis_blocks else group
    cols = base.shape[1]
    if not group:
        return Rows(base, shape, axis, tuple(base.shape), cols, None, moved)
    pad = (-cols) % group
    padded = F.pad(base, (0, pad)) if pad else base
    return Rows(padded.reshape(-1, group), shape, axis, tuple(base.shape), cols, group, moved)


def percentile_rank(n: int, pct: float) -> int:
    """1-based nearest rank of the ``pct`` percentile among ``n`` values: ``ceil(pct/100 * n)``."""
    return min(n, max(1, math.ceil(pct / 100.0 * n)))


def _kth(v: torch.Tensor, pct: float) -> torch.Tensor:
    """Nearest-rank percentile per row (``(R, 1)``)."""
    return torch.kthvalue(v, percentile_rank(v.shape[1], pct), dim=1, keepdim=True).values


def clip_range(
    rows: torch.Tensor,
    method: ScaleMethod,
    *,
    asymmetric: bool,
    amax: float | torch.Tensor | None = None,
    qdq: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row clipping range ``(lo, hi)`` (each ``(R, 1)``); ``lo = -hi`` when symmetric.

    ``qdq(rows, lo, hi)`` quantize-dequantizes ``rows`` under a range; the MSE search needs it.
    """
    r = rows.shape[0]
    if amax is not None:
        a = torch.as_tensor(amax, dtype=torch.float32, device=rows.device).abs().reshape(-1, 1)
        hi = a.expand(r, 1).clone() if a.numel() == 1 else a
        return -hi, hi
    if rows.shape[1] == 0:
        z = torch.zeros((r, 1), dtype=rows.dtype, device=rows.device)
        return z, z
    if method.kind == "percentile":
        pct = float(method.percentile)
        if asymmetric:
            lo = -_kth(-rows, pct)  # the pct-th percentile of -x, negated: the lower tail
            hi = _kth(rows, pct)
            return lo.clamp(max=0), hi.clamp(min=0)
        hi = _kth(rows.abs(), pct)
        return -hi, hi
    if asymmetric:
        lo = rows.amin(dim=1, keepdim=True).clamp(max=0)
        hi = rows.amax(dim=1, keepdim=True).clamp(min=0)
    else:
        hi = rows.abs().amax(dim=1, keepdim=True)
        lo = -hi
    if method.kind == "max":
        return lo, hi
    if qdq is None:
        raise MpsearchError("MSE scale search needs a quantize-dequantize function")
    best_err = torch.full((r, 1), float("inf"), dtype=torch.float64, device=rows.device)
    best_lo, best_hi = lo.clone(), hi.clone()
    for alpha in method.alphas():
        a = torch.tensor(alpha, dtype=rows.dtype)
        c_lo, c_hi = lo * a, hi * a
        err = (qdq(rows, c_lo, c_hi) - rows).double().square().sum(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, c_lo, best_lo)
        best_hi = torch.where(better, c_hi, best_hi)
    return best_lo, best_hi
