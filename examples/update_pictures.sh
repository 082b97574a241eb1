#!/usr/bin/env bash
# Re-run every example and copy its frontier plot next to it (the pictures in examples/README.md).
# Usage: examples/update_pictures.sh [digits fashion minilm onnx custom]   (default: all)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
for ex in "${@:-digits fashion minilm onnx custom}"; do
  for name in $ex; do
    case "$name" in
      custom) mpsearch optimize examples/custom_task.py:make_task --run-dir runs/examples/custom
              cp runs/examples/custom/frontier.png "$here/custom_frontier.png" ;;
      *)      "$here/$name/run.sh"
              cp "runs/examples/$name/frontier.png" "$here/$name/frontier.png" ;;
    esac
  done
done
