#!/usr/bin/env bash
# Re-run every example and copy its frontier plot next to it (the pictures in examples/README.md).
# Usage: examples/update_pictures.sh [digits fashion minilm onnx custom]   (default: all)
# Finished stages are reused (each run dir is a checkpoint); delete runs/examples/<name> to start over.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
[ -x .venv/bin/mpsearch ] && export PATH="$PWD/.venv/bin:$PATH"   # works without activating the venv
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
for ex in "${@:-digits fashion minilm onnx custom}"; do
  for name in $ex; do
    case "$name" in
      custom) mpsearch optimize examples/custom_task.py:make_task --run-dir runs/examples/custom --points 12
              dest="$here/custom_frontier.png" ;;
      digits|fashion|minilm|onnx)
              "$here/$name/run.sh"
              dest="$here/$name/frontier.png" ;;
      *)      echo "unknown example $name (digits fashion minilm onnx custom)" >&2; exit 2 ;;
    esac
    cp "runs/examples/$name/frontier.png" "$dest"
    size=$(stat -c %s "$dest")
    echo "$name: $dest ($((size / 1024)) KiB)"
    if [ "$size" -gt 204800 ]; then echo "warning: $dest is over 200 KiB" >&2; fi
  done
done
