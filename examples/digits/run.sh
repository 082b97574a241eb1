#!/usr/bin/env bash
# Digits CNN (the embedded default): ResNet-8 on scikit-learn's bundled 8x8 digits, trained once (~20 s).
# 16 random plans are evaluated as the random-search baseline (they appear in frontier.png).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/mpsearch ] && export PATH="$PWD/.venv/bin:$PATH"   # works without activating the venv
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"                     # tiny model: one thread is fastest
exec mpsearch optimize digits-cnn --run-dir runs/examples/digits --points 12 "$@"
