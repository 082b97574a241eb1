"""Export the plan an ``mpsearch optimize`` run chose for an ONNX model as an ONNX QDQ model, and check it.

    python examples/onnx/export_plan.py RUN_DIR MODEL.onnx CALIB.npz [--out model_qdq.onnx]

Reads ``RUN_DIR/plan.json``, re-calibrates the activation ranges on the calibration half of CALIB.npz
(deterministic, the same ranges the run used), writes the QDQ model and runs it in ONNX Runtime next to
mpsearch's PyTorch simulation of the plan on every sample, printing how closely they agree.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from backends.onnx_export import check_against_simulation, export_qdq, read_metadata
from mpsearch.graph import build_layer_graph
from mpsearch.plan import Plan
from mpsearch.simulate import calibrate_act_ranges
from mpsearch.tasks.onnx_task import load_calibration, onnx_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("calib", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/model_qdq.onnx")
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = onnx_task(args.model, args.calib).validate()
    graph = build_layer_graph(task.model, task.example_input)
    plan = Plan.load(args.run_dir / "plan.json", layer_names=graph.names)
    amax = calibrate_act_ranges(task.model, graph.names, task.calib_batches, task.run_forward)
    out = export_qdq(task.model, graph, plan, amax, task.example_input, args.out or args.run_dir / "model_qdq.onnx",
                     input_names=task.model.input_names)
    x, _ = load_calibration(args.calib)
    check = check_against_simulation(out, task.model, plan, amax, torch.from_numpy(x).float())
    meta = read_metadata(out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB, float model {args.model.stat().st_size / 1024:.1f} KiB)")
    for name, info in meta["mpsearch.lowering"].items():
        print(f"  {name:40s} {info['weight']:>8s}/{info['act']:<8s} stored as {info['weight_storage']}/{info['act_storage']}")
    print(f"ONNX Runtime vs simulation on {len(x)} samples: arg-max agreement {check.argmax_agreement:.4f}, "
          f"max |diff| {check.max_abs_diff:.2e} (quantization moved outputs by {check.float_mean_abs_diff:.2e} on average)")
    if meta["mpsearch.baked_weights"]:
        print(f"weights stored as fake-quantized float32 (no QDQ form): {', '.join(meta['mpsearch.baked_weights'])}")


if __name__ == "__main__":
    main()
