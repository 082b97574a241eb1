#!/usr/bin/env bash
# ONNX input path: export a small trained model to model.onnx + calib.npz, optimize the file, then export
# the chosen plan as an ONNX QDQ model and check it against ONNX Runtime.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
[ -x .venv/bin/mpsearch ] && export PATH="$PWD/.venv/bin:$PATH"   # works without activating the venv
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python "$here/make_model.py" --out "$here"
mpsearch optimize "$here/model.onnx" --calib "$here/calib.npz" --run-dir runs/examples/onnx --points 12 "$@"
python "$here/export_plan.py" runs/examples/onnx "$here/model.onnx" "$here/calib.npz"
