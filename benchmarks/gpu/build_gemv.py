"""Build (here, GPU-less) the int4 weight-only GEMV variants of backends/tvm/gemv_cuda.py for the H200, for
run_gemv_on_device.py.

4096x4096, batch 1, mpsearch int4g128 codes (16-row tile layout), fp16 x / scales / y, sm_90 with the device
code embedded (no compiler on the device). Variants (name -> generator, keyword arguments) in VARIANTS:
``tc16`` = the first kernel (loads then decode, three shifts per word, one mma chain per group); ``v2`` = all
loads issued before any decode (x first), one shift per word (in-place mask + exact fma.f16x2 for the odd
nibbles), ``c`` independent mma chains per group (``v2s``: v2 with the first kernel's three-shift decode; a cp.async.bulk
variant measured 20-40% slower on 2026-12-02 was removed). ``kW`` = W warps per 16-row tile (K split W ways), ``t1`` one tile
per block. Plus a one-block no-op launch (the floor of the timers).

Writes build/gpu/gemv/*.so, build/gpu/gemv/meta.json and build/gpu/gemv/tvm_rt.tar.gz (the runtime-only TVM:
a copy of build/gpu/tvm_rt.tar.gz when build_kernels.py has made one, else made by its ``pack_runtime``).

    .venv/bin/python benchmarks/gpu/build_gemv.py
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import tvm  # noqa: E402

from backends.tvm.cuda_build import cuda_build_env  # noqa: E402
from backends.tvm.gemv_cuda import int4_gemv_tc16, int4_gemv_tc16_v2, noop_kernel  # noqa: E402
from backends.tvm.target import resolve_target  # noqa: E402

OUT = ROOT / "build" / "gpu" / "gemv"
N = K = 4096
G = 128

VARIANTS = {
    "tc16_k16_t1": (int4_gemv_tc16, {"ksplit": 16, "tiles_per_block": 1}),
    "tc16_k8_t1": (int4_gemv_tc16, {"ksplit": 8, "tiles_per_block": 1}),
    "v2_k16_c1": (int4_gemv_tc16_v2, {"ksplit": 16, "chains": 1}),
    "v2_k16_c2": (int4_gemv_tc16_v2, {"ksplit": 16, "chains": 2}),
    "v2s_k16_c2": (int4_gemv_tc16_v2, {"ksplit": 16, "chains": 2, "decode": "shift"}),
    "v2_k16_c4": (int4_gemv_tc16_v2, {"ksplit": 16, "chains": 4}),
    "v2_k8_c2": (int4_gemv_tc16_v2, {"ksplit": 8, "chains": 2}),
    "v2_k32_c2": (int4_gemv_tc16_v2, {"ksplit": 32, "chains": 2}),
    "v2_k8_t2_c2": (int4_gemv_tc16_v2, {"ksplit": 8, "tiles_per_block": 2, "chains": 2}),
}


def build_one(name: str, func, meta: dict, info: dict) -> None:
    t = resolve_target("cuda")
    t0 = time.time()
    try:
        with cuda_build_env(), t.tvm():
            ex = tvm.compile(tvm.IRModule({"main": func}), target=t.tvm())
        ex.export_library(str(OUT / f"{name}.so"))
        meta[name] = dict(info, file=f"{name}.so", build_s=round(time.time() - t0, 1))
        print(f"built {name} in {time.time() - t0:.1f}s", flush=True)
    except Exception as e:  # noqa: BLE001 - record, the device run reports it
        meta[name] = dict(info, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        traceback.print_exc()


def runtime_tarball() -> Path:
    dst = OUT / "tvm_rt.tar.gz"
    src = ROOT / "build" / "gpu" / "tvm_rt.tar.gz"
    if src.is_file():
        shutil.copyfile(src, dst)
        return dst
    from benchmarks.gpu.build_kernels import pack_runtime  # writes build/gpu/tvm_rt.tar.gz

    shutil.copyfile(pack_runtime(), dst)
    return dst


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    meta: dict = {"N": N, "K": K, "group": G}
    for name, (gen, kw) in VARIANTS.items():
        ks, tpb = kw["ksplit"], kw.get("tiles_per_block", 1)
        info = {"kind": "int4_gemv_tc16", "generator": gen.__name__, **kw,
                "threads_per_block": 32 * ks * tpb, "blocks": N // 16 // tpb}
        build_one(name, gen(N, K, group=G, **kw), meta, info)
    build_one("noop_launch", noop_kernel(N), meta, {"kind": "noop"})
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2))
    tar = runtime_tarball()
    print("runtime-only TVM:", tar, f"{tar.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
