"""Integer formats: 2-8 bits, symmetric / asymmetric, per-tensor / per-channel / per-group scales.

Spelling (see :mod:`.registry`): ``int{b}`` per-channel symmetric, ``int{b}t`` per-tensor, ``int{b}g{G}``
groups of G along the reduction axis, prefix ``u`` for asymmetric (``uint8t``), suffix ``-mse`` or
``-p{pct}`` for the scale estimator (``int4g128-mse``, ``int8t-p99.9``; default: absolute max).

Symmetric formats use the restricted range ``[-(2**(b-1) - 1), 2**(b-1) - 1]`` and zero point 0 (so the
dequantized grid is symmetric and int8 GEMMs need no zero-point correction); asymmetric ones use
``[0, 2**b - 1]`` with an integer zero point: ``x ~= (q - zp) * scale``.
"""

from __future__ import annotations

import numpy as np
import torch

from mpsearch.errors import MpsearchError
from mpsearch.formats.base import Encoded, Format
from mpsearch.formats.scaling import Rows, ScaleMethod, clip_range, to_rows


class IntFormat(Format):
    """Uniform integer quantization; see the module docstring for spelling and ranges."""

    family = "int"

    def __init__(
        self,
        bits: int,
        *,
        group: int | None = None,
        per_tensor: bool = False,
        asymmetric: bool = False,
        method: ScaleMethod = ScaleMethod(),
    ) -> None:
        if not isinstance(bits, int) or not 2 <= bits <= 8:
            raise MpsearchError(f"integer formats need 2 to 8 bits, got {bits!r}")
        if group is not None and (not isinstance(group, int) or group < 1):
            raise MpsearchError(f"group size must be a positive integer, got {group!r}")
        if group and per_tensor:
            raise MpsearchError("an integer format is either per-tensor or per-group, not both")
        self.element_bits = bits
        self.bits = bits
        self.group = group
        self.per_tensor = per_tensor
        self.asymmetric = asymmetric
        self.method = method
        suffix = f"g{group}" if group else ("t" if per_tensor else "")
        self.spelling = f"{'uint' if asymmetric else 'int'}{bits}{suffix}{method.suffix}"
        if asymmetric:
            self.qmin, self.qmax = 0, 2**bits - 1
        else:
            self.qmin, self.qmax = -(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1

    # -- quantization core ------------------------------------------------------------------------
    def _rows(self, x: torch.Tensor, channel_axis: int | None) -> Rows:
        return to_rows(x, channel_axis=channel_axis, group=self.group, per_tensor=self.per_tensor)

    def _params(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point for clipping range ``[lo, hi]`` (a zero range gets scale 1)."""
        if self.asymmetric:
            scale = (hi - lo) / (self.qmax - self.qmin)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            zp = torch.round(-lo / scale).clamp(self.qmin, self.qmax)
            return scale, zp
        scale = hi / self.qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.zeros_like(scale)

    def _q(self, rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
        q = torch.round(rows / scale)
        if self.asymmetric:
            q.add_(zp)
        return q.clamp_(self.qmin, self.qmax)

    def _qdq(self, rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        scale, zp = self._params(lo, hi)
        q = self._q(rows, scale, zp)
        if self.asymmetric:
            q.sub_(zp)
        return q.mul_(scale)

    def _quant(self, x: torch.Tensor, channel_axis: int | None, amax) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Rows]:
        rows = self._rows(x.detach().float(), channel_axis)
        lo, hi = clip_range(rows.rows, self.method, asymmetric=self.asymmetric, amax=amax, qdq=self._qdq)
        scale, zp = self._params(lo, hi)
        return self._q(rows.rows, scale, zp), scale, zp, rows

    # -- Format API -------------------------------------------------------------------------------
    def fake_quant(self, x, *, channel_axis=0, amax=None):
        q, scale, zp, rows = self._quant(x, channel_axis, amax)
        if self.asymmetric:
            q.sub_(zp)
        return rows.back(q.mul_(scale)).to(x.dtype)

    def n_scales(self, shape: tuple[int, ...], channel_axis: int | None = 0) -> int:
        """Number of (scale, zero point) pairs stored for a tensor of ``shape``."""
        n = int(np.prod(shape)) if shape else 1
        if self.per_tensor or channel_axis is None or not shape:
            return 1
        ch = shape[channel_axis]
        if self.group:
            return ch * -(-(n // max(ch, 1)) // self.group)
        return ch

    def effective_bits(self, shape, *, channel_axis=0):
        """Code bits plus a float32 scale (and a ``bits``-wide zero point when asymmetric) per scale."""
        n = int(np.prod(shape)) if shape else 1
        overhead = self.n_scales(shape, channel_axis) * (32 + (self.bits if self.asymmetric else 0))
        return self.bits + overhead / max(n, 1)

    def encode(self, x, *, channel_axis=0, amax=None):
        """Codes: two's complement ``bits``-wide patterns when symmetric, ``q`` itself when asymmetric.

        ``scales``/``zero_points`` are float32, one per row of the scale layout (``meta`` records it):
        per channel in channel order, per group in (channel, group) order, or one per tensor.
        """
        q, scale, zp, rows = self._quant(x, channel_axis, amax)
        qi = rows.back(q).to(torch.int32)
        codes = (qi & (2**self.bits - 1)).to(torch.uint8).cpu().numpy()
        return Encoded(
            self.spelling,
            tuple(x.shape),
            codes,
            scales=scale.reshape(-1).cpu().numpy().astype(np.float32),
            zero_points=zp.reshape(-1).cpu().numpy().astype(np.float32),
            meta={
                "channel_axis": channel_axis,
                "group": self.group,
                "per_tensor": self.per_tensor,
                "signed": not self.asymmetric,
                "qmin": self.qmin,
                "qmax": self.qmax,
            },
            bits=self.bits,
        )

    def code_values(self, codes: np.ndarray) -> np.ndarray:
        """Integer values ``q`` (int32) of stored codes (sign-extends two's complement when symmetric)."""
        c = np.asarray(codes).astype(np.int32)
        if self.asymmetric:
            return c
        return np.where(c >= 2 ** (self.bits - 1), c - 2**self.bits, c).astype(np.int32)

    def decode(self, enc):
        axis = enc.meta.get("channel_axis", 0)
        q = torch.from_numpy(self.code_values(enc.codes).astype(np.float32)).reshape(enc.shape)
        rows = self._rows(q, axis)
        scale = torch.from_numpy(np.asarray(enc.scales, dtype=np.float32)).reshape(-1, 1)
        zp = torch.from_numpy(np.asarray(enc.zero_points, dtype=np.float32)).reshape(-1, 1)
        r = rows.rows
        if self.asymmetric:
            r = r - zp
        return rows.back(r * scale)
