"""Block-scaled formats: OCP MX (MXFP8/MXFP6/MXFP4/MXINT8, block 32, E8M0 scale) and NVFP4.

Blocks run along the reduction axis: for weights (``channel_axis`` given) along the channel's flattened
other axes, for activations (``channel_axis=None``) along the last axis; a partial last block is
zero-padded. Block scales are computed from the data (dynamically, also for activations).

* MX (OCP Microscaling Formats spec v1.0): per block, shared exponent
  ``X = floor(log2(amax)) - emax_elem`` (clamped to the E8M0 range ``[-127, 127]``, ``-127`` for an all-zero
  block), elements ``round(v / 2**X)`` in the element format with saturation to its max. ``emax_elem`` is
  the exponent of the element format's largest value (e4m3: 8, e5m2: 15, e2m3: 2, e3m2: 4, e2m1: 2); the
  MXINT8 element is a two's complement int8 with an implied scale of 2**-6 (``emax_elem = 0``, range
  ``[-127, 127] / 64``, symmetric).
* NVFP4: e2m1 elements in blocks of 16, one E4M3 scale per block and one float32 scale per tensor:
  ``g = amax_tensor / (448 * 6)`` (the static ``amax`` for activations), block scale
  ``s = e4m3(block_amax / (6 * g))``, element ``e2m1(v / (s * g))``.

Storage (``Encoded``): ``codes`` are the element codes (uint8, tensor shape, ``bits`` = element width),
``scale_codes`` the E8M0 / E4M3 block-scale bytes as a ``(rows, blocks_per_row)`` uint8 array, ``scales``
the NVFP4 per-tensor float32 scale.
"""

from __future__ import annotations

import numpy as np
import torch

from mpsearch.errors import MpsearchError
from mpsearch.formats.base import Encoded, Format
from mpsearch.formats.minifloat import MiniFloat
from mpsearch.formats.scaling import Rows, to_rows

# -- E8M0: the MX shared-scale format (unsigned power of two, 0xFF = NaN, no zero) ----------------------
_E8M0_TABLE = np.array([2.0 ** (c - 127) for c in range(255)] + [np.nan], dtype=np.float32)


def e8m0_decode(codes: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Float32 value ``2**(code - 127)`` of E8M0 codes (255 is NaN)."""
    c = torch.as_tensor(np.asarray(codes)) if isinstance(codes, np.ndarray) else codes
    return torch.from_numpy(_E8M0_TABLE).to(c.device)[c.long()]


def e8m0_encode(x: torch.Tensor) -> torch.Tensor:
    """E8M0 codes of float32 ``x``, bit-exact with ``ml_dtypes.float8_e8m0fnu`` (>= 0.7) conversion.

    A value rounds up to the next power of two from ``1.5 * 2**k`` on (ties up), the same rule for float32
    subnormals as for normals: below ``1.5 * 2**-127`` is code 0 (``2**-127``, the smallest scale), from
    there code 1. Zero, negatives, inf and NaN map to NaN (255); values beyond ``2**127`` overflow to NaN.
    (ml_dtypes 0.6 and torch's ``float8_e8m0fnu`` cast round every subnormal above ``2**-127`` up instead;
    no real block amax is that small, so only this corner differs.)
    """
    u = x.detach().to(torch.float32).contiguous().view(torch.int32)
    e = (u >> 23) & 0xFF
    m = u & 0x7FFFFF
    code = torch.where(e == 0, (m >= 0x600000).to(torch.int32), e + (m >= 0x400000).to(torch.int32))
    invalid = (u <= 0) | (e == 255) | (code > 254)
    return torch.where(invalid, torch.full_like(code, 255), code).to(torch.uint8)


# -- block formats ----------------------------------------------------------------------------------------
class BlockFormat(Format):
    """One block-scaled format; build them with :func:`mx_format` / :func:`nvfp4_format`."""

    family = "block"

    def __init__(
        self,
        spelling: str,
        *,
        element: MiniFloat | None,
        block: int,
        scale_kind: str,
    ) -> None:
        if scale_kind not in ("e8m0", "e4m3"):
            raise MpsearchError(f"unknown block-scale kind {scale_kind!r}")
        if block < 1:
            raise MpsearchError(f"block size must be >= 1, got {block}")
        self.spelling = spelling
        self.element = element  # None: MXINT8 (two's complement int8, implied scale 2**-6)
        self.block = block
        self.scale_kind = scale_kind
        self.element_bits = element.bits if element is not None else 8
        self.scale_bits = 8
        self.global_scale = scale_kind == "e4m3"
        if element is not None:
            self.emax_elem = element.emax
        else:
            self.emax_elem = 0
        self._e4m3 = MiniFloat(4, 3) if self.global_scale else None

    @property
    def nominal_bits(self) -> float:
        """Bits per element with full blocks, excluding the per-tensor scale (MXFP4 4.25, NVFP4 4.5)."""
        return self.element_bits + self.scale_bits / self.block

    # -- shared machinery -------------------------------------------------------------------------------
    def _rows(self, x: torch.Tensor, channel_axis: int | None) -> Rows:
        return to_rows(x, channel_axis=channel_axis, group=self.block, last_axis_blocks=True)

    def _round_elements(self, y: torch.Tensor) -> torch.Tensor:
        if self.element is not None:
            return self.element.round_(y)
        return y.mul_(64.0).round_().clamp_(-127, 127).div_(64.0)

    def _element_codes(self, r: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.element is not None:
            return self.element.codes_of_rounded(r, y)
        return (r * 64.0).to(torch.int32).bitwise_and(0xFF).to(torch.uint8)

    def _element_values(self, codes: torch.Tensor) -> torch.Tensor:
        if self.element is not None:
            return self.element.decode(codes)
        c = codes.to(torch.int32)
        return torch.where(c >= 128, c - 256, c).to(torch.float32) / 64.0

    def _block_scales(self, rows: torch.Tensor, x_amax) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(effective per-block scale (R, 1), scale codes (R, 1) uint8, global scale or None)."""
        bamax = rows.abs().amax(dim=1, keepdim=True) if rows.shape[1] else torch.zeros((rows.shape[0], 1))
        if self.scale_kind == "e8m0":
            mant, ex = torch.frexp(bamax)
            shared = torch.where(bamax > 0, ex - 1 - self.emax_elem, torch.full_like(ex, -127)).clamp(-127, 127)
            codes = torch.where(torch.isnan(bamax), torch.full_like(shared, 255), shared + 127).to(torch.uint8)
            return e8m0_decode(codes), codes, None
        g_amax = torch.as_tensor(x_amax, dtype=torch.float32).abs()
        g = g_amax / (448.0 * 6.0)
        g = torch.where((g > 0) & torch.isfinite(g), g, torch.ones_like(g)).reshape(1, 1)
        unit = bamax / (g * 6.0)
        sb = self._e4m3.round(unit)
        codes = self._e4m3.codes_of_rounded(sb, unit)
        return sb * g, codes, g.reshape(1)

    def _quant(self, x: torch.Tensor, channel_axis: int | None, amax):
        xf = x.detach().float()
        rows = self._rows(xf, channel_axis)
        x_amax = None
        if self.global_scale:
            x_amax = float(amax) if amax is not None else (xf.abs().amax() if xf.numel() else torch.tensor(0.0))
        eff, scodes, g = self._block_scales(rows.rows, x_amax)
        safe = torch.where(eff > 0, eff, torch.ones_like(eff))
        return rows.rows / safe, eff, scodes, g, rows

    # -- Format API ---------------------------------------------------------------------------------------
    def fake_quant(self, x, *, channel_axis=0, amax=None):
        """Quantize-dequantize; ``amax`` only sets NVFP4's per-tensor scale (block scales are dynamic)."""
        y, eff, _, _, rows = self._quant(x, channel_axis, amax)
        return rows.back(self._round_elements(y).mul_(eff)).to(x.dtype)

    def n_blocks(self, shape: tuple[int, ...], channel_axis: int | None = 0) -> int:
        n = int(np.prod(shape)) if shape else 1
        if not shape or n == 0:
            return 1 if n else 0
        if channel_axis is None:
            r, c = n // shape[-1], shape[-1]
        else:
            r = shape[channel_axis]
            c = n // r
        return r * -(-c // self.block)

    def effective_bits(self, shape, *, channel_axis=0):
        """Element bits + 8 scale bits per block (+ 32 bits per tensor for NVFP4), per element."""
        n = int(np.prod(shape)) if shape else 1
        overhead = self.scale_bits * self.n_blocks(shape, channel_axis) + (32 if self.global_scale else 0)
        return self.element_bits + overhead / max(n, 1)

    def encode(self, x, *, channel_axis=0, amax=None):
        y, eff, scodes, g, rows = self._quant(x, channel_axis, amax)
        r = self._round_elements(y.clone())
        codes = rows.back(self._element_codes(r, y)).cpu().numpy()
        return Encoded(
            self.spelling,
            tuple(x.shape),
            codes,
            scales=None if g is None else g.cpu().numpy().astype(np.float32),
            scale_codes=scodes.reshape(rows.base_shape[0], -1).cpu().numpy(),
            meta={"channel_axis": channel_axis, "block": self.block, "scale_format": self.scale_kind},
            bits=self.element_bits,
        )

    def decode(self, enc):
        vals = self._element_values(torch.from_numpy(np.ascontiguousarray(enc.codes))).reshape(enc.shape)
        rows = self._rows(vals, enc.meta.get("channel_axis", 0))
        sc = torch.from_numpy(np.ascontiguousarray(enc.scale_codes)).reshape(-1, 1)
        if self.scale_kind == "e8m0":
            eff = e8m0_decode(sc)
        else:
            g = torch.from_numpy(np.asarray(enc.scales, dtype=np.float32)).reshape(1, 1)
            eff = self._e4m3.decode(sc) * g
        return rows.back(rows.rows * eff)


MX_ELEMENTS = {"fp8": (4, 3), "fp8e5m2": (5, 2), "fp6": (2, 3), "fp6e3m2": (3, 2), "fp4": (2, 1)}


def mx_format(kind: str) -> BlockFormat:
    """``kind`` in fp8 (e4m3), fp8e5m2, fp6 (e2m3), fp6e3m2, fp4 (e2m1), int8."""
    if kind == "int8":
        return BlockFormat("mxint8", element=None, block=32, scale_kind="e8m0")
    if kind not in MX_ELEMENTS:
        raise MpsearchError(f"unknown MX element type {kind!r}: use fp8, fp8e5m2, fp6, fp6e3m2, fp4 or int8")
    e, m = MX_ELEMENTS[kind]
    return BlockFormat(f"mx{kind}", element=MiniFloat(e, m), block=32, scale_kind="e8m0")


def nvfp4_format() -> BlockFormat:
    return BlockFormat("nvfp4", element=MiniFloat(2, 1), block=16, scale_kind="e4m3")
