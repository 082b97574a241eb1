"""Built-in task ``digits-cnn``: a ResNet-8-style CNN on scikit-learn's bundled 8x8 digits (real data)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mpsearch.task import Task
from mpsearch.tasks.common import accuracy, cached_weights, classifier_logits, cross_entropy_loss, source_hash


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class DigitsResNet(nn.Module):
    """ResNet-8 for 1x8x8 inputs: stem, three residual blocks, global pool, linear head (~78k params)."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.layer3 = Block(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def load_digits_split(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Real scikit-learn digits, scaled to [0, 1], split 60/15/25 into train / calib / test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    x, y = x[perm], y[perm]
    n = len(x)
    a, b = int(0.6 * n), int(0.75 * n)
    return {"train": (x[:a], y[:a]), "calib": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}


def _train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], epochs: int = 30, seed: int = 0) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is faster and deterministic
    try:
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        x, y = data
        opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
        steps = epochs * ((len(x) + 63) // 64)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), 64):
                idx = perm[i : i + 64]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


def digits_cnn(seed: int = 0, epochs: int = 30, calib_batch: int = 64) -> Task:
    """The embedded default task: trained once (a few seconds), then cached in the user cache dir."""
    data = load_digits_split(seed)
    torch.manual_seed(seed)
    model = DigitsResNet()
    key = f"digits-resnet8-{source_hash(seed, epochs, 'v1')}"
    cached_weights(model, key, lambda m: _train(m, data["train"], epochs, seed))
    cx, cy = data["calib"]
    tx, ty = data["test"]
    calib = [(cx[i : i + calib_batch], cy[i : i + calib_batch]) for i in range(0, len(cx), calib_batch)]
    return Task(
        name="digits-cnn",
        model=model,
        example_input=(tx[:1],),
        calib_batches=calib,
        evaluate=lambda m: accuracy(m, tx, ty),
        loss=cross_entropy_loss,
        logits=classifier_logits,
        metric_name="top-1 accuracy",
        metadata={"dataset": "sklearn load_digits", "test_size": len(tx), "classes": 10},
    )
