"""Run on the H100 (device tool): check + time the kernels built by build_kernels.py against torch.

Needs only what travels in the working tree: build/gpu/tvm_rt.tar.gz (runtime-only TVM), build/gpu/kernels,
build/gpu/digits_cuda, and this repo's ``mpsearch`` (numpy/torch only) for the int4 codes. Writes
$OUT/gpu_results.json. Timings: TVM ``time_evaluator`` median; torch CUDA events median; both after warm-up.

    python benchmarks/gpu/run_on_device.py
"""

from __future__ import annotations

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


def setup_runtime():
    if not (RT / "tvm").is_dir():
        RT.mkdir(parents=True, exist_ok=True)
        with tarfile.open(BUILD / "tvm_rt.tar.gz") as t:
            t.extractall(RT)
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    sys.path.insert(0, str(RT))
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


def bench_int4_gemv(tvm, dev, meta) -> None:
    import numpy as np
    import torch

    from mpsearch.formats import parse_format

    n, k = meta["N"], meta["K"]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g) * 0.05
    fmt = parse_format(f"int4g{meta['group']}")
    enc = fmt.encode(w, channel_axis=0)
    w_dq = fmt.decode(enc)  # the simulation's weights
    packed = np.ascontiguousarray(enc.packed).view(np.uint32)  # format library's packing, 8 codes / word
    scales = torch.from_numpy(enc.scales.reshape(n, -1)).half()
    x = (torch.randn(1, k, generator=g)).half()
    ref = x.float() @ w_dq.t()  # fp32 reference on the simulation's weights
    xc, wpc, sc = x.cuda(), torch.from_numpy(packed.view(np.int32)).cuda(), scales.cuda()
    wpc_u = tvm.runtime.from_dlpack(wpc)._create_view(tuple(packed.shape), "uint32")
    w16 = w_dq.half().cuda()
    t_torch = torch_time(lambda: torch.matmul(xc, w16.t()))
    res_cold = {"torch_fp16_l2_cold_us": cold_time(lambda: torch.matmul(xc, w16.t())) * 1e6}
    res = {"torch_fp16_us": t_torch * 1e6, "bandwidth_floor_us_at_3.35TBps": {
        "fp16": n * k * 2 / 3.35e12 * 1e6, "int4g128": (n * k / 2 + n * k / meta["group"] * 2) / 3.35e12 * 1e6}, **res_cold}
    for name, m in meta.items():
        if not isinstance(m, dict) or m.get("kind") != "int4_gemv":
            continue
        if "error" in m:
            res[name] = {"error": m["error"]}
            continue
        mod = tvm.runtime.load_module(str(BUILD / "kernels" / m["file"]))
        y = torch.empty(1, n, dtype=torch.float16, device="cuda")
        args = [tvm.runtime.from_dlpack(xc), wpc_u, tvm.runtime.from_dlpack(sc), tvm.runtime.from_dlpack(y)]
        mod["main"](*args)
        torch.cuda.synchronize()
        err = float((y.float().cpu() - ref).abs().max())
        t = tvm_time(tvm, mod, dev, args)
        f = mod["main"]
        res[name + "_l2_cold_us"] = cold_time(lambda: f(*args)) * 1e6
        res[name] = {"us": t * 1e6, "max_abs_err_vs_fp32_ref": err, "ref_max": float(ref.abs().max()),
                     "speedup_vs_torch_fp16": t_torch / t, "goal_us": 4.0, "goal_met": t * 1e6 <= 4.0}
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
    tvm = setup_runtime()
    import torch

    RESULTS["device"] = torch.cuda.get_device_name(0)
    RESULTS["torch"] = torch.__version__
    dev = tvm.cuda(0)
    meta = json.loads((BUILD / "kernels" / "meta.json").read_text())
    for step in (check_artifact, lambda t: bench_int4_gemv(t, dev, meta), lambda t: bench_fp16_gemv(t, dev, meta),
                 lambda t: bench_gemm(t, dev, meta)):
        try:
            step(tvm)
        except Exception:  # noqa: BLE001 - keep going, report everything
            RESULTS.setdefault("errors", []).append(traceback.format_exc()[-1500:])
        print(json.dumps(RESULTS, indent=1, default=str)[-3000:], flush=True)
    out = Path(os.environ.get("OUT", "/tmp"))
    (out / "gpu_results.json").write_text(json.dumps(RESULTS, indent=2, default=str))


if __name__ == "__main__":
    main()
