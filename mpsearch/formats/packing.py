"""Exact packing of sub-byte codes into storage bytes (what backends load).

Byte layout (the contract with the TVM backend):

* The code tensor is viewed as 2-D ``(rows, cols)`` with ``rows = shape[0]`` and ``cols = prod(shape[1:])``
  (a 1-D or 0-d tensor is one row). For a weight quantized with ``channel_axis=0`` a row is one output
  channel; for a Linear weight ``(out, in)`` the codes run along ``in``.
* Each row is an LSB-first bit stream: code ``j`` occupies bits ``[j*bits, (j+1)*bits)`` of the row, bit
  ``k`` of the stream is bit ``k % 8`` of byte ``k // 8``. So int4/fp4 put two codes per byte, the *low
  nibble first*; 2-bit codes put four per byte, lowest bits first; 6-bit codes fill 3 bytes per 4 codes;
  8-bit codes are the bytes themselves.
* Every row starts on a byte boundary: a row is ``ceil(cols * bits / 8)`` bytes, the tail padded with zero bits.
* Codes are unsigned bit patterns (signed integers are stored in two's complement, minifloats as
  sign|exponent|mantissa), see each format's ``encode``.
"""

from __future__ import annotations

import numpy as np

from mpsearch.errors import MpsearchError


def _as_rows(codes: np.ndarray) -> np.ndarray:
    c = np.asarray(codes)
    if c.ndim == 0:
        return c.reshape(1, 1)
    if c.ndim == 1:
        return c.reshape(1, -1)
    return c.reshape(c.shape[0], -1)


def packed_row_bytes(cols: int, bits: int) -> int:
    """Bytes taken by one packed row of ``cols`` codes of ``bits`` bits."""
    return -(-cols * bits // 8)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-wide codes into a ``(rows, row_bytes)`` uint8 array (layout: module docstring)."""
    if not 1 <= int(bits) <= 8:
        raise MpsearchError(f"cannot pack {bits}-bit codes: code width must be 1 to 8 bits")
    rows = _as_rows(codes)
    if rows.dtype != np.uint8:
        if rows.size and (rows.min() < 0 or rows.max() > 255):
            raise MpsearchError("codes to pack must be unsigned 8-bit values")
        rows = rows.astype(np.uint8)
    if bits == 8:
        return np.ascontiguousarray(rows).copy()
    if rows.size and int(rows.max()) >> bits:
        raise MpsearchError(f"a code does not fit in {bits} bits (max code {int(rows.max())})")
    n, cols = rows.shape
    if bits == 4:  # the common case, without the bit-plane detour
        padded = np.zeros((n, cols + (cols & 1)), dtype=np.uint8)
        padded[:, :cols] = rows
        return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)
    planes = (rows[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.reshape(n, cols * bits), axis=1, bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_codes`: uint8 codes of ``shape`` from packed rows."""
    if not 1 <= int(bits) <= 8:
        raise MpsearchError(f"cannot unpack {bits}-bit codes: code width must be 1 to 8 bits")
    shape = tuple(int(s) for s in shape)
    template = _as_rows(np.empty(shape, dtype=np.uint8))
    n, cols = template.shape
    p = np.asarray(packed, dtype=np.uint8).reshape(n, -1) if n else np.zeros((0, 0), np.uint8)
    if p.shape[1] != packed_row_bytes(cols, bits):
        raise MpsearchError(
            f"packed data has {p.shape[1]} bytes per row, {packed_row_bytes(cols, bits)} expected for "
            f"{cols} codes of {bits} bits"
        )
    if bits == 8:
        return p.reshape(shape).copy()
    if bits == 4:
        out = np.empty((n, p.shape[1] * 2), dtype=np.uint8)
        out[:, 0::2] = p & 0x0F
        out[:, 1::2] = p >> 4
        return out[:, :cols].reshape(shape)
    planes = np.unpackbits(p, axis=1, count=cols * bits, bitorder="little").reshape(n, cols, bits)
    weights = (1 << np.arange(bits)).astype(np.uint16)
    return (planes.astype(np.uint16) * weights).sum(axis=2).astype(np.uint8).reshape(shape)
