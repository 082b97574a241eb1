"""Where mpsearch keeps things between runs (trained built-in models, tuning records)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """``$MPSEARCH_CACHE`` or ``$XDG_CACHE_HOME/mpsearch`` (default ``~/.cache/mpsearch``)."""
    env = os.environ.get("MPSEARCH_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mpsearch"
    base.mkdir(parents=True, exist_ok=True)
    return base
