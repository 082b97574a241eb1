"""Helpers shared by the built-in image-classification tasks."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from mpsearch.atomic import atomic_write_bytes
from mpsearch.cache import user_cache_dir


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def cross_entropy_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(classifier_logits(model, batch), y)


def classifier_logits(model: nn.Module, batch) -> torch.Tensor:
    """The logits whose mean cross-entropy is ``cross_entropy_loss`` (``Task.logits``)."""
    return model(batch[0])


def cached_weights(model: nn.Module, key: str, train: Callable[[nn.Module], None]) -> nn.Module:
    """Load ``model``'s trained weights from the user cache, training (once) if absent.

    Loaded with ``weights_only=True``: a cache file is never allowed to execute code.
    """
    path: Path = user_cache_dir() / "models" / f"{key}.pt"
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except Exception:
            path.unlink(missing_ok=True)  # corrupt cache entry: retrain
    train(model)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write_bytes(path, buf.getvalue())
    return model.eval()


def source_hash(*objs: object) -> str:
    return hashlib.sha256(repr(objs).encode()).hexdigest()[:12]
