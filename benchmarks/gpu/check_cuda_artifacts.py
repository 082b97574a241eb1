"""On the GPU machine: load every artifact in build/gpu/artifacts/ (checksums verified, runtime-only TVM) and
compare its outputs with the simulation's stored in its reference.npz; time it. Writes $OUT/cuda_artifacts.json.

    python benchmarks/gpu/check_cuda_artifacts.py     # carry build/gpu/artifacts and build/gpu/tvm_rt.tar.gz
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu.run_on_device import setup_runtime  # noqa: E402


def main() -> None:
    setup_runtime()
    import numpy as np

    from backends.artifact import load_artifact

    out = {}
    for d in sorted((ROOT / "build" / "gpu" / "artifacts").iterdir()):
        la = load_artifact(d, target="cuda")
        diff, bound = la.check_reference()
        with np.load(d / "reference.npz") as ref:
            x = ref["input0"]
        out[d.name] = {"max_abs_diff_vs_simulation": diff, "bound": bound, "parity_ok": bool(diff <= bound),
                       "latency_us": la.time(x, number=100, repeat=5) * 1e6,
                       "plan": {k: v["weight"] + "/" + v["act"] for k, v in la.manifest.plan["layers"].items()}}
        print(d.name, out[d.name], flush=True)
    dest = Path(os.environ.get("OUT", ".")) / "cuda_artifacts.json"
    dest.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
