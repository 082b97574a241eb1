"""CPU checks of the hand-scheduled int4 GEMV (backends/tvm/gemv_cuda.py): packing round trip to mpsearch's
int4g128 codes, a lane-level numpy model of the kernel against the dequantized reference, and an sm_90 build."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from backends.tvm.gemv_cuda import emulate_int4_gemv_tc, pack_int4_tiles, pack_scales_tiles, unpack_int4_tiles
from mpsearch.formats import parse_format


def _encode(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    fmt = parse_format("int4g128")
    enc = fmt.encode(w, channel_axis=0)
    return fmt, enc


def test_pack_round_trip_is_mpsearch_codes():
    fmt, enc = _encode(64, 512)
    wq, _ = pack_int4_tiles(enc.codes)
    assert wq.shape == (8, 4, 32, 4) and wq.dtype == np.uint32
    np.testing.assert_array_equal(unpack_int4_tiles(wq, 64, 512), enc.codes)
    assert set(np.unique(enc.codes).tolist()) <= set(range(16))
    # lane l of tile 0, group 0 holds the 32 codes k = (l % 4) * 32 + [0, 32) of row l // 4
    lane = unpack_int4_tiles(wq, 64, 512)[:8, :128].reshape(8, 4, 32)
    np.testing.assert_array_equal(lane, enc.codes[:8, :128].reshape(8, 4, 32))


def test_lane_model_matches_dequantized_reference():
    n, k = 64, 512
    fmt, enc = _encode(n, k, seed=1)
    codes = np.random.default_rng(3).integers(0, 16, size=(n, k)).astype(np.uint8)  # every pattern, -8 too
    codes[:, :16] = np.arange(16, dtype=np.uint8)
    wq, _ = pack_int4_tiles(codes)
    s16 = enc.scales.reshape(n, -1).astype(np.float16)
    sq = pack_scales_tiles(s16, n, k)
    x = np.random.default_rng(2).standard_normal(k).astype(np.float16)
    q = fmt.code_values(codes).astype(np.float64)
    ref = (q * np.repeat(s16.astype(np.float64), 128, axis=1)) @ x.astype(np.float64)
    got = emulate_int4_gemv_tc(x, wq, sq)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


@pytest.mark.skipif(shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").is_file(), reason="needs nvcc")
def test_builds_for_sm90(tmp_path):
    tvm = pytest.importorskip("tvm")
    from backends.tvm.cuda_build import cuda_build_env
    from backends.tvm.gemv_cuda import int4_gemv_tc
    from backends.tvm.target import resolve_target

    t = resolve_target("cuda")
    mod = tvm.IRModule({"main": int4_gemv_tc(512, 1024, ksplit=4, tiles_per_block=2)})
    with cuda_build_env(), t.tvm():
        ex = tvm.compile(mod, target=t.tvm())
    ex.export_library(str(tmp_path / "k.so"))
    assert (tmp_path / "k.so").stat().st_size > 0


def test_tiles16_round_trip_and_lane_model():
    from backends.tvm.gemv_cuda import emulate_int4_gemv_tc16, pack_int4_tiles16, pack_scales_tiles16, unpack_int4_tiles16

    n, k = 64, 512
    fmt = parse_format("int4g128")
    codes = np.random.default_rng(4).integers(0, 16, size=(n, k)).astype(np.uint8)
    wq = pack_int4_tiles16(codes)
    assert wq.shape == (4, 4, 32, 2, 4)
    np.testing.assert_array_equal(unpack_int4_tiles16(wq, n, k), codes)
    s16 = (np.random.default_rng(5).random((n, k // 128)) * 0.05 + 0.01).astype(np.float16)
    x = np.random.default_rng(6).standard_normal(k).astype(np.float16)
    q = fmt.code_values(codes).astype(np.float64)
    ref = (q * np.repeat(s16.astype(np.float64), 128, axis=1)) @ x.astype(np.float64)
    np.testing.assert_allclose(emulate_int4_gemv_tc16(x, wq, pack_scales_tiles16(s16, n, k)), ref, rtol=0, atol=1e-9)
