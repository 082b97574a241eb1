"""Moving and splitting calibration batches of any shape (tensor, tuple/list, nested dict of tensors)."""

from __future__ import annotations

from typing import Any

import torch

from mpsearch.errors import MpsearchError


def to_device(batch: Any, device: torch.device | str) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_rows(batch: Any) -> int:
    """Leading dimension shared by every tensor in the batch (the number of examples)."""
    sizes = {t.shape[0] for t in _leaves(batch) if t.dim() > 0}
    if len(sizes) != 1:
        raise MpsearchError(f"cannot micro-batch: tensors in a calibration batch have leading sizes {sorted(sizes)}")
    return sizes.pop()


def split_batch(batch: Any, size: int | None) -> list[tuple[Any, float]]:
    """Micro-batches of at most ``size`` rows with weights rows/total (exact for mean-over-rows losses)."""
    if size is None:
        return [(batch, 1.0)]
    n = batch_rows(batch)
    if size >= n:
        return [(batch, 1.0)]
    return [(_slice(batch, i, min(i + size, n)), (min(i + size, n) - i) / n) for i in range(0, n, size)]


def _slice(batch: Any, a: int, b: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[a:b] if batch.dim() > 0 else batch
    if isinstance(batch, dict):
        return {k: _slice(v, a, b) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_slice(v, a, b) for v in batch)
    return batch


def _leaves(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        return [t for v in batch.values() for t in _leaves(v)]
    if isinstance(batch, (list, tuple)):
        return [t for v in batch for t in _leaves(v)]
    return []
