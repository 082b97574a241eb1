"""Fake-quant throughput of every format family next to a plain torch INT8 round-to-nearest baseline.

    .venv/bin/python benchmarks/bench_formats.py [--elements 4194304] [--repeats 15] [--no-append]
    .venv/bin/python benchmarks/bench_formats.py --exhaustive   # all 2**32 float32 inputs vs ml_dtypes

Timings are interleaved (round-robin over formats, median of ``--repeats``) so that load on a shared
machine hits every format alike; ratios are ``format time / baseline time`` from the same run. Results are
appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpsearch.formats import e8m0_encode, parse_format  # noqa: E402

WEIGHT_FORMATS = [
    "int8", "int4", "int4g128", "uint4g128", "e4m3", "e5m2", "e3m4", "e2m3", "e3m2", "e2m1", "e7m0",
    "e4m3-nosub", "e4m3-nosat", "mxfp8", "mxfp6", "mxfp4", "mxint8", "nvfp4",
]  # fmt: skip
ACT_FORMATS = ["int8", "e4m3", "e5m2", "e2m1", "mxfp8", "mxfp4", "nvfp4"]


def int8_baseline_weight(w: torch.Tensor) -> torch.Tensor:
    """Plain torch per-output-channel symmetric INT8 round-to-nearest fake-quant."""
    s = w.abs().amax(dim=1, keepdim=True) / 127
    return torch.clamp(torch.round(w / s), -127, 127) * s


def int8_baseline_act(x: torch.Tensor, amax: float) -> torch.Tensor:
    s = amax / 127
    return torch.clamp(torch.round(x / s), -127, 127) * s


def bench(fns: dict[str, callable], repeats: int) -> dict[str, float]:
    """Median seconds per call, measured round-robin."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def run_throughput(n: int, repeats: int) -> list[str]:
    torch.manual_seed(0)
    rows = 2048
    w = torch.randn(rows, n // rows)
    x = torch.randn(n // 1024, 1024)
    amax = float(x.abs().max())
    lines = []
    for title, fns in [
        (
            f"weights {tuple(w.shape)}, per output channel (channel_axis=0)",
            {"baseline torch int8 RTN": lambda: int8_baseline_weight(w)}
            | {s: (lambda f=parse_format(s): f.fake_quant(w, channel_axis=0)) for s in WEIGHT_FORMATS},
        ),
        (
            f"activations {tuple(x.shape)}, static amax (channel_axis=None)",
            {"baseline torch int8 RTN": lambda: int8_baseline_act(x, amax)}
            | {s: (lambda f=parse_format(s): f.fake_quant(x, channel_axis=None, amax=amax)) for s in ACT_FORMATS},
        ),
    ]:
        med = bench(fns, repeats)
        base = med["baseline torch int8 RTN"]
        lines += [f"\n{title}, {n / 1e6:.1f}M elements, median of {repeats}:", "",
                  "| format | ms | Melem/s | time / int8 baseline |", "|---|---:|---:|---:|"]  # fmt: skip
        for k, t in med.items():
            lines.append(f"| {k} | {t * 1e3:.1f} | {n / t / 1e6:.0f} | {t / base:.2f}x |")
    # the MSE scale search is ~80 quantize passes: report it once, on the weight tensor
    f = parse_format("int4g128-mse")
    t0 = time.perf_counter()
    f.fake_quant(w, channel_axis=0)
    t_mse = time.perf_counter() - t0
    lines.append(f"\nint4g128-mse (80-candidate clipping search), one call: {t_mse:.2f} s ({n / t_mse / 1e6:.1f} Melem/s)")
    return lines


def run_exhaustive(chunk_bits: int = 24) -> list[str]:
    """Every float32 bit pattern through each preset vs ml_dtypes (finite inputs; ml_dtypes semantics)."""
    import ml_dtypes as md

    cases = [("e4m3-nosat", md.float8_e4m3fn), ("e5m2-nosat", md.float8_e5m2), ("e2m3", md.float6_e2m3fn),
             ("e3m2", md.float6_e3m2fn), ("e2m1", md.float4_e2m1fn)]  # fmt: skip
    codecs = [(s, parse_format(s).codec, dt) for s, dt in cases]
    bad = {s: 0 for s, _ in cases} | {"e8m0": 0}
    checked = 0
    t0 = time.perf_counter()
    step = 1 << chunk_bits
    for start in range(0, 1 << 32, step):
        u = np.arange(start, start + step, dtype=np.uint64).astype(np.uint32)
        xf = u.view(np.float32)
        x = xf[np.isfinite(xf)]
        checked += x.size
        xt = torch.from_numpy(x)
        for s, c, dt in codecs:
            bad[s] += int((c.encode(xt).numpy() != x.astype(dt).view(np.uint8)).sum())
        with np.errstate(invalid="ignore"):
            bad["e8m0"] += int((e8m0_encode(xt).numpy() != x.astype(md.float8_e8m0fnu).view(np.uint8)).sum())
    dt_s = time.perf_counter() - t0
    return [f"\nexhaustive check: all {checked} finite float32 inputs, codes vs ml_dtypes {md.__version__} "
            f"({dt_s:.0f} s): mismatches " + ", ".join(f"{k}={v}" for k, v in bad.items())]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=1 << 22)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--exhaustive", action="store_true")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.processor())
    device = f"CPU {cpu}, torch {torch.__version__}, {args.threads} thread(s)"
    lines = run_exhaustive() if args.exhaustive else run_throughput(args.elements, args.repeats)
    head = f"\n## formats: {'bit-exactness sweep' if args.exhaustive else 'fake-quant throughput'} (bench_formats.py)\n\n2026-11-23, {device}"
    text = "\n".join([head] + lines) + "\n"
    print(text)
    if not args.no_append:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
