#!/usr/bin/env bash
# Fashion-MNIST CNN on the real 70k images from Debian's dataset-fashion-mnist package.
# 16 random plans are evaluated as the random-search baseline (they appear in frontier.png).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "Fashion-MNIST is not installed. Install it with:" >&2
  echo "  sudo apt-get install dataset-fashion-mnist" >&2
  exit 2
fi
[ -x .venv/bin/mpsearch ] && export PATH="$PWD/.venv/bin:$PATH"   # works without activating the venv
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec mpsearch optimize fashion-cnn --run-dir runs/examples/fashion --points 12 "$@"
