"""Cross-compile (here, GPU-less) CUDA artifacts of real digits-CNN plans for check_cuda_artifacts.py.

Plans: every candidate family the CNN's convs lower through on CUDA (integer, 4-bit float table decodes
e2m1 / mxfp4 / nvfp4, odd widths, int8 x int8, fp16, e4m3), and the plan ``mpsearch optimize digits-cnn``
chooses. Each artifact holds the simulation's outputs (reference.npz); the device run compares.

    .venv/bin/python benchmarks/gpu/build_cuda_artifacts.py   # -> build/gpu/artifacts/<name>/
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "build" / "gpu" / "artifacts"

PLANS = {
    "digits_families": ["e2m1", "int8/int8", "int3", "mxfp4", "int6", "fp16", "int4", "e4m3", "nvfp4", "int8"],
    "digits_lowbit": ["int2", "e3m2", "int5", "e2m1", "int4g128", "uint8t/int8", "mxfp4", "int3", "int8/int8", "e4m3"],
}


def main() -> None:
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
    for name, cands in PLANS.items():
        plan = Plan({n: Candidate.parse(cands[i % len(cands)]) for i, n in enumerate(g.names)}, task="digits-cnn")
        compile_plan(t.model, g, plan, amax, t.example_input, target="cuda", out_dir=OUT / name)
        print(f"built {name}: {', '.join(cands)}", flush=True)


if __name__ == "__main__":
    main()
