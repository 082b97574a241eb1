"""The tiny tanh MLP classifier that the exact-Hessian and probe-round tests share (small enough for
``torch.autograd.functional.hessian``)."""

from __future__ import annotations

import torch
from torch import nn

from mpsearch.task import Task


def tiny_mlp_task(n_batches: int = 1) -> Task:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 4, generator=gen), torch.randint(0, 3, (32,), generator=gen)) for _ in range(n_batches)]

    def loss(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1])

    return Task("tiny", model, (batches[0][0][:1],), batches, evaluate=lambda m: 0.0, loss=loss)
