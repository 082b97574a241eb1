"""Spellings, errors, and the encode/decode/fake_quant contract for every format family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.errors import MpsearchError
from mpsearch.formats import BlockFormat, IntFormat, MiniFloatFormat, list_formats, parse_format

EXTRA = [
    "int4g64", "int5t", "uint2g16", "int8-mse", "int6t-p99.99", "e3m4", "e1m2", "e2m2", "e3m3", "e4m2",
    "e7m0", "e4m3g32", "e5m2t", "e2m1g16-mse", "e3m4-fn", "e4m3-ieee", "e4m3-fnuz-b11", "e4m3-nosub",
    "e5m2-nosat", "e3m2-b2", "e2m3t-p99.9", "mxfp8e5m2", "mxfp6e3m2",
]  # fmt: skip
ALL = [s for s in list_formats()] + EXTRA


@pytest.mark.parametrize("spelling", ALL)
def test_canonical_spellings_round_trip(spelling):
    f = parse_format(spelling)
    assert f.spelling == spelling  # these are all canonical already
    assert parse_format(f.spelling).spelling == f.spelling
    assert parse_format(spelling.upper()) == f


def test_list_formats_covers_every_family_and_required_presets():
    names = list_formats()
    for required in ["int4", "int4g128", "uint8t", "e4m3", "e5m2", "e2m3", "e3m2", "e2m1", "mxfp8", "mxfp6", "mxfp4", "mxint8", "nvfp4"]:
        assert required in names
    fam = {parse_format(s).family for s in names}
    assert fam == {"float", "int", "fp", "block"}
    assert isinstance(parse_format("int4"), IntFormat)
    assert isinstance(parse_format("e2m1"), MiniFloatFormat)
    assert isinstance(parse_format("nvfp4"), BlockFormat)


@pytest.mark.parametrize(
    "alias,canonical",
    [("e4m3fn", "e4m3"), ("E4M3FNUZ", "e4m3-fnuz"), ("e4m3b11fnuz", "e4m3-fnuz-b11"), ("fp8", "e4m3"),
     ("fp4", "e2m1"), ("e2m1fn", "e2m1"), ("mxfp8e4m3", "mxfp8"), ("e3m4-fn-b3", "e3m4-fn"),
     ("int8-p99.90", "int8-p99.9"), (" int4 ", "int4")],
)  # fmt: skip
def test_aliases_and_default_options_canonicalise(alias, canonical):
    assert parse_format(alias).spelling == canonical


@pytest.mark.parametrize(
    "bad,why",
    [("e9m9", "3 to 8 bits"), ("int1", "2 to 8 bits"), ("int9", "2 to 8 bits"), ("int4g0", "group size"),
     ("e0m3", "exponent bit"), ("e1m0", "3 to 8 bits"), ("e2m1-nosat", "fin"), ("e1m2-ieee", "ieee"),
     ("e4m3-b200", "bias"), ("int4-foo", "unknown option"), ("e4m3-fn-ieee", "conflict"),
     ("int8-p0", "percentile"), ("int8-p100.5", "percentile"), ("e5m0-nosub", "subnormals"),
     ("mxfp5", "unknown format"), ("", "unknown format"), ("int77", "unknown format"), ("int4g-1", "unknown format")],
)  # fmt: skip
def test_impossible_spellings_raise_one_line_errors(bad, why):
    with pytest.raises(MpsearchError, match=why) as err:
        parse_format(bad)
    assert "\n" not in str(err.value) and "unknown format" in str(err.value)
    with pytest.raises(MpsearchError):
        parse_format(3)  # type: ignore[arg-type]


QUANT = [s for s in ALL if not parse_format(s).is_float]


@pytest.mark.parametrize("spelling", QUANT)
def test_decode_of_encode_equals_fake_quant_exactly(spelling):
    f = parse_format(spelling)
    g = torch.Generator().manual_seed(7)
    w = torch.randn(12, 5, 3, 3, generator=g) * torch.logspace(-3, 1, 12).reshape(12, 1, 1, 1)
    act = torch.randn(4, 37, generator=g) * 3
    for x, axis, amax in [(w, 0, None), (w, 1, None), (act, None, 2.5), (act, None, None), (torch.randn(300, generator=g), 0, None)]:
        enc = f.encode(x, channel_axis=axis, amax=amax)
        fq = f.fake_quant(x, channel_axis=axis, amax=amax)
        assert fq.shape == x.shape and fq.dtype == x.dtype
        assert torch.equal(f.decode(enc), fq), (axis, amax)
        assert enc.codes.shape == tuple(x.shape) and enc.codes.dtype == np.uint8
        assert int(enc.codes.max()) < 2**enc.bits
        assert np.array_equal(enc.codes_from_packed(enc.packed, enc.bits, enc.codes.shape), enc.codes)


@pytest.mark.parametrize("spelling", ["int8", "int4g128", "e4m3", "e2m1", "mxfp4", "nvfp4"])
def test_simulate_call_patterns_and_half_precision_inputs(spelling):
    """simulate.py calls fake_quant(weight, channel_axis=0) and fake_quant(x, channel_axis=None, amax=...)."""
    f = parse_format(spelling)
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    out = f.fake_quant(w.detach(), channel_axis=0)
    assert out.shape == w.shape and (out - w).abs().max() < w.abs().max()
    x = torch.randn(2, 8, 5, 5).half()
    y = f.fake_quant(x, channel_axis=None, amax=float(x.abs().max()))
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert torch.equal(f.fake_quant(x.float(), channel_axis=None, amax=float(x.abs().max())).half(), y)


@pytest.mark.parametrize("spelling", ["int8", "int4", "e4m3", "e5m2", "e2m3", "e2m1", "mxfp8", "mxfp4", "nvfp4"])
def test_fake_quant_is_idempotent(spelling):
    f = parse_format(spelling)
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    q = f.fake_quant(w)
    assert torch.equal(f.fake_quant(q), q)


def test_more_bits_less_error():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    err = {s: float((parse_format(s).fake_quant(w) - w).square().mean()) for s in ["int2", "int4", "int8", "e2m1", "e2m3", "e4m3", "mxfp4", "mxfp6", "mxfp8"]}
    assert err["int2"] > err["int4"] > err["int8"]
    assert err["e2m1"] > err["e2m3"] and err["e2m1"] > err["e4m3"]
    assert err["mxfp4"] > err["mxfp6"] and err["mxfp4"] > err["mxfp8"]
