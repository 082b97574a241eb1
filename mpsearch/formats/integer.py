"""Integer formats: 2-8 bits, symmetric / asymmetric, per-tensor / per-channel / per-group scales."""

from __future__ import annotations

import numpy as np
import torch

from mpsearch.formats.base import Encoded, Format


class IntFormat(Format):
    """``int{b}`` per-channel symmetric; ``int{b}g{G}`` per-group; ``int{b}t`` per-tensor; ``u`` suffix for asymmetric."""

    family = "int"

    def __init__(self, bits: int, *, group: int | None = None, per_tensor: bool = False, asymmetric: bool = False) -> None:
        self.element_bits = bits
        self.bits = bits
        self.group = group
        self.per_tensor = per_tensor
        self.asymmetric = asymmetric
        suffix = f"g{group}" if group else ("t" if per_tensor else "")
        self.spelling = f"{'uint' if asymmetric else 'int'}{bits}{suffix}"
        if asymmetric:
            self.qmin, self.qmax = 0, 2**bits - 1
        else:
            self.qmin, self.qmax = -(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1

    # -- scale estimation -------------------------------------------------------------------------
    def _grouped(self, x: torch.Tensor, channel_axis: int | None) -> tuple[torch.Tensor, callable]:
        """View ``x`` as (rows, elements-per-scale) and a function mapping back to x's shape."""
        if self.per_tensor or channel_axis is None or x.dim() == 0:
            return x.reshape(1, -1), lambda y: y.reshape(x.shape)
        moved = x.movedim(channel_axis, 0)
        rows = moved.reshape(moved.shape[0], -1)
        if self.group:
            n = rows.shape[1]
            pad = (-n) % self.group
            padded = torch.nn.functional.pad(rows, (0, pad))
            g = padded.reshape(rows.shape[0], -1, self.group).reshape(-1, self.group)

            def back(y: torch.Tensor) -> torch.Tensor:
                y = y.reshape(rows.shape[0], -1)[:, :n]
                return y.reshape(moved.shape).movedim(0, channel_axis)

            return g, back
        return rows, lambda y: y.reshape(moved.shape).movedim(0, channel_axis)

    def _params(self, rows: torch.Tensor, amax) -> tuple[torch.Tensor, torch.Tensor]:
        if self.asymmetric:
            lo = rows.amin(dim=1, keepdim=True).clamp(max=0)
            hi = rows.amax(dim=1, keepdim=True).clamp(min=0)
            if amax is not None:
                lo, hi = torch.full_like(lo, -float(amax)), torch.full_like(hi, float(amax))
            scale = ((hi - lo) / (self.qmax - self.qmin)).clamp(min=1e-12)
            zp = torch.round(-lo / scale).clamp(self.qmin, self.qmax)
            return scale, zp
        m = rows.abs().amax(dim=1, keepdim=True) if amax is None else torch.full((rows.shape[0], 1), float(amax))
        scale = (m / self.qmax).clamp(min=1e-12)
        return scale, torch.zeros_like(scale)

    def _quant(self, x: torch.Tensor, channel_axis: int | None, amax) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, callable]:
        rows, back = self._grouped(x.float(), channel_axis)
        scale, zp = self._params(rows, amax)
        q = torch.clamp(torch.round(rows / scale) + zp, self.qmin, self.qmax)
        return q, scale, zp, back

    def fake_quant(self, x, *, channel_axis=0, amax=None):
        q, scale, zp, back = self._quant(x, channel_axis, amax)
        return back((q - zp) * scale).to(x.dtype)

    def effective_bits(self, shape, *, channel_axis=0):
        n = int(np.prod(shape)) if shape else 1
        if self.per_tensor or channel_axis is None:
            n_scales = 1
        elif self.group:
            ch = shape[channel_axis]
            n_scales = ch * -(-(n // ch) // self.group)
        else:
            n_scales = shape[channel_axis]
        overhead = n_scales * (32 + (self.bits if self.asymmetric else 0))
        return self.bits + overhead / n

    def encode(self, x, *, channel_axis=0):
        q, scale, zp, back = self._quant(x.detach(), channel_axis, None)
        codes = back(q - self.qmin).to(torch.uint8).cpu().numpy()
        return Encoded(
            self.spelling,
            tuple(x.shape),
            codes,
            scales=scale.reshape(-1).cpu().numpy().astype(np.float32),
            zero_points=zp.reshape(-1).cpu().numpy().astype(np.float32),
            meta={"channel_axis": channel_axis, "qmin": self.qmin},
        )

    def decode(self, enc):
        axis = enc.meta.get("channel_axis", 0)
        q = torch.from_numpy(enc.codes.astype(np.float32)) + self.qmin
        rows, back = self._grouped(q, axis)
        scale = torch.from_numpy(enc.scales).reshape(-1, 1)
        zp = torch.from_numpy(enc.zero_points).reshape(-1, 1)
        return back((rows - zp) * scale)
