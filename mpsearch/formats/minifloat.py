"""Generic minifloats ``ExMy``: sign + E exponent bits + M mantissa bits, 3 to 8 bits in all.

Parameters (all in the spelling, see :mod:`.registry`):

* ``bias``: exponent bias, default ``2**(E-1) - 1`` (``2**(E-1)`` for the ``fnuz`` policy, as ml_dtypes).
* ``policy`` for special values:
  ``ieee`` - top exponent holds inf (mantissa 0) and NaN (quiet NaN = top mantissa bit), like E5M2;
  ``fn`` - finite, one NaN pattern per sign (all exponent and mantissa bits set), like E4M3FN;
  ``fnuz`` - finite, no negative zero, the single NaN is the ``-0`` pattern ``0x80``, like E4M3FNUZ;
  ``fin`` - no special values at all, every code is a number, like OCP FP6/FP4 (E2M3, E3M2, E2M1).
  Defaults: ``fn`` for e4m3 and for the 8-bit formats ieee cannot describe (no mantissa bit for NaN, or a
  single exponent bit), ``ieee`` for the other 8-bit formats (like ml_dtypes' e5m2 and e3m4), ``fin``
  below 8 bits.
* ``subnormals``: on by default; off means the representable set has no subnormals and values round to
  the nearest of ``{0, min_normal}`` below the normal range (ties to 0).
* ``saturate``: on by default (overflow and ±inf clamp to ±max, like torch's float8_e4m3fn cast and PTX
  ``.satfinite``); off gives IEEE overflow semantics (inf for ``ieee``, NaN for ``fn``/``fnuz``), which is what
  ml_dtypes does. ``fin`` formats always saturate (they have nothing to overflow into).

Rounding is round-to-nearest, ties to the even *code*, for every finite float32 input; it is computed with
a handful of vectorized float32/int32 tensor ops (no Python loops over elements): the float32 exponent of
``y`` gives the quantum ``Q`` of y's binade in the target format (clamped below at the subnormal quantum),
and ``(y + 1.5 * 2**23 * Q) - 1.5 * 2**23 * Q`` rounds y to a multiple of Q in the hardware's RNE mode.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mpsearch.errors import MpsearchError
from mpsearch.formats.base import Encoded, Format
from mpsearch.formats.scaling import Rows, ScaleMethod, clip_range, to_rows

POLICIES = ("ieee", "fn", "fnuz", "fin")
_EXP_MASK = 0x7F800000


def default_policy(exp_bits: int, man_bits: int) -> str:
    """Special-value policy a bare ``e{E}m{M}`` spelling gets (see module docstring)."""
    if 1 + exp_bits + man_bits < 8:
        return "fin"
    if (exp_bits, man_bits) == (4, 3) or man_bits == 0 or exp_bits < 2:
        return "fn"
    return "ieee"


def default_bias(exp_bits: int, policy: str) -> int:
    return 2 ** (exp_bits - 1) if policy == "fnuz" else 2 ** (exp_bits - 1) - 1


class MiniFloat:
    """Unit-scale codec of one ExMy format: rounding, codes and the decode table."""

    def __init__(
        self,
        exp_bits: int,
        man_bits: int,
        *,
        bias: int | None = None,
        policy: str | None = None,
        subnormals: bool = True,
        saturate: bool = True,
    ) -> None:
        e, m = int(exp_bits), int(man_bits)
        name = f"e{exp_bits}m{man_bits}"
        if e < 1 or m < 0:
            raise MpsearchError(f"{name}: a minifloat needs at least 1 exponent bit and 0 or more mantissa bits")
        if not 3 <= 1 + e + m <= 8:
            raise MpsearchError(f"{name}: total width 1+{e}+{m} = {1 + e + m} bits, minifloats must be 3 to 8 bits")
        policy = policy or default_policy(e, m)
        if policy not in POLICIES:
            raise MpsearchError(f"{name}: unknown special-value policy {policy!r}, use one of {', '.join(POLICIES)}")
        if policy == "ieee" and (e < 2 or m < 1):
            raise MpsearchError(f"{name}: the ieee policy needs >= 2 exponent bits and >= 1 mantissa bit")
        if not subnormals and m == 0:
            raise MpsearchError(f"{name}: without mantissa bits there are no subnormals to disable; drop nosub")
        if policy == "fin" and not saturate:
            raise MpsearchError(f"{name}: finite-only (fin) formats have no inf/NaN to overflow into; drop nosat")
        bias = default_bias(e, policy) if bias is None else int(bias)
        if 1 - bias - m < -126 or (2**e - 1) - bias > 100:
            raise MpsearchError(f"{name}: bias {bias} puts the format's range outside float32 (2^-126 .. 2^100)")
        self.exp_bits, self.man_bits, self.bias, self.policy = e, m, bias, policy
        self.subnormals, self.saturate = bool(subnormals), bool(saturate)
        self.bits = 1 + e + m
        self.table = self._build_table()
        finite = self.table[np.isfinite(self.table)]
        if not (finite > 0).any():
            raise MpsearchError(f"{name}-{policy}: no positive finite value is left in this format")
        self.max = float(finite.max())
        self.emin = 1 - bias  # exponent of the smallest normal
        self.emax = int(math.floor(math.log2(self.max)))  # exponent of the largest finite value
        self.min_normal = 2.0**self.emin
        self.min_subnormal = 2.0 ** (self.emin - m)
        # exponent-field bounds (float32 bit positions) for the quantum computation
        self._lo_bits = (self.emin + 127) << 23
        self._hi_bits = (self.emax + 1 + 127) << 23
        self._c_add = ((23 - m) << 23) + (1 << 22)  # Q -> 1.5 * 2**23 * Q in the bit domain
        self._table_t: dict[torch.device, torch.Tensor] = {}

    # -- description --------------------------------------------------------------------------------
    @property
    def spelling(self) -> str:
        """Canonical spelling: ``e{E}m{M}`` plus the options that differ from the defaults."""
        e, m = self.exp_bits, self.man_bits
        s = f"e{e}m{m}"
        if self.policy != default_policy(e, m):
            s += f"-{self.policy}"
        if self.bias != default_bias(e, self.policy):
            s += f"-b{self.bias}"
        if not self.subnormals:
            s += "-nosub"
        if not self.saturate:
            s += "-nosat"
        return s

    def __repr__(self) -> str:
        return f"MiniFloat({self.spelling!r}, max={self.max:g})"

    # -- decode -------------------------------------------------------------------------------------
    def _build_table(self) -> np.ndarray:
        e, m, bias = self.exp_bits, self.man_bits, self.bias
        codes = np.arange(2**self.bits, dtype=np.int64)
        sign = codes >> (e + m)
        ef = (codes >> m) & (2**e - 1)
        mf = codes & (2**m - 1)
        mag = np.where(ef == 0, mf * 2.0 ** (1 - bias - m), (2**m + mf) * np.exp2(ef - bias - m))
        val = np.where(sign == 1, -mag, mag)
        top = 2**e - 1
        if self.policy == "ieee":
            val = np.where((ef == top) & (mf == 0), np.copysign(np.inf, val), val)
            val = np.where((ef == top) & (mf != 0), np.nan, val)
        elif self.policy == "fn":
            val = np.where((ef == top) & (mf == 2**m - 1), np.nan, val)
        elif self.policy == "fnuz":
            val = np.where(codes == 1 << (e + m), np.nan, val)
        return val.astype(np.float32)

    def table_on(self, device: torch.device) -> torch.Tensor:
        t = self._table_t.get(device)
        if t is None:
            t = self._table_t[device] = torch.from_numpy(self.table).to(device)
        return t

    def decode(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Float32 values of uint8 codes (same shape)."""
        c = torch.as_tensor(np.asarray(codes)) if isinstance(codes, np.ndarray) else codes
        return self.table_on(c.device)[c.long()]

    # -- rounding -----------------------------------------------------------------------------------
    def round_(self, y: torch.Tensor) -> torch.Tensor:
        """Round float32 ``y`` in place to the nearest representable value (see module docstring)."""
        if self.saturate:
            y.clamp_(-self.max, self.max)
        u = y.view(torch.int32)
        t = torch.bitwise_and(u, _EXP_MASK)
        if not self.subnormals:
            # below the normal range the grid is {0, min_normal}: use min_normal itself as the quantum
            t = torch.where(t < self._lo_bits, self._lo_bits + (self.man_bits << 23), t)
        if self.man_bits == 0:
            # No mantissa: the even *code* at a tie 1.5 * 2**e is the one with an even exponent field,
            # but value-grid RNE always picks 2**(e+1). In binades where e + bias is even, nudge |y|
            # down by one float32 ulp so that exact ties round down (no other input changes its result).
            # Below the normal range the grid's ties (0.5 * min_normal) already go to 0: leave them.
            even = ((t >> 23) + (self.bias + 1)).bitwise_and_(1).eq_(0)
            even.logical_and_(t >= self._lo_bits)
            u.sub_(even.to(torch.int32))
        t.clamp_(self._lo_bits, self._hi_bits).add_(self._c_add)
        c = t.view(torch.float32)
        y.add_(c).sub_(c)
        if not self.saturate:
            over = y.abs() > self.max
            if self.policy == "ieee":  # overflow keeps its sign: +-inf
                y.copy_(torch.where(over, y * math.inf, y))
            else:
                y.masked_fill_(over, math.nan)
        return y

    def round(self, y: torch.Tensor) -> torch.Tensor:
        """Rounded copy of ``y`` (float32)."""
        return self.round_(y.detach().to(torch.float32).clone())

    # -- encode -------------------------------------------------------------------------------------
    def encode(self, y: torch.Tensor) -> torch.Tensor:
        """uint8 codes of float32 ``y`` (unit scale): ``sign << (E+M) | exponent << M | mantissa``."""
        y = y.detach().to(torch.float32)
        r = self.round(y)
        return self.codes_of_rounded(r, y)

    def codes_of_rounded(self, r: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Codes of already-rounded values ``r``; the sign (of zeros and NaNs too) comes from ``y``."""
        e, m = self.exp_bits, self.man_bits
        a = r.abs()
        ab = a.view(torch.int32)
        normal = (ab >> (23 - m)) - ((127 - self.bias) << m)
        sub = (a * 2.0 ** (self.bias - 1 + m)).to(torch.int32)
        mag = torch.where(a >= self.min_normal, normal, sub)
        nan = torch.isnan(r)
        top = (2**e - 1) << m
        if self.policy == "ieee":
            mag = torch.where(torch.isinf(r), torch.full_like(mag, top), mag)
            mag = torch.where(nan, torch.full_like(mag, top | (1 << (m - 1))), mag)
        elif self.policy == "fn":
            mag = torch.where(nan, torch.full_like(mag, top | (2**m - 1)), mag)
        elif nan.any():
            if self.policy == "fin":
                raise MpsearchError(f"format {self.spelling} has no NaN code, but the input contains NaN")
        sign = (y.view(torch.int32) < 0).to(torch.int32)
        if self.policy == "fnuz":
            sign = torch.where(mag == 0, torch.zeros_like(sign), sign)
            sign = torch.where(nan, torch.ones_like(sign), sign)
            mag = torch.where(nan, torch.zeros_like(mag), mag)
        return ((sign << (e + m)) | mag).to(torch.uint8)


class MiniFloatFormat(Format):
    """A minifloat with a float32 scale per channel / group / tensor: ``x ~= value(code) * scale``.

    The scale maps the clipping range onto the format: ``scale = amax / max_finite`` (amax per output
    channel for weights, a static calibrated amax for activations), so ``x / scale`` is rounded by the
    unit-scale :class:`MiniFloat` codec.
    """

    family = "fp"

    def __init__(
        self,
        codec: MiniFloat,
        *,
        group: int | None = None,
        per_tensor: bool = False,
        method: ScaleMethod = ScaleMethod(),
    ) -> None:
        if group is not None and (not isinstance(group, int) or group < 1):
            raise MpsearchError(f"group size must be a positive integer, got {group!r}")
        if group and per_tensor:
            raise MpsearchError("a minifloat format is either per-tensor or per-group, not both")
        self.codec = codec
        self.group, self.per_tensor, self.method = group, per_tensor, method
        self.element_bits = codec.bits
        base = f"e{codec.exp_bits}m{codec.man_bits}"
        gran = f"g{group}" if group else ("t" if per_tensor else "")
        self.spelling = base + gran + codec.spelling[len(base):] + method.suffix

    def _rows(self, x: torch.Tensor, channel_axis: int | None) -> Rows:
        return to_rows(x, channel_axis=channel_axis, group=self.group, per_tensor=self.per_tensor)

    def _scale_of(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        s = torch.maximum(lo.abs(), hi) / self.codec.max
        return torch.where(s > 0, s, torch.ones_like(s))

    def _qdq(self, rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        s = self._scale_of(lo, hi)
        return self.codec.round_(rows / s).mul_(s)

    def _scaled(self, x: torch.Tensor, channel_axis: int | None, amax) -> tuple[torch.Tensor, torch.Tensor, Rows]:
        rows = self._rows(x.detach().float(), channel_axis)
        lo, hi = clip_range(rows.rows, self.method, asymmetric=False, amax=amax, qdq=self._qdq)
        scale = self._scale_of(lo, hi)
        return rows.rows / scale, scale, rows

    def fake_quant(self, x, *, channel_axis=0, amax=None):
        y, scale, rows = self._scaled(x, channel_axis, amax)
        return rows.back(self.codec.round_(y).mul_(scale)).to(x.dtype)

    def effective_bits(self, shape, *, channel_axis=0):
        """Code bits plus one float32 scale per channel / group / tensor."""
        n = int(np.prod(shape)) if shape else 1
        if self.per_tensor or channel_axis is None or not shape:
            n_scales = 1
        elif self.group:
            ch = shape[channel_axis]
            n_scales = ch * -(-(n // max(ch, 1)) // self.group)
        else:
            n_scales = shape[channel_axis]
        return self.element_bits + 32 * n_scales / max(n, 1)

    def encode(self, x, *, channel_axis=0, amax=None):
        """Codes (``sign|exponent|mantissa``, ``bits`` wide) of ``x / scale`` and the float32 scales."""
        y, scale, rows = self._scaled(x, channel_axis, amax)
        codes = self.codec.encode(y)
        return Encoded(
            self.spelling,
            tuple(x.shape),
            rows.back(codes).cpu().numpy(),
            scales=scale.reshape(-1).cpu().numpy().astype(np.float32),
            meta={"channel_axis": channel_axis, "group": self.group, "per_tensor": self.per_tensor},
            bits=self.element_bits,
        )

    def decode(self, enc):
        vals = self.codec.decode(np.ascontiguousarray(enc.codes)).reshape(enc.shape)
        rows = self._rows(vals, enc.meta.get("channel_axis", 0))
        scale = torch.from_numpy(np.asarray(enc.scales, dtype=np.float32)).reshape(-1, 1)
        return rows.back(rows.rows * scale)
