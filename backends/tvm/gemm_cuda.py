"""Hand-written TIR 8-bit GEMMs for sm_90 (H100/H200) on the tensor cores (mma.sync): int8 x int8 -> int32
and, with the same data movement (:class:`GemmDtype`), e4m3 x e4m3 -> fp32 (or bf16) with per-tensor scales.

Why hand-written: TVM 0.27's dlight int8 tensor-core rule (wmma) does not build for sm_90 and falls
back to a SIMT schedule (~4% of cuBLAS). The TIR here drives the PTX directly, the way a CUDA kernel
would, so the shared-memory layout (swizzle), the cp.async pipeline depth and the register tiling are
explicit and reproducible (no tuning database needed):

- ``C[M, N] = A[M, K] . B[N, K]^T`` (both operands K-major, i.e. the "TN" layout that
  ``mma.sync.m16n8k32.row.col.s32.s8.s8.s32`` wants, and what ``torch._int_mm(a, b.t())`` computes).
- one thread block computes a ``bm x bn`` tile of C with ``warps_m x warps_n`` warps; each warp owns a
  ``(bm/warps_m) x (bn/warps_n)`` sub-tile held in int32 registers (4 per 16x8 mma tile).
- K is walked ``bk`` bytes at a time. Each K tile of A and B is copied global -> shared with 16-byte
  ``cp.async.cg`` (L1 bypass), ``stages`` tiles in flight (``commit_group`` / ``wait_group stages-2``),
  one ``__syncthreads`` per K tile: the stage overwritten at iteration ``kt`` is the one every warp
  finished reading at ``kt - 1``.
- shared memory is XOR-swizzled by 16-byte chunk inside 128-byte lines (:func:`swizzle_offset`) so
  that the eight row addresses of each ``ldmatrix`` phase hit eight distinct bank groups, and the
  cp.async writes of eight consecutive threads do too (checked on the CPU in the tests).
- operands reach registers with ``ldmatrix.x4`` (b16 view of int8 pairs): for A, one x4 is a 16x32
  int8 fragment (a0..a3 of the mma); for B, one x4 is two 8-column fragments (b0, b1 of two mmas).
- two main-loop orders (``GemmConfig.pipeline``): "simple" = wait + barrier, the next tile's copies,
  then the k32 steps (each ldmatrix waited on right after a barrier); "frag" (CUTLASS-multistage-like) =
  the next k32 step's fragments are loaded (double-buffered registers) while the current mmas run, the
  next tile's copies are spread over the k32 steps, and wait + barrier sit before the last k32 step, so
  no ldmatrix latency is exposed after a barrier. "frag" with 4 stages is the fast one on the H200.
- the epilogue stores each thread's int32 pairs straight to global memory (8-byte stores).

e4m3 (:func:`fp8_gemm_mma`): the same cp.async ring, swizzle, ldmatrix addresses and fragment slots (8-bit
operands have the m16n8k32 layout of int8), an fp32 accumulator, and ``C = acc * (scale_a * scale_b)`` in the
epilogue (torch._scaled_mm with per-tensor scales). Two mma paths: (1) ``mma.sync.m16n8k32.f32.e4m3.e4m3.f32``,
which TVM's codegen accepts, but sm_90 has no 8-bit-float mma.sync: ptxas lowers each one to two
``HMMA.16816.F32`` into fresh accumulators, ``F2FP.F16.E4M3.UNPACK_B`` conversions and four ``FADD``s (255
registers and spills at a 64x64 warp tile; it is native ``QMMA`` only on sm_89); (2) ``cvt_f16``: each 8-bit
fragment register converted once per k32 step in registers (``cvt.rn.f16x2.e4m3x2`` per 16-bit half, all on
uint32 registers) and fed to two ``m16n8k16`` f16 mmas that accumulate in place (:func:`_cvt_a_slot`: the k
order inside an mma is permuted identically for A and B). Either way the ceiling is the f16 mma.sync rate
(:data:`F16_BYTES` measures it with the same kernel), not the fp8 one, which on sm_90 only wgmma reaches.

Why mma.sync for int8: the TVM 0.27 wheel ships no tensorization or schedule rule for wgmma/TMA (only PTX
table entries for hand-written code), and cuBLAS's own int8 kernel for this shape on sm_90 is a
mma.sync (sm_80) CUTLASS kernel too, so mma.sync is the like-for-like baseline.

e4m3 on wgmma (:func:`fp8_gemm_wgmma`, built for sm_90a only, :func:`wgmma_target`): those PTX table entries used
by hand (``T.ptx["wgmma.mma_async.sync.aligned.m64nNk32.f32.e4m3.e4m3"]`` with the accumulator registers as
in/out lanes, ``wgmma.fence`` / ``commit_group`` / ``wait_group``), operands from the same cp.async ring read
through 64-bit shared-memory descriptors (:func:`wgmma_smem_desc`): with 128-byte rows the ring's swizzle is the
hardware 128-byte swizzle. Measured on the H200 (2026-12-02, benchmarks/RESULTS.md): 2 warpgroups 128x256 tiles
at 97% of torch._scaled_mm (CUPTI) with fast-accumulation numerics (bit-identical to use_fast_accum=True);
``promote`` (per-K-tile partial sums added in fp32, bit-identical to the default use_fast_accum=False) 128x128
tiles at 73-78%.

:func:`emulate_int8_gemm_mma` replays the kernel statement by statement in numpy (:class:`_BlockReplay`:
swizzled shared ring, commit/wait groups, ldmatrix lane addresses, fragment slots, accumulator
placement), so the layout and the pipeline order are tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WARP = 32


@dataclass(frozen=True)
class GemmDtype:
    """Operand / accumulator / output types of one 8-bit m16n8k32 kernel variant.

    The data movement (cp.async ring, swizzle, ldmatrix addressing, fragment slots, accumulator placement) is
    the same for every 8-bit operand type; only the mma's type string, the accumulator and the epilogue
    differ."""

    name: str  # "int8" | "e4m3"
    in_dtype: str  # TIR dtype of A and B (and of the shared ring)
    acc_dtype: str  # accumulator registers
    mma_ab: str  # PTX operand type in T.ptx_legacy.mma
    mma_acc: str  # PTX accumulator type
    out_dtype: str  # C
    scaled: bool  # per-tensor fp32 scales applied in the epilogue: C = (A B^T) * (scale_a * scale_b)
    cvt_f16: bool = False  # e4m3 only: convert the fragments to f16 in registers, two m16n8k16 f16 mmas each
    mma_shape: str = "m16n8k32"  # "m16n8k16": f16 operands seen as byte pairs (F16_BYTES, a diagnostic)


INT8 = GemmDtype("int8", "int8", "int32", "int8", "int32", "int32", False)
E4M3 = GemmDtype("e4m3", "float8_e4m3fn", "float32", "e4m3", "fp32", "float32", True)
E4M3_BF16 = GemmDtype("e4m3_bf16", "float8_e4m3fn", "float32", "e4m3", "fp32", "bfloat16", True)
E4M3_CVT = GemmDtype("e4m3_cvt", "float8_e4m3fn", "float32", "e4m3", "fp32", "float32", True, True)
E4M3_CVT_BF16 = GemmDtype("e4m3_cvt_bf16", "float8_e4m3fn", "float32", "e4m3", "fp32", "bfloat16", True, True)
# Diagnostic: fp16 x fp16 -> fp32 through the same byte-level kernel (A, B passed as int8 views (M, 2K), (N, 2K)
# of fp16 tensors): one k32-byte step = 16 f16 = one m16n8k16, whose ldmatrix fragments are the int8 ones. It
# measures the mma.sync f16 ceiling of this kernel structure, the ceiling of the e4m3 paths on sm_90.
F16_BYTES = GemmDtype("f16_bytes", "int8", "float32", "fp16", "fp32", "float32", False, mma_shape="m16n8k16")
GEMM_DTYPES = {d.name: d for d in (INT8, E4M3, E4M3_BF16, E4M3_CVT, E4M3_CVT_BF16, F16_BYTES)}


def _cvt_a_slot(r: int, p: int) -> int:
    """f16 register that half-pair ``p`` (bytes 2p, 2p+1) of 8-bit A register ``r`` becomes in the cvt path:
    mma h (k 16h..16h+15 of the k32 step) reads registers 4h..4h+3 = f16 a0..a3, with lo(a_{2h}) -> a0,
    lo(a_{2h+1}) -> a1, hi(a_{2h}) -> a2, hi(a_{2h+1}) -> a3 (the k order inside an mma is a permutation,
    the same for A and B, so the sum is the k32 step's)."""
    return (r // 2) * 4 + p * 2 + r % 2


def _cvt_b_slot(r: int, p: int) -> int:
    """f16 register of half-pair ``p`` of 8-bit B register ``r``: mma h reads b0 = lo(b_h), b1 = hi(b_h)."""
    return r * 2 + p


@dataclass(frozen=True)
class GemmConfig:
    """One point of the kernel's design space (see the module docstring)."""

    bm: int = 128
    bn: int = 256
    bk: int = 128
    warps_m: int = 2
    warps_n: int = 4
    stages: int = 3
    pipeline: str = "simple"  # "simple": wait + barrier, copies, then the k32 steps; "frag": see int8_gemm_mma

    @property
    def threads(self) -> int:
        return WARP * self.warps_m * self.warps_n

    @property
    def wtm(self) -> int:
        return self.bm // self.warps_m

    @property
    def wtn(self) -> int:
        return self.bn // self.warps_n

    @property
    def smem_bytes(self) -> int:
        return self.stages * (self.bm + self.bn) * self.bk

    @property
    def name(self) -> str:
        return (f"b{self.bm}x{self.bn}x{self.bk}_w{self.warps_m}x{self.warps_n}_s{self.stages}"
                + ("_frag" if self.pipeline == "frag" else ""))

    def check(self, m: int, n: int, k: int) -> None:
        """Raise ValueError unless the config tiles an ``m x n x k`` problem exactly and fits sm_90."""
        if m % self.bm or n % self.bn or k % self.bk:
            raise ValueError(f"{self.name}: M, N, K must be multiples of bm, bn, bk")
        if self.bk not in (64, 128):
            raise ValueError("bk must be 64 or 128 bytes (the swizzle works on 128-byte lines)")
        if self.wtm % 16 or self.wtn % 16:
            raise ValueError("warp tile must be a multiple of 16 x 16")
        chunks = (self.bm + self.bn) * self.bk // 16
        if (self.bm * self.bk // 16) % self.threads or (self.bn * self.bk // 16) % self.threads or chunks % self.threads:
            raise ValueError("the threads must split each tile's 16-byte chunks evenly")
        if self.wtm * self.wtn // WARP > 128:
            raise ValueError("warp tile too large: > 128 int32 accumulators per thread")
        if self.smem_bytes > 227 * 1024:
            raise ValueError("shared memory > 227 KB (sm_90 limit per block)")
        if self.pipeline not in ("simple", "frag"):
            raise ValueError("pipeline must be 'simple' or 'frag'")
        if self.stages < 2 or k // self.bk < self.stages - 1:
            raise ValueError("need 2 <= stages and K/bk >= stages - 1")


DEFAULT_CONFIGS: tuple[GemmConfig, ...] = (
    GemmConfig(128, 256, 128, 2, 4, 3),
    GemmConfig(128, 256, 64, 2, 4, 4),
    GemmConfig(256, 128, 64, 4, 2, 4),
    GemmConfig(128, 128, 128, 2, 2, 4),
    GemmConfig(128, 128, 64, 2, 2, 5),
    GemmConfig(128, 256, 128, 2, 4, 4),
)


def swizzle_offset(row, chunk, bk: int):
    """Byte offset of 16-byte ``chunk`` of ``row`` in a K tile whose rows are ``bk`` bytes long.

    The tile is seen as 128-byte lines (one line = all 32 banks); unit ``u = row*bk/16 + chunk`` sits in
    line ``u // 8`` at slot ``(u % 8) ^ (line % 8)``. Works on ints (numpy) and on TIR expressions."""
    u = row * (bk // 16) + chunk
    line = u // 8
    return (line * 8 + ((u % 8) ^ (line % 8))) * 16


def _copy_rc(it, tid, nthreads: int, cpr: int):
    """(row, 16-byte chunk) of a K tile that thread ``tid`` copies in its ``it``-th cp.async: consecutive
    threads take consecutive chunks of a row (coalesced 16-byte global reads)."""
    idx = it * nthreads + tid
    return idx // cpr, idx % cpr


def _a_lane_rc(lane, kk: int):
    """(row within the 16-row A fragment, 16-byte chunk of the K tile) lane ``lane`` points ldmatrix.x4 at:
    matrices 0..3 = (rows 0-7, k 0-15), (rows 8-15, k 0-15), (rows 0-7, k 16-31), (rows 8-15, k 16-31)
    of the k32 step ``kk`` = the mma's a0..a3."""
    return lane % 16, kk * 2 + lane // 16


def _b_lane_rc(lane, kk: int):
    """(column n within a 16-column B pair, chunk) for ldmatrix.x4 on B (stored n-major, K contiguous):
    matrices 0..3 = (n 0-7, k 0-15), (n 0-7, k 16-31), (n 8-15, k 0-15), (n 8-15, k 16-31) = b0, b1 of
    the first 8-column mma, then b0, b1 of the second."""
    return lane % 8 + 8 * (lane // 16), kk * 2 + (lane // 8) % 2


def int8_gemm_mma(m: int = 4096, n: int = 4096, k: int = 4096, cfg: GemmConfig = GemmConfig()):
    """TIR prim_func ``main(a: (M, K) int8, b: (N, K) int8, c: (M, N) int32)`` computing ``c = a @ b.T``
    exactly (int32 wrap-around as the tensor core) with the kernel of the module docstring."""
    return gemm_mma(m, n, k, cfg, INT8)


def fp8_gemm_mma(m: int = 4096, n: int = 4096, k: int = 4096, cfg: GemmConfig = GemmConfig(), out_dtype: str = "float32",
                 cvt_f16: bool = False):
    """TIR prim_func ``main(a: (M, K) e4m3, b: (N, K) e4m3, scale_a: (1,) fp32, scale_b: (1,) fp32, c: (M, N)
    out_dtype)`` computing ``c = (a @ b.T) * (scale_a * scale_b)`` (fp32 accumulation in the tensor core's
    order, scales in the epilogue, as ``torch._scaled_mm`` with per-tensor scales) with the same kernel as
    :func:`int8_gemm_mma`, the mma being ``m16n8k32.row.col.f32.e4m3.e4m3.f32`` (sm_89+), or with ``cvt_f16``
    the fragments converted to f16 in registers and fed to m16n8k16 f16 mmas (what ptxas itself does for the
    e4m3 mma on sm_90, where it has no native 8-bit-float mma.sync: see the module docstring)."""
    dts = {(False, "float32"): E4M3, (False, "bfloat16"): E4M3_BF16, (True, "float32"): E4M3_CVT, (True, "bfloat16"): E4M3_CVT_BF16}
    return gemm_mma(m, n, k, cfg, dts[(cvt_f16, out_dtype)])


def gemm_mma(m: int, n: int, k: int, cfg: GemmConfig, dt: GemmDtype):
    """The kernel of the module docstring for operand types ``dt`` (:data:`INT8`, :data:`E4M3`, ...)."""
    from tvm.script import tirx as T

    cfg.check(m, n, k)
    ind = dt.in_dtype
    bm, bn, bk, stages = cfg.bm, cfg.bn, cfg.bk, cfg.stages
    nthreads, wtm, wtn = cfg.threads, cfg.wtm, cfg.wtn
    mi_n, nj_n = wtm // 16, wtn // 8  # 16x8 mma tiles per warp
    kt_n = k // bk
    cpr = bk // 16  # 16-byte chunks per row
    a_iters = bm * cpr // nthreads
    b_iters = bn * cpr // nthreads
    stage_bytes = (bm + bn) * bk
    b_base = bm * bk
    smem_n = stages * stage_bytes
    kk_n = bk // 32
    acc_n = mi_n * nj_n * 4

    n_cp = a_iters + b_iters  # 16-byte cp.async per thread per K tile (A's first)
    frag = cfg.pipeline == "frag"
    nbuf = 2 if frag else 1

    @T.macro
    def copy_chunk(smem, a, b, tx, by, bx, j, tile, stage):
        """Thread ``tx``'s ``j``-th 16-byte copy of K tile ``tile`` into ``stage`` (j < a_iters: A, else B)."""
        if j < a_iters:
            T.s_tir.cp_async_raw.legacy(
                smem.data, stage * stage_bytes + swizzle_offset(_copy_rc(j, tx, nthreads, cpr)[0], _copy_rc(j, tx, nthreads, cpr)[1], bk),
                a.data, (by * bm + _copy_rc(j, tx, nthreads, cpr)[0]) * k + tile * bk + _copy_rc(j, tx, nthreads, cpr)[1] * 16,
                16, dtype=ind)
        else:
            T.s_tir.cp_async_raw.legacy(
                smem.data, stage * stage_bytes + b_base
                + swizzle_offset(_copy_rc(j - a_iters, tx, nthreads, cpr)[0], _copy_rc(j - a_iters, tx, nthreads, cpr)[1], bk),
                b.data, (bx * bn + _copy_rc(j - a_iters, tx, nthreads, cpr)[0]) * k + tile * bk
                + _copy_rc(j - a_iters, tx, nthreads, cpr)[1] * 16,
                16, dtype=ind)

    @T.macro
    def load_frags(smem, af, bf, tx, buf, stage, kk):
        """ldmatrix.x4 of the warp's A (mi_n) and B (nj_n/2) fragments of k32 step ``kk`` into buffer ``buf``."""
        for mi in T.unroll(mi_n):
            T.ptx_legacy.ldmatrix(
                False, 4, ".b16", af.data, (buf * mi_n + mi) * 4, smem.access_ptr("r"),
                stage * stage_bytes + swizzle_offset(
                    (tx // 32 // cfg.warps_n) * wtm + mi * 16 + _a_lane_rc(tx % 32, kk)[0], _a_lane_rc(tx % 32, kk)[1], bk),
                dtype="uint32")
        for nj2 in T.unroll(nj_n // 2):
            T.ptx_legacy.ldmatrix(
                False, 4, ".b16", bf.data, (buf * nj_n + nj2 * 2) * 2, smem.access_ptr("r"),
                stage * stage_bytes + b_base + swizzle_offset(
                    (tx // 32 % cfg.warps_n) * wtn + nj2 * 16 + _b_lane_rc(tx % 32, kk)[0], _b_lane_rc(tx % 32, kk)[1], bk),
                dtype="uint32")

    @T.macro
    def mma_all(af, bf, acc, buf):
        for mi in T.unroll(mi_n):
            for nj in T.unroll(nj_n):
                T.ptx_legacy.mma(dt.acc_dtype, dt.mma_shape, "row", "col", dt.mma_ab, dt.mma_ab, dt.mma_acc,
                                 af.data, (buf * mi_n + mi) * 4, bf.data, (buf * nj_n + nj) * 2,
                                 acc.data, (mi * nj_n + nj) * 4, False)

    @T.macro
    def mma_all_cvt(af, bf, ah, bh, acc, buf):
        """e4m3 without the e4m3 mma: B fragments of the k32 step converted once (cvt.rn.f16x2.e4m3x2 on each
        16-bit half of a register, all registers uint32: no retyped aliases), A per 16-row tile, then per 16x8
        tile two m16n8k16 f16 mmas accumulating in fp32 (see _cvt_a_slot)."""
        for nj in T.unroll(nj_n):
            for r in T.unroll(2):
                for p in T.unroll(2):
                    T.ptx["cvt.rn.f16x2.e4m3x2"](bh[nj * 4 + _cvt_b_slot(r, p)],
                                                 T.Cast("uint16", bf[(buf * nj_n + nj) * 2 + r] >> T.uint32(16 * p)))
        for mi in T.unroll(mi_n):
            for r in T.unroll(4):
                for p in T.unroll(2):
                    T.ptx["cvt.rn.f16x2.e4m3x2"](ah[_cvt_a_slot(r, p)],
                                                 T.Cast("uint16", af[(buf * mi_n + mi) * 4 + r] >> T.uint32(16 * p)))
            for nj in T.unroll(nj_n):
                for h in T.unroll(2):
                    T.ptx_legacy.mma("float32", "m16n8k16", "row", "col", "fp16", "fp16", "fp32",
                                     ah.data, h * 4, bh.data, nj * 4 + h * 2, acc.data, (mi * nj_n + nj) * 4, False)

    @T.macro
    def kernel(a, b, c, sa, sb):
        by = T.launch_thread("blockIdx.y", m // bm)
        bx = T.launch_thread("blockIdx.x", n // bn)
        tx = T.launch_thread("threadIdx.x", nthreads)
        smem = T.decl_buffer((smem_n,), ind, scope="shared.dyn")
        acc = T.decl_buffer((acc_n,), dt.acc_dtype, scope="local")
        af = T.decl_buffer((nbuf * mi_n * 4,), "uint32", scope="local")
        bf = T.decl_buffer((nbuf * nj_n * 2,), "uint32", scope="local")
        if dt.cvt_f16:
            ah = T.decl_buffer((8,), "uint32", scope="local")
            bh = T.decl_buffer((nj_n * 4,), "uint32", scope="local")
        lane = T.meta_var(tx % 32)
        wm = T.meta_var(tx // 32 // cfg.warps_n)
        wn = T.meta_var(tx // 32 % cfg.warps_n)
        for i in T.unroll(acc_n):
            acc[i] = T.Cast(dt.acc_dtype, 0)
        # prologue: K tiles 0 .. stages-2
        for s in T.unroll(stages - 1):
            for j in T.unroll(n_cp):
                copy_chunk(smem, a, b, tx, by, bx, j, s, s)
            T.ptx["cp.async.commit_group"]()
        if frag:
            # CUTLASS-style multistage: fragments of the next k32 step are loaded while the tensor cores
            # work on the current one, the next tile's copies are spread over the k32 steps, and the
            # wait + barrier for the next stage sit before the last k32 step, so no ldmatrix latency is
            # exposed after a barrier.
            T.ptx["cp.async.wait_group"](stages - 2)
            T.tvm_storage_sync("shared")
            load_frags(smem, af, bf, tx, 0, 0, 0)
            for kt in T.serial(kt_n):
                for kk in T.unroll(kk_n):
                    if kt + (stages - 1) < kt_n:
                        for j in T.unroll(n_cp):
                            if (j * kk_n) // n_cp == kk:
                                copy_chunk(smem, a, b, tx, by, bx, j, kt + stages - 1, (kt + stages - 1) % stages)
                    if kk == kk_n - 1:
                        T.ptx["cp.async.commit_group"]()
                        T.ptx["cp.async.wait_group"](stages - 2)
                        T.tvm_storage_sync("shared")
                    load_frags(smem, af, bf, tx, (kk + 1) % 2, (kt + (kk + 1) // kk_n) % stages, (kk + 1) % kk_n)
                    if dt.cvt_f16:
                        mma_all_cvt(af, bf, ah, bh, acc, kk % 2)
                    else:
                        mma_all(af, bf, acc, kk % 2)
        else:
            for kt in T.serial(kt_n):
                T.ptx["cp.async.wait_group"](stages - 2)
                T.tvm_storage_sync("shared")
                if kt + (stages - 1) < kt_n:
                    for j in T.unroll(n_cp):
                        copy_chunk(smem, a, b, tx, by, bx, j, kt + stages - 1, (kt + stages - 1) % stages)
                T.ptx["cp.async.commit_group"]()
                for kk in T.unroll(kk_n):
                    load_frags(smem, af, bf, tx, 0, kt % stages, kk)
                    if dt.cvt_f16:
                        mma_all_cvt(af, bf, ah, bh, acc, 0)
                    else:
                        mma_all(af, bf, acc, 0)
        for mi in T.unroll(mi_n):
            for nj in T.unroll(nj_n):
                for h in T.unroll(2):
                    for v in T.vectorized(2):
                        if dt.scaled:
                            c[by * bm + wm * wtm + mi * 16 + lane // 4 + 8 * h,
                              bx * bn + wn * wtn + nj * 8 + (lane % 4) * 2 + v] = T.Cast(
                                dt.out_dtype, acc[(mi * nj_n + nj) * 4 + h * 2 + v] * (sa[0] * sb[0]))
                        else:
                            c[by * bm + wm * wtm + mi * 16 + lane // 4 + 8 * h,
                              bx * bn + wn * wtn + nj * 8 + (lane % 4) * 2 + v] = acc[(mi * nj_n + nj) * 4 + h * 2 + v]

    if dt.scaled:
        @T.prim_func
        def main(a: T.Buffer((m, k), ind), b: T.Buffer((n, k), ind), scale_a: T.Buffer((1,), "float32"),
                 scale_b: T.Buffer((1,), "float32"), c: T.Buffer((m, n), dt.out_dtype)):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            kernel(a, b, c, scale_a, scale_b)
    else:
        @T.prim_func
        def main(a: T.Buffer((m, k), ind), b: T.Buffer((n, k), ind), c: T.Buffer((m, n), dt.out_dtype)):
            T.func_attr({"global_symbol": "main", "tir.noalias": True})
            kernel(a, b, c, None, None)

    return main


class _BlockReplay:
    """numpy model of one thread block of :func:`int8_gemm_mma`, statement by statement in program order.

    Shared memory is the ``stages``-deep ring of swizzled K tiles; a cp.async writes its 16 bytes at once
    (so a copy issued into a stage that is still to be read for an older tile corrupts that read: a WAR
    bug shows up as a wrong result) and belongs to the open commit group; ``wait`` (wait_group + barrier)
    marks all but the newest ``n`` groups complete, and a fragment load from a stage whose last copy is not
    complete raises (a RAW bug). Fragments are assembled per PTX's register layouts."""

    def __init__(self, a: np.ndarray, b: np.ndarray, cfg: GemmConfig, by: int, bx: int, dt: GemmDtype = INT8) -> None:
        """``a``, ``b``: the operands' bytes (int8 values, or uint8 codes of e4m3), as int64-castable arrays."""
        self.a, self.b, self.cfg, self.by, self.bx, self.dt = a, b, cfg, by, bx, dt
        self.k = a.shape[1]
        self.cpr = cfg.bk // 16
        self.stage_bytes = (cfg.bm + cfg.bn) * cfg.bk
        self.smem = np.full(cfg.stages * self.stage_bytes, 999, np.int64)  # poison: unwritten bytes show up
        self.writer = np.full(cfg.stages * self.stage_bytes, -1, np.int64)  # commit group of the last copy
        self.group, self.done = 0, -1  # open group; groups <= done are complete
        nw = cfg.warps_m * cfg.warps_n
        self.af = np.zeros((2, nw, WARP, cfg.wtm // 16, 4, 4), np.int64)  # buf, warp, lane, mi, reg, byte
        self.bf = np.zeros((2, nw, WARP, cfg.wtn // 8, 2, 4), np.int64)  # buf, warp, lane, nj, reg, byte
        self.acc = np.zeros((nw, WARP, cfg.wtm // 16, cfg.wtn // 8, 4), np.int64 if dt.acc_dtype == "int32" else np.float64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Operand bytes -> values: int8 as is; e4m3 through the 256-entry ml_dtypes table (a poison byte
        raises IndexError)."""
        if self.dt.in_dtype == "int8":
            return codes
        return _e4m3_table()[codes]

    def copy(self, j: int, tile: int, stage: int) -> None:
        """All threads' ``j``-th 16-byte cp.async of K tile ``tile`` into ``stage``."""
        cfg = self.cfg
        a_iters = cfg.bm * self.cpr // cfg.threads
        for tid in range(cfg.threads):
            if j < a_iters:
                (r, ch), src, r0, base = _copy_rc(j, tid, cfg.threads, self.cpr), self.a, self.by * cfg.bm, 0
            else:
                (r, ch), src, r0, base = _copy_rc(j - a_iters, tid, cfg.threads, self.cpr), self.b, self.bx * cfg.bn, cfg.bm * cfg.bk
            off = stage * self.stage_bytes + base + swizzle_offset(r, ch, cfg.bk)
            self.smem[off:off + 16] = src[r0 + r, tile * cfg.bk + ch * 16: tile * cfg.bk + ch * 16 + 16]
            self.writer[off:off + 16] = self.group

    def commit(self) -> None:
        self.group += 1

    def wait(self, n: int) -> None:
        self.done = max(self.done, self.group - 1 - n)

    def _ldmatrix_x4(self, addrs: list[int]) -> np.ndarray:
        """ldmatrix.x4 (b16): lane l gives the row address of matrix l // 8, row l % 8; lane l receives bytes
        ``4*(l % 4)..+3`` of row ``l // 4`` of each matrix. Returns (lane, reg, byte)."""
        for x in addrs:
            if self.writer[x:x + 16].max() > self.done or self.writer[x:x + 16].min() < 0:
                raise AssertionError("fragment load from a stage whose cp.async is not complete")
        rows = [self.smem[x:x + 16] for x in addrs]
        regs = np.zeros((WARP, 4, 4), np.int64)
        for mat in range(4):
            for l_ in range(WARP):
                regs[l_, mat] = rows[mat * 8 + l_ // 4][4 * (l_ % 4): 4 * (l_ % 4) + 4]
        return regs

    def load_frags(self, buf: int, stage: int, kk: int) -> None:
        cfg = self.cfg
        for w in range(cfg.warps_m * cfg.warps_n):
            wm, wn = w // cfg.warps_n, w % cfg.warps_n
            base = stage * self.stage_bytes
            for mi in range(cfg.wtm // 16):
                self.af[buf, w, :, mi] = self._ldmatrix_x4([base + swizzle_offset(
                    wm * cfg.wtm + mi * 16 + _a_lane_rc(l_, kk)[0], _a_lane_rc(l_, kk)[1], cfg.bk) for l_ in range(WARP)])
            for nj2 in range(cfg.wtn // 16):
                r = self._ldmatrix_x4([base + cfg.bm * cfg.bk + swizzle_offset(
                    wn * cfg.wtn + nj2 * 16 + _b_lane_rc(l_, kk)[0], _b_lane_rc(l_, kk)[1], cfg.bk) for l_ in range(WARP)])
                self.bf[buf, w, :, 2 * nj2] = r[:, 0:2]
                self.bf[buf, w, :, 2 * nj2 + 1] = r[:, 2:4]

    def mma_all(self, buf: int) -> None:
        """m16n8k32 s8 (PTX ISA fragments): a_i = row g + 8*(i%2), k 4t + 16*(i//2) + byte; b_j = k 4t + 16 j
        + byte, col g; c_i = row g + 8*(i//2), col 2t + i%2 (g = lane // 4, t = lane % 4)."""
        cfg = self.cfg
        if self.dt.cvt_f16:
            self._mma_all_cvt(buf)
            return
        g, t = np.arange(WARP) // 4, np.arange(WARP) % 4
        vt = self.acc.dtype
        for w in range(cfg.warps_m * cfg.warps_n):
            for mi in range(cfg.wtm // 16):
                amat = np.zeros((16, 32), vt)
                for i in range(4):
                    for byte in range(4):
                        amat[g + 8 * (i % 2), 4 * t + 16 * (i // 2) + byte] = self.decode(self.af[buf, w, :, mi, i, byte])
                for nj in range(cfg.wtn // 8):
                    bmat = np.zeros((32, 8), vt)
                    for j in range(2):
                        for byte in range(4):
                            bmat[4 * t + 16 * j + byte, g] = self.decode(self.bf[buf, w, :, nj, j, byte])
                    cm = amat @ bmat
                    for i in range(4):
                        self.acc[w, :, mi, nj, i] += cm[g + 8 * (i // 2), 2 * t + i % 2]

    def _mma_all_cvt(self, buf: int) -> None:
        """The cvt path: 8-bit registers -> f16 registers (:func:`_cvt_a_slot`, :func:`_cvt_b_slot`), then two
        m16n8k16 f16 mmas per tile (PTX fragments: a_i = row g + 8*(i%2), k 2t + 8*(i//2) + e; b_j = k 2t + 8j
        + e, col g)."""
        cfg = self.cfg
        g, t = np.arange(WARP) // 4, np.arange(WARP) % 4
        for w in range(cfg.warps_m * cfg.warps_n):
            bh = np.zeros((cfg.wtn // 8, WARP, 4, 2))
            for nj in range(cfg.wtn // 8):
                for r in range(2):
                    for p in range(2):
                        bh[nj, :, _cvt_b_slot(r, p)] = self.decode(self.bf[buf, w, :, nj, r, 2 * p:2 * p + 2])
            for mi in range(cfg.wtm // 16):
                ah = np.zeros((WARP, 8, 2))
                for r in range(4):
                    for p in range(2):
                        ah[:, _cvt_a_slot(r, p)] = self.decode(self.af[buf, w, :, mi, r, 2 * p:2 * p + 2])
                for nj in range(cfg.wtn // 8):
                    for h in range(2):
                        amat, bmat = np.zeros((16, 16)), np.zeros((16, 8))
                        for i in range(4):
                            for e in range(2):
                                amat[g + 8 * (i % 2), 2 * t + 8 * (i // 2) + e] = ah[:, 4 * h + i, e]
                        for j in range(2):
                            for e in range(2):
                                bmat[2 * t + 8 * j + e, g] = bh[nj, :, 2 * h + j, e]
                        cm = amat @ bmat
                        for i in range(4):
                            self.acc[w, :, mi, nj, i] += cm[g + 8 * (i // 2), 2 * t + i % 2]

    def store(self, out: np.ndarray) -> None:
        cfg = self.cfg
        for w in range(cfg.warps_m * cfg.warps_n):
            wm, wn = w // cfg.warps_n, w % cfg.warps_n
            for l_ in range(WARP):
                for mi in range(cfg.wtm // 16):
                    for nj in range(cfg.wtn // 8):
                        for i in range(4):
                            r = self.by * cfg.bm + wm * cfg.wtm + mi * 16 + l_ // 4 + 8 * (i // 2)
                            col = self.bx * cfg.bn + wn * cfg.wtn + nj * 8 + (l_ % 4) * 2 + i % 2
                            out[r, col] = self.acc[w, l_, mi, nj, i]


def _e4m3_table() -> np.ndarray:
    """float64 value of each e4m3fn byte code (ml_dtypes)."""
    import ml_dtypes

    return np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)


def emulate_int8_gemm_mma(a: np.ndarray, b: np.ndarray, cfg: GemmConfig) -> np.ndarray:
    """Replay :func:`int8_gemm_mma`'s schedule (same statement order, same index helpers, both pipelines)
    with :class:`_BlockReplay` for small shapes. Returns int64 ``(M, N)``; a wrong swizzle, lane address,
    fragment slot, stage index or pipeline order makes it differ from ``a @ b.T`` (or raise)."""
    return emulate_gemm_mma(a, b, cfg, INT8)


def emulate_gemm_mma(a: np.ndarray, b: np.ndarray, cfg: GemmConfig, dt: GemmDtype = INT8,
                     scale_a: float = 1.0, scale_b: float = 1.0) -> np.ndarray:
    """:func:`emulate_int8_gemm_mma` for any :data:`GEMM_DTYPES` entry. e4m3 operands (ml_dtypes
    ``float8_e4m3fn`` arrays) move as their byte codes and are decoded at the mma; the accumulation is in
    float64 (the tensor core's is fp32: this checks the layout, not the rounding), times ``scale_a *
    scale_b``. Returns int64 (int8) or float64 ``(M, N)``."""
    if dt.mma_shape != "m16n8k32":
        raise NotImplementedError(f"{dt.name}: the replay models the m16n8k32 8-bit fragments only")
    if dt.in_dtype == "int8":
        a = np.asarray(a, np.int8)
        b = np.asarray(b, np.int8)
    else:
        import ml_dtypes

        a = np.asarray(a, ml_dtypes.float8_e4m3fn).view(np.uint8)
        b = np.asarray(b, ml_dtypes.float8_e4m3fn).view(np.uint8)
    m, k = a.shape
    n = b.shape[0]
    cfg.check(m, n, k)
    s, kt_n, kk_n = cfg.stages, k // cfg.bk, cfg.bk // 32
    n_cp = (cfg.bm + cfg.bn) * (cfg.bk // 16) // cfg.threads
    out = np.zeros((m, n), np.int64 if dt.acc_dtype == "int32" else np.float64)
    for by in range(m // cfg.bm):
        for bx in range(n // cfg.bn):
            rp = _BlockReplay(a, b, cfg, by, bx, dt)
            for st in range(s - 1):
                for j in range(n_cp):
                    rp.copy(j, st, st)
                rp.commit()
            if cfg.pipeline == "frag":
                rp.wait(s - 2)
                rp.load_frags(0, 0, 0)
                for kt in range(kt_n):
                    for kk in range(kk_n):
                        if kt + s - 1 < kt_n:
                            for j in range(n_cp):
                                if (j * kk_n) // n_cp == kk:
                                    rp.copy(j, kt + s - 1, (kt + s - 1) % s)
                        if kk == kk_n - 1:
                            rp.commit()
                            rp.wait(s - 2)
                        if not (kt == kt_n - 1 and kk == kk_n - 1):  # the kernel's last prefetch reads a stale
                            rp.load_frags((kk + 1) % 2, (kt + (kk + 1) // kk_n) % s, (kk + 1) % kk_n)  # stage, unused
                        rp.mma_all(kk % 2)
            else:
                for kt in range(kt_n):
                    rp.wait(s - 2)
                    if kt + s - 1 < kt_n:
                        for j in range(n_cp):
                            rp.copy(j, kt + s - 1, (kt + s - 1) % s)
                    rp.commit()
                    for kk in range(kk_n):
                        rp.load_frags(0, kt % s, kk)
                        rp.mma_all(0)
            rp.store(out)
    return out * (scale_a * scale_b) if dt.scaled else out


# ---------------------------------------------------------------------------------------------------------------
# e4m3 on Hopper's warpgroup MMA (sm_90a): wgmma.mma_async.m64nNk32.f32.e4m3.e4m3 from shared memory
# ---------------------------------------------------------------------------------------------------------------
WGMMA_ARCH = "sm_90a"  # wgmma is an sm_90a ("arch-accelerated") feature: this kernel only is built for it
WG_THREADS = 128  # one warpgroup
WG_BK = 128  # K bytes per tile = one 128-byte swizzle line per row


def wgmma_smem_desc(addr: int, sbo: int = 1024, lbo: int = 16, swizzle_128b: bool = True) -> int:
    """64-bit wgmma shared-memory matrix descriptor (PTX ISA 9.7.17.5.1, "Matrix Descriptor Format"): bits 0-13
    start address >> 4, 16-29 leading byte offset >> 4, 32-45 stride byte offset >> 4, 49-51 base offset (0:
    the tiles are 1024-byte aligned), 62-63 layout (1 = 128-byte swizzle, 0 = none). For a K-major tile with
    128-byte swizzle and rows of exactly 128 bytes the leading offset is unused (1 by convention) and the stride
    offset is the 1024 bytes between 8-row groups. The kernel builds the same bits in TIR (:func:`_wgmma_desc_tir`)."""
    return (((addr & 0x3FFFF) >> 4) | ((lbo >> 4) << 16) | ((sbo >> 4) << 32) | ((1 if swizzle_128b else 0) << 62))


def _wgmma_desc_tir(addr):
    """:func:`wgmma_smem_desc` (defaults) on a uint32 TIR shared-window address."""
    from tvm.script import tirx as T

    return (T.Cast("uint64", (addr & T.uint32(0x3FFFF)) >> T.uint32(4)) | T.uint64(wgmma_smem_desc(0)))


@dataclass(frozen=True)
class WgmmaConfig:
    """Block tile ``(64 * wg_m) x bn``, K walked 128 bytes at a time through a ``stages``-deep cp.async ring;
    warpgroup g computes rows 64g..64g+63 with one ``m64n{bn}k32`` wgmma per k32 step; ``inflight`` wgmma
    commit groups are left pending across a K tile (0: wait for each tile's before the next barrier; 1: the
    next tile's wgmmas queue behind the current ones, and the copies go two stages back)."""

    wg_m: int = 2
    bn: int = 256
    stages: int = 4
    inflight: int = 0
    # promote: each K tile's four wgmmas accumulate into fresh registers (scale-d = 0 on the first), added to the fp32
    # accumulator in CUDA-core FADDs after the tile (wgmma's fp8 accumulation keeps fewer bits than fp32 over a long
    # K: without this the error is torch._scaled_mm's use_fast_accum=True one). inflight=1 double-buffers them.
    promote: bool = False

    @property
    def bm(self) -> int:
        return 64 * self.wg_m

    @property
    def threads(self) -> int:
        return WG_THREADS * self.wg_m

    @property
    def stage_bytes(self) -> int:
        return (self.bm + self.bn) * WG_BK

    @property
    def smem_bytes(self) -> int:
        return self.stages * self.stage_bytes + 1024  # + 1024: the ring is aligned to 1024 bytes at run time

    @property
    def prefetch(self) -> int:
        return self.stages - 1 - self.inflight

    @property
    def name(self) -> str:
        return f"wg{self.wg_m}_b{self.bm}x{self.bn}x{WG_BK}_s{self.stages}_f{self.inflight}" + ("_p" if self.promote else "")

    def check(self, m: int, n: int, k: int) -> None:
        if m % self.bm or n % self.bn or k % WG_BK:
            raise ValueError(f"{self.name}: M, N, K must be multiples of {self.bm}, {self.bn}, {WG_BK}")
        if self.bn % 16 or not 16 <= self.bn <= 256:
            raise ValueError("bn must be a multiple of 16 in [16, 256] (one m64nNk32 per warpgroup)")
        if self.inflight not in (0, 1) or self.prefetch < 1 or k // WG_BK < self.prefetch:
            raise ValueError("need inflight in (0, 1), stages - 1 - inflight >= 1 and K/128 >= that")
        if (self.bm * 8) % self.threads or (self.bn * 8) % self.threads:
            raise ValueError("the threads must split each tile's 16-byte chunks evenly")
        if self.smem_bytes > 227 * 1024:
            raise ValueError("shared memory > 227 KB (sm_90 limit per block)")
        if self.promote and (self.bn // 2) * (2 + self.inflight) > 192:
            raise ValueError("promote: accumulator + per-tile registers > 192 per thread")
        if self.promote and self.inflight and (k // WG_BK) % 2:
            raise ValueError("promote with inflight=1 walks K tiles in pairs: K/128 must be even")


def wgmma_acc_rc(t: int, i: int) -> tuple[int, int]:
    """(row, column) of the m64nN tile that f32 accumulator register ``i`` of warpgroup thread ``t`` holds (PTX ISA
    9.7.17.5.1.1 "Matrix fragments for wgmma .m64nNk32", D): row 16*(t//32) + (t%32)//4 + 8*((i//2)%2), column
    8*(i//4) + 2*(t%4) + i%2."""
    lane = t % 32
    return 16 * (t // 32) + lane // 4 + 8 * ((i // 2) % 2), 8 * (i // 4) + 2 * (lane % 4) + i % 2


def fp8_gemm_wgmma(m: int = 4096, n: int = 4096, k: int = 4096, cfg: WgmmaConfig = WgmmaConfig(), out_dtype: str = "float32"):
    """TIR prim_func with :func:`fp8_gemm_mma`'s signature (``c = (a @ b.T) * (scale_a * scale_b)``, a (M, K), b (N, K)
    e4m3, both K-major) whose main loop is ``wgmma.mma_async.sync.aligned.m64n{bn}k32.f32.e4m3.e4m3`` on shared-memory
    descriptors. Build it for :data:`WGMMA_ARCH`.

    - K tiles of A (bm x 128 B) and B (bn x 128 B) land by 16-byte cp.async in the ``stages``-deep ring, swizzled by
      :func:`swizzle_offset` with bk=128, which is exactly wgmma's 128-byte swizzle (16-byte chunk c of row r at
      chunk c ^ (r % 8) inside each 1024-byte 8-row atom), the ring aligned to 1024 bytes at run time.
    - per K tile: cp.async.wait_group, ``fence.proxy.async.shared::cta`` (the cp.async writes are generic-proxy, the
      wgmma reads async-proxy), barrier, ``wgmma.fence``, four wgmmas (start address + 32 B per k32 step), commit,
      the copies of tile ``kt + prefetch`` into the stage read ``1 + inflight`` tiles ago, ``wgmma.wait_group inflight``.
    - epilogue: each thread's accumulator pairs (:func:`wgmma_acc_rc`) times ``scale_a * scale_b``, 8-byte stores."""
    from tvm.script import tirx as T

    cfg.check(m, n, k)
    ind = "float8_e4m3fn"
    bm, bn, stages, inflight, pf = cfg.bm, cfg.bn, cfg.stages, cfg.inflight, cfg.prefetch
    nthreads, stage_bytes = cfg.threads, cfg.stage_bytes
    kt_n = k // WG_BK
    cpr = WG_BK // 16
    a_iters, b_iters = bm * cpr // nthreads, bn * cpr // nthreads
    n_cp = a_iters + b_iters
    acc_n = bn // 2
    b_base = bm * WG_BK
    shape = f"m64n{bn}k32"
    wg_op = T.ptx[f"wgmma.mma_async.sync.aligned.{shape}.f32.e4m3.e4m3"]

    def wgmma(acc, a_desc, b_desc, off, scale_d):
        return wg_op(*[acc[off + i] for i in range(acc_n)], a_desc, b_desc, T.ptx.pred(scale_d), 1, 1)

    def scale_d(accumulate: bool, kk):
        return T.int32(1) if accumulate else T.Cast("int32", kk > 0)

    promote = cfg.promote
    ntmp = (1 + inflight) * acc_n if promote else 1

    @T.macro
    def copy_tile(smem, a, b, tx, by, bx, pad, tile, stage):
        for j in T.unroll(n_cp):
            if j < a_iters:
                T.s_tir.cp_async_raw.legacy(
                    smem.data, pad + stage * stage_bytes + swizzle_offset(_copy_rc(j, tx, nthreads, cpr)[0], _copy_rc(j, tx, nthreads, cpr)[1], WG_BK),
                    a.data, (by * bm + _copy_rc(j, tx, nthreads, cpr)[0]) * k + tile * WG_BK + _copy_rc(j, tx, nthreads, cpr)[1] * 16,
                    16, dtype=ind)
            else:
                T.s_tir.cp_async_raw.legacy(
                    smem.data, pad + stage * stage_bytes + b_base
                    + swizzle_offset(_copy_rc(j - a_iters, tx, nthreads, cpr)[0], _copy_rc(j - a_iters, tx, nthreads, cpr)[1], WG_BK),
                    b.data, (bx * bn + _copy_rc(j - a_iters, tx, nthreads, cpr)[0]) * k + tile * WG_BK
                    + _copy_rc(j - a_iters, tx, nthreads, cpr)[1] * 16,
                    16, dtype=ind)

    @T.macro
    def k_tile(smem, a, b, tx, by, bx, pad, base, g, d, off, accumulate, kt):
        """K tile ``kt``: wait for its copies, fence + barrier, four wgmmas into ``d[off:]`` (the first with scale-d = 0
        unless ``accumulate``), commit, the copies of tile ``kt + prefetch``."""
        T.ptx["cp.async.wait_group"](pf - 1)
        T.ptx["fence.proxy.async.shared::cta"]()
        T.tvm_storage_sync("shared")
        T.ptx["wgmma.fence.sync.aligned"]()
        for kk in T.unroll(WG_BK // 32):
            wgmma(d,
                  _wgmma_desc_tir(base + T.Cast("uint32", pad + (kt % stages) * stage_bytes + g * 64 * WG_BK + kk * 32)),
                  _wgmma_desc_tir(base + T.Cast("uint32", pad + (kt % stages) * stage_bytes + b_base + kk * 32)),
                  off, scale_d(accumulate, kk))
        T.ptx["wgmma.commit_group.sync.aligned"]()
        if kt + pf < kt_n:
            copy_tile(smem, a, b, tx, by, bx, pad, kt + pf, (kt + pf) % stages)
        T.ptx["cp.async.commit_group"]()

    @T.macro
    def kernel(a, b, c, sa, sb):
        by = T.launch_thread("blockIdx.y", m // bm)
        bx = T.launch_thread("blockIdx.x", n // bn)
        tx = T.launch_thread("threadIdx.x", nthreads)
        smem = T.decl_buffer((cfg.smem_bytes,), ind, scope="shared.dyn")
        acc = T.decl_buffer((acc_n,), "float32", scope="local")
        tmp = T.decl_buffer((ntmp,), "float32", scope="local")
        base = T.meta_var(T.cuda.cvta_generic_to_shared(smem.ptr_to([0])))
        pad = T.meta_var(T.Cast("int32", (T.uint32(1024) - (base & T.uint32(1023))) & T.uint32(1023)))
        g = T.meta_var(tx // WG_THREADS)
        wt = T.meta_var(tx % WG_THREADS)
        for i in T.unroll(acc_n):
            acc[i] = T.float32(0)
        for s in T.unroll(pf):
            copy_tile(smem, a, b, tx, by, bx, pad, s, s)
            T.ptx["cp.async.commit_group"]()
        if not promote:
            for kt in T.serial(kt_n):
                k_tile(smem, a, b, tx, by, bx, pad, base, g, acc, 0, True, kt)
                T.ptx["wgmma.wait_group.sync.aligned"](inflight)
            T.ptx["wgmma.wait_group.sync.aligned"](0)
        elif inflight == 0:
            for kt in T.serial(kt_n):
                k_tile(smem, a, b, tx, by, bx, pad, base, g, tmp, 0, False, kt)
                T.ptx["wgmma.wait_group.sync.aligned"](0)
                for i in T.unroll(acc_n):
                    acc[i] = acc[i] + tmp[i]
        else:
            for kt2 in T.serial(kt_n // 2):
                for p in T.unroll(2):
                    k_tile(smem, a, b, tx, by, bx, pad, base, g, tmp, p * acc_n, False, kt2 * 2 + p)
                    T.ptx["wgmma.wait_group.sync.aligned"](1)
                    if kt2 * 2 + p > 0:
                        for i in T.unroll(acc_n):
                            acc[i] = acc[i] + tmp[(1 - p) * acc_n + i]
            T.ptx["wgmma.wait_group.sync.aligned"](0)
            for i in T.unroll(acc_n):
                acc[i] = acc[i] + tmp[acc_n + i]
        for j in T.unroll(bn // 8):
            for h in T.unroll(2):
                for v in T.vectorized(2):
                    c[by * bm + g * 64 + (wt // 32) * 16 + (wt % 32) // 4 + 8 * h, bx * bn + j * 8 + (wt % 4) * 2 + v] = T.Cast(
                        out_dtype, acc[j * 4 + h * 2 + v] * (sa[0] * sb[0]))

    @T.prim_func
    def main(a: T.Buffer((m, k), ind), b: T.Buffer((n, k), ind), scale_a: T.Buffer((1,), "float32"),
             scale_b: T.Buffer((1,), "float32"), c: T.Buffer((m, n), out_dtype)):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        kernel(a, b, c, scale_a, scale_b)

    return main


def wgmma_target():
    """``tvm.target.Target`` for :func:`fp8_gemm_wgmma`: the repo's CUDA target with ``arch`` = :data:`WGMMA_ARCH`."""
    import tvm

    from backends.tvm.target import host_spec, resolve_target

    spec = dict(resolve_target("cuda").spec, arch=WGMMA_ARCH)
    return tvm.target.Target(spec, host=host_spec())
