"""Run on the GPU (device tool): the MiniLM-L6 mixed-plan TVM artifacts vs torch fp16 eager and torch.compile.

Needs what build_minilm.py wrote (build/gpu/minilm, carried) and build/gpu/tvm_rt.tar.gz (runtime-only TVM).
Steps, each recorded even if a later one fails:
1. load both artifacts with ``backends.artifact.load_artifact`` (manifest + sha256 of every file; the
   batch-1 artifact's weight file is the batch-16 one, copied next to it first and verified by its sha256);
2. parity: ``check_reference`` (the artifact on the GPU vs the PyTorch simulation of the plan, computed at
   build time, reference.npz);
3. latency of each artifact: TVM ``time_evaluator`` on the VM's ``main`` (inputs and weights on the GPU),
   and CUDA events around the bound VM call as a cross-check;
4. torch baselines on the same inputs: ``transformers.BertModel`` built from MiniLM's config if the device
   has transformers (else benchmarks/gpu/torch_bert.py), random weights of the same shapes (seed 0: the
   real fp16 weights do not fit in the carry beside the artifacts; latency does not depend on values),
   fp16 eager, fp32 eager, ``torch.compile`` (default mode) and ``torch.compile(mode="reduce-overhead")``;
   CUDA events, median of 7 repeats of a timed loop after warm-up.
Writes $OUT/minilm_gpu_results.json.

    python3 benchmarks/gpu/run_minilm_on_device.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
MINILM = ROOT / "build" / "gpu" / "minilm"
RESULTS: dict = {}


def _save() -> None:
    out = Path(os.environ.get("OUT", "/tmp"))
    (out / "minilm_gpu_results.json").write_text(json.dumps(RESULTS, indent=2, default=str))


def step(name):
    def wrap(fn):
        def run(*a, **k):
            t0 = time.time()
            try:
                return fn(*a, **k)
            except Exception:  # noqa: BLE001 - record and go on
                RESULTS.setdefault("errors", {})[name] = traceback.format_exc()[-2500:]
                print(f"[{name}] FAILED\n{RESULTS['errors'][name]}", flush=True)
                return None
            finally:
                RESULTS.setdefault("step_seconds", {})[name] = round(time.time() - t0, 1)
                _save()
        return run
    return wrap


def kernel_breakdown(fn, runs: int = 20, top: int = 8) -> dict:
    """GPU kernel time of one call of ``fn`` (CUPTI via torch.profiler, sum of all its kernels, mean of
    ``runs`` calls) and the kernels that take the most of it."""
    from run_on_device import cuda_kernel_durations

    for _ in range(3):
        fn()
    durs = cuda_kernel_durations(fn, runs)
    per = {name: sum(v) for name, v in durs.items()}
    n = sum(len(v) for v in durs.values())
    total = sum(per.values()) / runs
    ranked = sorted(per.items(), key=lambda kv: -kv[1])[:top]
    return {"gpu_us_per_call": total, "kernels_per_call": n / runs,
            "top_us_per_call": {k[:90]: v / runs for k, v in ranked}}


@step("tvm")
def bench_tvm(tvm) -> dict:
    import numpy as np
    import torch

    from backends.artifact import load_artifact
    from run_on_device import torch_time

    tags = RESULTS["build_meta"].get("artifacts", ["b16", "b1"])
    for tag in tags:
        if tag != "b16":
            shutil.copyfile(MINILM / "b16" / "weights.safetensors", MINILM / tag / "weights.safetensors")
    out = {}
    for tag in sorted(tags, key=lambda t: ("graph" in t, t)):
        d = MINILM / tag
        t0 = time.time()
        la = load_artifact(d, target="cuda")  # verifies the manifest and the sha256 of every file
        load_s = time.time() - t0
        diff, bound = la.check_reference()
        with np.load(d / "reference.npz") as ref:
            xs = [ref["input0"], ref["input1"]]
            r_out = ref["output0"]
        got = la.run(*xs)
        mask = xs[1].astype(bool)
        real = float(np.abs(got - r_out)[mask].max())
        t_eval = la.time(*xs, number=50, repeat=7)
        bound_call = la._bound  # the VM's main bound to the GPU inputs and weights (what run() calls)
        t_events = torch_time(lambda: bound_call(), iters=50, repeat=7)
        again = float(np.abs(la.run(*xs) - r_out).max())  # after the timings (a CUDA graph replays by now)
        out[tag] = {"load_s_incl_checksums": load_s, "max_abs_diff_vs_simulation": diff, "bound": bound,
                    "parity_ok": diff <= bound, "max_abs_diff_real_tokens": real,
                    "max_abs_diff_vs_simulation_after_timing": again,
                    "ref_max_abs": float(np.abs(r_out).max()), "ms_time_evaluator": t_eval * 1e3,
                    "ms_cuda_events_bound_call": t_events * 1e3, "input_shape": list(xs[0].shape),
                    "cuda_graph": bool(la.manifest.extra.get("cuda_graph"))}
        if not out[tag]["cuda_graph"]:
            try:
                out[tag]["kernels"] = kernel_breakdown(lambda: bound_call())
            except Exception as e:  # noqa: BLE001
                out[tag]["kernels"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(tag, json.dumps(out[tag]), flush=True)
        del la
        torch.cuda.synchronize()
    RESULTS["tvm_artifact"] = out
    return out


def make_baselines() -> dict:
    import torch

    cfg = json.loads((MINILM / "bert_config.json").read_text())
    torch.manual_seed(0)
    models = {}
    try:
        from transformers import BertConfig, BertModel

        hf_cfg = BertConfig(**{k: v for k, v in cfg.items() if k not in ("_attn_implementation_autoset", "transformers_version")})
        hf = BertModel(hf_cfg, add_pooling_layer=False).eval()
        RESULTS["transformers"] = __import__("transformers").__version__
        RESULTS["hf_attn_implementation"] = str(getattr(hf.config, "_attn_implementation", None))
        models["transformers_BertModel"] = hf
    except Exception as e:  # noqa: BLE001
        RESULTS["transformers"] = f"unavailable: {type(e).__name__}: {str(e)[:200]}"
    from torch_bert import TorchBert

    tb = TorchBert(cfg).eval()
    if "transformers_BertModel" in models:
        tb.load_state_dict(models["transformers_BertModel"].state_dict(), strict=False)
    else:
        for n, p in tb.named_parameters():
            torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else (torch.nn.init.ones_(p) if "LayerNorm.weight" in n else torch.nn.init.zeros_(p))
    models["torch_bert"] = tb
    return models


def _call(model, ids, mask):
    out = model(ids, mask)
    return out if hasattr(out, "shape") else out.last_hidden_state


@step("torch")
def bench_torch() -> dict:
    import numpy as np
    import torch

    from run_on_device import torch_time

    models = make_baselines()
    primary = "transformers_BertModel" if "transformers_BertModel" in models else "torch_bert"
    RESULTS["torch_primary"] = primary
    res: dict = {}
    for tag in ("b1", "b16"):
        with np.load(MINILM / tag / "reference.npz") as ref:
            ids = torch.from_numpy(ref["input0"]).cuda()
            mask = torch.from_numpy(ref["input1"]).cuda()
        r: dict = {}
        outs = {}
        with torch.inference_mode():
            for name, m in models.items():
                for dt, label in ((torch.float16, "fp16"), (torch.float32, "fp32")):
                    mm = m.to("cuda", dt)
                    outs[(name, label)] = _call(mm, ids, mask).float()
                    r[f"{name}_{label}_eager_ms"] = torch_time(lambda: _call(mm, ids, mask), iters=100, repeat=7) * 1e3
                    if name == "transformers_BertModel" or len(models) == 1:
                        try:
                            r[f"{name}_{label}_eager_kernels"] = kernel_breakdown(lambda: _call(mm, ids, mask))
                        except Exception as e:  # noqa: BLE001
                            r[f"{name}_{label}_eager_kernels"] = {"error": str(e)[:300]}
                    print(tag, name, label, "eager", r[f"{name}_{label}_eager_ms"], flush=True)
            if len(models) == 2:
                a, b = outs[("transformers_BertModel", "fp16")], outs[("torch_bert", "fp16")]
                r["fp16_torch_bert_vs_transformers_max_abs"] = float((a - b).abs()[mask.bool()].max())
            res[tag] = r
    for tag in ("b1", "b16"):
        with np.load(MINILM / tag / "reference.npz") as ref:
            ids = torch.from_numpy(ref["input0"]).cuda()
            mask = torch.from_numpy(ref["input1"]).cuda()
        m16 = models[primary].to("cuda", torch.float16)
        for mode in ("default", "reduce-overhead"):
            key = f"{primary}_fp16_compile_{mode}"
            try:
                torch._dynamo.reset()
                cm = torch.compile(m16) if mode == "default" else torch.compile(m16, mode=mode)
                t0 = time.time()
                with torch.inference_mode():
                    y = _call(cm, ids, mask).float()
                    y = _call(cm, ids, mask).float()
                    torch.cuda.synchronize()
                    res[tag][f"{key}_compile_s"] = time.time() - t0
                    ye = _call(m16, ids, mask).float()
                    res[tag][f"{key}_vs_eager_max_abs"] = float((y - ye).abs()[mask.bool()].max())
                    res[tag][f"{key}_ms"] = torch_time(lambda: _call(cm, ids, mask), iters=100, repeat=7) * 1e3
                print(tag, key, res[tag][f"{key}_ms"], flush=True)
            except Exception as e:  # noqa: BLE001
                res[tag][f"{key}_error"] = f"{type(e).__name__}: {str(e)[:600]}"
                print(tag, key, "FAILED", res[tag][f"{key}_error"], flush=True)
            RESULTS["torch"] = res
            _save()
    RESULTS["torch"] = res
    return res


def main() -> None:
    from run_on_device import gpu_clocks, heat, setup_runtime

    tvm = setup_runtime()
    import torch

    RESULTS["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    RESULTS["device"] = torch.cuda.get_device_name(0)
    RESULTS["torch"] = None
    RESULTS["torch_version"] = torch.__version__
    RESULTS["cuda"] = torch.version.cuda
    try:
        import triton

        RESULTS["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        RESULTS["triton"] = f"unavailable: {e}"
    RESULTS["tvm_runtime"] = tvm.__version__
    RESULTS["build_meta"] = json.loads((MINILM / "meta.json").read_text())
    RESULTS["timing"] = ("TVM: time_evaluator median of 7 repeats x 50 calls of the VM main (after a warm-up call), and "
                         "CUDA events around 50 calls of the bound VM main, median of 7; torch: CUDA events around 100 "
                         "calls, median of 7, after 20 warm-up calls; inputs and weights resident on the GPU")
    heat(2.0)
    RESULTS["clocks_after_heat"] = gpu_clocks()
    bench_tvm(tvm)
    heat(0.5)
    bench_torch()
    RESULTS["clocks_at_end"] = gpu_clocks()
    _save()
    print(json.dumps({k: v for k, v in RESULTS.items() if k != "build_meta"}, indent=1, default=str)[-6000:], flush=True)


if __name__ == "__main__":
    main()
