"""Run the real ``mpsearch`` entry point in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    out: str
    err: str


def mpsearch(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> Result:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    p = subprocess.run([sys.executable, "-m", "mpsearch.cli", *map(str, args)], cwd=cwd or REPO, capture_output=True,
                       text=True, timeout=timeout, env=full_env)
    return Result(p.returncode, p.stdout, p.stderr)
