"""Run on the H100 (device tool): check + time the kernels built by build_kernels.py against torch.

Needs only what travels in the working tree: build/gpu/tvm_rt.tar.gz (runtime-only TVM), build/gpu/kernels,
build/gpu/digits_cuda, and this repo's ``mpsearch`` (numpy/torch only) for the int4 codes. Writes
$OUT/gpu_results.json. Timings: TVM ``time_evaluator`` median; torch CUDA events median; both after warm-up.

    python benchmarks/gpu/run_on_device.py [--only int4]

``--only int4`` runs only the int4 GEMV checks and timings (no artifact, fp16 GEMV or GEMM runs);
``--only gemm`` only the int8 GEMM 4096^3 comparison (hand-written TIR variants vs torch._int_mm and torch
fp16 matmul, same inputs, same run; full int32 equality check), then the e4m3 one (hand-written TIR variants vs
torch._scaled_mm and torch fp16 matmul; errors vs torch._scaled_mm and a float64 reference).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tarfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "gpu"
RT = Path("/tmp/mpsearch_tvm_rt")
RESULTS: dict = {}


def setup_runtime(build: Path = BUILD, rt: Path = RT):
    """Unpack the runtime-only TVM from ``build``/tvm_rt.tar.gz into ``rt`` (once) and import it, with its CUDA sidecar."""
    if not (rt / "tvm").is_dir():
        rt.mkdir(parents=True, exist_ok=True)
        with tarfile.open(build / "tvm_rt.tar.gz") as t:
            t.extractall(rt)
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    sys.path.insert(0, str(rt))
    sys.path.insert(1, str(ROOT))
    import tvm

    ctypes.CDLL(str(Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"), ctypes.RTLD_GLOBAL)
    return tvm


def torch_time(fn, iters: int = 200, repeat: int = 7) -> float:
    import torch

    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(iters):
            fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3 / iters)
    return statistics.median(times)


def cold_time(fn, runs: int = 50) -> float:
    """Median seconds of one call with L2 flushed before it (weights come from HBM, as in a real model
    whose layers do not all fit in the 50 MB L2); CUDA events around the single call."""
    import torch

    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        flush.zero_()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return statistics.median(times)


def cuda_kernel_durations(body, runs: int) -> dict[str, list[float]]:
    """Device duration (us) of every GPU kernel launched by ``runs`` calls of ``body``, by kernel name
    (CUPTI via torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            body()
        torch.cuda.synchronize()
    out: dict[str, list[float]] = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            out.setdefault(ev.name, []).append(ev.time_range.elapsed_us())
    return out


def kernel_time(fn, runs: int = 60, cold: bool = False) -> dict[str, float]:
    """Median device duration (us) of each GPU kernel that ``fn`` launches, from CUPTI via torch.profiler.

    Why: at a few microseconds the host-side timers (time_evaluator, CUDA events around a launch loop)
    measure the launch rate of the Python/TVM call path, not the kernel (a no-op kernel times at ~3.8 us
    with them). CUPTI records every kernel on the device, whichever library launched it, so TVM's kernels
    and cuBLAS's are measured by the same clock. ``cold``: L2 flushed (a 256 MB memset) before each call;
    the flush kernel is excluded by name.
    """
    import torch

    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda") if cold else None
    for _ in range(10):
        fn()
    flush_names = set(cuda_kernel_durations(lambda: flush.zero_(), runs)) if cold else set()

    def body() -> None:
        if cold:
            flush.zero_()
        fn()

    durs = cuda_kernel_durations(body, runs)
    return {name: statistics.median(v) for name, v in durs.items() if name not in flush_names}


def int4_operands(tvm, meta) -> dict:
    """The operands shared by the int4 GEMV benchmarks: one random ``N x K`` weight (seed 0) encoded with
    mpsearch's ``int4g<group>``, x (1, K) fp16, per kernel kind the (weights, scales) TVM tensors in that
    kernel's layout, the dense fp16 weight for torch, and the fp32 references.

    Returns a dict: ``x`` (CUDA fp16), ``w16`` (CUDA fp16 decoded weight), ``layouts`` (kind ->
    (weights, scales) TVM tensors on the GPU: "int4_gemv" = the format library's packing for the dlight
    kernels, "int4_gemv_tc16" = backends/tvm/gemv_cuda.py's 16-row tiles), ``ref`` (x @ decoded weights,
    fp32 scales, as the simulation), ``ref16`` (float64 x @ codes x fp16 scales, the kernels' weights,
    cast to fp32), ``enc``/``fmt`` (the encoding).
    """
    import numpy as np
    import torch

    from backends.tvm.gemv_cuda import pack_int4_tiles16, pack_scales_tiles16
    from mpsearch.formats import parse_format

    n, k, grp = meta["N"], meta["K"], meta["group"]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g) * 0.05
    fmt = parse_format(f"int4g{grp}")
    enc = fmt.encode(w, channel_axis=0)
    w_dq = fmt.decode(enc)  # the simulation's weights
    packed = np.ascontiguousarray(enc.packed).view(np.uint32)  # format library's packing, 8 codes / word
    scales = torch.from_numpy(enc.scales.reshape(n, -1)).half()
    x = torch.randn(1, k, generator=g).half()
    ref = x.float() @ w_dq.t()  # fp32 reference on the simulation's weights (fp32 scales)
    # fp32 reference on the decoded weights the kernels use (codes x fp16 scales), in float64
    q = torch.from_numpy(fmt.code_values(enc.codes).astype(np.float64))
    ref16 = (x.double() @ (q * scales.double().repeat_interleave(grp, dim=1)).t()).float()
    keep = []  # the torch CUDA tensors behind the TVM views

    def u32(a):
        t = torch.from_numpy(np.ascontiguousarray(a).view(np.int32)).cuda()
        keep.append(t)
        return tvm.runtime.from_dlpack(t)._create_view(tuple(a.shape), "uint32")

    def f16(a):
        t = torch.as_tensor(a).half().cuda()
        keep.append(t)
        return tvm.runtime.from_dlpack(t)

    layouts = {
        "int4_gemv": (u32(packed), f16(scales)),
        "int4_gemv_tc16": (u32(pack_int4_tiles16(enc.codes, grp)), f16(pack_scales_tiles16(scales.float().numpy(), n, k, grp))),
    }
    return {"x": x.cuda(), "w16": w_dq.half().cuda(), "layouts": layouts, "ref": ref, "ref16": ref16,
            "enc": enc, "fmt": fmt, "_keep": keep}


def bench_kernel_times(tvm, dev, meta) -> None:
    """Device time per kernel (CUPTI) of the int4 GEMV variants and of torch fp16, warm and L2-cold."""
    import torch

    n = meta["N"]
    ops = int4_operands(tvm, meta)
    x, w16, layouts = ops["x"], ops["w16"], ops["layouts"]
    y = torch.empty(1, n, dtype=torch.float16, device="cuda")
    res: dict = {"method": "CUPTI kernel durations via torch.profiler, median of 60 calls; cold = 256 MB memset before each call"}
    heat(2.0)
    for cold in (False, True):
        tag = "l2_cold" if cold else "warm"
        res[f"torch_fp16_{tag}"] = kernel_time(lambda: torch.matmul(x, w16.t()), cold=cold)
        for name, m in meta.items():
            if not isinstance(m, dict) or m.get("kind") not in layouts or "error" in m:
                continue
            mod = tvm.runtime.load_module(str(BUILD / "kernels" / m["file"]))
            f = mod["main"]
            wt, st = layouts[m["kind"]]
            args = [tvm.runtime.from_dlpack(x), wt, st, tvm.runtime.from_dlpack(y)]
            res[f"{name}_{tag}"] = kernel_time(lambda: f(*args), cold=cold)
        print(json.dumps({k_: v for k_, v in res.items() if k_.endswith(tag)}, indent=1), flush=True)
    RESULTS["int4_gemv_kernel_time"] = res


def tvm_time(tvm, mod, dev, args, number: int = 200, repeat: int = 7) -> float:
    mod["main"](*args)
    dev.sync()
    return float(mod.time_evaluator("main", dev, number=number, repeat=repeat)(*args).median)


def to_tvm(tvm, t, dev):
    """torch CUDA tensor -> TVM tensor sharing memory (fp8 travels as uint8 bytes, then re-typed)."""
    import torch

    if t.dtype == torch.float8_e4m3fn:
        return tvm.runtime.from_dlpack(t.view(torch.uint8))._create_view(tuple(t.shape), "float8_e4m3fn")
    return tvm.runtime.from_dlpack(t.contiguous())


def _ulp16(v):
    """Spacing of fp16 numbers at |v| (normal range; 2**-24 below it)."""
    import numpy as np

    a = np.abs(np.asarray(v, dtype=np.float32)).astype(np.float16).astype(np.float32)
    e = np.floor(np.log2(np.maximum(a, 2.0**-14)))
    return np.maximum(2.0 ** (e - 10), 2.0**-24)


def heat(seconds: float) -> None:
    """Keep the GPU busy (bf16 matmuls) so that its clocks have ramped up before a short measurement."""
    import time

    import torch

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    t0 = time.time()
    while time.time() - t0 < seconds:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def gpu_clocks() -> str:
    import subprocess

    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,power.draw", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:  # noqa: BLE001
        return str(e)


def bench_int4_gemv(tvm, dev, meta) -> None:
    import torch

    n, k = meta["N"], meta["K"]
    ops = int4_operands(tvm, meta)
    xc, w16, layouts, ref, ref16 = ops["x"], ops["w16"], ops["layouts"], ops["ref"], ops["ref16"]
    ulp = torch.from_numpy(_ulp16(ref16.numpy()))
    heat(2.0)
    RESULTS["clocks_after_heat"] = gpu_clocks()
    t_torch = torch_time(lambda: torch.matmul(xc, w16.t()))
    t_torch_cold = cold_time(lambda: torch.matmul(xc, w16.t()))
    gb = (n * k / 2 + n * k / meta["group"] * 2) / 1e9
    res = {"torch_fp16_us": t_torch * 1e6, "torch_fp16_l2_cold_us": t_torch_cold * 1e6, "bandwidth_floor_us": {
        f"{name}_at_{bw}TBps": (n * k * 2 if name == "fp16" else gb * 1e9) / (bw * 1e12) * 1e6
        for name in ("fp16", "int4g128") for bw in (3.35, 4.8)}}
    for name, m in meta.items():
        if not isinstance(m, dict) or (m.get("kind") not in layouts and m.get("kind") != "noop"):
            continue
        if "error" in m:
            res[name] = {"error": m["error"]}
            continue
        try:
            mod = tvm.runtime.load_module(str(BUILD / "kernels" / m["file"]))
            y = torch.empty(1, n, dtype=torch.float16, device="cuda")
            heat(0.3)
            if m["kind"] == "noop":
                args = [tvm.runtime.from_dlpack(y)]
                f = mod["main"]
                res[name] = {"us": tvm_time(tvm, mod, dev, args) * 1e6, "l2_cold_us": cold_time(lambda: f(*args)) * 1e6,
                             "note": "launch floor of the timers (one block, one store)"}
                print(name, json.dumps(res[name]), flush=True)
                continue
            wt, st = layouts[m["kind"]]
            args = [tvm.runtime.from_dlpack(xc), wt, st, tvm.runtime.from_dlpack(y)]
            y.fill_(float("nan"))
            mod["main"](*args)
            torch.cuda.synchronize()
            yc = y.float().cpu()
            err = float((yc - ref).abs().max())
            err16 = float((yc - ref16).abs().max())
            ulps = float(((yc - ref16).abs() / ulp).max())
            t = tvm_time(tvm, mod, dev, args)
            f = mod["main"]
            tc = cold_time(lambda: f(*args))
            res[name] = {"us": t * 1e6, "l2_cold_us": tc * 1e6, "max_abs_err_vs_fp32_ref": err,
                         "max_abs_err_vs_fp32_ref_fp16_scales": err16, "max_err_fp16_ulps_vs_ref_fp16_scales": ulps,
                         "ref_max": float(ref.abs().max()), "speedup_vs_torch_fp16": t_torch / t,
                         "speedup_vs_torch_fp16_l2_cold": t_torch_cold / tc, "TBps_l2_cold": gb * 1e9 / tc / 1e12,
                         "goal_us": 4.0, "goal_met_warm": t * 1e6 <= 4.0 and t_torch / t >= 4.5,
                         "goal_met_l2_cold": tc * 1e6 <= 4.0 and t_torch_cold / tc >= 4.5,
                         **{kk: m[kk] for kk in ("rule", "tile_rows", "ksplit", "tiles_per_block", "threads_per_block", "blocks") if kk in m}}
        except Exception as e:  # noqa: BLE001
            res[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(name, json.dumps(res[name], default=str), flush=True)
    # torch again at the end (same run), to see drift
    heat(0.3)
    res["torch_fp16_us_again"] = torch_time(lambda: torch.matmul(xc, w16.t())) * 1e6
    res["torch_fp16_l2_cold_us_again"] = cold_time(lambda: torch.matmul(xc, w16.t())) * 1e6
    RESULTS["clocks_at_end"] = gpu_clocks()
    RESULTS["int4_gemv_4096"] = res


def bench_fp16_gemv(tvm, dev, meta) -> None:
    import torch

    n, k = meta["N"], meta["K"]
    m = meta.get("fp16_gemv_dlight_gemv", {})
    if "error" in m or not m:
        RESULTS["fp16_gemv_4096"] = {"error": m.get("error", "not built")}
        return
    x = torch.randn(1, k, device="cuda").half()
    w = (torch.randn(n, k, device="cuda") * 0.05).half()
    y = torch.empty(1, n, dtype=torch.float16, device="cuda")
    mod = tvm.runtime.load_module(str(BUILD / "kernels" / m["file"]))
    args = [tvm.runtime.from_dlpack(t) for t in (x, w, y)]
    t = tvm_time(tvm, mod, dev, args)
    f = mod["main"]
    t_cold = cold_time(lambda: f(*args))
    mod["main"](*args)
    torch.cuda.synchronize()
    err = float((y.float() - (x.float() @ w.float().t())).abs().max())
    RESULTS["fp16_gemv_4096"] = {"tvm_us": t * 1e6, "torch_us": torch_time(lambda: torch.matmul(x, w.t())) * 1e6, "max_abs_err": err,
                                 "tvm_l2_cold_us": t_cold * 1e6, "torch_l2_cold_us": cold_time(lambda: torch.matmul(x, w.t())) * 1e6}


def bench_gemm(tvm, dev, meta) -> None:
    import torch

    size = 4096
    flops = 2 * size**3
    a8 = torch.randint(-127, 128, (size, size), device="cuda", dtype=torch.int8)
    b8 = torch.randint(-127, 128, (size, size), device="cuda", dtype=torch.int8)
    t_int = torch_time(lambda: torch._int_mm(a8, b8.t()), iters=20)
    af = (torch.randn(size, size, device="cuda") * 0.5).to(torch.float8_e4m3fn)
    bf = (torch.randn(size, size, device="cuda") * 0.5).to(torch.float8_e4m3fn)
    one = torch.tensor(1.0, device="cuda")
    try:
        t_f8 = torch_time(lambda: torch._scaled_mm(af, bf.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16), iters=20)
    except Exception as e:  # noqa: BLE001
        t_f8 = None
        RESULTS["fp8_peak_error"] = str(e)[:200]
    h = torch.randn(size, size, device="cuda").half()
    t_h = torch_time(lambda: torch.matmul(h, h), iters=20)
    peaks = {"int8_tops_cublas_int_mm": flops / t_int / 1e12, "fp8_tflops_cublas_scaled_mm": (flops / t_f8 / 1e12) if t_f8 else None,
             "fp16_tflops_cublas": flops / t_h / 1e12}
    RESULTS["measured_peaks_4096"] = peaks
    for name, m in meta.items():
        if not isinstance(m, dict) or m.get("kind") not in ("int8_gemm", "fp8_gemm"):
            continue
        if "error" in m:
            RESULTS[name] = {"error": m["error"]}
            continue
        try:
            mod = tvm.runtime.load_module(str(BUILD / "kernels" / m["file"]))
            if m["kind"] == "int8_gemm":
                c = torch.empty(size, size, dtype=torch.int32, device="cuda")
                args = [tvm.runtime.from_dlpack(a8), tvm.runtime.from_dlpack(b8), tvm.runtime.from_dlpack(c)]
                mod["main"](*args)
                torch.cuda.synchronize()
                exact = bool(torch.equal(c[:256], torch._int_mm(a8[:256].contiguous(), b8.t())[:256]))
                t = tvm_time(tvm, mod, dev, args, number=3, repeat=3)
                peak = peaks["int8_tops_cublas_int_mm"]
                RESULTS[name] = {"ms": t * 1e3, "tops": flops / t / 1e12, "pct_of_measured_peak": 100 * flops / t / 1e12 / peak,
                                 "exact_vs_torch_int_mm_first_256_rows": exact, "rule": m["rule"]}
            else:
                c = torch.empty(size, size, dtype=torch.float32, device="cuda")
                args = [to_tvm(tvm, af, dev), to_tvm(tvm, bf, dev), tvm.runtime.from_dlpack(c)]
                mod["main"](*args)
                torch.cuda.synchronize()
                ref = af[:128].float() @ bf.float().t()
                err = float((c[:128] - ref).abs().max() / ref.abs().max())
                t = tvm_time(tvm, mod, dev, args, number=3, repeat=3)
                peak = peaks["fp8_tflops_cublas_scaled_mm"]
                RESULTS[name] = {"ms": t * 1e3, "tflops": flops / t / 1e12,
                                 "pct_of_measured_peak": (100 * flops / t / 1e12 / peak) if peak else None,
                                 "max_rel_err_first_128_rows": err, "rule": m["rule"]}
        except Exception as e:  # noqa: BLE001
            RESULTS[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}


def head_to_head(ref: str, ref_fn, fns: dict, top: list[str], ok: dict, fp16_fn, flops: float, cupti_us, unit: str,
                 method: str, keep: tuple[str, ...]) -> dict:
    """The two fastest variants against the torch reference ``ref`` (e.g. "torch_int_mm") in alternating rounds:
    9 rounds of CUDA events around 20 back-to-back calls (reference, each variant, torch fp16 matmul), then 3
    rounds of CUPTI medians; per variant its rate in ``unit`` ("tops" / "tflops"), the median and range of the
    per-round ratios, and the ``keep`` fields of its per-variant result ``ok[name]``."""
    import torch

    rounds: dict = {f"{ref}_ms": [], "torch_fp16_ms": [], **{f"{k_}_ms": [] for k_ in top}}
    cupti: dict = {f"{ref}_us": [], **{f"{k_}_us": [] for k_ in top}}
    heat(1.0)
    for _ in range(9):
        rounds[f"{ref}_ms"].append(torch_time(ref_fn, iters=20, repeat=1) * 1e3)
        for k_ in top:
            f, args = fns[k_][0]["main"], fns[k_][1]
            rounds[f"{k_}_ms"].append(torch_time(lambda: f(*args), iters=20, repeat=1) * 1e3)
        rounds["torch_fp16_ms"].append(torch_time(fp16_fn, iters=20, repeat=1) * 1e3)
    for _ in range(3):
        cupti[f"{ref}_us"].append(cupti_us(ref_fn))
        for k_ in top:
            f, args = fns[k_][0]["main"], fns[k_][1]
            cupti[f"{k_}_us"].append(cupti_us(lambda: f(*args)))
    med = {k_: statistics.median(v) for k_, v in rounds.items()}
    hh: dict = {"method": method, "rounds_ms": rounds, "cupti_rounds_us": cupti, "median_ms": med,
                f"{ref}_{unit}": flops / med[f"{ref}_ms"] / 1e9,
                "torch_fp16_tflops": flops / med["torch_fp16_ms"] / 1e9, "clocks": gpu_clocks()}
    for k_ in top:
        ratios = [ti / tt for ti, tt in zip(rounds[f"{ref}_ms"], rounds[f"{k_}_ms"])]
        cr = [ti / tt for ti, tt in zip(cupti[f"{ref}_us"], cupti[f"{k_}_us"])]
        hh[k_] = {unit: flops / med[f"{k_}_ms"] / 1e9, f"pct_of_{ref}_median_of_rounds": 100 * statistics.median(ratios),
                  f"pct_of_{ref}_min_max": [100 * min(ratios), 100 * max(ratios)],
                  f"cupti_{unit}": flops / statistics.median(cupti[f"{k_}_us"]) / 1e6,
                  f"pct_of_{ref}_cupti_median_of_rounds": 100 * statistics.median(cr),
                  "pct_of_torch_fp16_tflops": 100 * med["torch_fp16_ms"] / med[f"{k_}_ms"],
                  **{kk: ok[k_].get(kk) for kk in keep}}
    return hh


def bench_gemm_mma(tvm, dev, meta, size: int = 4096) -> None:
    """The hand-written int8 GEMM variants (kind ``int8_gemm_mma``) vs torch._int_mm and torch fp16 matmul on
    the same inputs in the same run.

    Per variant: full int32 equality vs torch._int_mm; TVM ``time_evaluator`` median (7 repeats x 20 calls);
    CUPTI kernel durations (median of 20) of the variant and, right before it, of torch._int_mm (the GPU is
    power-limited, clocks drift by ~10% over a run, so each variant is compared with the torch kernel timed
    next to it). Then a head-to-head of the best variant: 7 alternating rounds of CUDA-event timing
    (20 calls) of torch._int_mm, the TVM kernel and torch fp16 matmul; medians and the median of ratios."""
    import torch

    flops = 2 * size**3
    g = torch.Generator(device="cuda").manual_seed(0)
    a8 = torch.randint(-128, 128, (size, size), device="cuda", dtype=torch.int8, generator=g)
    b8 = torch.randint(-128, 128, (size, size), device="cuda", dtype=torch.int8, generator=g)
    h1 = torch.randn(size, size, device="cuda", generator=g).half()
    h2 = torch.randn(size, size, device="cuda", generator=g).half()
    ref = torch._int_mm(a8, b8.t())
    torch.cuda.synchronize()
    res: dict = {"size": size, "method": "time_evaluator median (7 x 20 calls) for TVM, CUDA events median (7 x 20) for torch; "
                 "CUPTI = kernel-only device time (torch.profiler), median of 20 calls; all after heat(2 s)"}
    heat(2.0)
    res["clocks_after_heat"] = gpu_clocks()

    def int_mm():
        return torch._int_mm(a8, b8.t())

    def cupti_us(fn) -> float:
        kt = kernel_time(fn, runs=20)
        return sum(kt.values())

    def torch_side(tag: str) -> None:
        t_int = torch_time(int_mm, iters=20)
        t_h = torch_time(lambda: torch.matmul(h1, h2), iters=20)
        k_int = kernel_time(int_mm, runs=20)
        res[f"torch_int_mm{tag}"] = {"ms": t_int * 1e3, "tops": flops / t_int / 1e12, "cupti_us": k_int,
                                     "cupti_tops": flops / sum(k_int.values()) / 1e6 if k_int else None}
        res[f"torch_fp16_matmul{tag}"] = {"ms": t_h * 1e3, "tflops": flops / t_h / 1e12}

    torch_side("")
    peak = res["torch_int_mm"]["tops"]
    fns = {}
    for name, m in meta.items():
        if not isinstance(m, dict) or m.get("kind") != "int8_gemm_mma":
            continue
        if "error" in m:
            res[name] = {"error": m["error"]}
            continue
        try:
            mod = tvm.runtime.load_module(str(BUILD / "kernels" / m["file"]))
            c = torch.full((size, size), -1, dtype=torch.int32, device="cuda")
            args = [tvm.runtime.from_dlpack(a8), tvm.runtime.from_dlpack(b8), tvm.runtime.from_dlpack(c)]
            mod["main"](*args)
            torch.cuda.synchronize()
            exact = bool(torch.equal(c, ref))
            mism = int((c != ref).sum())
            heat(0.3)
            t = tvm_time(tvm, mod, dev, args, number=20, repeat=7)
            f = mod["main"]
            torch_k = cupti_us(int_mm)
            kus = cupti_us(lambda: f(*args))
            fns[name] = (mod, args)
            res[name] = {"ms": t * 1e3, "tops": flops / t / 1e12, "pct_of_torch_int_mm": 100 * flops / t / 1e12 / peak,
                         "cupti_us": kus, "cupti_tops": flops / kus / 1e6, "torch_int_mm_cupti_us_adjacent": torch_k,
                         "pct_of_adjacent_torch_cupti": 100 * torch_k / kus,
                         "exact_vs_torch_int_mm_full": exact, "mismatches": mism,
                         **{kk: m[kk] for kk in ("config", "threads_per_block", "smem_bytes", "blocks") if kk in m}}
        except Exception as e:  # noqa: BLE001
            res[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(name, json.dumps(res[name], default=str), flush=True)
    ok = {k_: v for k_, v in res.items() if isinstance(v, dict) and "cupti_us" in v and k_.startswith("int8_gemm_mma")
          and v["exact_vs_torch_int_mm_full"]}
    if ok:
        top = sorted(ok, key=lambda k_: ok[k_]["cupti_us"])[:2]
        hh = head_to_head("torch_int_mm", int_mm, fns, top, ok, lambda: torch.matmul(h1, h2), flops, cupti_us, "tops",
                          "CUDA events around 20 back-to-back calls, 9 alternating rounds (torch._int_mm, the two "
                          "fastest TVM variants by CUPTI, torch fp16 matmul); then 3 alternating rounds of CUPTI medians",
                          ("exact_vs_torch_int_mm_full", "config"))
        res["head_to_head"] = hh
        print("head_to_head", json.dumps(hh, default=str), flush=True)
    heat(0.3)
    torch_side("_again")
    res["clocks_at_end"] = gpu_clocks()
    RESULTS["int8_gemm_mma_4096"] = res


def bench_gemm_fp8_mma(tvm, dev, meta, size: int = 4096) -> None:
    """The hand-written e4m3 GEMM variants (kind ``fp8_gemm_mma``) vs torch._scaled_mm (e4m3, per-tensor scales)
    and torch fp16 matmul, same inputs, same run.

    Inputs: A, B = randn fp32 quantized per tensor to e4m3 (scale = amax / 448). Correctness of every variant's
    full output vs torch._scaled_mm (same out dtype) and vs a float64 reference of the decoded inputs
    ((A8 B8^T) * scale_a * scale_b in float64 on the GPU); the same figures for torch._scaled_mm itself.
    Timing as :func:`bench_gemm_mma`: per variant CUPTI (median of 20) next to torch._scaled_mm's CUPTI; then
    9 alternating CUDA-event rounds of torch._scaled_mm (fp32 out), the two fastest variants, torch fp16."""
    import torch

    flops = 2 * size**3
    g = torch.Generator(device="cuda").manual_seed(0)
    af32 = torch.randn(size, size, device="cuda", generator=g)
    bf32 = torch.randn(size, size, device="cuda", generator=g)
    sa = (af32.abs().max() / 448.0).float().reshape(())
    sb = (bf32.abs().max() / 448.0).float().reshape(())
    a8 = (af32 / sa).to(torch.float8_e4m3fn)
    b8 = (bf32 / sb).to(torch.float8_e4m3fn)
    del af32, bf32
    h1 = torch.randn(size, size, device="cuda", generator=g).half()
    h2 = torch.randn(size, size, device="cuda", generator=g).half()
    ref64 = (a8.float().double() @ b8.float().double().t()) * (sa.double() * sb.double())
    refmax = float(ref64.abs().max())

    def smm(out_dtype=torch.float32, fast=False):
        return torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=out_dtype, use_fast_accum=fast)

    def errs(c, ref) -> dict:
        d = (c.double() - ref.double()).abs()
        return {"max_abs": float(d.max()), "max_abs_over_max_ref": float(d.max()) / float(ref.abs().max()),
                "mean_abs": float(d.mean())}

    torch_out = {"float32": smm(), "bfloat16": smm(torch.bfloat16)}  # (fp32 out: supported by cuBLASLt for e4m3)
    torch.cuda.synchronize()
    res: dict = {"size": size, "scale_a": float(sa), "scale_b": float(sb), "ref64_max_abs": refmax,
                 "method": "as int8_gemm_mma_4096; torch._scaled_mm with per-tensor fp32 scales, use_fast_accum=False "
                           "unless noted; errors over the full 4096x4096 output, ref64 = float64 GEMM of the e4m3 inputs x scales",
                 "torch_scaled_mm_fp32_vs_ref64": errs(torch_out["float32"], ref64),
                 "torch_scaled_mm_fast_accum_fp32_vs_ref64": errs(smm(fast=True), ref64),
                 "torch_scaled_mm_bf16_vs_ref64": errs(torch_out["bfloat16"], ref64)}
    heat(2.0)
    res["clocks_after_heat"] = gpu_clocks()

    def cupti_us(fn) -> float:
        return sum(kernel_time(fn, runs=20).values())

    def torch_side(tag: str) -> None:
        for key, fn in (("torch_scaled_mm_fp32", smm), ("torch_scaled_mm_fast_accum_fp32", lambda: smm(fast=True)),
                        ("torch_scaled_mm_bf16", lambda: smm(torch.bfloat16))):
            t = torch_time(fn, iters=20)
            kt = kernel_time(fn, runs=20)
            res[f"{key}{tag}"] = {"ms": t * 1e3, "tflops": flops / t / 1e12, "cupti_us": kt,
                                  "cupti_tflops": flops / sum(kt.values()) / 1e6 if kt else None}
        t_h = torch_time(lambda: torch.matmul(h1, h2), iters=20)
        res[f"torch_fp16_matmul{tag}"] = {"ms": t_h * 1e3, "tflops": flops / t_h / 1e12}

    torch_side("")
    peak = res["torch_scaled_mm_fp32"]["tflops"]
    fns = {}
    for name, m in meta.items():
        if not isinstance(m, dict) or m.get("kind") != "fp8_gemm_mma":
            continue
        if "error" in m:
            res[name] = {"error": m["error"]}
            continue
        try:
            mod = tvm.runtime.load_module(str(BUILD / "kernels" / m["file"]))
            odt = torch.float32 if m["out_dtype"] == "float32" else torch.bfloat16
            c = torch.full((size, size), float("nan"), dtype=odt, device="cuda")
            args = [to_tvm(tvm, a8, dev), to_tvm(tvm, b8, dev), tvm.runtime.from_dlpack(sa.reshape(1)),
                    tvm.runtime.from_dlpack(sb.reshape(1)), tvm.runtime.from_dlpack(c)]
            mod["main"](*args)
            torch.cuda.synchronize()
            e_ref = errs(c, ref64)
            e_torch = errs(c, torch_out[m["out_dtype"]])
            nans = int(torch.isnan(c).sum())
            heat(0.3)
            t = tvm_time(tvm, mod, dev, args, number=20, repeat=7)
            f = mod["main"]
            torch_k = cupti_us(smm)
            kus = cupti_us(lambda: f(*args))
            fns[name] = (mod, args)
            res[name] = {"ms": t * 1e3, "tflops": flops / t / 1e12, "pct_of_torch_scaled_mm": 100 * flops / t / 1e12 / peak,
                         "cupti_us": kus, "cupti_tflops": flops / kus / 1e6, "torch_scaled_mm_cupti_us_adjacent": torch_k,
                         "pct_of_adjacent_torch_cupti": 100 * torch_k / kus, "nans": nans,
                         "vs_ref64": e_ref, "vs_torch_scaled_mm": e_torch,
                         **{kk: m[kk] for kk in ("dtype", "out_dtype", "config", "threads_per_block", "smem_bytes", "blocks") if kk in m}}
        except Exception as e:  # noqa: BLE001
            res[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(name, json.dumps(res[name], default=str), flush=True)
    # the fp16 diagnostic (same kernel, mma.sync m16n8k16 f16): C = h1 h2^T vs torch fp16 matmul(h1, h2.t())
    ref16 = h1.float() @ h2.float().t()

    def mm16():
        return torch.matmul(h1, h2.t())

    for name, m in meta.items():
        if not isinstance(m, dict) or m.get("kind") != "f16_gemm_mma_diag":
            continue
        if "error" in m:
            res[name] = {"error": m["error"]}
            continue
        try:
            mod = tvm.runtime.load_module(str(BUILD / "kernels" / m["file"]))
            c = torch.full((size, size), float("nan"), dtype=torch.float32, device="cuda")
            args = [tvm.runtime.from_dlpack(h1.view(torch.int8)), tvm.runtime.from_dlpack(h2.view(torch.int8)),
                    tvm.runtime.from_dlpack(c)]
            mod["main"](*args)
            torch.cuda.synchronize()
            e_ref = errs(c, ref16)
            heat(0.3)
            f = mod["main"]
            torch_k = cupti_us(mm16)
            kus = cupti_us(lambda: f(*args))
            res[name] = {"cupti_us": kus, "cupti_tflops": flops / kus / 1e6, "torch_fp16_matmul_cupti_us_adjacent": torch_k,
                         "pct_of_adjacent_torch_fp16_cupti": 100 * torch_k / kus, "pct_of_adjacent_torch_scaled_mm_cupti":
                         100 * cupti_us(smm) / kus, "vs_fp32_ref": e_ref, "nans": int(torch.isnan(c).sum()),
                         **{kk: m[kk] for kk in ("dtype", "config", "threads_per_block", "smem_bytes", "blocks") if kk in m}}
        except Exception as e:  # noqa: BLE001
            res[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(name, json.dumps(res[name], default=str), flush=True)
    ok = {k_: v for k_, v in res.items() if isinstance(v, dict) and "cupti_us" in v and k_.startswith("fp8_gemm_mma")
          and v["nans"] == 0 and v["vs_ref64"]["max_abs_over_max_ref"] < 1e-2}
    if ok:
        top = sorted(ok, key=lambda k_: ok[k_]["cupti_us"])[:2]
        hh = head_to_head("torch_scaled_mm", smm, fns, top, ok, lambda: torch.matmul(h1, h2), flops, cupti_us, "tflops",
                          "CUDA events around 20 back-to-back calls, 9 alternating rounds (torch._scaled_mm fp32 out, the "
                          "two fastest TVM variants by CUPTI, torch fp16 matmul); then 3 alternating rounds of CUPTI medians",
                          ("config", "dtype"))
        res["head_to_head"] = hh
        print("head_to_head", json.dumps(hh, default=str), flush=True)
    heat(0.3)
    torch_side("_again")
    res["clocks_at_end"] = gpu_clocks()
    RESULTS["fp8_gemm_mma_4096"] = res


def _fp8_inputs(size: int):
    """bench_gemm_fp8_mma's e4m3 inputs (same seed): A, B = randn quantized per tensor to e4m3, scales amax / 448."""
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    af32 = torch.randn(size, size, device="cuda", generator=g)
    bf32 = torch.randn(size, size, device="cuda", generator=g)
    sa = (af32.abs().max() / 448.0).float().reshape(())
    sb = (bf32.abs().max() / 448.0).float().reshape(())
    return (af32 / sa).to(torch.float8_e4m3fn), (bf32 / sb).to(torch.float8_e4m3fn), sa, sb


def _wgmma_args(tvm, dev, a8, b8, sa, sb, c):
    return [to_tvm(tvm, a8, dev), to_tvm(tvm, b8, dev), tvm.runtime.from_dlpack(sa.reshape(1)),
            tvm.runtime.from_dlpack(sb.reshape(1)), tvm.runtime.from_dlpack(c)]


def wgmma_check(name: str, size: int = 4096) -> None:
    """Child process of :func:`bench_gemm_fp8_wgmma`: one call of variant ``name``, errors vs torch._scaled_mm and the
    float64 reference, JSON on the last stdout line (a hang is killed by the parent's timeout)."""
    import torch

    tvm = setup_runtime()
    dev = tvm.cuda(0)
    meta = json.loads((BUILD / "kernels" / "meta.json").read_text())
    a8, b8, sa, sb = _fp8_inputs(size)
    ref64 = (a8.float().double() @ b8.float().double().t()) * (sa.double() * sb.double())
    tm = torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.float32)
    tf = torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.float32, use_fast_accum=True)
    mod = tvm.runtime.load_module(str(BUILD / "kernels" / meta[name]["file"]))
    c = torch.full((size, size), float("nan"), dtype=torch.float32, device="cuda")
    mod["main"](*_wgmma_args(tvm, dev, a8, b8, sa, sb, c))
    torch.cuda.synchronize()

    def errs(x, ref) -> dict:
        d = (x.double() - ref.double()).abs()
        return {"max_abs": float(d.max()), "max_abs_over_max_ref": float(d.max()) / float(ref.abs().max()), "mean_abs": float(d.mean())}

    out = {"nans": int(torch.isnan(c).sum()), "vs_ref64": errs(c, ref64), "vs_torch_scaled_mm": errs(c, tm),
           "vs_torch_scaled_mm_fast_accum": errs(c, tf), "torch_scaled_mm_vs_ref64": errs(tm, ref64),
           "torch_scaled_mm_fast_accum_vs_ref64": errs(tf, ref64)}
    print("WGMMA_CHECK " + json.dumps(out), flush=True)


def bench_gemm_fp8_wgmma(tvm, dev, meta, size: int = 4096) -> None:
    """The e4m3 wgmma variants (kind ``fp8_gemm_wgmma``, sm_90a): correctness of each first in a child process
    (:func:`wgmma_check`, 120 s timeout, so a hung kernel costs one variant), then, for those within 1e-3 of the
    float64 reference within 1e-2 of its max (the fast-accumulation level, as bench_gemm_fp8_mma), CUPTI (median of 20)
    next to torch._scaled_mm's, and 5 alternating CUDA-event rounds (torch._scaled_mm fp32 out, default and
    use_fast_accum=True, vs the fastest variant without and with ``promote``)."""
    import subprocess

    import torch

    flops = 2 * size**3
    res: dict = {"size": size, "method": "correctness in a child process (full output vs torch._scaled_mm and a float64 reference); "
                 "then CUPTI kernel time, median of 20, torch._scaled_mm (fp32 out, use_fast_accum=False) adjacent; after heat(1 s)"}
    names = [n for n, m in meta.items() if isinstance(m, dict) and m.get("kind") == "fp8_gemm_wgmma"]
    good = []
    for name in names:
        m = meta[name]
        if "error" in m:
            res[name] = {"error": m["error"]}
            continue
        try:
            r = subprocess.run([sys.executable, __file__, "--wgmma-check", name], capture_output=True, text=True, timeout=120)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("WGMMA_CHECK ")]
            if r.returncode or not line:
                res[name] = {"error": f"check rc={r.returncode}: {(r.stdout + r.stderr)[-600:]}"}
            else:
                res[name] = json.loads(line[-1][len("WGMMA_CHECK "):])
                if res[name]["nans"] == 0 and res[name]["vs_ref64"]["max_abs_over_max_ref"] < 1e-2:
                    good.append(name)
        except subprocess.TimeoutExpired:
            res[name] = {"error": "check timed out (120 s): hang?"}
        res[name].update({kk: m[kk] for kk in ("config", "threads_per_block", "smem_bytes", "blocks") if kk in m})
        print(name, json.dumps(res[name], default=str), flush=True)
    if good:
        a8, b8, sa, sb = _fp8_inputs(size)

        def smm():
            return torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.float32)

        def cupti_us(fn) -> float:
            return sum(kernel_time(fn, runs=20).values())

        heat(1.0)
        res["clocks_after_heat"] = gpu_clocks()
        fns = {}
        for name in good:
            mod = tvm.runtime.load_module(str(BUILD / "kernels" / meta[name]["file"]))
            c = torch.empty((size, size), dtype=torch.float32, device="cuda")
            args = _wgmma_args(tvm, dev, a8, b8, sa, sb, c)
            f = mod["main"]
            fns[name] = (mod, f, args)
            torch_k = cupti_us(smm)
            kus = cupti_us(lambda: f(*args))
            res[name].update({"cupti_us": kus, "cupti_tflops": flops / kus / 1e6, "torch_scaled_mm_cupti_us_adjacent": torch_k,
                              "torch_scaled_mm_cupti_tflops": flops / torch_k / 1e6, "pct_of_adjacent_torch_cupti": 100 * torch_k / kus})
            print(name, json.dumps(res[name], default=str), flush=True)
        def fast():
            return torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.float32, use_fast_accum=True)

        res["torch_scaled_mm_fast_accum_cupti_us"] = cupti_us(fast)
        tops = {}
        for tag, pool in (("fast_accum", [n for n in good if not n.endswith("_p")]), ("promote", [n for n in good if n.endswith("_p")])):
            if pool:
                tops[tag] = min(pool, key=lambda n: res[n]["cupti_us"])
        rounds: dict = {"torch_scaled_mm_ms": [], "torch_scaled_mm_fast_accum_ms": [], **{f"{t}_ms": [] for t in tops}}
        for _ in range(5):
            rounds["torch_scaled_mm_ms"].append(torch_time(smm, iters=20, repeat=1) * 1e3)
            rounds["torch_scaled_mm_fast_accum_ms"].append(torch_time(fast, iters=20, repeat=1) * 1e3)
            for t, n in tops.items():
                f, args = fns[n][1], fns[n][2]
                rounds[f"{t}_ms"].append(torch_time(lambda: f(*args), iters=20, repeat=1) * 1e3)
        med = {k_: statistics.median(v) for k_, v in rounds.items()}
        hh = {"variants": tops, "rounds_ms": rounds, "median_ms": med,
              "torch_scaled_mm_tflops": flops / med["torch_scaled_mm_ms"] / 1e9,
              "torch_scaled_mm_fast_accum_tflops": flops / med["torch_scaled_mm_fast_accum_ms"] / 1e9, "clocks": gpu_clocks()}
        for t in tops:
            hh[t] = {"tflops": flops / med[f"{t}_ms"] / 1e9, "pct_of_torch_scaled_mm": 100 * statistics.median(
                         [x / w for x, w in zip(rounds["torch_scaled_mm_ms"], rounds[f"{t}_ms"])]),
                     "pct_of_torch_scaled_mm_fast_accum": 100 * statistics.median(
                         [x / w for x, w in zip(rounds["torch_scaled_mm_fast_accum_ms"], rounds[f"{t}_ms"])])}
        res["head_to_head"] = hh
        print("head_to_head", json.dumps(hh, default=str), flush=True)
    RESULTS["fp8_gemm_wgmma_4096"] = res


def check_artifact(tvm) -> None:
    from backends.artifact import load_artifact

    d = BUILD / "digits_cuda"
    la = load_artifact(d, target="cuda")
    diff, bound = la.check_reference()
    import numpy as np

    with np.load(d / "reference.npz") as ref:
        x = ref["input0"]
    RESULTS["digits_cuda_artifact"] = {"max_abs_diff_vs_simulation": diff, "bound": bound, "parity_ok": diff <= bound,
                                       "latency_us": la.time(x, number=100, repeat=5) * 1e6,
                                       "plan": {k: v["weight"] + "/" + v["act"] for k, v in la.manifest.plan["layers"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["int4", "kernel-time", "gemm", "wgmma"],
                    help="int4: only the int4 GEMV checks and timings; kernel-time: only their CUPTI kernel durations; "
                         "gemm: only the int8 and e4m3 GEMM comparisons (hand-written TIR vs torch); wgmma: only the e4m3 wgmma GEMMs")
    ap.add_argument("--wgmma-check", metavar="NAME", help=argparse.SUPPRESS)  # child process of bench_gemm_fp8_wgmma
    pa = ap.parse_args()
    if pa.wgmma_check:
        wgmma_check(pa.wgmma_check)
        return
    only = pa.only
    tvm = setup_runtime()
    import torch

    RESULTS["device"] = torch.cuda.get_device_name(0)
    RESULTS["torch"] = torch.__version__
    dev = tvm.cuda(0)
    meta = json.loads((BUILD / "kernels" / "meta.json").read_text())
    steps = [lambda t: bench_int4_gemv(t, dev, meta), lambda t: bench_kernel_times(t, dev, meta)]
    if only == "kernel-time":
        steps = steps[1:]
    if only == "gemm":
        steps = [lambda t: bench_gemm_mma(t, dev, meta), lambda t: bench_gemm_fp8_mma(t, dev, meta),
                 lambda t: bench_gemm_fp8_wgmma(t, dev, meta)]
    if only == "wgmma":
        steps = [lambda t: bench_gemm_fp8_wgmma(t, dev, meta)]
    if only is None:
        steps = [check_artifact, *steps, lambda t: bench_fp16_gemv(t, dev, meta), lambda t: bench_gemm(t, dev, meta),
                 lambda t: bench_gemm_mma(t, dev, meta), lambda t: bench_gemm_fp8_mma(t, dev, meta),
                 lambda t: bench_gemm_fp8_wgmma(t, dev, meta)]
    for step in steps:
        try:
            step(tvm)
        except Exception:  # noqa: BLE001 - keep going, report everything
            RESULTS.setdefault("errors", []).append(traceback.format_exc()[-1500:])
        print(json.dumps(RESULTS, indent=1, default=str)[-3000:], flush=True)
    out = Path(os.environ.get("OUT", "/tmp"))
    (out / "gpu_results.json").write_text(json.dumps(RESULTS, indent=2, default=str))


if __name__ == "__main__":
    main()
