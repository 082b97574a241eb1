"""Hand-written TIR int8 x int8 -> int32 GEMM for sm_90 (H100/H200) on the tensor cores (mma.sync).

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

Why not wgmma/TMA: the TVM 0.27 wheel ships no tensorization or schedule rule for them (only PTX
table entries for hand-written code), and cuBLAS's own int8 kernel for this shape on sm_90 is a
mma.sync (sm_80) CUTLASS kernel too, so mma.sync is the like-for-like baseline.

:func:`emulate_int8_gemm_mma` replays the kernel statement by statement in numpy (:class:`_BlockReplay`:
swizzled shared ring, commit/wait groups, ldmatrix lane addresses, fragment slots, accumulator
placement), so the layout and the pipeline order are tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WARP = 32


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
    from tvm.script import tirx as T

    cfg.check(m, n, k)
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
                16, dtype="int8")
        else:
            T.s_tir.cp_async_raw.legacy(
                smem.data, stage * stage_bytes + b_base
                + swizzle_offset(_copy_rc(j - a_iters, tx, nthreads, cpr)[0], _copy_rc(j - a_iters, tx, nthreads, cpr)[1], bk),
                b.data, (bx * bn + _copy_rc(j - a_iters, tx, nthreads, cpr)[0]) * k + tile * bk
                + _copy_rc(j - a_iters, tx, nthreads, cpr)[1] * 16,
                16, dtype="int8")

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
                T.ptx_legacy.mma("int32", "m16n8k32", "row", "col", "int8", "int8", "int32",
                                 af.data, (buf * mi_n + mi) * 4, bf.data, (buf * nj_n + nj) * 2,
                                 acc.data, (mi * nj_n + nj) * 4, False)

    @T.prim_func
    def main(a: T.Buffer((m, k), "int8"), b: T.Buffer((n, k), "int8"), c: T.Buffer((m, n), "int32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        by = T.launch_thread("blockIdx.y", m // bm)
        bx = T.launch_thread("blockIdx.x", n // bn)
        tx = T.launch_thread("threadIdx.x", nthreads)
        smem = T.decl_buffer((smem_n,), "int8", scope="shared.dyn")
        acc = T.decl_buffer((acc_n,), "int32", scope="local")
        af = T.decl_buffer((nbuf * mi_n * 4,), "uint32", scope="local")
        bf = T.decl_buffer((nbuf * nj_n * 2,), "uint32", scope="local")
        lane = T.meta_var(tx % 32)
        wm = T.meta_var(tx // 32 // cfg.warps_n)
        wn = T.meta_var(tx // 32 % cfg.warps_n)
        for i in T.unroll(acc_n):
            acc[i] = 0
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
                    mma_all(af, bf, acc, 0)
        for mi in T.unroll(mi_n):
            for nj in T.unroll(nj_n):
                for h in T.unroll(2):
                    for v in T.vectorized(2):
                        c[by * bm + wm * wtm + mi * 16 + lane // 4 + 8 * h,
                          bx * bn + wn * wtn + nj * 8 + (lane % 4) * 2 + v] = acc[(mi * nj_n + nj) * 4 + h * 2 + v]

    return main


class _BlockReplay:
    """numpy model of one thread block of :func:`int8_gemm_mma`, statement by statement in program order.

    Shared memory is the ``stages``-deep ring of swizzled K tiles; a cp.async writes its 16 bytes at once
    (so a copy issued into a stage that is still to be read for an older tile corrupts that read: a WAR
    bug shows up as a wrong result) and belongs to the open commit group; ``wait`` (wait_group + barrier)
    marks all but the newest ``n`` groups complete, and a fragment load from a stage whose last copy is not
    complete raises (a RAW bug). Fragments are assembled per PTX's register layouts."""

    def __init__(self, a: np.ndarray, b: np.ndarray, cfg: GemmConfig, by: int, bx: int) -> None:
        self.a, self.b, self.cfg, self.by, self.bx = a, b, cfg, by, bx
        self.k = a.shape[1]
        self.cpr = cfg.bk // 16
        self.stage_bytes = (cfg.bm + cfg.bn) * cfg.bk
        self.smem = np.full(cfg.stages * self.stage_bytes, 999, np.int64)  # poison: unwritten bytes show up
        self.writer = np.full(cfg.stages * self.stage_bytes, -1, np.int64)  # commit group of the last copy
        self.group, self.done = 0, -1  # open group; groups <= done are complete
        nw = cfg.warps_m * cfg.warps_n
        self.af = np.zeros((2, nw, WARP, cfg.wtm // 16, 4, 4), np.int64)  # buf, warp, lane, mi, reg, byte
        self.bf = np.zeros((2, nw, WARP, cfg.wtn // 8, 2, 4), np.int64)  # buf, warp, lane, nj, reg, byte
        self.acc = np.zeros((nw, WARP, cfg.wtm // 16, cfg.wtn // 8, 4), np.int64)

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
        g, t = np.arange(WARP) // 4, np.arange(WARP) % 4
        for w in range(cfg.warps_m * cfg.warps_n):
            for mi in range(cfg.wtm // 16):
                amat = np.zeros((16, 32), np.int64)
                for i in range(4):
                    for byte in range(4):
                        amat[g + 8 * (i % 2), 4 * t + 16 * (i // 2) + byte] = self.af[buf, w, :, mi, i, byte]
                for nj in range(cfg.wtn // 8):
                    bmat = np.zeros((32, 8), np.int64)
                    for j in range(2):
                        for byte in range(4):
                            bmat[4 * t + 16 * j + byte, g] = self.bf[buf, w, :, nj, j, byte]
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


def emulate_int8_gemm_mma(a: np.ndarray, b: np.ndarray, cfg: GemmConfig) -> np.ndarray:
    """Replay :func:`int8_gemm_mma`'s schedule (same statement order, same index helpers, both pipelines)
    with :class:`_BlockReplay` for small shapes. Returns int64 ``(M, N)``; a wrong swizzle, lane address,
    fragment slot, stage index or pipeline order makes it differ from ``a @ b.T`` (or raise)."""
    a = np.asarray(a, np.int8)
    b = np.asarray(b, np.int8)
    m, k = a.shape
    n = b.shape[0]
    cfg.check(m, n, k)
    s, kt_n, kk_n = cfg.stages, k // cfg.bk, cfg.bk // 32
    n_cp = (cfg.bm + cfg.bn) * (cfg.bk // 16) // cfg.threads
    out = np.zeros((m, n), np.int64)
    for by in range(m // cfg.bm):
        for bx in range(n // cfg.bn):
            rp = _BlockReplay(a, b, cfg, by, bx)
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
    return out
