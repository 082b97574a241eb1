#!/usr/bin/env bash
# Digits CNN (the embedded default): ResNet-8 on scikit-learn's bundled 8x8 digits, trained once (~20 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec mpsearch optimize digits-cnn --run-dir runs/examples/digits "$@"
