"""Dyadic requantization scales (HAWQ-V3): ``scale ~= m / 2**s`` with an integer multiplier ``m``.

Integer-only inference replaces the float rescale of an int32 accumulator by an integer multiply and a
right shift. ``m`` is normalised into ``[2**(b-2), 2**(b-1))`` for ``b = multiplier_bits`` so the relative
error of the dyadic number is at most ``2**-(b-1)`` (as long as the shift stays below ``max_shift``).
"""

from __future__ import annotations

import numpy as np

from mpsearch.errors import MpsearchError


def dyadic(scale, *, multiplier_bits: int = 32, max_shift: int = 63):
    """Return ``(m, s)`` (int64 numpy arrays, or ints for a scalar input) with ``m / 2**s ~= scale``.

    ``m`` fits in a signed ``multiplier_bits`` integer (``0 < m < 2**(multiplier_bits-1)``), ``0 <= s <=
    max_shift``, and ``|m / 2**s - scale| <= 2**-(s+1)``.
    """
    if not 2 <= multiplier_bits <= 32:
        raise MpsearchError(f"multiplier_bits must be 2..32, got {multiplier_bits}")
    if not 0 <= max_shift <= 63:
        raise MpsearchError(f"max_shift must be 0..63, got {max_shift}")
    scalar = np.ndim(scale) == 0
    x = np.asarray(scale, dtype=np.float64).reshape(-1)
    limit = 2 ** (multiplier_bits - 1) - 1
    if not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise MpsearchError("dyadic scales must be positive and finite")
    if np.any(np.round(x) > limit):
        raise MpsearchError(f"scale {float(x.max()):g} is too large for a {multiplier_bits}-bit multiplier")
    _, e = np.frexp(x)  # x = f * 2**e with f in [0.5, 1): x * 2**(b-1-e) lies in [2**(b-2), 2**(b-1))
    s = np.clip(multiplier_bits - 1 - e, 0, max_shift).astype(np.int64)
    m = np.round(np.ldexp(x, s)).astype(np.int64)
    over = m > limit  # rounding reached 2**(b-1): halve (exact, m is even then)
    m = np.where(over, m // 2, m)
    s = np.where(over, s - 1, s)
    if scalar:
        return int(m[0]), int(s[0])
    shape = np.shape(scale)
    return m.reshape(shape), s.reshape(shape)


def requantize(acc, m, s) -> np.ndarray:
    """Integer-only ``round(acc * m / 2**s)`` (round half up), exact in Python/NumPy integers."""
    a = np.asarray(acc, dtype=object)
    mm = np.asarray(m, dtype=object)
    ss = np.asarray(s, dtype=object)
    half = np.where(ss > 0, np.left_shift(np.ones_like(ss), np.maximum(ss - 1, 0)), 0)
    out = (a * mm + half) >> ss
    return np.asarray(out, dtype=np.int64)
