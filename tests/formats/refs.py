"""Straightforward reference implementations the fast formats are checked against (tests only)."""

from __future__ import annotations

import math

import numpy as np

from mpsearch.formats.minifloat import MiniFloat


def float32_sweep() -> np.ndarray:
    """Every float32 rounding class for formats with <= 6 mantissa bits: all 2**16 top halves (sign,
    exponent, top 7 mantissa bits: the kept, round and part of the sticky bits) times low halves that
    make the sticky part zero, tiny, exactly half, just above half, and full."""
    hi = np.arange(65536, dtype=np.uint32) << 16
    lows = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x1234, 0xC000, 0x4000], dtype=np.uint32)
    return (hi[:, None] | lows[None, :]).reshape(-1).view(np.float32)


def ref_minifloat_codes(codec: MiniFloat, y: np.ndarray) -> np.ndarray:
    """Codes by brute force: nearest representable magnitude, ties to the even code; overflow per policy.

    Works from the decode table only (no bit tricks), for any ExMy configuration.
    """
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    e, m = codec.exp_bits, codec.man_bits
    half = 2 ** (e + m)
    mags = codec.table[:half].astype(np.float64)
    codes = np.arange(half)
    ok = np.isfinite(mags)
    if not codec.subnormals:
        ok &= ~((codes >> m == 0) & (codes != 0))
    cand_v, cand_c = list(mags[ok]), list(codes[ok])
    max_code = int(codes[ok][np.argmax(mags[ok])])
    if not codec.saturate:  # the value the grid would continue with, as an overflow sentinel
        mant_all = (max_code & (2**m - 1)) == 2**m - 1
        nxt = 2.0 ** (codec.emax + 1) if mant_all else codec.max + 2.0 ** (codec.emax - m)
        cand_v.append(nxt)
        cand_c.append(max_code + 1)
    cv, cc = np.array(cand_v), np.array(cand_c)
    a = np.abs(y.astype(np.float64))
    # beyond twice the largest candidate the answer is the largest; clipping keeps float64 distances exact
    a = np.minimum(a, codec.max if codec.saturate else 2 * cv.max())
    out = np.empty(y.shape, dtype=np.int64)
    for i0 in range(0, len(a), 8192):
        aa = a[i0 : i0 + 8192]
        d = np.abs(cv[None, :] - aa[:, None])
        dmin = d.min(axis=1, keepdims=True)
        tie_ok = d == dmin
        # among equally near candidates pick the even code (cc & 1 == 0), else the only one
        score = np.where(tie_ok, cc[None, :] & 1, 10)
        out[i0 : i0 + 8192] = cc[np.argmin(score, axis=1)]
    sign = (np.signbit(y)).astype(np.int64)
    nan_in = np.isnan(y)
    if not codec.saturate:
        over = out == (cand_c[-1])
    else:
        over = np.zeros_like(nan_in)
    top = (2**e - 1) << m
    if codec.policy == "ieee":
        out = np.where(over, top, out)
        out = np.where(nan_in, top | (1 << (m - 1)), out)
    elif codec.policy == "fn":
        out = np.where(over | nan_in, top | (2**m - 1), out)
    elif codec.policy == "fnuz":
        sign = np.where(out == 0, 0, sign)
        out = np.where(over | nan_in, 0, out)
        sign = np.where(over | nan_in, 1, sign)
    return ((sign << (e + m)) | out).astype(np.uint8)


def ref_int_fake_quant(
    x: np.ndarray, bits: int, *, asymmetric: bool, rows_of, method: str = "max", pct: float | None = None
) -> np.ndarray:
    """Per-row loops: clip range, scale, round half to even, clamp, dequantize (float32 throughout).

    ``rows_of(x)`` returns a list of 1-D float32 arrays (each sharing a scale) and a function that
    reassembles them; this mirrors the documented granularity.
    """
    qmin, qmax = (0, 2**bits - 1) if asymmetric else (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1)
    rows, assemble = rows_of(x)
    out = []
    for r in rows:
        r = r.astype(np.float32)

        def qdq(lo: np.float32, hi: np.float32) -> np.ndarray:
            if asymmetric:
                s = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(qmax - qmin))
                s = s if s > 0 else np.float32(1)
                zp = np.float32(min(max(np.round(np.float32(-lo) / s), qmin), qmax))
                q = np.clip(np.round(r / s) + zp, qmin, qmax).astype(np.float32)
                return ((q - zp) * s).astype(np.float32)
            s = np.float32(np.float32(hi) / np.float32(qmax))
            s = s if s > 0 else np.float32(1)
            q = np.clip(np.round(r / s), qmin, qmax).astype(np.float32)
            return (q * s).astype(np.float32)

        n = len(r)
        if method == "percentile":
            k = min(n, max(1, math.ceil(pct / 100.0 * n)))
            if asymmetric:
                lo = np.float32(min(-(np.sort(-r)[k - 1]), 0))  # k-th smallest of -r, negated
                hi = np.float32(max(np.sort(r)[k - 1], 0))
            else:
                hi = np.float32(np.sort(np.abs(r))[k - 1])
                lo = -hi
        else:
            if asymmetric:
                lo, hi = np.float32(min(r.min(), 0)), np.float32(max(r.max(), 0))
            else:
                hi = np.float32(np.abs(r).max())
                lo = -hi
        if method == "mse":
            best, best_lh = np.inf, (lo, hi)
            for i in range(80):
                a = np.float32(1.0 - i / 100)
                c_lo, c_hi = np.float32(lo * a), np.float32(hi * a)
                err = float(np.sum((qdq(c_lo, c_hi) - r).astype(np.float64) ** 2))
                if err < best:
                    best, best_lh = err, (c_lo, c_hi)
            lo, hi = best_lh
        out.append(qdq(lo, hi))
    return assemble(out)
