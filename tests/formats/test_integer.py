"""Integer formats against a per-row reference; code layout; packing; dyadic requantization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsearch.errors import MpsearchError
from mpsearch.formats import Encoded, IntFormat, dyadic, pack_codes, parse_format, requantize, unpack_codes
from tests.formats.refs import ref_int_fake_quant


def per_channel(axis):
    def rows_of(x):
        moved = np.moveaxis(x, axis, 0)
        flat = moved.reshape(moved.shape[0], -1)
        return list(flat), lambda out: np.moveaxis(np.stack(out).reshape(moved.shape), 0, axis)

    return rows_of


def per_tensor(x):
    return [x.reshape(-1)], lambda out: out[0].reshape(x.shape)


def per_group(g):
    def rows_of(x):
        flat = x.reshape(x.shape[0], -1)
        rows = [flat[c, i : i + g] for c in range(flat.shape[0]) for i in range(0, flat.shape[1], g)]

        def assemble(out):
            return np.concatenate(out).reshape(x.shape)

        return rows, assemble

    return rows_of


def _weights(seed=0, shape=(16, 72)):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.01, 3, (shape[0],) + (1,) * (len(shape) - 1)).astype(np.float32)
    w[3] = 0.0  # an all-zero channel
    w[5, 0] = 40.0  # an outlier
    return w


CASES = [
    ("int8", dict(bits=8, asymmetric=False, rows_of=per_channel(0))),
    ("int4", dict(bits=4, asymmetric=False, rows_of=per_channel(0))),
    ("int2", dict(bits=2, asymmetric=False, rows_of=per_channel(0))),
    ("int3t", dict(bits=3, asymmetric=False, rows_of=per_tensor)),
    ("uint8t", dict(bits=8, asymmetric=True, rows_of=per_tensor)),
    ("uint4", dict(bits=4, asymmetric=True, rows_of=per_channel(0))),
    ("int4g24", dict(bits=4, asymmetric=False, rows_of=per_group(24))),
    ("uint5g8", dict(bits=5, asymmetric=True, rows_of=per_group(8))),
    ("int4-p99", dict(bits=4, asymmetric=False, rows_of=per_channel(0), method="percentile", pct=99.0)),
    ("uint6t-p99.9", dict(bits=6, asymmetric=True, rows_of=per_tensor, method="percentile", pct=99.9)),
    ("int4g24-mse", dict(bits=4, asymmetric=False, rows_of=per_group(24), method="mse")),
    ("uint3-mse", dict(bits=3, asymmetric=True, rows_of=per_channel(0), method="mse")),
]


@pytest.mark.parametrize("spelling,ref", CASES, ids=[c[0] for c in CASES])
def test_int_fake_quant_equals_reference(spelling, ref):
    w = _weights()
    got = parse_format(spelling).fake_quant(torch.from_numpy(w), channel_axis=0).numpy()
    want = ref_int_fake_quant(w, **ref)
    assert np.array_equal(got, want)


def test_conv_weight_channel_axis_and_activation_amax():
    w = _weights(1, (6, 4, 3, 3))
    got = parse_format("int4").fake_quant(torch.from_numpy(w), channel_axis=1).numpy()
    assert np.array_equal(got, ref_int_fake_quant(w, 4, asymmetric=False, rows_of=per_channel(1)))
    x = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32) * 3
    got = parse_format("int8").fake_quant(torch.from_numpy(x), channel_axis=None, amax=2.0).numpy()
    s = np.float32(2.0) / np.float32(127)
    assert np.array_equal(got, (np.clip(np.round(x / s), -127, 127) * s).astype(np.float32))


def test_mse_search_never_worse_than_max():
    w = torch.from_numpy(_weights(3, (32, 256)))
    for b in (2, 3, 4):
        e_max = (parse_format(f"int{b}").fake_quant(w) - w).square().sum(1)
        e_mse = (parse_format(f"int{b}-mse").fake_quant(w) - w).square().sum(1)
        assert (e_mse <= e_max).all() and (e_mse < e_max).any()


def test_symmetric_codes_are_twos_complement_and_decode_exactly():
    f = parse_format("int4t")
    x = torch.tensor([[-7.0, -1.0, 0.0, 1.0, 7.0, 3.0]])
    enc = f.encode(x, channel_axis=None)
    assert enc.codes.tolist() == [[0x9, 0xF, 0x0, 0x1, 0x7, 0x3]]
    assert enc.bits == 4 and enc.scales.tolist() == [1.0]
    assert f.code_values(enc.codes).tolist() == [[-7, -1, 0, 1, 7, 3]]
    assert enc.packed.tolist() == [[0xF9, 0x10, 0x37]]  # low nibble first
    assert torch.equal(f.decode(enc), x)


@pytest.mark.parametrize("spelling", ["int8", "int4g32", "uint4g32", "uint8t", "int2", "int3-mse", "int4-p99.5"])
@pytest.mark.parametrize("axis", [0, 1, None])
def test_decode_of_encode_is_fake_quant(spelling, axis):
    f = parse_format(spelling)
    x = torch.from_numpy(_weights(4, (8, 6, 9)))
    assert torch.equal(f.decode(f.encode(x, channel_axis=axis)), f.fake_quant(x, channel_axis=axis))


def test_effective_bits_include_scales_and_zero_points():
    assert parse_format("int4").effective_bits((128, 512)) == 4 + 32 / 512
    assert parse_format("int4g128").effective_bits((128, 512)) == 4 + 32 / 128
    assert parse_format("uint4g128").effective_bits((128, 512)) == 4 + 36 / 128
    assert parse_format("int8t").effective_bits((10, 10)) == 8 + 32 / 100
    assert parse_format("int4g128").effective_bits((4, 100)) == 4 + 32 / 100  # partial group still needs a scale


def test_constructor_rejects_impossible_formats():
    with pytest.raises(MpsearchError):
        IntFormat(9)
    with pytest.raises(MpsearchError):
        IntFormat(4, group=0)
    with pytest.raises(MpsearchError):
        IntFormat(4, group=8, per_tensor=True)


# -- packing ---------------------------------------------------------------------------------------------
@settings(max_examples=120, deadline=None)
@given(st.integers(1, 8), st.lists(st.integers(1, 7), min_size=0, max_size=3), st.integers(0, 2**31))
def test_pack_unpack_identity(bits, shape, seed):
    shape = tuple(shape)
    codes = np.random.default_rng(seed).integers(0, 2**bits, size=shape, dtype=np.uint8)
    packed = pack_codes(codes, bits)
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else (shape[0] if shape else 1)
    assert packed.shape[-1] == -(-cols * bits // 8)
    assert np.array_equal(unpack_codes(packed, bits, shape), codes)
    assert np.array_equal(Encoded.codes_from_packed(packed, bits, shape), codes)


def test_pack_layout_is_lsb_first_per_row():
    assert pack_codes(np.array([1, 2, 3]), 4).tolist() == [[0x21, 0x03]]
    assert pack_codes(np.array([[1, 2, 3, 0], [3, 3, 3, 3]]), 2).tolist() == [[0b00111001], [0xFF]]
    # 6-bit: 4 codes in 3 bytes, code j at bits [6j, 6j+6)
    c = np.array([0b000001, 0b000010, 0b000011, 0b111111])
    stream = sum(int(v) << (6 * j) for j, v in enumerate(c))
    assert pack_codes(c, 6).tolist() == [[stream & 0xFF, (stream >> 8) & 0xFF, stream >> 16]]
    with pytest.raises(MpsearchError):
        pack_codes(np.array([16]), 4)


# -- dyadic requantization ------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.floats(1e-12, 1e4), st.sampled_from([8, 16, 24, 32]))
def test_dyadic_error_bound(scale, mbits):
    if round(scale) > 2 ** (mbits - 1) - 1:
        with pytest.raises(MpsearchError, match="too large"):
            dyadic(scale, multiplier_bits=mbits)
        return
    m, s = dyadic(scale, multiplier_bits=mbits)
    assert 0 < m < 2 ** (mbits - 1) and 0 <= s <= 63
    assert abs(m / 2**s - scale) <= 2.0 ** -(s + 1)
    if s < 63 and scale < 2 ** (mbits - 2):
        assert abs(m / 2**s - scale) <= scale * 2.0 ** -(mbits - 1)


def test_dyadic_vectorized_and_requantize_matches_rounding():
    scales = np.array([0.5, 0.0123, 3.7e-5, 1.25])
    m, s = dyadic(scales)
    assert m.shape == s.shape == (4,)
    acc = np.arange(-50000, 50000, 37, dtype=np.int64)
    for mi, si, sc in zip(m, s, scales):
        got = requantize(acc, mi, si)
        exact = np.floor(acc * (int(mi) / 2 ** int(si)) + 0.5)
        assert np.array_equal(got, exact.astype(np.int64))
        assert np.abs(got - acc * sc).max() <= 0.5 + np.abs(acc).max() * abs(int(mi) / 2 ** int(si) - sc)
    assert parse_format("int8").dyadic(0.25) == (2**30, 32)
    with pytest.raises(MpsearchError):
        dyadic(-1.0)
