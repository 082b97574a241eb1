"""Cost model self-check: analytical vs measured latency, CPU (this machine) and H100 (saved timings).

CPU part (one thread): every (layer, candidate) of the digits CNN, MiniLM-L6 and a synthetic calibration
suite of 28 Linear/Conv2d shapes is compiled alone with the TVM backend and timed
(``build_cost_table(mode="measured")``, min over interleaved rounds: the machine is shared). Predictions:
'before' = the model as it was (roofline over the whole working set, one conversion rate), raw / fitted on
both models in-sample / 2-fold over layer shapes; 'after' = the reuse-aware model with per-conversion rates,
fitted on the calibration suite only (both models held out) and 2-fold. End to end: every uniform plan is
compiled into a whole module and timed; predicted = the plan's layers priced as they run inside the model
(``residency="deployed"``: a plan whose weights exceed what the target keeps cached pays their fetch from
DRAM; measured tables time those kernels with flushed weights) + the non-quantizable ops (timed alone) +
kernel calls x the VM's per-call dispatch measured on a synthetic chain of tiny kernels. The suite is also
timed with flushed weights, which calibrates the analytical weight-fetch bandwidth.

GPU part: GEMM/GEMV shapes timed with torch on the H100 (``--gpu-measure OUT`` runs on the device machine
and writes JSON; TVM-on-GPU timing is not used here), compared with target ``h100``.

    python benchmarks/bench_cost_model.py [--rounds 3] [--save-json F] [--append]   # CPU part + saved GPU timings
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


CANDS = ["fp32", "int8/int8", "int8/fp32", "int4/int8", "int4/fp32"]


def calibration_layers():
    """Synthetic calibration suite: Linear / Conv2d shapes of neither model (L1- to L3-sized weights,
    1 to 128 rows, channel counts that are and are not multiples of 8). The 'after' model is fitted on
    these only, so both models are held out."""
    from mpsearch.graph import LayerInfo

    def lin(m, k, n):
        return LayerInfo(f"cal.linear{m}x{k}x{n}", "linear", 0, (n, k), (1, m, k), (1, m, n), m * k * n, n * k + n, True, {})

    def conv(c, o, h, k, s, p):
        oh = (h + 2 * p - k) // s + 1
        return LayerInfo(f"cal.conv{c}x{o}h{h}k{k}s{s}", "conv2d", 0, (o, c, k, k), (1, c, h, h), (1, o, oh, oh),
                         o * oh * oh * c * k * k, o * c * k * k, False, {"stride": [s, s], "padding": [p, p], "dilation": [1, 1], "groups": 1})

    lins = [(1, 64, 32), (1, 256, 256), (1, 1024, 1024), (1, 2048, 2048), (4, 512, 512), (8, 128, 96), (16, 256, 512),
            (32, 768, 768), (64, 512, 1024), (128, 256, 256), (20, 300, 100), (50, 1024, 256), (12, 64, 40), (96, 128, 512)]
    convs = [(3, 8, 32, 3, 1, 1), (8, 24, 16, 3, 1, 1), (24, 48, 16, 3, 2, 1), (32, 32, 16, 3, 1, 1), (64, 128, 8, 3, 1, 1),
             (128, 128, 4, 3, 1, 1), (16, 64, 16, 1, 1, 0), (64, 32, 8, 1, 1, 0), (48, 96, 8, 3, 2, 1), (8, 8, 8, 3, 1, 1),
             (128, 256, 2, 3, 1, 1), (256, 256, 4, 1, 1, 0), (32, 64, 6, 3, 1, 1), (4, 12, 12, 3, 1, 1)]
    return [lin(*a) for a in lins] + [conv(*a) for a in convs]


def before_target(t):
    """The model as the previous section ran it: roofline over the whole working set, one conversion rate,
    stored weights decoded per MAC, no load-time unpacking / in-kernel act quantization / SIMD lanes."""
    return t.replace(convert_per_use=True, convert_rates={}, decode_at_load={}, act_input="", vector_lanes=0,
                     row_tile=0, col_tile=0, efficiency={})


AFTER_FIT = dict(per_kind=True, per_convert=True, per_level=True, loss="soft_l1")


def _min_time(fn, rounds: int) -> float:
    return min(fn() for _ in range(rounds))


def whole_models(graphs, tasks, rounds: int, workdir):
    """Compile every uniform plan with the TVM backend, list its kernel calls, time the whole module
    (single calls of the VM's main, 10 per round, ``rounds`` rounds interleaved across plans; the min of
    the wall clock and of the process CPU time, see below; the wall-clock min is kept too) and every
    distinct non-layer op alone."""
    from backends.artifact import load_artifact
    from backends.cost.residual import model_ops, time_op
    from backends.tvm import compile_plan
    from mpsearch.plan import Candidate, Plan
    from mpsearch.simulate import calibrate_act_ranges

    out = {}
    for name, g in graphs.items():
        task = tasks[name]
        model, ex = task.model.eval(), task.example_input
        ex = ex if isinstance(ex, tuple) else (ex,)
        amax = calibrate_act_ranges(model, g.names, task.calib_batches, task.run_forward)
        arts, ops = {}, {}
        for c in CANDS:
            key = Candidate.parse(c).key
            plan = Plan.uniform(g.names, Candidate.parse(c))
            t0 = time.time()
            art = compile_plan(model, g, plan, amax, ex, target="llvm", out_dir=workdir / f"{name}_{key.replace('/', '_')}",
                               check_parity=False)
            arts[key] = load_artifact(art.directory)
            ops[key] = model_ops(model, g, ex, plan, amax)
            print(f"[{name}] {key}: built in {time.time() - t0:.0f}s, {ops[key].layer_calls} layer + {len(ops[key].ops)} other kernel calls", flush=True)
        import numpy as np
        import tvm

        feeds = [x.numpy() for x in ex]
        evals = {}
        for k, la in arts.items():
            a = [tvm.runtime.tensor(np.ascontiguousarray(np.asarray(x, dtype=sp.dtype)), la.device) for sp, x in zip(la.manifest.inputs, feeds)]
            evals[k] = (la._vm.time_evaluator("main", la.device, number=1, repeat=1), [*a, *la._params])
        whole = {k: float("inf") for k in arts}
        wall = {k: float("inf") for k in arts}
        for _ in range(rounds):  # single calls, interleaved across plans
            for k, (ev, a) in evals.items():
                for _ in range(10):
                    # two upper bounds of the run's latency when it has the core: the evaluator's wall clock of
                    # one call (plus every other job's time slice that fell into it: a 20 ms run on this loaded
                    # 2-core machine is rarely left alone), and the process CPU time of the evaluator's
                    # warm-up + timed call, halved (no preemption; a few us of call overhead)
                    p0 = time.process_time_ns()
                    w = ev(*a).mean
                    cpu = (time.process_time_ns() - p0) * 1e-9 / 2
                    wall[k] = min(wall[k], w)
                    whole[k] = min(whole[k], w, cpu)
        funcs = {sig: f for m in ops.values() for sig, f in m.funcs.items()}
        op_s = {sig: _min_time(lambda f=f: time_op(f, repeats=1, number=3), rounds) for sig, f in funcs.items()}
        out[name] = {"whole": whole, "wall": wall, "ops": ops, "op_s": op_s}
    return out


def cpu_part(lines: list[str], rounds: int = 7, save_json: str | None = None) -> None:
    import tempfile
    import warnings

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from backends.cost import MeasureConfig, build_cost_table
    from backends.cost.calibrate import compare, fit_target, observations_from
    from backends.cost.residual import ResidualModel, calibrate_dispatch, epilogue_seconds
    from backends.targets import load_target
    from mpsearch.graph import LayerGraph, build_layer_graph
    from mpsearch.tables import CostTable
    from mpsearch.task import load_task

    after_t = load_target("x86-avx2")
    before_t = before_target(after_t)
    tasks = {n: load_task(n) for n in ("digits-cnn", "minilm")}
    graphs = {n: build_layer_graph(t.model, t.example_input) for n, t in tasks.items()}
    calib = LayerGraph(calibration_layers(), [], edge_source="synthetic calibration suite")
    workdir = Path(tempfile.mkdtemp(prefix="bench_cost_model_"))
    measured = {}
    for name, g in {"calibration suite": calib, **graphs}.items():
        t0 = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # a fresh cache: every entry is timed in this run; each round = one short sample (3 calls), min over
            # `rounds` interleaved rounds: on a loaded machine a long median still includes other jobs' slices
            measured[name] = build_cost_table(g, CANDS, after_t, mode="measured", prune=False, cache_dir=workdir / "cache",
                                              measure=MeasureConfig(repeats=1, number=3, rounds=rounds))
        info = measured[name].extra["measure"]
        print(f"[{name}] timed {info['timed']} entries ({info['cached']} shared shapes) in {time.time() - t0:.0f}s with {info['timer']}", flush=True)
        lines.append(f"- {name}: {len(g)} layers, {sum(len(v) for v in measured[name].costs.values())} entries, "
                     f"{info['timed']} distinct timed, timer `{info['timer']}`")
    deployed = {}
    for name, g, res in (("calibration suite", calib, "cold"), *((n, g, "deployed") for n, g in graphs.items())):
        t0 = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            deployed[name] = build_cost_table(g, CANDS, after_t, mode="measured", prune=False, cache_dir=workdir / "cache",
                                              measure=MeasureConfig(repeats=1, number=3, rounds=rounds), residency=res)
        info = deployed[name].extra["measure"]
        print(f"[{name}] {res}: timed {info['timed']} entries in {time.time() - t0:.0f}s", flush=True)
        lines.append(f"- {name}, residency {res}: candidates timed with flushed weights: {', '.join(deployed[name].extra['cold_weights']) or 'none'}")
    layers = {n: {l.name: l for l in g.layers} for n, g in {"calibration suite": calib, **graphs}.items()}
    obs = {n: observations_from(measured[n], layers[n]) for n in measured}
    suite_cold = observations_from(deployed["calibration suite"], layers["calibration suite"])
    models = list(graphs)

    def table(tgt, g, residency="isolated"):
        return build_cost_table(g, CANDS, tgt, residency=residency)

    def two_fold(tgt, residency="isolated", stream_Bps=None, stream_latency_s=0.0, **kw):
        def shape(l):
            return (l.kind, l.weight_shape, l.in_shape)
        shapes = sorted({shape(o.layer) for n in models for o in obs[n]}, key=str)
        fold = {s: i % 2 for i, s in enumerate(shapes)}
        held = {n: CostTable({l: {} for l in measured[n].costs}, measured[n].act_cuts, tgt.name, "analytical") for n in models}
        for f in (0, 1):
            fit = fit_target(tgt, [o for n in models for o in obs[n] if fold[shape(o.layer)] != f], **kw)
            ft = fit.target if stream_Bps is None else fit.target.replace(stream_Bps=stream_Bps, stream_latency_s=stream_latency_s)
            for n in models:
                part = table(ft, graphs[n], residency)
                for l in graphs[n].layers:
                    if fold[shape(l)] == f:
                        held[n].costs[l.name] = part.costs[l.name]
        return held

    preds: dict[str, dict[str, CostTable]] = {}
    preds["before: raw TOML"] = {n: table(before_t, graphs[n]) for n in models}
    joint = fit_target(before_t, obs["digits-cnn"] + obs["minilm"], per_kind=True)
    preds["before: fitted on both models (in-sample)"] = {n: table(joint.target, graphs[n]) for n in models}
    preds["before: 2-fold layer shapes (held out)"] = two_fold(before_t, per_kind=True)
    preds["after: shipped TOML (fitted on the suite, earlier run)"] = {n: table(after_t, graphs[n]) for n in models}
    suite_fit = fit_target(after_t, obs["calibration suite"], **AFTER_FIT)
    preds["after: refitted on the calibration suite now (both models held out)"] = {n: table(suite_fit.target, graphs[n]) for n in models}
    preds["after: 2-fold layer shapes (held out)"] = two_fold(after_t, **AFTER_FIT)
    suite_in = compare(table(suite_fit.target, calib), measured["calibration suite"])
    # the weight fetch from DRAM: fitted on the suite timed warm + cold (both models held out)
    cold_fit = fit_target(after_t, obs["calibration suite"] + suite_cold, **AFTER_FIT)
    stream_Bps = cold_fit.target.stream_bandwidth()
    preds_dep = {"after: suite fit (warm + cold), deployed": {n: table(cold_fit.target, graphs[n], "deployed") for n in models},
                 "after: 2-fold layer shapes, deployed (fetch bandwidth from the suite)": two_fold(after_t, "deployed", stream_Bps, cold_fit.target.stream_latency_s, **AFTER_FIT)}
    lines.append(f"\nPer layer (entries = layer x candidate; 'sum err' = sum of predicted vs sum of measured layer latencies of the uniform plan):")
    lines.append("| model | prediction | Spearman | median abs rel err | sum err per uniform plan |")
    lines.append("|---|---|---|---|---|")
    cmp = {}
    for title, per in preds.items():
        for n in models:
            c = compare(per[n], measured[n])
            cmp[(title, n)] = c
            sums = ", ".join(f"{r['plan'].split()[1]} {r['rel_err']:+.0%}" for r in c.end_to_end)
            lines.append(f"| {n} | {title} | {c.spearman:.3f} | {c.median_rel_err:.1%} | {sums} |")
    for title, per in preds_dep.items():
        for n in models:
            c = compare(per[n], deployed[n])
            sums = ", ".join(f"{r['plan'].split()[1]} {r['rel_err']:+.0%}" for r in c.end_to_end)
            lines.append(f"| {n} | {title} vs measured deployed | {c.spearman:.3f} | {c.median_rel_err:.1%} | {sums} |")
    lines.append(f"\nWeight fetch from DRAM (cold weights), fitted on the suite timed warm and with flushed weights: "
                 f"{stream_Bps / 1e9:.1f} GB/s (TOML DRAM {after_t.memory[-1].bandwidth_Bps / 1e9:.0f} GB/s) + "
                 f"{cold_fit.target.stream_latency_s * 1e6:.2f} us per call (TOML {after_t.stream_latency_s * 1e6:.2f} us); "
                 "measured cold / warm, sum over the uniform plan's layers: "
                 + "; ".join(f"{n} " + ", ".join(f"{k} {sum(deployed[n].costs[l][k]['latency_s'] for l in deployed[n].costs) / sum(measured[n].costs[l][k]['latency_s'] for l in measured[n].costs):.2f}x"
                                                 for k in sorted(deployed[n].extra['cold_weights'])) for n in models))
    lines.append(f"\nSuite fit (in-sample on its {len(obs['calibration suite'])} entries): Spearman {suite_in.spearman:.3f}, "
                 f"median abs rel err {suite_in.median_rel_err:.1%}, rms log err {suite_fit.rms_log_err:.3f}. Factors vs the shipped TOML: "
                 + ", ".join(f"{k}={v:.3g}" for k, v in suite_fit.factors.items()))

    # -- end to end: whole compiled model vs sum of the deployed layer costs + residual -------------------
    wm = whole_models(graphs, tasks, rounds, workdir)
    dispatch_s = calibrate_dispatch(rounds=rounds)
    final = preds_dep["after: suite fit (warm + cold), deployed"]
    twof = preds_dep["after: 2-fold layer shapes, deployed (fetch bandwidth from the suite)"]
    before = preds["before: 2-fold layer shapes (held out)"]
    # element-wise ops fused into the layer kernels: fused kernel alone - bare kernel alone, from the fp32 plan
    epi = {n: epilogue_seconds(wm[n]["ops"]["fp32/fp32"], graphs[n], "fp32", rounds=rounds) for n in models}
    res = {n: ResidualModel(dispatch_s=dispatch_s, measured=wm[n]["op_s"], epilogue=epi[n]) for n in models}

    def lsum(tab, n, k):
        return sum(tab[n].costs[l][k]["latency_s"] for l in tab[n].costs)

    lines.append("\nEnd to end: whole compiled module (TVM backend, untuned, 1 thread; VM `main`, "
                 f"{10 * rounds} single calls in {rounds} rounds; 'measured' = min over calls of min(wall clock, process CPU time): "
                 "the latency when the run has the core, as the kernels' own timings are; 'wall' = the wall-clock min alone) vs prediction = the plan's layers as deployed + the non-quantizable ops "
                 f"(each timed alone) + kernel calls x {dispatch_s * 1e6:.2f} us (VM dispatch per call, measured on a synthetic chain of "
                 "256 tiny kernels) + the element-wise ops fused into the layer kernels (each fused kernel alone - the bare kernel alone, fp32 plan). Layers: 'measured' = the measured deployed table (kernels timed alone, with flushed weights "
                 "where the plan's weights exceed the target's resident_bytes); 'analytical' = suite fit (both models held out) / "
                 "2-fold over layer shapes, deployed. 'before' = sum of the isolated per-layer predictions (2-fold), the first notion of end to end.")
    lines.append("| model | plan | measured ms (wall) | layers warm / deployed ms | ops + dispatch + fused epilogues ms | pred: measured layers ms (err) | "
                 "pred: analytical suite fit ms (err) | pred: analytical 2-fold ms (err) | before ms (err) |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    e2e = {}
    for n in models:
        w = wm[n]
        for k, whole in w["whole"].items():
            mo = w["ops"][k]
            resid = res[n].residual_s(mo)
            p_meas = lsum(deployed, n, k) + resid
            p_an = lsum(final, n, k) + resid
            p_2f = lsum(twof, n, k) + resid
            lay_b = lsum(before, n, k)
            e2e[(n, k)] = (whole, p_meas, p_an, p_2f)

            def c(p):
                return f"{p * 1e3:.3f} ({(p - whole) / whole:+.0%})"
            lines.append(f"| {n} | {k} | {whole * 1e3:.3f} ({w['wall'][k] * 1e3:.3f}) | {lsum(measured, n, k) * 1e3:.3f} / {lsum(deployed, n, k) * 1e3:.3f} | "
                         f"{res[n].ops_s(mo.ops) * 1e3:.3f} + {mo.calls} x {dispatch_s * 1e6:.2f} us + {res[n].epilogue_total_s(mo) * 1e3:.3f} | {c(p_meas)} | {c(p_an)} | {c(p_2f)} | {c(lay_b)} |")
    worst = {lab: max(abs(v[i] - v[0]) / v[0] for v in e2e.values()) for i, lab in ((1, "measured layers"), (2, "analytical suite fit"), (3, "analytical 2-fold"))}
    lines.append("\nWorst end-to-end error over both models and all uniform plans: " + ", ".join(f"{k} {v:.1%}" for k, v in worst.items())
                 + "; against the wall-clock min: " + ", ".join(
                     f"{lab} {max(abs(v[i] - wm[n]['wall'][k]) / wm[n]['wall'][k] for (n, k), v in e2e.items()):.1%}"
                     for i, lab in ((1, "measured layers"), (2, "analytical suite fit"), (3, "analytical 2-fold"))))
    mo = wm["minilm"]["ops"]["fp32/fp32"]
    top = sorted({o.signature: o for o in mo.ops}.values(), key=lambda o: -wm["minilm"]["op_s"][o.signature])[:6]
    lines.append("MiniLM's costliest non-quantizable ops (timed alone; count per forward): "
                 + "; ".join(f"{o.name} x{sum(1 for p in mo.ops if p.signature == o.signature)} {wm['minilm']['op_s'][o.signature] * 1e6:.0f} us "
                             f"({o.flops / 1e6:.2f} MFLOP, {o.bytes / 1e3:.0f} kB)" for o in top))

    lines.append("\nPer-layer, digits CNN, after (suite fit) vs measured, microseconds:")
    lines.append("| layer | " + " | ".join(CANDS) + " |")
    lines.append("|---|" + "---|" * len(CANDS))
    for l in graphs["digits-cnn"].names:
        cells = []
        for c in CANDS:
            key = c if "/" in c else f"{c}/{c}"
            m = measured["digits-cnn"].costs[l].get(key, {}).get("latency_s")
            p = final["digits-cnn"].costs[l].get(key, {}).get("latency_s")
            cells.append(f"{p * 1e6:.1f}/{m * 1e6:.1f}" if m and p else "-")
        lines.append(f"| {l} | " + " | ".join(cells) + " |")
    if save_json:
        import dataclasses

        blob = {n: {"layers": [dataclasses.asdict(l) for l in (calib if n == "calibration suite" else graphs[n]).layers],
                    "lat": {l: {k: v["latency_s"] for k, v in per.items()} for l, per in measured[n].costs.items()}} for n in measured}
        blob["whole"] = {n: {"whole": wm[n]["whole"], "wall": wm[n]["wall"], "op_s": wm[n]["op_s"],
                             "ops": {k: {"layer_calls": m.layer_calls, "ops": [dataclasses.asdict(o) for o in m.ops]} for k, m in wm[n]["ops"].items()}}
                         for n in models}
        Path(save_json).write_text(json.dumps(blob, indent=1, default=str))
    globals()["_CPU_SUMMARY"] = {"cmp": cmp, "e2e": e2e}


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
    ap.add_argument("--no-gpu", action="store_true", help="skip the analysis of the saved H100 timings")
    ap.add_argument("--rounds", type=int, default=7, help="timing rounds per entry (min over rounds; default 7)")
    ap.add_argument("--save-json", metavar="PATH", help="also write the raw CPU timings as JSON")
    ap.add_argument("--append", action="store_true", help="append the report to RESULTS.md (default: print only)")
    args = ap.parse_args()
    if args.gpu_measure:
        gpu_measure(args.gpu_measure)
        return
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(HERE.parent))
    lines = [f"\n## Cost model: analytical vs measured (bench_cost_model.py) — {datetime.date.today().isoformat()}",
             f"CPU: {platform.processor() or 'x86_64'} AMD EPYC (Zen 3, AVX2, no AVX-512), 1 thread, shared machine (load average "
             f"{os.getloadavg()[0]:.1f} at start); the TVM backend's per-layer kernels, candidates {', '.join(CANDS)}."]
    t0 = time.time()
    if not args.no_cpu:
        cpu_part(lines, rounds=args.rounds, save_json=args.save_json)
    if not args.no_gpu:
        gpu_part(lines)
    lines.append(f"\n(run took {time.time() - t0:.0f} s; load average at the end {os.getloadavg()[0]:.1f})")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
