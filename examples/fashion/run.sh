#!/usr/bin/env bash
# Fashion-MNIST CNN on the real 70k images from Debian's dataset-fashion-mnist package.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "Fashion-MNIST is not installed. Install it with:" >&2
  echo "  sudo apt-get install dataset-fashion-mnist" >&2
  exit 2
fi
exec mpsearch optimize fashion-cnn --run-dir runs/examples/fashion "$@"
