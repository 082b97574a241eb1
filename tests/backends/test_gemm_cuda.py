"""CPU-side tests of the hand-written int8 and e4m3 GEMMs for sm_90 (backends/tvm/gemm_cuda.py).

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
from backends.tvm.gemm_cuda import E4M3, E4M3_CVT, GemmConfig, emulate_gemm_mma, emulate_int8_gemm_mma, swizzle_offset

SMALL = [(GemmConfig(32, 32, 64, 1, 2, 2), (64, 64, 128)), (GemmConfig(32, 32, 128, 1, 2, 2), (32, 64, 256)),
         (GemmConfig(64, 32, 64, 2, 1, 3), (64, 32, 192)), (GemmConfig(32, 32, 64, 1, 2, 3, "frag"), (32, 64, 256)),
         (GemmConfig(32, 32, 128, 1, 2, 2, "frag"), (32, 32, 512)), (GemmConfig(64, 32, 64, 2, 1, 4, "frag"), (64, 32, 384))]


def _cuda_source(func, target) -> str:
    """Compile ``func`` for ``target`` here (device code embedded) and return its CUDA source; skip the test
    when this machine cannot run TVM's CUDA codegen (no driver stub / compiler)."""
    import tvm

    from backends.tvm.cuda_build import cuda_build_env

    try:
        with cuda_build_env(), target:
            ex = tvm.compile(tvm.IRModule({"main": func}), target=target)
    except Exception as e:  # noqa: BLE001
        if "libcuda" in str(e) or "gcc" in str(e):
            pytest.skip(f"CUDA codegen unavailable here: {e}")
        raise
    return ex.mod.imports[0].inspect_source("")


def _cubin_without_spills(nvcc: str, src: str, tmp_path, arch: str) -> str:
    """Compile the generated CUDA with nvcc for ``arch``; it must build and ptxas must report no spills."""
    cu = tmp_path / "k.cu"
    cu.write_text(src)
    r = subprocess.run([nvcc, f"-arch={arch}", "--cubin", "-O3", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"), str(cu)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "0 bytes spill stores, 0 bytes spill loads" in r.stderr, r.stderr[-2000:]
    return r.stderr


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
    pytest.importorskip("tvm")
    from backends.tvm.target import resolve_target

    cfg = GemmConfig(128, 256, 128, 2, 4, 3, pipeline)
    t = resolve_target("cuda")
    src = _cuda_source(gemm_cuda.int8_gemm_mma(4096, 4096, 4096, cfg), t.tvm())
    assert "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32" in src
    assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in src
    assert "cp.async.cg.shared.global" in src and "cp.async.wait_group 1;" in src
    # per K tile per warp: (64/16 A + 64/16 B) ldmatrix.x4 and 4 x 8 mma per k32 step, 4 k32 steps
    kernel = src[src.index("__global__ void"):]
    # (the frag pipeline also has the prologue's fragment load: one more k32 step of ldmatrix)
    assert kernel.count("ldmatrix.sync") == (5 if pipeline == "frag" else 4) * 8 and kernel.count("mma.sync") == 4 * 32
    _cubin_without_spills(nvcc, src, tmp_path, "sm_90")


def _fp8_operands(m: int, n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """e4m3 operands over the whole range: normals of both signs, subnormals, zeros, up to +-448."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(seed)

    def one(r: int) -> np.ndarray:
        x = rng.standard_normal((r, k)) * np.exp2(rng.integers(-10, 8, (r, k)))
        return np.clip(x, -448, 448).astype(ml_dtypes.float8_e4m3fn)

    return one(m), one(n)


@pytest.mark.parametrize("dt", [E4M3, E4M3_CVT], ids=lambda d: d.name)
@pytest.mark.parametrize("cfg,shape", SMALL[::2] + SMALL[3:4], ids=lambda x: x.name if isinstance(x, GemmConfig) else str(x))
def test_emulated_fp8_kernel_matches_float64(dt, cfg: GemmConfig, shape: tuple[int, int, int]) -> None:
    """The e4m3 kernels (native m16n8k32 e4m3 mma, and the in-register f16 conversion + m16n8k16 path) move the
    e4m3 bytes like the int8 kernel and decode them at the mma: the replay equals the float64 GEMM of the
    decoded inputs times both scales (float64 accumulation here, so up to float64 rounding)."""
    a, b = _fp8_operands(*shape)
    out = emulate_gemm_mma(a, b, cfg, dt, scale_a=0.375, scale_b=3.0)
    ref = (a.astype(np.float64) @ b.astype(np.float64).T) * (0.375 * 3.0)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


def test_fp8_cvt_emulation_catches_a_wrong_register_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """The f16 conversion's register placement matters: pairing A's two row halves wrongly breaks the result."""
    cfg, shape = SMALL[0]
    a, b = _fp8_operands(*shape, seed=2)
    monkeypatch.setattr(gemm_cuda, "_cvt_a_slot", lambda r, p: (r // 2) * 4 + (r % 2) * 2 + p)
    out = emulate_gemm_mma(a, b, cfg, E4M3_CVT)
    assert not np.allclose(out, a.astype(np.float64) @ b.astype(np.float64).T)


def test_fp8_replay_rejects_unwritten_bytes() -> None:
    """A fragment read of bytes no cp.async wrote fails (poison byte codes are no e4m3 value)."""
    cfg = GemmConfig(32, 32, 64, 1, 2, 3, "frag")
    a, b = _fp8_operands(32, 32, 256)
    rp = gemm_cuda._BlockReplay(a.view(np.uint8), b.view(np.uint8), cfg, 0, 0, E4M3)
    rp.done = 10  # pretend everything landed: the fragments are the poison
    rp.writer[:] = 0
    rp.load_frags(0, 0, 0)
    with pytest.raises(IndexError):
        rp.mma_all(0)


@pytest.mark.parametrize("cvt", [False, True], ids=["e4m3_mma", "cvt_f16"])
def test_fp8_tir_builds_for_sm90_without_spills(tmp_path: Path, cvt: bool) -> None:
    """The e4m3 variants build for sm_90 with the expected PTX and no register spills (the native e4m3 mma at a
    64x32 warp tile: ptxas lowers it to f16 HMMAs plus FADDs and spills at 64x64; the cvt path at 64x64)."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc (CUDA toolkit) not on this machine: cannot compile the sm_90 device code")
    pytest.importorskip("tvm")
    from backends.tvm.target import resolve_target

    cfg = GemmConfig(256, 128, 128, 4, 2, 4, "frag") if cvt else GemmConfig(128, 128, 128, 2, 4, 4, "frag")
    t = resolve_target("cuda")
    src = _cuda_source(gemm_cuda.fp8_gemm_mma(4096, 4096, 4096, cfg, cvt_f16=cvt), t.tvm())
    kernel = src[src.index("__global__ void"):]
    assert "__nv_fp8_e4m3* __restrict__ a_ptr" in kernel and "scale_a_ptr[0] * scale_b_ptr[0]" in kernel
    assert "cp.async.cg.shared.global" in src and "cp.async.wait_group 2;" in src
    mmas = (cfg.wtm // 16) * (cfg.wtn // 8) * (cfg.bk // 32)  # per K tile per warp (m16n8k32)
    if cvt:
        assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in src and "e4m3.e4m3" not in src
        assert kernel.count("mma.sync") == 2 * mmas
        # one cvt per 16-bit half of each fragment register per k32 step (A: mi_n*4*2, B: nj_n*2*2), on uint32
        # registers (a retyped fp8 alias of them makes TVM re-type the allocation and mis-offset ldmatrix)
        assert "cvt.rn.f16x2.e4m3x2" in src and kernel.count("cvt_f16x2_f8x2") == ((cfg.wtm // 16) * 8 + (cfg.wtn // 8) * 4) * (cfg.bk // 32)
        assert "__nv_fp8x2_e4m3 af_ptr" not in kernel and "uint af_ptr[" in kernel
    else:
        assert "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32" in src and kernel.count("mma.sync") == mmas
    _cubin_without_spills(nvcc, src, tmp_path, "sm_90")


# --- e4m3 on wgmma (sm_90a) -------------------------------------------------------------------------------------


def test_wgmma_descriptor_encoding() -> None:
    """Hand-computed 64-bit matrix descriptors: start address >> 4 in bits 0-13 (of an 18-bit shared address), LBO
    16 B >> 4 = 1 in bits 16-29, SBO 1024 B >> 4 = 64 in bits 32-45, 128-byte swizzle = 1 in bits 62-63; and the TIR
    expression the kernel uses folds to the same constant."""
    pytest.importorskip("tvm")
    from tvm.script import tirx as T

    def ev(e) -> int:  # the integer ops the descriptor uses (TVM's simplifier does not fold bitwise ops)
        name = type(e).__name__
        if name == "IntImm":
            return int(e.value)
        if name == "Cast":
            return ev(e.value)
        a, b = ev(e.a), ev(e.b)
        ops = {"BitwiseOr": int.__or__, "BitwiseAnd": int.__and__, "RShift": int.__rshift__, "ShiftRight": int.__rshift__}
        return ops[name](a, b)

    assert gemm_cuda.wgmma_smem_desc(0x400) == 0x4000_0040_0001_0040
    assert gemm_cuda.wgmma_smem_desc(0x40420) == 0x4000_0040_0001_0042  # bit 18 up is outside the window
    assert gemm_cuda.wgmma_smem_desc(0x400, swizzle_128b=False) == 0x0000_0040_0001_0040
    assert gemm_cuda.wgmma_smem_desc(0x400, sbo=2048) == 0x4000_0080_0001_0040
    for addr in (0, 0x400, 0x1F3A0, 0x3FFF0):
        assert ev(gemm_cuda._wgmma_desc_tir(T.uint32(addr))) == gemm_cuda.wgmma_smem_desc(addr), hex(addr)


def test_swizzle_is_wgmma_128b_swizzle() -> None:
    """With 128-byte rows the ring's swizzle is the hardware's 128-byte one (16-byte chunk bits 4-6 XOR row bits 7-9
    of the byte address inside a 1024-byte atom), so wgmma reads what cp.async wrote."""
    for r in range(256):
        for c in range(8):
            addr = r * 128 + c * 16
            assert swizzle_offset(r, c, 128) == addr ^ (((addr >> 7) & 7) << 4)


@pytest.mark.parametrize("bn", [128, 256])
def test_wgmma_accumulator_layout_is_a_bijection(bn: int) -> None:
    seen = {gemm_cuda.wgmma_acc_rc(t, i) for t in range(128) for i in range(bn // 2)}
    assert seen == {(r, c) for r in range(64) for c in range(bn)}
    assert gemm_cuda.wgmma_acc_rc(0, 0) == (0, 0) and gemm_cuda.wgmma_acc_rc(5, 3) == (9, 3)
    assert gemm_cuda.wgmma_acc_rc(37, 6) == (25, 10) and gemm_cuda.wgmma_acc_rc(127, 4) == (55, 14)


def test_wgmma_config_checks() -> None:
    W = gemm_cuda.WgmmaConfig
    W(2, 256, 4, 1).check(4096, 4096, 4096)
    W(2, 128, 4, 0, True).check(4096, 4096, 4096)
    assert W(2, 256, 4, 1).smem_bytes == 4 * 384 * 128 + 1024 and W(2, 256, 4, 1).prefetch == 2
    with pytest.raises(ValueError):
        W(2, 256, 4).check(4096, 4096, 4000)
    with pytest.raises(ValueError):
        W(2, 256, 5).check(4096, 4096, 4096)  # > 227 KB
    with pytest.raises(ValueError):
        W(2, 256, 4, 0, True).check(4096, 4096, 4096)  # 256 accumulator registers
    with pytest.raises(ValueError):
        W(2, 128, 2, 1).check(4096, 4096, 4096)  # no prefetch distance left
    with pytest.raises(ValueError):
        W(2, 128, 4, 1, True).check(4096, 4096, 384)  # odd number of K tiles


@pytest.mark.parametrize("cfg", [gemm_cuda.WgmmaConfig(2, 256, 4, 1), gemm_cuda.WgmmaConfig(2, 128, 4, 0, True)],
                         ids=lambda c: c.name)
def test_wgmma_tir_builds_for_sm90a_without_spills(tmp_path: Path, cfg) -> None:
    """The wgmma kernel builds for sm_90a (and only its target has that arch): four m64nNk32 e4m3 wgmmas per K tile
    on descriptors, fence.proxy.async before the barrier, the wait depth of ``inflight``; scale-d 0 on the first
    wgmma of a tile with promote; ptxas: no spills and no serialized wgmma (C7514)."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc (CUDA toolkit) not on this machine: cannot compile the sm_90a device code")
    pytest.importorskip("tvm")
    from backends.tvm.target import resolve_target

    t = gemm_cuda.wgmma_target()
    assert t.attrs["arch"] == "sm_90a" and resolve_target("cuda").spec["arch"] == "sm_90"
    src = _cuda_source(gemm_cuda.fp8_gemm_wgmma(4096, 4096, 4096, cfg), t)
    kernel = src[src.index("__global__ void"):]
    assert f"wgmma.mma_async.sync.aligned.m64n{cfg.bn}k32.f32.e4m3.e4m3" in src
    call = f"wgmma_fp8_ss_mma_async_sync_aligned_m64n{cfg.bn}k32_f32_e4m3_e4m3_1_1("
    calls = [seg.split(";")[0] for seg in kernel.split(call)[1:]]
    assert len(calls) == 4 * (1 + cfg.inflight if cfg.promote else 1)
    assert f"| (uint64_t){gemm_cuda.wgmma_smem_desc(0)}ULL)" in kernel
    if cfg.promote:
        assert [c.rstrip().endswith(", 1)") for c in calls] == [False, True, True, True] * (1 + cfg.inflight)
    else:
        assert all(c.rstrip().endswith(", 1)") for c in calls)
    assert "fence.proxy.async.shared::cta" in src and f"wgmma_wait_group_wait_group_sync_aligned_{cfg.inflight}()" in kernel
    assert "scale_a_ptr[0] * scale_b_ptr[0]" in kernel and "cp.async.cg.shared.global" in src
    ptxas_report = _cubin_without_spills(nvcc, src, tmp_path, "sm_90a")
    assert "C7514" not in ptxas_report, ptxas_report[-2000:]  # ptxas warning: wgmma serialized
