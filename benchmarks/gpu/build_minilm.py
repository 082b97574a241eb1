"""Build (here, GPU-less) the MiniLM-L6 mixed-plan CUDA artifacts for run_minilm_on_device.py.

Plan: the cheapest *mixed* point (two or more formats) of the MiniLM example's frontier
(runs/examples/minilm/frontier.json) within 0.01 recall@1 of float, with the example's activation ranges.
Inputs: the documents of the task's first calibration batch (16 x 64 tokens, max_len 64) and its first
row (batch 1, 1 x 64).

Both artifacts are ``compile_plan(..., target="cuda", fp16_tables=True)``: the word/position/type
embedding tables are stored in fp16 (23 MB instead of 47 MB for the word table) so that the artifacts,
the runtime-only TVM and the scripts fit in the 64 MiB the device tool carries; the reference of each
artifact (its reference.npz) is the PyTorch simulation of the plan on the model with those tables rounded
to fp16. The two artifacts have byte-identical weight files: only the batch-16 one is kept, the device run
copies it next to the batch-1 manifest, whose sha256 check then verifies it.

Also here: the CPU (llvm) build of the same plan at batch 1 with fp16 tables, parity vs the simulation
(``--no-cpu-check`` skips it); the effect of the fp16 tables on the simulation output; plain-torch
``TorchBert`` (benchmarks/gpu/torch_bert.py) vs ``transformers.BertModel`` with the real weights.
Writes build/gpu/minilm/{b16,b1,bert_config.json,meta.json}; the runtime-only TVM comes from
build_kernels.py (build/gpu/tvm_rt.tar.gz; ``--runtime`` packs it if missing).

    HF_HUB_OFFLINE=1 .venv/bin/python -u benchmarks/gpu/build_minilm.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

OUT = ROOT / "build" / "gpu" / "minilm"
EXAMPLE = ROOT / "runs" / "examples" / "minilm"


def choose_plan(max_drop: float = 0.01):
    from mpsearch.plan import Plan

    fr = json.loads((EXAMPLE / "frontier.json").read_text())["value"]
    ok = [p for p in fr["frontier"] if p["score"] >= fr["float_score"] - max_drop
          and len({(v["weight"], v["act"]) for v in p["plan"]["layers"].values()}) >= 2]
    best = min(ok, key=lambda p: p["totals"]["weight_bytes"])
    info = {"how": f"cheapest mixed frontier point (>= 2 formats) within {max_drop} recall@1 of float",
            "score": best["score"], "float_score": fr["float_score"], "omega": best["omega"],
            "weight_bytes": best["totals"]["weight_bytes"],
            "formats": dict(Counter(f"{v['weight']}/{v['act']}" for v in best["plan"]["layers"].values()))}
    return Plan.from_dict(best["plan"]), info


def sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-cpu-check", action="store_true")
    ap.add_argument("--runtime", action="store_true", help="pack build/gpu/tvm_rt.tar.gz if it is missing")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from backends.artifact import load_artifact
    from backends.tvm import compile_plan
    from backends.tvm.compile import fp16_rounded_tables
    from mpsearch.graph import build_layer_graph
    from mpsearch.simulate import apply_plan
    from mpsearch.task import load_task

    t0 = time.time()
    task = load_task("minilm")
    model = task.model
    plan, plan_info = choose_plan()
    print("plan:", plan_info, flush=True)
    amax = json.loads((EXAMPLE / "act_amax.json").read_text())["value"]
    graph = build_layer_graph(model, task.example_input)
    doc = task.calib_batches[0]["doc"]
    x16 = (doc["input_ids"], doc["attention_mask"])
    x1 = (doc["input_ids"][:1].clone(), doc["attention_mask"][:1].clone())
    print("inputs:", [tuple(v.shape) for v in x16], "tokens in row 0:", int(x1[1].sum()), flush=True)
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    meta: dict = {"plan": plan_info, "inputs": {"b16": list(x16[0].shape), "b1": list(x1[0].shape),
                                                "real_tokens_b16": int(x16[1].sum()), "real_tokens_b1": int(x1[1].sum())}}
    arts = {}
    # "_graph": the same plan built with TVM's CUDA-graph rewrite (kernel launches captured and replayed)
    for tag, x, graph_ in (("b16", x16, False), ("b1", x1, False), ("b16_graph", x16, True), ("b1_graph", x1, True)):
        t1 = time.time()
        arts[tag] = compile_plan(model, graph, plan, amax, x, target="cuda", out_dir=OUT / tag, fp16_tables=True,
                                 cuda_graph=graph_, progress=print)
        meta[f"cuda_build_s_{tag}"] = round(time.time() - t1, 1)
    meta["artifacts"] = list(arts)
    w16 = OUT / "b16" / "weights.safetensors"
    for tag in arts:
        if tag == "b16":
            continue
        w = OUT / tag / "weights.safetensors"
        if sha(w) != sha(w16):
            raise SystemExit(f"the {tag} and b16 weight files differ; cannot share one")
        w.unlink()  # the device run copies b16's (the manifest's sha256 verifies it)
    meta["weights_identical"] = True
    meta["fp16_tables"] = arts["b16"].extra["fp16_tables"]
    meta["sizes_bytes"] = {str(p.relative_to(OUT)): p.stat().st_size for p in sorted(OUT.rglob("*")) if p.is_file()}
    (OUT / "bert_config.json").write_text(json.dumps(model.config.to_dict(), indent=1, default=str))

    # context: what the fp16 tables and the plan change in the simulated output (batch 16, fp32 on this CPU)
    with torch.no_grad():
        ref_float = model(*x16).last_hidden_state
        sim32 = apply_plan(model, plan, amax)(*x16).last_hidden_state
        sim16 = apply_plan(fp16_rounded_tables(model, meta["fp16_tables"]), plan, amax)(*x16).last_hidden_state
        m = x16[1].bool()
        meta["effects_b16"] = {
            "max_abs_sim_fp16_tables_vs_sim_fp32_tables": float((sim16 - sim32).abs()[m].max()),
            "max_abs_plan_sim_vs_float_model": float((sim32 - ref_float).abs()[m].max()),
            "max_abs_float_output": float(ref_float.abs()[m].max()),
            "note": "over real (unpadded) tokens; last_hidden_state",
        }
        # plain-torch BERT (the device's baseline if it has no transformers) vs transformers.BertModel
        from torch_bert import TorchBert

        tb = TorchBert(model.config.to_dict()).eval()
        missing = tb.load_state_dict(model.state_dict(), strict=False)
        got = tb(*x16)
        meta["torch_bert_vs_transformers_fp32"] = {
            "max_abs_diff_real_tokens": float((got - ref_float).abs()[m].max()),
            "missing_keys": list(missing.missing_keys), "unexpected_keys": list(missing.unexpected_keys)}
    print("effects:", meta["effects_b16"], meta["torch_bert_vs_transformers_fp32"], flush=True)

    if not args.no_cpu_check:
        t1 = time.time()
        cpu_dir = ROOT / "build" / "minilm_cpu_b1"
        art = compile_plan(model, graph, plan, amax, x1, target="llvm", out_dir=cpu_dir, fp16_tables=True, progress=print)
        la = load_artifact(cpu_dir)
        meta["cpu_llvm_b1_parity"] = {"max_abs_diff": art.parity["max_abs_diff"], "bound": art.parity["bound"],
                                      "latency_ms_1_thread_or_more": la.time(*[v.numpy() for v in x1], number=3, repeat=3) * 1e3,
                                      "build_s": round(time.time() - t1, 1)}
        print("cpu parity:", meta["cpu_llvm_b1_parity"], flush=True)
    meta["build_s"] = round(time.time() - t0, 1)
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2))
    rt = ROOT / "build" / "gpu" / "tvm_rt.tar.gz"
    if not rt.is_file():
        if not args.runtime:
            print("build/gpu/tvm_rt.tar.gz is missing: run with --runtime (or benchmarks/gpu/build_kernels.py --only int4)")
        else:
            from build_kernels import pack_runtime

            pack_runtime()
    print(json.dumps(meta, indent=1))
    total = sum(meta["sizes_bytes"].values()) + (rt.stat().st_size if rt.is_file() else 0)
    print(f"to carry: {total / 2**20:.1f} MiB (build/gpu/minilm + build/gpu/tvm_rt.tar.gz)")


if __name__ == "__main__":
    main()
