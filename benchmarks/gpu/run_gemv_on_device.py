"""Run on the H200 (device tool): check + time the int4 GEMV variants built by build_gemv.py, side by side with
torch fp16 (``x @ W.T``, cuBLAS) in the same run.

Needs build/gpu/gemv (kernels, meta.json, tvm_rt.tar.gz) and this repo's ``mpsearch`` (numpy/torch only).
Operands as in run_on_device.py's ``int4_operands`` (same seed: one N x K randn * 0.05 weight encoded with
int4g128, x randn fp16). Per variant: max error vs a float64 reference on the kernel's weights (codes x fp16
scales) in fp16 ulps. Timing = device time per kernel (CUPTI via torch.profiler, ``cuda_kernel_durations`` of
run_on_device.py), median of 60 calls, in three modes:

- ``warm``: back-to-back calls (weights L2-resident);
- ``cold_memset``: a 256 MB memset before each call (the flush used by the 2026-12-01 table; it leaves the L2
  full of dirty lines, so the call's reads also pay for their write-back);
- ``cold_read``: a 256 MB read (sum) before each call (L2 full of clean lines of other data: weights from HBM,
  no write-back; closer to a layer of a model whose previous layers read their weights).

torch fp16 is timed before and after the variants in each mode; ratios use the mean of the two. Then 3
alternating rounds (torch, the 3 fastest variants by cold_memset time) in each mode. Writes
$OUT/gemv_results.json.

    python benchmarks/gpu/run_gemv_on_device.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "gpu" / "gemv"
RT = Path("/tmp/mpsearch_tvm_rt_gemv")
sys.path.insert(0, str(ROOT))

from benchmarks.gpu.run_on_device import gpu_clocks, heat  # noqa: E402  (shared with the main device bench)
from benchmarks.gpu.run_on_device import setup_runtime as shared_setup_runtime  # noqa: E402


def setup_runtime():
    return shared_setup_runtime(BUILD, RT)


def main(only: list[str] | None = None, check_only: bool = False) -> None:
    tvm = setup_runtime()
    import numpy as np
    import torch

    from backends.tvm.gemv_cuda import pack_int4_tiles16, pack_scales_tiles16
    from benchmarks.gpu.run_on_device import cuda_kernel_durations
    from mpsearch.formats import parse_format

    meta = json.loads((BUILD / "meta.json").read_text())
    n, k, grp = meta["N"], meta["K"], meta["group"]
    res: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                 "method": "CUPTI kernel durations (torch.profiler), median of 60 calls per mode"}
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g) * 0.05
    fmt = parse_format(f"int4g{grp}")
    enc = fmt.encode(w, channel_axis=0)
    w16 = fmt.decode(enc).half().cuda()
    scales = torch.from_numpy(enc.scales.reshape(n, -1)).half()
    x = torch.randn(1, k, generator=g).half()
    q = torch.from_numpy(fmt.code_values(enc.codes).astype(np.float64))
    ref16 = (x.double() @ (q * scales.double().repeat_interleave(grp, dim=1)).t()).float().reshape(-1)
    a = np.abs(ref16.numpy()).astype(np.float16).astype(np.float32)
    ulp = torch.from_numpy(np.maximum(2.0 ** (np.floor(np.log2(np.maximum(a, 2.0**-14))) - 10), 2.0**-24).astype(np.float32))
    xc = x.cuda()
    wt_t = torch.from_numpy(np.ascontiguousarray(pack_int4_tiles16(enc.codes, grp)).view(np.int32)).cuda()
    wt = tvm.runtime.from_dlpack(wt_t)._create_view((n // 16, k // 128, 32, 2, 4), "uint32")
    st_t = torch.from_numpy(pack_scales_tiles16(scales.float().numpy(), n, k, grp)).cuda()
    st = tvm.runtime.from_dlpack(st_t)
    y = torch.empty(1, n, dtype=torch.float16, device="cuda")
    fns = {}
    for name, m in meta.items():
        if not isinstance(m, dict) or (only is not None and name not in only):
            continue
        if "error" in m:
            res[name] = {"error": m["error"]}
            continue
        try:
            mod = tvm.runtime.load_module(str(BUILD / m["file"]))
            f = mod["main"]
            if m["kind"] == "noop":
                args = [tvm.runtime.from_dlpack(y)]
                fns[name] = (mod, lambda f=f, args=args: f(*args))
                res[name] = {}
                continue
            args = [tvm.runtime.from_dlpack(xc), wt, st, tvm.runtime.from_dlpack(y)]
            y.fill_(float("nan"))
            f(*args)
            torch.cuda.synchronize()
            yc = y.float().cpu().reshape(-1)
            err = (yc - ref16).abs()
            res[name] = {"max_abs_err_vs_f64_ref": float(err.max()), "max_err_fp16_ulps": float((err / ulp).max()),
                         "finite": bool(torch.isfinite(yc).all()),
                         **{kk: m[kk] for kk in ("generator", "ksplit", "tiles_per_block", "chains", "threads_per_block", "blocks") if kk in m}}
            if res[name]["finite"] and res[name]["max_err_fp16_ulps"] <= 2.0:
                fns[name] = (mod, lambda f=f, args=args: f(*args))
        except Exception as e:  # noqa: BLE001
            res[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(name, json.dumps(res[name]), flush=True)

    if check_only:
        (Path(os.environ.get("OUT", "/tmp")) / "gemv_check.json").write_text(json.dumps(res, indent=2))
        return
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    fl32 = flush.view(torch.int32)
    flushers = {"warm": None, "cold_memset": lambda: flush.zero_(), "cold_read": lambda: fl32.sum()}
    flush_names = {mode: set(cuda_kernel_durations(fz, 5)) if fz else set() for mode, fz in flushers.items()}
    res["flush_kernel_names"] = {m_: sorted(v) for m_, v in flush_names.items()}

    def ktime(fn, mode: str, runs: int = 60) -> float:
        fz = flushers[mode]
        for _ in range(10):
            fn()

        def body() -> None:
            if fz is not None:
                fz()
            fn()

        durs = cuda_kernel_durations(body, runs)
        return sum(statistics.median(v) for nm, v in durs.items() if nm not in flush_names[mode])

    def torch_fp16():
        return torch.matmul(xc, w16.t())

    heat(2.0)
    res["clocks_after_heat"] = gpu_clocks()
    times: dict = {}
    for mode in flushers:
        tm: dict = {"torch_fp16_before": ktime(torch_fp16, mode)}
        for name, (_, fn) in fns.items():
            tm[name] = ktime(fn, mode)
        tm["torch_fp16_after"] = ktime(torch_fp16, mode)
        tm["torch_fp16"] = (tm["torch_fp16_before"] + tm["torch_fp16_after"]) / 2
        times[mode] = tm
        print(mode, json.dumps(tm), flush=True)
    res["times_us"] = times
    for name in fns:
        if name in res and "max_err_fp16_ulps" in res[name]:
            for mode in flushers:
                res[name][f"{mode}_us"] = times[mode][name]
                res[name][f"speedup_vs_torch_fp16_{mode}"] = times[mode]["torch_fp16"] / times[mode][name]
            res[name]["goal_met_cold_read"] = times["cold_read"][name] <= 4.0 and res[name]["speedup_vs_torch_fp16_cold_read"] >= 4.5
            res[name]["goal_met_cold_memset"] = times["cold_memset"][name] <= 4.0 and res[name]["speedup_vs_torch_fp16_cold_memset"] >= 4.5
    cand = [nm for nm in fns if nm != "noop_launch"]
    top = sorted(cand, key=lambda nm: times["cold_memset"][nm])[:3]
    rounds: dict = {mode: {"torch_fp16": [], **{nm: [] for nm in top}} for mode in flushers}
    for _ in range(3):
        for mode in flushers:
            rounds[mode]["torch_fp16"].append(ktime(torch_fp16, mode, runs=40))
            for nm in top:
                rounds[mode][nm].append(ktime(fns[nm][1], mode, runs=40))
    res["rounds_us"] = rounds
    res["rounds_median_us"] = {mode: {nm: statistics.median(v) for nm, v in r.items()} for mode, r in rounds.items()}
    res["rounds_speedup_median"] = {mode: {nm: statistics.median([t / v for t, v in zip(r["torch_fp16"], r[nm])]) for nm in top}
                                    for mode, r in rounds.items()}
    res["clocks_at_end"] = gpu_clocks()
    print(json.dumps({k_: res[k_] for k_ in ("rounds_median_us", "rounds_speedup_median", "clocks_after_heat", "clocks_at_end")}, indent=1))
    out = Path(os.environ.get("OUT", "/tmp"))
    (out / "gemv_results.json").write_text(json.dumps(res, indent=2, default=str))


def checked_variants() -> list[str] | None:
    """Run the correctness checks in a child process with a time limit (a kernel that waits on an mbarrier that
    never completes would hang this process); on a hang, drop the cp.async.bulk variants and check again."""
    import subprocess

    meta = json.loads((BUILD / "meta.json").read_text())
    names = [nm for nm, m in meta.items() if isinstance(m, dict) and "error" not in m]
    for attempt in range(2):
        try:
            subprocess.run([sys.executable, __file__, "--check-only", ",".join(names)], timeout=120, check=True)
            return names
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as e:
            print("check failed:", type(e).__name__, "- dropping the bulk variants", flush=True)
            names = [nm for nm in names if not nm.startswith("bulk")]
    return names


if __name__ == "__main__":
    try:
        if len(sys.argv) > 2 and sys.argv[1] == "--check-only":
            main(sys.argv[2].split(","), check_only=True)
        else:
            main(checked_variants())
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        raise
