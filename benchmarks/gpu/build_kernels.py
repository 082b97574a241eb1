"""Build (here, GPU-less) the H100 benchmark kernels + a runtime-only TVM, for run_on_device.py.

Kernels (sm_90, device code embedded as fatbin, no compiler needed on the device):
- int4 weight-only GEMV 4096x4096 batch 1: two's-complement int4 codes packed 8 per uint32 along K
  (exactly ``mpsearch.formats`` int4g128 codes, low nibble first), fp16 group-128 scales, fp16 x,
  decode fused into the reduction; one variant per dlight rule (GEMV, LowBatchGEMV).
- int4 GEMV, hand-scheduled TIR on the tensor cores (backends/tvm/gemv_cuda.py: repacked codes, 16-byte
  loads per lane per group, magic-number decode, mma.sync m16n8k16 with the weights as A, fp32
  accumulation); one variant per (ksplit warps per 16-row tile, tiles per block), plus a no-op launch.
- fp16 GEMV 4096x4096 (TVM dlight) for reference.
- int8 GEMM 4096^3 int8 x int8 -> int32 (dlight Matmul: int8 tensor-core rule).
- int8 GEMM 4096^3, hand-written TIR on the tensor cores (backends/tvm/gemm_cuda.py: cp.async multi-stage
  pipeline into XOR-swizzled shared memory, ldmatrix.x4, mma.sync m16n8k32 s8 -> s32); one variant per
  tile config in GEMM_MMA_VARIANTS.
- fp8 e4m3 GEMM 4096^3 -> fp32 (bf16), hand-written TIR: the int8 kernel with e4m3 operands and an fp32
  accumulator, per-tensor scales in the epilogue; one variant per (dtype path, tile config) in GEMM_FP8_VARIANTS.
- fp8 e4m3 GEMM 4096^3 -> fp32 (dlight Matmul: no fp8 tensor-core rule exists in TVM 0.27's dlight,
  so this is what TVM gives without a hand-written MMA schedule).
Writes build/gpu/kernels/*.so, build/gpu/kernels/meta.json and build/gpu/tvm_rt.tar.gz.

    .venv/bin/python benchmarks/gpu/build_kernels.py [--only int4]

``--only int4`` builds the int4 GEMV kernels (dlight GEMV + the hand-scheduled variants) and the runtime;
``--only gemm`` the hand-written int8 and e4m3 GEMM variants and the runtime.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import tvm  # noqa: E402
from tvm import te, tirx  # noqa: E402
from tvm.s_tir import dlight as dl  # noqa: E402

from backends.tvm.cuda_build import cuda_build_env  # noqa: E402
from backends.tvm.gemm_cuda import GEMM_DTYPES, GemmConfig, WgmmaConfig, fp8_gemm_wgmma, gemm_mma, int8_gemm_mma, wgmma_target  # noqa: E402
from backends.tvm.gemv_cuda import int4_gemv_tc16, noop_kernel  # noqa: E402
from backends.tvm.target import resolve_target  # noqa: E402

OUT = ROOT / "build" / "gpu"
KDIR = OUT / "kernels"
N = K = 4096
G = 128


def int4_gemv():
    x = te.placeholder((1, K), "float16", name="x")
    wp = te.placeholder((N, K // 8), "uint32", name="wp")
    sc = te.placeholder((N, K // G), "float16", name="scale")

    def dec(n, k):
        c = (wp[n, k // 8] >> ((k % 8) * 4).astype("uint32")) & tirx.const(15, "uint32")
        v = (c.astype("int32") ^ 8) - 8
        return v.astype("float16") * sc[n, k // G]

    wd = te.compute((N, K), dec, name="decode")
    r = te.reduce_axis((0, K), name="k")
    acc = te.compute((1, N), lambda i, n: te.sum(x[i, r].astype("float32") * wd[n, r].astype("float32"), axis=r), name="gemv")
    y = te.compute((1, N), lambda i, n: acc[i, n].astype("float16"), name="cast")
    return te.create_prim_func([x, wp, sc, y])


def fp16_gemv():
    x = te.placeholder((1, K), "float16", name="x")
    w = te.placeholder((N, K), "float16", name="w")
    r = te.reduce_axis((0, K), name="k")
    acc = te.compute((1, N), lambda i, n: te.sum(x[i, r].astype("float32") * w[n, r].astype("float32"), axis=r), name="gemv")
    y = te.compute((1, N), lambda i, n: acc[i, n].astype("float16"), name="cast")
    return te.create_prim_func([x, w, y])


def gemm(in_dtype: str, out_dtype: str, m=4096, n=4096, k=4096):
    a = te.placeholder((m, k), in_dtype, name="a")
    b = te.placeholder((n, k), in_dtype, name="b")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r].astype(out_dtype) * b[j, r].astype(out_dtype), axis=r), name="matmul")
    return te.create_prim_func([a, b, c])


# hand-scheduled int4 GEMV variants: (generator, tile rows, ksplit, tiles_per_block)
TC_VARIANTS = [("tc16", 16, 4, 1), ("tc16", 16, 8, 1), ("tc16", 16, 16, 1), ("tc16", 16, 4, 2)]


# hand-written int8 GEMM variants (bm, bn, bk, warps_m, warps_n, stages, pipeline); smem = stages*(bm+bn)*bk
# bytes. "simple": wait + barrier, the next tile's copies, then the k32 steps; "frag": fragments of the next
# k32 step loaded under the current mmas, copies spread over the k32 steps (backends/tvm/gemm_cuda.py).
# Device runs 2026-12-02 (H200, CUPTI us, torch._int_mm 156-195 us in the same runs): simple 256x128x128 s3
# 176-189, 128x256x128 s3 179-182; frag 256x128x128 s4 170, 128x256x128 s4 176, 128x128x64 s4 175,
# 128x128x128 s3 195; dropped after measuring: bk=64 with 8 warps (200-237), simple 128x128x128 s4 (269),
# frag 128x128x64 s6 (188), frag 128x256x64 s5 / 256x128x64 s5 (200-214).
GEMM_MMA_VARIANTS = [
    GemmConfig(256, 128, 128, 4, 2, 3), GemmConfig(128, 256, 128, 2, 4, 3),
    GemmConfig(256, 128, 128, 4, 2, 4, "frag"), GemmConfig(128, 256, 128, 2, 4, 4, "frag"),
    GemmConfig(256, 128, 128, 4, 2, 3, "frag"), GemmConfig(128, 256, 128, 2, 4, 3, "frag"),
    GemmConfig(128, 128, 64, 2, 2, 4, "frag"), GemmConfig(128, 128, 64, 2, 2, 3, "frag"),
    GemmConfig(128, 128, 64, 2, 2, 5, "frag"), GemmConfig(128, 128, 128, 2, 2, 3, "frag"),
    GemmConfig(128, 128, 128, 2, 2, 4, "frag"),
]


# hand-written e4m3 x e4m3 -> fp32 (or bf16) GEMM variants, same kernel (backends/tvm/gemm_cuda.py), as
# (GEMM_DTYPES name, config). "e4m3": mma.sync.m16n8k32.f32.e4m3.e4m3.f32, which ptxas lowers on sm_90 to two
# HMMA.16816.F32 per mma into fresh accumulators + F2FP unpacks + 4 FADDs (255 registers and spills with a 64x64
# warp tile); "e4m3_cvt": fragments converted to f16 in registers (cvt.rn.f16x2.e4m3x2, once per fragment) and
# two m16n8k16 f16 mmas accumulating in place (no FADDs, no spills at 64x64 warp tiles). 512-thread blocks
# (128 registers max) spill in both and are left out.
GEMM_FP8_VARIANTS = [
    ("e4m3", GemmConfig(128, 256, 128, 2, 4, 4, "frag")), ("e4m3", GemmConfig(256, 128, 128, 4, 2, 4, "frag")),
    ("e4m3", GemmConfig(128, 128, 128, 2, 4, 4, "frag")), ("e4m3", GemmConfig(128, 128, 128, 2, 4, 3, "frag")),
    ("e4m3_cvt", GemmConfig(256, 128, 128, 4, 2, 4, "frag")), ("e4m3_cvt", GemmConfig(128, 256, 128, 2, 4, 4, "frag")),
    ("e4m3_cvt", GemmConfig(256, 128, 128, 4, 2, 3, "frag")), ("e4m3_cvt", GemmConfig(128, 128, 128, 2, 2, 4, "frag")),
    ("e4m3_cvt", GemmConfig(128, 128, 128, 2, 4, 4, "frag")), ("e4m3_cvt", GemmConfig(128, 128, 64, 2, 2, 4, "frag")),
    ("e4m3_cvt", GemmConfig(128, 256, 64, 2, 4, 5, "frag")),
    ("e4m3_cvt_bf16", GemmConfig(256, 128, 128, 4, 2, 4, "frag")),
]
# the diagnostic fp16 kernel (same structure, mma.sync m16n8k16 f16 on ldmatrix'd f16 fragments): the mma.sync f16
# ceiling that bounds the e4m3 paths on sm_90
GEMM_F16_DIAG_VARIANTS = [GemmConfig(256, 128, 128, 4, 2, 4, "frag"), GemmConfig(128, 256, 128, 2, 4, 4, "frag"),
                          GemmConfig(128, 128, 64, 2, 2, 4, "frag")]


# e4m3 on wgmma (sm_90a): WgmmaConfig(wg_m, bn, stages, inflight) = block (64 wg_m) x bn x 128, wg_m consumer
# warpgroups, one m64n{bn}k32 wgmma per warpgroup per k32 step, a stages-deep cp.async ring, `inflight` wgmma groups
# left pending across a K tile (backends/tvm/gemm_cuda.py: fp8_gemm_wgmma)
# Without promote the error equals torch._scaled_mm use_fast_accum=True's (measured 2026-12-02: 1.64, 4.7e-3 of max,
# mean 0.056 for every variant); promote (per-K-tile partial sums added in fp32 FADDs) is the use_fast_accum=False path.
GEMM_WGMMA_VARIANTS = [
    WgmmaConfig(1, 128, 4, 0), WgmmaConfig(2, 256, 4, 0), WgmmaConfig(2, 256, 4, 1), WgmmaConfig(2, 128, 4, 1),
    WgmmaConfig(2, 128, 6, 1), WgmmaConfig(1, 256, 4, 1), WgmmaConfig(2, 256, 3, 0),
    WgmmaConfig(2, 128, 4, 0, True), WgmmaConfig(2, 128, 6, 0, True), WgmmaConfig(2, 128, 4, 1, True),
    WgmmaConfig(2, 128, 6, 1, True), WgmmaConfig(1, 128, 4, 0, True), WgmmaConfig(2, 128, 5, 0, True),
]


def build_gemm_wgmma(meta: dict, size: int = 4096) -> None:
    """The e4m3 wgmma GEMM variants, built for sm_90a (this kernel only)."""
    for cfg in GEMM_WGMMA_VARIANTS:
        info = {"kind": "fp8_gemm_wgmma", "dtype": "e4m3", "out_dtype": "float32", "arch": "sm_90a",
                "rule": "hand-written TIR (cp.async ring, 128B swizzle + wgmma.mma_async m64nNk32 e4m3 from smem descriptors)",
                "config": cfg.name, "threads_per_block": cfg.threads, "smem_bytes": cfg.smem_bytes,
                "blocks": (size // cfg.bm) * (size // cfg.bn)}
        _build_prim(f"fp8_gemm_wgmma_{cfg.name}", fp8_gemm_wgmma(size, size, size, cfg), meta, info, target=wgmma_target())


def build_gemm_mma(meta: dict, size: int = 4096) -> None:
    """The hand-written int8 and e4m3 GEMM variants (backends/tvm/gemm_cuda.py), all for ``size``^3."""
    for cfg in GEMM_MMA_VARIANTS:
        info = {"kind": "int8_gemm_mma", "rule": "hand-written TIR (cp.async + ldmatrix + mma.sync m16n8k32)",
                "config": cfg.name, "threads_per_block": cfg.threads, "smem_bytes": cfg.smem_bytes,
                "blocks": (size // cfg.bm) * (size // cfg.bn)}
        _build_prim(f"int8_gemm_mma_{cfg.name}", int8_gemm_mma(size, size, size, cfg), meta, info)
    for dname, cfg in GEMM_FP8_VARIANTS:
        dt = GEMM_DTYPES[dname]
        info = {"kind": "fp8_gemm_mma", "dtype": dname, "out_dtype": dt.out_dtype,
                "rule": "hand-written TIR (cp.async + ldmatrix + " + ("cvt e4m3x2->f16x2 + mma.sync m16n8k16 f16" if dt.cvt_f16
                                                                      else "mma.sync m16n8k32 e4m3") + ")",
                "config": cfg.name, "threads_per_block": cfg.threads, "smem_bytes": cfg.smem_bytes,
                "blocks": (size // cfg.bm) * (size // cfg.bn)}
        _build_prim(f"fp8_gemm_mma_{dname}_{cfg.name}", gemm_mma(size, size, size, cfg, dt), meta, info)
    for cfg in GEMM_F16_DIAG_VARIANTS:
        info = {"kind": "f16_gemm_mma_diag", "dtype": "f16_bytes", "out_dtype": "float32",
                "rule": "hand-written TIR (cp.async + ldmatrix + mma.sync m16n8k16 f16), fp16 as byte pairs, K = 2 x size bytes",
                "config": cfg.name, "threads_per_block": cfg.threads, "smem_bytes": cfg.smem_bytes,
                "blocks": (size // cfg.bm) * (size // cfg.bn)}
        _build_prim(f"f16_gemm_mma_diag_{cfg.name}", gemm_mma(size, size, 2 * size, cfg, GEMM_DTYPES["f16_bytes"]), meta, info)
    build_gemm_wgmma(meta, size)


def _build_prim(name: str, func, meta: dict, info: dict, target=None) -> None:
    """Build an already-scheduled prim_func (no dlight rules) for sm_90 (or ``target``, e.g. sm_90a)."""
    tt = target if target is not None else resolve_target("cuda").tvm()
    t0 = time.time()
    try:
        with cuda_build_env(), tt:
            ex = tvm.compile(tvm.IRModule({"main": func}), target=tt)
        ex.export_library(str(KDIR / f"{name}.so"))
        meta[name] = dict(info, file=f"{name}.so", build_s=round(time.time() - t0, 1))
        print(f"built {name} in {time.time() - t0:.1f}s", flush=True)
    except Exception as e:  # noqa: BLE001
        meta[name] = dict(info, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        traceback.print_exc()


def build_tc(meta: dict) -> None:
    """The hand-scheduled TIR int4 GEMV variants (backends/tvm/gemv_cuda.py) and a no-op launch baseline."""
    for gen, rows, ks, tpb in TC_VARIANTS:
        name = f"int4_gemv_{gen}_k{ks}_t{tpb}"
        info = {"kind": "int4_gemv_" + gen, "rule": "hand-scheduled TIR (mma.sync m16n8k16, weights as A)",
                "tile_rows": rows, "ksplit": ks,
                "tiles_per_block": tpb, "threads_per_block": 32 * ks * tpb, "blocks": N // rows // tpb}
        _build_prim(name, int4_gemv_tc16(N, K, group=G, ksplit=ks, tiles_per_block=tpb), meta, info)
    _build_prim("noop_launch", noop_kernel(N), meta, {"kind": "noop", "rule": "one block, one store"})


def build(name: str, func, rules, meta: dict, info: dict, schedule_arch: str | None = None) -> None:
    """Schedule with dlight ``rules`` and build for sm_90. ``schedule_arch`` (e.g. "sm_90a") makes dlight's
    tensor-core check (digits-only arch strings) skip tensorization, giving its SIMT schedule."""
    t = resolve_target("cuda")
    t0 = time.time()
    try:
        mod = tvm.IRModule({"main": func})
        sched_target = tvm.target.Target({"kind": "cuda", "arch": schedule_arch}) if schedule_arch else t.tvm()
        with sched_target:
            mod = dl.ApplyDefaultSchedule(*rules)(mod)
        with cuda_build_env(), t.tvm():
            ex = tvm.compile(mod, target=t.tvm())
        ex.export_library(str(KDIR / f"{name}.so"))
        src = ex.mod.imports[0].inspect_source("") if ex.mod.imports else ""
        meta[name] = dict(info, file=f"{name}.so", build_s=round(time.time() - t0, 1), embedded_source_chars=len(src))
        print(f"built {name} in {time.time() - t0:.1f}s", flush=True)
    except Exception as e:  # record and continue: the device run reports what could not be built
        meta[name] = dict(info, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        traceback.print_exc()


def pack_runtime() -> Path:
    """Runtime-only TVM (notes/gpu.md): tvm package minus the compiler + apache-tvm-ffi cp312 wheel."""
    stage = OUT / "rt_stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    src = Path(tvm.__file__).parent
    skip = {"libtvm_compiler.so", "3rdparty", "include", "src", "__pycache__"}

    def ignore(d, names):
        out = {n for n in names if n in skip}
        if Path(d).name == "relax":
            out |= {"frontend"} & set(names)
        return out

    shutil.copytree(src, stage / "tvm", ignore=ignore)
    whl_dir = OUT / "wheels"
    whl_dir.mkdir(exist_ok=True)
    if not list(whl_dir.glob("apache_tvm_ffi-0.1.15.post2-cp312*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "apache-tvm-ffi==0.1.15.post2", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--platform", "manylinux_2_28_x86_64", "-d", str(whl_dir)], check=True)
    whl = next(whl_dir.glob("apache_tvm_ffi-0.1.15.post2-cp312*.whl"))
    import zipfile

    with zipfile.ZipFile(whl) as z:
        z.extractall(stage)
    tar = OUT / "tvm_rt.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        for p in sorted(stage.iterdir()):
            t.add(p, arcname=p.name)
    shutil.rmtree(stage)
    return tar


def build_digits_artifact() -> None:
    """A mixed-plan digits CNN artifact for cuda (checked on the H100 against its reference.npz)."""
    import torch

    from backends.tvm import compile_plan
    from mpsearch.graph import build_layer_graph
    from mpsearch.plan import Candidate, Plan
    from mpsearch.simulate import calibrate_act_ranges
    from mpsearch.task import load_task

    torch.set_num_threads(1)
    t = load_task("digits-cnn")
    g = build_layer_graph(t.model, t.example_input)
    amax = calibrate_act_ranges(t.model, g.names, t.calib_batches, t.run_forward)
    cands = ["int8/int8", "int4", "e4m3", "int4g128", "fp16"]
    plan = Plan({n: Candidate.parse(cands[i % len(cands)]) for i, n in enumerate(g.names)}, task="digits-cnn")
    compile_plan(t.model, g, plan, amax, t.example_input, target="cuda", out_dir=OUT / "digits_cuda")
    print("built digits cuda artifact", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["int4", "gemm", "wgmma"],
                    help="build only the int4 GEMV kernels / the hand-written int8 and e4m3 GEMMs (and the runtime) / only the "
                         "e4m3 wgmma GEMMs (merged into the existing meta.json; the runtime packed if missing)")
    args = ap.parse_args()
    KDIR.mkdir(parents=True, exist_ok=True)
    meta: dict = {"N": N, "K": K, "group": G}
    if args.only == "wgmma":
        if (KDIR / "meta.json").is_file():
            meta = json.loads((KDIR / "meta.json").read_text())
        build_gemm_wgmma(meta)
        (KDIR / "meta.json").write_text(json.dumps(meta, indent=2))
        if not (OUT / "tvm_rt.tar.gz").is_file():
            pack_runtime()
        return
    if args.only == "gemm":
        build_gemm_mma(meta)
        (KDIR / "meta.json").write_text(json.dumps(meta, indent=2))
        tar = pack_runtime()
        print("runtime-only TVM:", tar, f"{tar.stat().st_size / 1e6:.1f} MB")
        return
    build("int4_gemv_dlight_gemv", int4_gemv(), [dl.gpu.GEMV(), dl.gpu.Fallback()], meta, {"kind": "int4_gemv", "rule": "GEMV"})
    build_tc(meta)
    if args.only == "int4":
        (KDIR / "meta.json").write_text(json.dumps(meta, indent=2))
        tar = pack_runtime()
        print("runtime-only TVM:", tar, f"{tar.stat().st_size / 1e6:.1f} MB")
        return
    build("int4_gemv_dlight_lowbatch", int4_gemv(), [dl.gpu.LowBatchGEMV(), dl.gpu.Fallback()], meta, {"kind": "int4_gemv", "rule": "LowBatchGEMV"})
    build("fp16_gemv_dlight_gemv", fp16_gemv(), [dl.gpu.GEMV(), dl.gpu.Fallback()], meta, {"kind": "fp16_gemv", "rule": "GEMV"})
    build("int8_gemm_dlight", gemm("int8", "int32"), [dl.gpu.Matmul(), dl.gpu.Fallback()], meta, {"kind": "int8_gemm", "rule": "Matmul"})
    build("int8_gemm_dlight_simt", gemm("int8", "int32"), [dl.gpu.Matmul(), dl.gpu.Fallback()], meta,
          {"kind": "int8_gemm", "rule": "Matmul (SIMT, tensor-core rule skipped)"}, schedule_arch="sm_90a")
    build_gemm_mma(meta)
    build("fp8_gemm_dlight", gemm("float8_e4m3fn", "float32"), [dl.gpu.Matmul(), dl.gpu.Fallback()], meta, {"kind": "fp8_gemm", "rule": "Matmul"})
    (KDIR / "meta.json").write_text(json.dumps(meta, indent=2))
    build_digits_artifact()
    tar = pack_runtime()
    print("runtime-only TVM:", tar, f"{tar.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
