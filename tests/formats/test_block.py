"""Block-scaled formats (MX, NVFP4) against numpy/ml_dtypes references; E8M0 bit-exactness."""

from __future__ import annotations

import ml_dtypes as md
import numpy as np
import pytest
import torch

from mpsearch.formats import e8m0_decode, e8m0_encode, parse_format
from tests.formats.refs import float32_sweep

ELEM = {
    "mxfp8": (md.float8_e4m3fn, 448.0, 8),
    "mxfp8e5m2": (md.float8_e5m2, 57344.0, 15),
    "mxfp6": (md.float6_e2m3fn, 7.5, 2),
    "mxfp6e3m2": (md.float6_e3m2fn, 28.0, 4),
    "mxfp4": (md.float4_e2m1fn, 6.0, 2),
}


def _data(shape=(8, 100), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * np.exp2(rng.integers(-20, 20, shape)).astype(np.float32)
    x[0, :40] = 0.0  # an all-zero block
    x[1, 5] = 1e-41  # a float32 subnormal
    return x


def ref_mx(x: np.ndarray, spelling: str) -> np.ndarray:
    """OCP MX v1.0 per block of 32 along the last axis: X = floor(log2(amax)) - emax_elem."""
    rows, cols = x.shape
    out = np.zeros_like(x)
    for r in range(rows):
        for b in range(0, cols, 32):
            v = x[r, b : b + 32]
            amax = np.abs(v).max()
            shared = -127 if amax == 0 else int(np.floor(np.log2(np.float64(amax)))) - (ELEM[spelling][2] if spelling != "mxint8" else 0)
            shared = max(-127, min(127, shared))
            X = np.float32(2.0**shared)
            y = v / X
            if spelling == "mxint8":
                q = np.clip(np.round(y * 64), -127, 127) / np.float32(64)
            else:
                dt, mx, _ = ELEM[spelling]
                q = np.clip(y, -mx, mx).astype(dt).astype(np.float32)  # saturating conversion
            out[r, b : b + 32] = q * X
    return out


@pytest.mark.parametrize("spelling", list(ELEM) + ["mxint8"])
def test_mx_fake_quant_equals_reference(spelling):
    x = _data()
    f = parse_format(spelling)
    assert np.array_equal(f.fake_quant(torch.from_numpy(x), channel_axis=0).numpy(), ref_mx(x, spelling))
    assert np.array_equal(f.fake_quant(torch.from_numpy(x), channel_axis=None, amax=1.0).numpy(), ref_mx(x, spelling))


def ref_nvfp4(x: np.ndarray, amax: float | None = None) -> np.ndarray:
    g = np.float32(np.float32(np.abs(x).max() if amax is None else amax) / np.float32(448.0 * 6.0))
    out = np.zeros_like(x)
    for r in range(x.shape[0]):
        for b in range(0, x.shape[1], 16):
            v = x[r, b : b + 16]
            unit = np.float32(np.abs(v).max()) / np.float32(g * np.float32(6.0))
            sb = np.clip(np.float32(unit), 0, 448).astype(md.float8_e4m3fn).astype(np.float32)
            eff = np.float32(sb * g)
            y = v / (eff if eff > 0 else np.float32(1))
            out[r, b : b + 16] = np.clip(y, -6, 6).astype(md.float4_e2m1fn).astype(np.float32) * eff
    return out


def test_nvfp4_fake_quant_equals_reference():
    x = np.random.default_rng(1).standard_normal((6, 64)).astype(np.float32)
    x[2] *= 1e-3
    f = parse_format("nvfp4")
    assert np.array_equal(f.fake_quant(torch.from_numpy(x)).numpy(), ref_nvfp4(x))
    got = f.fake_quant(torch.from_numpy(x), channel_axis=None, amax=1.5).numpy()
    assert np.array_equal(got, ref_nvfp4(x, 1.5))


@pytest.mark.parametrize("spelling", list(ELEM) + ["mxint8", "nvfp4"])
@pytest.mark.parametrize("shape,axis", [((8, 100), 0), ((6, 5, 3, 3), 0), ((4, 7, 40), None), ((50,), None)])
def test_block_decode_of_encode_is_fake_quant(spelling, shape, axis):
    f = parse_format(spelling)
    x = torch.from_numpy(_data(shape, 3) if len(shape) == 2 else np.random.default_rng(5).standard_normal(shape).astype(np.float32))
    enc = f.encode(x, channel_axis=axis)
    assert enc.codes.shape == shape and enc.codes.dtype == np.uint8
    assert enc.scale_codes.size == f.n_blocks(shape, axis)
    assert torch.equal(f.decode(enc), f.fake_quant(x, channel_axis=axis))


def test_mx_scale_codes_are_e8m0_and_elements_pack():
    x = torch.zeros(2, 64)
    x[0, 0], x[1, 40] = 6.0, 0.75  # amax 6 -> 2**(2-2) ; 0.75 -> 2**(-1-2)
    enc = parse_format("mxfp4").encode(x)
    assert enc.scale_codes.tolist() == [[127, 0], [0, 124]]
    assert enc.codes[0, 0] == 0b0111 and enc.codes[1, 40] == 0b0111  # e2m1 6.0 = max
    assert enc.packed.shape == (2, 32) and enc.packed[0, 0] == 0x07


def test_effective_bits_include_block_scales():
    n = 4096 * 4096
    assert parse_format("mxfp4").effective_bits((4096, 4096)) == 4.25
    assert parse_format("mxfp6").effective_bits((4096, 4096)) == 6.25
    assert parse_format("mxfp8").effective_bits((4096, 4096)) == 8.25
    assert parse_format("mxint8").effective_bits((4096, 4096)) == 8.25
    assert parse_format("nvfp4").effective_bits((4096, 4096)) == 4.5 + 32 / n
    assert parse_format("nvfp4").nominal_bits == 4.5 and parse_format("mxfp4").nominal_bits == 4.25
    assert parse_format("mxfp4").effective_bits((10, 40)) == 4 + 8 * 2 / 40  # partial block pays a scale
    assert parse_format("mxfp4").storage_bytes((4096, 4096)) == n * 4.25 / 8


# -- E8M0 ---------------------------------------------------------------------------------------------------
def test_e8m0_decode_matches_ml_dtypes_for_every_code():
    ref = np.arange(256, dtype=np.uint8).view(md.float8_e8m0fnu).astype(np.float32)
    got = e8m0_decode(np.arange(256, dtype=np.uint8)).numpy()
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    assert np.array_equal(got[:255].view(np.uint32), ref[:255].view(np.uint32))


def test_e8m0_encode_matches_ml_dtypes():
    sub = np.arange(0, 1 << 23, 61, dtype=np.uint32).view(np.float32)  # float32 subnormals
    ties = np.array([1.5 * 2.0**k for k in range(-127, 127)], dtype=np.float32)
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0], dtype=np.float32)
    x = np.concatenate([float32_sweep(), sub, ties, specials])
    got = e8m0_encode(torch.from_numpy(x)).numpy()
    with np.errstate(invalid="ignore"):  # ml_dtypes warns when it maps zero/negatives/NaN to NaN
        ref = x.astype(md.float8_e8m0fnu).view(np.uint8)
    bad = np.nonzero(got != ref)[0]
    assert bad.size == 0, [(float(x[i]), int(got[i]), int(ref[i])) for i in bad[:5]]
