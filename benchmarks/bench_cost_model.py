"""Cost model self-check: analytical (datasheet and calibrated) vs measured latency, CPU and H100.

CPU part (this machine, one thread): every (layer, candidate) of the digits CNN and MiniLM-L6 is compiled
alone with TVM and timed (``build_cost_table(mode="measured")``), then compared with the analytical model of
target ``x86-avx2``: raw datasheet numbers, fitted on both models, and fitted on one model and evaluated on
the other (held out). Reports Spearman over entries and end-to-end error of uniform plans.

GPU part: GEMM/GEMV shapes timed with torch on the H100 (``--gpu-measure OUT`` runs on the device machine
and writes JSON; TVM-on-GPU timing is not used here), compared with target ``h100``.

    python benchmarks/bench_cost_model.py                       # CPU part + analysis of saved GPU timings
    python benchmarks/bench_cost_model.py --gpu-measure DIR     # on the device machine (torch only)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GPU_JSON = HERE / "cost_model_h100.json"

GPU_SHAPES = [  # (M, N, K): GEMV-like decode steps and GEMMs of LLM / BERT sizes
    (1, 1024, 1024), (1, 4096, 4096), (1, 11008, 4096), (1, 4096, 11008), (8, 4096, 4096),
    (32, 4096, 4096), (128, 1024, 1024), (128, 4096, 4096), (512, 4096, 4096), (2048, 1024, 1024),
    (1024, 4096, 4096), (4096, 4096, 4096), (8192, 8192, 8192),
]
GPU_DTYPES = ["fp32", "tf32", "fp16", "bf16", "int8", "fp8"]


# -- device side -------------------------------------------------------------------------------------
def gpu_measure(out_dir: str) -> None:
    """Time torch matmuls on the GPU (CUDA events, L2 flushed before each rep, median of 20)."""
    import torch

    dev = torch.device("cuda")
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev)
    rows = []

    def timeit(fn, reps=20):
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            flush.zero_()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) * 1e-3)
        times.sort()
        return times[len(times) // 2]

    for m, n, k in GPU_SHAPES:
        for dt in GPU_DTYPES:
            torch.backends.cuda.matmul.allow_tf32 = dt == "tf32"
            try:
                if dt in ("fp32", "tf32", "fp16", "bf16"):
                    t = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dt]
                    a, w = torch.randn(m, k, device=dev, dtype=t), torch.randn(n, k, device=dev, dtype=t)
                    fn = lambda a=a, w=w: a @ w.t()  # noqa: E731
                elif dt == "int8":
                    if m <= 16:
                        raise RuntimeError("torch._int_mm needs M > 16")
                    a = torch.randint(-127, 127, (m, k), device=dev, dtype=torch.int8)
                    w = torch.randint(-127, 127, (n, k), device=dev, dtype=torch.int8)
                    fn = lambda a=a, w=w: torch._int_mm(a, w.t())  # noqa: E731
                else:
                    if m % 16:
                        raise RuntimeError("torch._scaled_mm needs M % 16 == 0")
                    a = torch.randn(m, k, device=dev).to(torch.float8_e4m3fn)
                    w = torch.randn(n, k, device=dev).to(torch.float8_e4m3fn)
                    one = torch.ones((), device=dev)
                    fn = lambda a=a, w=w, one=one: torch._scaled_mm(a, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
                sec = timeit(fn)
                rows.append({"M": m, "N": n, "K": k, "dtype": dt, "seconds": sec})
                print(f"{m:5d} {n:5d} {k:5d} {dt:5s} {sec * 1e6:10.1f} us", flush=True)
            except Exception as e:  # record what could not run, keep going
                rows.append({"M": m, "N": n, "K": k, "dtype": dt, "skipped": f"{type(e).__name__}: {e}"[:200]})
            finally:
                torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
            "method": "torch matmul / _int_mm / _scaled_mm, CUDA events, L2 flushed, median of 20"}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "cost_model_h100.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


# -- analysis helpers ----------------------------------------------------------------------------------
def fmt_us(s: float) -> str:
    return f"{s * 1e6:9.1f}"


def cpu_part(lines: list[str]) -> None:
    import warnings

    import torch

    torch.set_num_threads(1)
    from backends.cost import MeasureConfig, build_cost_table
    from backends.cost.calibrate import compare, fit_target, observations_from
    from backends.targets import load_target
    from mpsearch.graph import build_layer_graph
    from mpsearch.tables import CostTable
    from mpsearch.task import load_task

    target = load_target("x86-avx2")
    # the TVM backend decodes stored weights inside the reduction (backends/tvm/kernels.py): once per MAC
    target = target.replace(convert_per_use=True)
    cands = ["fp32", "int8/int8", "int8/fp32", "int4/int8", "int4/fp32"]
    graphs = {}
    for name in ("digits-cnn", "minilm"):
        task = load_task(name)
        graphs[name] = build_layer_graph(task.model, task.example_input)
    measured, analytical = {}, {}
    for name, g in graphs.items():
        t0 = time.time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            measured[name] = build_cost_table(g, cands, target, mode="measured", prune=False, measure=MeasureConfig(repeats=5, number=10))
        info = measured[name].extra["measure"]
        print(f"[{name}] measured {info['timed']} new / {info['cached']} cached entries in {time.time() - t0:.0f}s with {info['timer']}")
        lines.append(f"- {name}: {len(g)} layers, {sum(len(v) for v in measured[name].costs.values())} entries, timer `{info['timer']}`")
        for w in caught:
            print("  warning:", w.message)
        analytical[name] = build_cost_table(g, cands, target)

    def report(title: str, preds: dict, keys: list[str]) -> dict:
        out = {}
        lines.append(f"\n{title}")
        lines.append("| model | entries | Spearman | median abs rel err | worst uniform-plan e2e err | e2e per plan (pred/meas ms) |")
        lines.append("|---|---|---|---|---|---|")
        for name in keys:
            c = compare(preds[name], measured[name])
            e2e = ", ".join(f"{r['plan'].split()[1]} {r['predicted'] * 1e3:.2f}/{r['measured'] * 1e3:.2f}" for r in c.end_to_end)
            lines.append(f"| {name} | {len(c.rows)} | {c.spearman:.3f} | {c.median_rel_err:.1%} | {c.worst_end_to_end_rel_err:.1%} | {e2e} |")
            out[name] = c
        return out

    report("Raw datasheet model (x86-avx2 TOML, no fitting) vs TVM-measured:", analytical, list(graphs))
    layers = {n: {l.name: l for l in g.layers} for n, g in graphs.items()}
    obs = {n: observations_from(measured[n], layers[n]) for n in graphs}
    # untuned TVM reaches very different fractions of peak on conv and matmul: one efficiency per
    # (layer kind, compute type), plus bandwidth, conversion rate and per-kernel overhead
    joint = fit_target(target, obs["digits-cnn"] + obs["minilm"], per_kind=True)
    lines.append("\nFitted factors (joint, per layer kind): " + ", ".join(f"{k}={v:.3g}" for k, v in joint.factors.items())
                 + f"; rms log err {joint.rms_log_err:.3f}")
    fitted = {n: build_cost_table(g, cands, joint.target) for n, g in graphs.items()}
    res = report("Calibrated on both models (in-sample):", fitted, list(graphs))
    # held out: split the distinct layer shapes of both models in two folds; fit on one, predict the other
    def shape(l):
        return (l.kind, l.weight_shape, l.in_shape)

    shapes = sorted({shape(o.layer) for n in graphs for o in obs[n]}, key=str)
    fold = {s: i % 2 for i, s in enumerate(shapes)}
    held = {n: CostTable({l: {} for l in measured[n].costs}, measured[n].act_cuts, target.name, "analytical") for n in graphs}
    for f in (0, 1):
        fit = fit_target(target, [o for n in graphs for o in obs[n] if fold[shape(o.layer)] != f], per_kind=True)
        for n, g in graphs.items():
            part = build_cost_table(g, cands, fit.target)
            for l in g.layers:
                if fold[shape(l)] == f:
                    held[n].costs[l.name] = part.costs[l.name]
    report("Calibrated on the other half of the layer shapes (2-fold, held out):", held, list(graphs))
    # per-layer detail for the digits CNN (small enough to print)
    lines.append("\nPer-layer, digits CNN, calibrated (joint) vs measured, microseconds:")
    lines.append("| layer | " + " | ".join(cands) + " |")
    lines.append("|---|" + "---|" * len(cands))
    for l in graphs["digits-cnn"].names:
        cells = []
        for k in [measured["digits-cnn"].costs[l] and c for c in cands]:
            key = k if "/" in k else f"{k}/fp32"
            m = measured["digits-cnn"].costs[l].get(key, {}).get("latency_s")
            p = fitted["digits-cnn"].costs[l].get(key, {}).get("latency_s")
            cells.append(f"{p * 1e6:.1f}/{m * 1e6:.1f}" if m and p else "-")
        lines.append(f"| {l} | " + " | ".join(cells) + " |")
    dom = {n: measured[n].extra.get("dominated", []) for n in graphs}
    for n, d in dom.items():
        pairs = sorted({f"{x['slower']}>{x['faster']}" for x in d})
        lines.append(f"\nDominated (lower precision measured >5% slower) on {n}: {len(d)} entries; pairs: {', '.join(pairs[:8])}")


def gpu_part(lines: list[str]) -> None:
    from backends.cost.analytical import latency_breakdown
    from backends.cost.calibrate import Observation, fit_target
    from backends.targets import load_target
    from mpsearch.graph import LayerInfo
    from mpsearch.plan import Candidate
    from scipy.stats import spearmanr
    import numpy as np

    if not GPU_JSON.is_file():
        lines.append("\nGPU part: no measurements saved yet (run with --gpu-measure on the device machine).")
        return
    data = json.loads(GPU_JSON.read_text())
    base = load_target("h100")
    tf32 = base.replace(compute_map={**base.compute_map, "fp32": "tf32"})
    cand = {"fp32": "fp32/fp32", "tf32": "fp32/fp32", "fp16": "fp16/fp16", "bf16": "bf16/bf16", "int8": "int8/int8", "fp8": "e4m3/e4m3"}
    obs, rows = [], []
    for r in data["rows"]:
        if "seconds" not in r:
            continue
        m, n, k = r["M"], r["N"], r["K"]
        layer = LayerInfo(f"gemm{m}x{n}x{k}", "linear", 0, (n, k), (1, m, k), (1, m, n), m * n * k, n * k, False, {})
        tg = tf32 if r["dtype"] == "tf32" else base
        c = Candidate.parse(cand[r["dtype"]])
        lb = latency_breakdown(layer, c, tg)
        rows.append((r, layer, c, tg, lb))
        obs.append(Observation(layer, c, r["seconds"]))
    meas = np.array([r["seconds"] for r, *_ in rows])
    raw = np.array([lb.total_s for *_, lb in rows])

    # one fit for both targets' views: fit on the base target with the TF32 rows mapped to their own rate
    def fit_and_predict(train_idx):
        fb = fit_target(base, [obs[i] for i in train_idx if rows[i][0]["dtype"] != "tf32"])
        ft = fit_target(tf32, [obs[i] for i in train_idx if rows[i][0]["dtype"] == "tf32"] + [obs[i] for i in train_idx if rows[i][0]["dtype"] == "fp16"])
        pred = np.array([latency_breakdown(l, c, ft.target if r["dtype"] == "tf32" else fb.target).total_s for r, l, c, tg, lb in rows])
        return fb, pred

    fb, fitted = fit_and_predict(range(len(rows)))
    shapes = sorted({(r["M"], r["N"], r["K"]) for r, *_ in rows})
    fold = {s: i % 2 for i, s in enumerate(shapes)}
    held = np.zeros(len(rows))
    for f in (0, 1):
        _, pred = fit_and_predict([i for i, (r, *_) in enumerate(rows) if fold[(r["M"], r["N"], r["K"])] != f])
        for i, (r, *_) in enumerate(rows):
            if fold[(r["M"], r["N"], r["K"])] == f:
                held[i] = pred[i]

    def stats(pred):
        rel = np.abs(pred - meas) / meas
        e2e = {}
        for dt in GPU_DTYPES:
            idx = [i for i, (r, *_) in enumerate(rows) if r["dtype"] == dt]
            if idx:
                e2e[dt] = (pred[idx].sum() - meas[idx].sum()) / meas[idx].sum()
        return spearmanr(pred, meas).statistic, float(np.median(rel)), e2e

    meta = data["meta"]
    lines.append(f"\nGPU part: {meta['device']}, {meta['method']} (torch {meta['torch']}, CUDA {meta['cuda']}); "
                 "TVM-on-GPU timing not used. 'e2e' = sum over all shapes of one dtype (a model made of these GEMMs).")
    lines.append("| model | entries | Spearman | median abs rel err | e2e err per dtype |")
    lines.append("|---|---|---|---|---|")
    for title, pred in (("raw h100 TOML", raw), ("calibrated (in-sample)", fitted), ("calibrated, 2-fold held-out shapes", held)):
        rho, med, e2e = stats(pred)
        lines.append(f"| {title} | {len(rows)} | {rho:.3f} | {med:.1%} | " + ", ".join(f"{k} {v:+.1%}" for k, v in e2e.items()) + " |")
    lines.append("\nFitted H100 factors (non-TF32 rows): " + ", ".join(f"{k}={v:.3g}" for k, v in fb.factors.items()))
    lines.append("\nPer shape (us), measured / raw roofline / calibrated:")
    lines.append("| M×N×K | " + " | ".join(GPU_DTYPES) + " |")
    lines.append("|---|" + "---|" * len(GPU_DTYPES))
    for s in shapes:
        cells = []
        for dt in GPU_DTYPES:
            i = next((i for i, (r, *_) in enumerate(rows) if (r["M"], r["N"], r["K"]) == s and r["dtype"] == dt), None)
            cells.append("-" if i is None else f"{meas[i] * 1e6:.1f} / {raw[i] * 1e6:.1f} / {fitted[i] * 1e6:.1f}")
        lines.append(f"| {s[0]}×{s[1]}×{s[2]} | " + " | ".join(cells) + " |")
    from backends.cost.calibrate import find_dominated
    from mpsearch.tables import CostTable

    costs: dict = {}
    for (r, layer, c, tg, lb), sec in zip(rows, meas):
        if r["dtype"] != "tf32":  # tf32 shares fp32's candidate key
            costs.setdefault(layer.name, {})[c.key] = {"latency_s": float(sec)}
    dom = find_dominated(CostTable(costs, [], "h100", "measured"))
    lines.append(f"\nDominated on the H100 (lower precision measured >5% slower than a higher one; pruned in measured mode): {len(dom)}: "
                 + "; ".join(f"{d['layer']} {d['slower']} {d['ratio']:.2f}x {d['faster']}" for d in dom))
    skipped = sorted({f"{r['dtype']}: {r['skipped'].split(':')[0]}" for r in data["rows"] if "skipped" in r})
    if skipped:
        lines.append("\nSkipped on the GPU: " + "; ".join(skipped))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-measure", metavar="DIR", help="time the GPU shapes with torch and write DIR/cost_model_h100.json")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU measurements")
    ap.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    args = ap.parse_args()
    if args.gpu_measure:
        gpu_measure(args.gpu_measure)
        return
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(HERE.parent))
    lines = [f"\n## Cost model: analytical vs measured (bench_cost_model.py) — 2026-11-23",
             f"CPU: {platform.processor() or 'x86_64'} AMD EPYC (Zen 3, AVX2, no AVX-512), 1 thread; TVM 0.27 per-layer kernels "
             f"(timer named below; tvm_backend_time_layer = backends/tvm kernels + schedule_cpu, act quantization inside the kernel), candidates fp32, int8/int8, int8/fp32, int4/int8, int4/fp32."]
    if not args.no_cpu:
        cpu_part(lines)
    gpu_part(lines)
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_append:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
