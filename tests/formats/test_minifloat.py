"""Minifloat rounding and codes: bit-exact against ml_dtypes, torch float8 and a brute-force reference."""

from __future__ import annotations

import ml_dtypes as md
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsearch.errors import MpsearchError
from mpsearch.formats import MiniFloat, parse_format
from tests.formats.refs import float32_sweep, ref_minifloat_codes

# (spelling of the ml_dtypes-semantics variant, ml_dtypes dtype). ml_dtypes casts do not saturate, so
# the formats with inf/NaN are compared in their -nosat variant; fin formats always saturate.
ML_DTYPES = [
    ("e4m3-nosat", md.float8_e4m3fn),
    ("e5m2-nosat", md.float8_e5m2),
    ("e2m3", md.float6_e2m3fn),
    ("e3m2", md.float6_e3m2fn),
    ("e2m1", md.float4_e2m1fn),
    ("e3m4-nosat", md.float8_e3m4),
    ("e4m3-ieee-nosat", md.float8_e4m3),
    ("e4m3-fnuz-nosat", md.float8_e4m3fnuz),
    ("e5m2-fnuz-nosat", md.float8_e5m2fnuz),
    ("e4m3-fnuz-b11-nosat", md.float8_e4m3b11fnuz),
]
IDS = [s for s, _ in ML_DTYPES]
SWEEP = float32_sweep()
FINITE = SWEEP[np.isfinite(SWEEP)]


def codec(spelling: str) -> MiniFloat:
    return parse_format(spelling).codec


def mine(c: MiniFloat, x: np.ndarray) -> np.ndarray:
    return c.encode(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


@pytest.mark.parametrize("spelling,dt", ML_DTYPES, ids=IDS)
def test_decode_table_matches_ml_dtypes_for_every_code(spelling, dt):
    c = codec(spelling)
    ref = np.arange(2**c.bits, dtype=np.uint8).view(dt).astype(np.float32)
    assert np.array_equal(np.isnan(c.table), np.isnan(ref))
    ok = ~np.isnan(ref)
    assert np.array_equal(c.table[ok].view(np.uint32), ref[ok].view(np.uint32))  # also the sign of zero
    assert c.max == float(md.finfo(dt).max)


@pytest.mark.parametrize("spelling,dt", ML_DTYPES, ids=IDS)
def test_every_float32_rounding_class_matches_ml_dtypes(spelling, dt):
    """All 2**16 sign/exponent/top-mantissa patterns x low halves around the sticky/round boundaries:
    subnormals, exact ties, overflow, every binade of float32."""
    c = codec(spelling)
    got, ref = mine(c, FINITE), FINITE.astype(dt).view(np.uint8)
    bad = np.nonzero(got != ref)[0]
    assert bad.size == 0, [(float(FINITE[i]), int(got[i]), int(ref[i])) for i in bad[:5]]


@pytest.mark.parametrize("spelling,dt", [s for s in ML_DTYPES if "fnuz" not in s[0] and s[0] not in ("e2m3", "e3m2", "e2m1")], ids=lambda v: str(v))
def test_nan_and_inf_match_ml_dtypes(spelling, dt):
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 3e38, -3e38], dtype=np.float32)
    assert np.array_equal(mine(codec(spelling), x), x.astype(dt).view(np.uint8))


@pytest.mark.parametrize("spelling", ["e4m3-fnuz-nosat", "e5m2-fnuz-nosat"])
def test_fnuz_nan_is_the_negative_zero_pattern(spelling):
    x = np.array([np.nan, np.inf, -np.inf, -0.0, -1e-30], dtype=np.float32)
    assert mine(codec(spelling), x).tolist() == [0x80, 0x80, 0x80, 0, 0]


def test_finite_only_formats_reject_nan_on_encode():
    with pytest.raises(MpsearchError, match="no NaN"):
        codec("e2m1").encode(torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize("spelling,clip", [("e4m3", 448.0), ("e5m2", 57344.0), ("e3m4", 15.5)])
def test_saturating_default_equals_ml_dtypes_of_clipped_input(spelling, clip):
    x = np.concatenate([FINITE, np.array([np.inf, -np.inf], np.float32)])
    ref = np.clip(x, -clip, clip).astype({"e4m3": md.float8_e4m3fn, "e5m2": md.float8_e5m2, "e3m4": md.float8_e3m4}[spelling])
    assert np.array_equal(mine(codec(spelling), x), ref.view(np.uint8))


def test_e4m3_matches_torch_float8_e4m3fn_cast():
    """torch's e4m3fn cast saturates (also inf); our default e4m3 does the same, NaN included."""
    x = torch.from_numpy(np.concatenate([SWEEP, np.array([np.nan, -np.nan, np.inf, -np.inf], np.float32)]))
    ref = x.to(torch.float8_e4m3fn).view(torch.uint8)
    assert torch.equal(codec("e4m3").encode(x), ref)
    fq = parse_format("e4m3t").codec.round(x)
    back = ref.view(torch.float8_e4m3fn).to(torch.float32)
    assert torch.equal(torch.isnan(fq), torch.isnan(back))
    assert torch.equal(fq[~torch.isnan(fq)], back[~torch.isnan(back)])


def test_e5m2_nosat_matches_torch_float8_e5m2_cast():
    x = torch.from_numpy(np.concatenate([SWEEP, np.array([np.nan, np.inf, -np.inf], np.float32)]))
    ref = x.to(torch.float8_e5m2).view(torch.uint8)
    got = codec("e5m2-nosat").encode(x)
    finite_or_inf = ~torch.isnan(x)
    assert torch.equal(got[finite_or_inf], ref[finite_or_inf])
    assert torch.isnan(torch.from_numpy(codec("e5m2").table)[got[~finite_or_inf].long()]).all()


# -- generic ExMy -------------------------------------------------------------------------------------
def test_generic_parameters_reproduce_the_presets():
    presets = {
        "e4m3": MiniFloat(4, 3, bias=7, policy="fn"),
        "e5m2": MiniFloat(5, 2, bias=15, policy="ieee"),
        "e2m3": MiniFloat(2, 3, bias=1, policy="fin"),
        "e3m2": MiniFloat(3, 2, bias=3, policy="fin"),
        "e2m1": MiniFloat(2, 1, bias=1, policy="fin"),
    }
    for name, generic in presets.items():
        preset = codec(name)
        assert generic.spelling == name
        assert np.array_equal(generic.table.view(np.uint32), preset.table.view(np.uint32))
        assert np.array_equal(mine(generic, FINITE), mine(preset, FINITE))


def _probe_values(c: MiniFloat, rng: np.random.Generator) -> np.ndarray:
    """Representable values, exact midpoints (ties) and their float32 neighbours, random values."""
    t = c.table[np.isfinite(c.table)].astype(np.float64)
    t = np.unique(np.concatenate([t, [c.max + 2.0 ** (c.emax - c.man_bits), 2.0 ** (c.emax + 1)]]))
    mids = ((t[1:] + t[:-1]) / 2).astype(np.float32)
    near = np.concatenate([np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))])
    rand = (rng.standard_normal(4000) * np.exp2(rng.uniform(c.emin - c.man_bits - 3, c.emax + 3, 4000)))
    vals = np.concatenate([t.astype(np.float32), mids, near, rand.astype(np.float32), [0.0, -0.0, 1e-40, 3e38]])
    return np.concatenate([vals, -vals]).astype(np.float32)


GENERIC = [
    "e1m1", "e1m2", "e1m6", "e2m0", "e2m2", "e3m0", "e3m1", "e3m3", "e4m2", "e4m1", "e5m1", "e6m1",
    "e7m0", "e2m5", "e3m4", "e4m3-nosub", "e2m1-nosub", "e3m4-fn", "e3m4-fin", "e2m2-b3", "e3m2-b1",
    "e5m2-nosub-nosat", "e4m3-fnuz-nosat", "e7m0-nosat", "e4m0-fn-nosat", "e2m3-fn-nosat", "e3m3-ieee-nosat",
    "e4m3-b10-nosub", "e3m4-fin-b5",
]  # fmt: skip


@pytest.mark.parametrize("spelling", GENERIC)
def test_generic_minifloats_match_brute_force_nearest_even(spelling):
    c = codec(spelling)
    x = _probe_values(c, np.random.default_rng(0))
    got, ref = mine(c, x), ref_minifloat_codes(c, x)
    bad = np.nonzero(got != ref)[0]
    assert bad.size == 0, [(float(x[i]), int(got[i]), int(ref[i])) for i in bad[:5]]


@pytest.mark.parametrize("spelling", ["e4m3", "e2m1", "e7m0", "e4m3-nosub", "e3m4-nosat"])
def test_rounding_is_idempotent_and_matches_decode(spelling):
    c = codec(spelling)
    codes = np.arange(2**c.bits)
    emitted = np.isfinite(c.table)
    if not c.subnormals:
        emitted &= ~(((codes >> c.man_bits) & (2**c.exp_bits - 1) == 0) & (codes & (2**c.man_bits - 1) != 0))
    values = torch.from_numpy(c.table[emitted].copy())
    assert torch.equal(c.round(values), values)
    assert torch.equal(c.encode(values), torch.from_numpy(codes[emitted].astype(np.uint8)))
    x = torch.from_numpy(FINITE[::7].copy())
    r = c.round(x)
    ok = torch.isfinite(r)
    assert torch.equal(c.decode(c.encode(x))[ok], r[ok])


# -- hypothesis: random and edge inputs ------------------------------------------------------------------
floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)


@settings(max_examples=150, deadline=None)
@given(st.lists(floats32, min_size=1, max_size=64), st.sampled_from(ML_DTYPES))
def test_property_random_floats_match_ml_dtypes(xs, case):
    spelling, dt = case
    x = np.array(xs, dtype=np.float32)
    assert np.array_equal(mine(codec(spelling), x), x.astype(dt).view(np.uint8))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(ML_DTYPES), st.integers(0, 255), st.sampled_from([-1, 0, 1]), st.floats(0.5, 4.0))
def test_property_ties_and_neighbours_match_ml_dtypes(case, code, nudge, scale_pow2):
    """Midpoints between adjacent codes (exact ties) and one float32 ulp either side, scaled by 2**k
    inside and outside the range (overflow, subnormals)."""
    spelling, dt = case
    c = codec(spelling)
    t = np.unique(c.table[np.isfinite(c.table)].astype(np.float64))
    i = code % (len(t) - 1)
    mid = np.float32((t[i] + t[i + 1]) / 2)
    if nudge:
        mid = np.nextafter(mid, np.float32(np.inf * nudge))
    x = np.array([mid, mid * np.float32(2.0 ** round(np.log2(scale_pow2)))], dtype=np.float32)
    assert np.array_equal(mine(c, x), x.astype(dt).view(np.uint8))


@settings(max_examples=100, deadline=None)
@given(st.lists(floats32, min_size=1, max_size=32), st.sampled_from(GENERIC))
def test_property_generic_brute_force(xs, spelling):
    c = codec(spelling)
    x = np.array(xs, dtype=np.float32)
    assert np.array_equal(mine(c, x), ref_minifloat_codes(c, x))

