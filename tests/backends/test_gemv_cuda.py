"""CPU checks of the hand-scheduled int4 GEMV (backends/tvm/gemv_cuda.py, 16-row tiles): packing round trip
to mpsearch's int4g128 codes, a lane-level numpy model of the kernel against the dequantized reference, and an
sm_90 build."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from backends.tvm.gemv_cuda import emulate_int4_gemv_tc16, pack_int4_tiles16, pack_scales_tiles16, unpack_int4_tiles16
from mpsearch.formats import parse_format


def _encode(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    fmt = parse_format("int4g128")
    enc = fmt.encode(w, channel_axis=0)
    return fmt, enc


def test_pack_round_trip_is_mpsearch_codes():
    n, k = 64, 512
    fmt, enc = _encode(n, k)
    assert set(np.unique(enc.codes).tolist()) <= set(range(16))
    wq = pack_int4_tiles16(enc.codes)
    assert wq.shape == (n // 16, k // 128, 32, 2, 4) and wq.dtype == np.uint32
    np.testing.assert_array_equal(unpack_int4_tiles16(wq, n, k), enc.codes)
    # lane l (r = l // 4, t = l % 4) of tile T, group G holds, as words [hr, w], the codes
    # k = G*128 + t*32 + w*8 + [0, 8) of row T*16 + r + 8*hr, nibbles s / s + 4 = K offsets 2s / 2s + 1
    nib = np.stack([(wq >> np.uint32(4 * p)) & 0xF for p in range(8)], axis=-1)  # T, G, lane, hr, w, nibble
    order = [0, 4, 1, 5, 2, 6, 3, 7]  # nibble holding K offset j
    for tile, grp, lane, hr in [(0, 0, 0, 0), (0, 0, 5, 1), (1, 2, 31, 0), (3, 3, 17, 1)]:
        r, t = lane // 4, lane % 4
        row, k0 = tile * 16 + r + 8 * hr, grp * 128 + t * 32
        got = nib[tile, grp, lane, hr][:, order].reshape(32)
        np.testing.assert_array_equal(got, enc.codes[row, k0:k0 + 32])
    with pytest.raises(ValueError):
        pack_int4_tiles16(enc.codes[:8])  # N not a multiple of 16


def test_lane_model_matches_dequantized_reference():
    n, k = 64, 512
    fmt, enc = _encode(n, k, seed=1)
    codes = np.random.default_rng(3).integers(0, 16, size=(n, k)).astype(np.uint8)  # every pattern, -8 too
    codes[:, :16] = np.arange(16, dtype=np.uint8)
    q = fmt.code_values(codes).astype(np.float64)
    assert q.min() == -8 and q.max() == 7
    s16 = enc.scales.reshape(n, -1).astype(np.float16)
    sq = pack_scales_tiles16(s16, n, k)
    assert sq.shape == (n // 16, k // 128, 16) and sq.dtype == np.float16
    x = np.random.default_rng(2).standard_normal(k).astype(np.float16)
    ref = (q * np.repeat(s16.astype(np.float64), 128, axis=1)) @ x.astype(np.float64)
    got = emulate_int4_gemv_tc16(x, pack_int4_tiles16(codes), sq)
    assert got.shape == (n,)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)
    # and on the format's own encoding: the model reproduces decode() with the scales rounded to fp16
    w16 = fmt.code_values(enc.codes).astype(np.float64) * np.repeat(s16.astype(np.float64), 128, axis=1)
    np.testing.assert_allclose(emulate_int4_gemv_tc16(x, pack_int4_tiles16(enc.codes), sq), w16 @ x.astype(np.float64),
                               rtol=0, atol=1e-9)


@pytest.mark.skipif(shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").is_file(), reason="needs nvcc")
def test_builds_for_sm90(tmp_path):
    tvm = pytest.importorskip("tvm")
    from backends.tvm.cuda_build import cuda_build_env
    from backends.tvm.gemv_cuda import int4_gemv_tc16
    from backends.tvm.target import resolve_target

    t = resolve_target("cuda")
    mod = tvm.IRModule({"main": int4_gemv_tc16(512, 1024, ksplit=4, tiles_per_block=2)})
    with cuda_build_env(), t.tvm():
        ex = tvm.compile(mod, target=t.tvm())
    ex.export_library(str(tmp_path / "k.so"))
    assert (tmp_path / "k.so").stat().st_size > 0
    src = ex.mod.imports[0].inspect_source("")  # the CUDA source behind the embedded fatbin
    assert "mma.sync.aligned.m16n8k16" in src and "sub.f16x2" in src


def test_v2_decode_model_matches_reference_and_can_fail():
    """The v2 kernel's one-shift decode (in-place 0x00F000F0 mask, XOR 0x6480, fp16 fma x 1/16 - 72) is exact
    on every code; a wrong constant in the model is caught."""
    import backends.tvm.gemv_cuda as gc

    n, k = 32, 512
    codes = np.random.default_rng(5).integers(0, 16, size=(n, k)).astype(np.uint8)
    codes[:, :32] = np.tile(np.arange(16, dtype=np.uint8), 2)
    fmt = parse_format("int4g128")
    q = fmt.code_values(codes).astype(np.float64)
    s16 = (np.random.default_rng(6).random((n, k // 128)) * 0.01 + 1e-3).astype(np.float16)
    x = np.random.default_rng(7).standard_normal(k).astype(np.float16)
    ref = (q * np.repeat(s16.astype(np.float64), 128, axis=1)) @ x.astype(np.float64)
    wq, sq = pack_int4_tiles16(codes), pack_scales_tiles16(s16, n, k)
    np.testing.assert_allclose(gc.emulate_int4_gemv_tc16_v2(x, wq, sq), ref, rtol=0, atol=1e-9)
    # the fp16 constants are the ones the kernel uses
    assert np.array([1 / 16, 1 / 16], np.float16).view(np.uint32)[0] == gc.F16X2_INV16
    assert np.array([-72, -72], np.float16).view(np.uint32)[0] == gc.F16X2_M72
    old = gc.F16X2_M72
    try:  # an off-by-one bias (-71) must show up
        gc.F16X2_M72 = int(np.array([-71, -71], np.float16).view(np.uint32)[0])
        assert np.abs(gc.emulate_int4_gemv_tc16_v2(x, wq, sq) - ref).max() > 1e-3
    finally:
        gc.F16X2_M72 = old


@pytest.mark.skipif(shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").is_file(), reason="needs nvcc")
def test_v2_builds_for_sm90(tmp_path):
    tvm = pytest.importorskip("tvm")
    from backends.tvm.cuda_build import cuda_build_env
    from backends.tvm.gemv_cuda import int4_gemv_tc16_v2
    from backends.tvm.target import resolve_target

    t = resolve_target("cuda")
    f = int4_gemv_tc16_v2(512, 1024, ksplit=4, tiles_per_block=2)
    with cuda_build_env(), t.tvm():
        ex = tvm.compile(tvm.IRModule({"main": f}), target=t.tvm())
    src = ex.mod.imports[0].inspect_source("")
    assert "mma.sync.aligned.m16n8k16" in src and "fma.rn.f16x2" in src
