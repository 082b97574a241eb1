"""Content-addressed cache and per-stage checkpoints of a sensitivity run.

The key hashes the model's weights and buffers, the calibration tensors, the candidate list, the graph
fingerprint, the static activation ranges and the settings, so a cached result is reused exactly when it
would be recomputed identically. Every write is atomic (``mpsearch.atomic``): a run killed at any point
leaves either the previous checkpoint or the new one, and a resumed run recomputes nothing finished.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from mpsearch.atomic import atomic_write_json

CACHE_VERSION = 1


def _update_tensor(h: "hashlib._Hash", t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)};".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _update_obj(h: "hashlib._Hash", obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        _update_tensor(h, obj)
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(f"k:{k};".encode())
            _update_obj(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"[{len(obj)};".encode())
        for v in obj:
            _update_obj(h, v)
    else:
        h.update(f"v:{obj!r};".encode())


def model_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        _update_tensor(h, t)
    return h.hexdigest()


def data_hash(batches: Any) -> str:
    h = hashlib.sha256()
    _update_obj(h, list(batches))
    return h.hexdigest()


def cache_key(model: torch.nn.Module, batches: Any, settings: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(f"mpsearch-sensitivity-v{CACHE_VERSION};".encode())
    h.update(model_hash(model).encode())
    h.update(data_hash(batches).encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


class Checkpoints:
    """JSON files ``<dir>/<stage>.json``; ``None`` directory means no caching at all."""

    def __init__(self, directory: str | Path | None) -> None:
        self.dir = Path(directory) if directory is not None else None

    def load(self, stage: str) -> Any | None:
        if self.dir is None:
            return None
        p = self.dir / f"{stage}.json"
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # unreadable checkpoint: recompute that stage

    def save(self, stage: str, data: Any) -> None:
        if self.dir is not None:
            atomic_write_json(self.dir / f"{stage}.json", data)
