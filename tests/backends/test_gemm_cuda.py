"""CPU-side tests of the hand-written int8 GEMM for sm_90 (backends/tvm/gemm_cuda.py).

The layout logic (swizzled staging, ldmatrix lane addresses, fragment slots, accumulator placement) is
replayed in numpy and compared with ``a @ b.T``; the swizzle is checked to be bank-conflict free; the TIR
is built for sm_90 and the device code compiled by nvcc without register spills. The GPU timing and the
on-device exactness check live in benchmarks/gpu/run_on_device.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from backends.tvm import gemm_cuda
from backends.tvm.gemm_cuda import GemmConfig, emulate_int8_gemm_mma, swizzle_offset

SMALL = [(GemmConfig(32, 32, 64, 1, 2, 2), (64, 64, 128)), (GemmConfig(32, 32, 128, 1, 2, 2), (32, 64, 256)),
         (GemmConfig(64, 32, 64, 2, 1, 3), (64, 32, 192)), (GemmConfig(32, 32, 64, 1, 2, 3, "frag"), (32, 64, 256)),
         (GemmConfig(32, 32, 128, 1, 2, 2, "frag"), (32, 32, 512)), (GemmConfig(64, 32, 64, 2, 1, 4, "frag"), (64, 32, 384))]


def _operands(m: int, n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(-128, 128, (m, k), dtype=np.int8), rng.integers(-128, 128, (n, k), dtype=np.int8)


@pytest.mark.parametrize("cfg,shape", SMALL, ids=lambda x: x.name if isinstance(x, GemmConfig) else str(x))
def test_emulated_kernel_matches_matmul(cfg: GemmConfig, shape: tuple[int, int, int]) -> None:
    a, b = _operands(*shape)
    out = emulate_int8_gemm_mma(a, b, cfg)
    np.testing.assert_array_equal(out, a.astype(np.int64) @ b.astype(np.int64).T)


def test_emulation_catches_a_wrong_lane_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay is not trivially right: swapping B's two K halves in the ldmatrix addresses breaks it."""
    cfg, shape = SMALL[0]
    a, b = _operands(*shape, seed=1)
    monkeypatch.setattr(gemm_cuda, "_b_lane_rc", lambda lane, kk: (lane % 8 + 8 * (lane // 16), kk * 2 + 1 - (lane // 8) % 2))
    out = emulate_int8_gemm_mma(a, b, cfg)
    assert not np.array_equal(out, a.astype(np.int64) @ b.astype(np.int64).T)


def test_replay_catches_a_read_before_the_copy_landed() -> None:
    """The pipeline model is not trivially satisfied: reading a stage before its wait_group raises."""
    cfg = GemmConfig(32, 32, 64, 1, 2, 3, "frag")
    a, b = _operands(32, 32, 256)
    rp = gemm_cuda._BlockReplay(a, b, cfg, 0, 0)
    for j in range((cfg.bm + cfg.bn) * cfg.bk // 16 // cfg.threads):  # every copy of K tile 0 into stage 0
        rp.copy(j, 0, 0)
    rp.commit()
    with pytest.raises(AssertionError):
        rp.load_frags(0, 0, 0)
    rp.wait(0)
    rp.load_frags(0, 0, 0)


@pytest.mark.parametrize("bk", [64, 128])
def test_swizzle_is_a_permutation_and_conflict_free(bk: int) -> None:
    rows, cpr = 128, bk // 16
    offs = np.array([[swizzle_offset(r, c, bk) for c in range(cpr)] for r in range(rows)])
    assert sorted(offs.ravel().tolist()) == list(range(0, rows * bk, 16))
    bank_group = (offs // 16) % 8  # 16-byte units of the 128-byte bank line
    # ldmatrix: each 8-lane phase reads 8 consecutive rows (8-aligned) at one logical chunk
    for r0 in range(0, rows, 8):
        for c in range(cpr):
            assert len(set(bank_group[r0:r0 + 8, c].tolist())) == 8, (r0, c)
    # cp.async: 8 consecutive threads write 8 consecutive (row, chunk) units
    flat = bank_group.ravel()
    for i in range(0, flat.size, 8):
        assert len(set(flat[i:i + 8].tolist())) == 8, i


def test_config_checks() -> None:
    with pytest.raises(ValueError):
        GemmConfig(128, 256, 128, 2, 4, 3).check(4096, 4096, 4000)  # K not a multiple of bk
    with pytest.raises(ValueError):
        GemmConfig(128, 256, 128, 1, 2, 3).check(4096, 4096, 4096)  # 128x128 warp tile: 512 accumulators
    with pytest.raises(ValueError):
        GemmConfig(256, 256, 128, 2, 4, 4).check(4096, 4096, 4096)  # 256 KB shared memory
    assert GemmConfig(128, 256, 128, 2, 4, 3).smem_bytes == 3 * 384 * 128


def _nvcc() -> str | None:
    return shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").is_file() else None)


@pytest.mark.parametrize("pipeline", ["simple", "frag"])
def test_tir_builds_for_sm90_without_spills(tmp_path: Path, pipeline: str) -> None:
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc (CUDA toolkit) not on this machine: cannot compile the sm_90 device code")
    tvm = pytest.importorskip("tvm")
    from backends.tvm.cuda_build import cuda_build_env
    from backends.tvm.target import resolve_target

    cfg = GemmConfig(128, 256, 128, 2, 4, 3, pipeline)
    t = resolve_target("cuda")
    try:
        with cuda_build_env(), t.tvm():
            ex = tvm.compile(tvm.IRModule({"main": gemm_cuda.int8_gemm_mma(4096, 4096, 4096, cfg)}), target=t.tvm())
    except Exception as e:  # noqa: BLE001
        if "libcuda" in str(e) or "gcc" in str(e):
            pytest.skip(f"CUDA codegen unavailable here: {e}")
        raise
    src = ex.mod.imports[0].inspect_source("")
    assert "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32" in src
    assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in src
    assert "cp.async.cg.shared.global" in src and "cp.async.wait_group 1;" in src
    # per K tile per warp: (64/16 A + 64/16 B) ldmatrix.x4 and 4 x 8 mma per k32 step, 4 k32 steps
    kernel = src[src.index("__global__ void"):]
    # (the frag pipeline also has the prologue's fragment load: one more k32 step of ldmatrix)
    assert kernel.count("ldmatrix.sync") == (5 if pipeline == "frag" else 4) * 8 and kernel.count("mma.sync") == 4 * 32
    cu = tmp_path / "k.cu"
    cu.write_text(src)
    r = subprocess.run([nvcc, "-arch=sm_90", "--cubin", "-O3", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"), str(cu)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "0 bytes spill stores, 0 bytes spill loads" in r.stderr, r.stderr[-2000:]
