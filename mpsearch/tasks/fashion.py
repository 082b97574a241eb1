"""Built-in task ``fashion-cnn``: a small CNN on Fashion-MNIST from Debian's ``dataset-fashion-mnist``.

The data are the real 70k images (60k train, 10k test) shipped as IDX gz files; nothing is downloaded.
Training uses all 60k training images minus a 5k calibration hold-out, for ``epochs`` (default 2) on one
thread (about 1 minute of CPU, 1-4 minutes on a busy machine; 91.25% test accuracy), and the weights are
cached so it happens once per machine.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mpsearch.errors import MpsearchError
from mpsearch.task import Task
from mpsearch.tasks.common import accuracy, cached_weights, classifier_logits, cross_entropy_loss, source_hash

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_HINT = "install it with: sudo apt-get install dataset-fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """Parse one gzip IDX file (big-endian header: magic with dtype code and rank, then the dims)."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise MpsearchError(f"cannot read {str(path)!r}: {e}", hint=APT_HINT) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise MpsearchError(f"{str(path)!r} is not an unsigned-byte IDX file", hint=APT_HINT)
    rank = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=rank, offset=4))
    n = int(np.prod(dims))
    offset = 4 + 4 * rank
    if len(raw) != offset + n:
        raise MpsearchError(f"{str(path)!r} is truncated: expected {n} values for shape {dims}", hint=APT_HINT)
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(data_dir: Path | str = DATA_DIR) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train": (x, y), "test": (x, y)}`` with x in [0, 1] of shape (N, 1, 28, 28); errors name the apt fix."""
    d = Path(data_dir)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, (img_name, lbl_name) in _FILES.items():
        img_path, lbl_path = d / img_name, d / lbl_name
        for p in (img_path, lbl_path):
            if not p.is_file():
                raise MpsearchError(f"Fashion-MNIST file {str(p)!r} not found", hint=APT_HINT)
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise MpsearchError(f"Fashion-MNIST {split} files have mismatched shapes {images.shape} / {labels.shape}", hint=APT_HINT)
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        out[split] = (x, torch.from_numpy(labels.astype(np.int64)))
    return out


class FashionCNN(nn.Module):
    """Three 3x3 conv blocks (16-32-32 channels, BN, ReLU, two max-pools) and a 2-layer head (~0.22M params).

    Sized so that scoring the 10k test images takes a few seconds on one CPU thread (the search evaluates
    many plans), at ~1.7M MACs per image.
    """

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def _train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], epochs: int, seed: int) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small model: one thread avoids OpenMP contention and is deterministic
    try:
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        x, y = data
        bs = 128
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        steps = epochs * ((len(x) + bs - 1) // bs)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), bs):
                idx = perm[i : i + bs]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


def fashion_cnn(
    seed: int = 0,
    epochs: int = 2,
    calib_size: int = 5000,
    calib_batch: int = 128,
    test_size: int = 10000,
    data_dir: str | Path = DATA_DIR,
) -> Task:
    """Fashion-MNIST CNN task: train on 55k images once (cached), calibrate on a 5k hold-out, test on 10k."""
    data = load_fashion_mnist(data_dir)
    x, y = data["train"]
    if not 0 < calib_size < len(x):
        raise MpsearchError(f"calib_size must be between 1 and {len(x) - 1}, got {calib_size}")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    x, y = x[perm], y[perm]
    train = (x[calib_size:], y[calib_size:])
    cx, cy = x[:calib_size], y[:calib_size]
    tx, ty = data["test"]
    tx, ty = tx[:test_size], ty[:test_size]
    torch.manual_seed(seed)
    model = FashionCNN()
    key = _weights_key(seed, epochs, calib_size)
    cached_weights(model, key, lambda m: _train(m, train, epochs, seed))
    calib = [(cx[i : i + calib_batch], cy[i : i + calib_batch]) for i in range(0, len(cx), calib_batch)]
    return Task(
        name="fashion-cnn",
        model=model,
        example_input=(tx[:1],),
        calib_batches=calib,
        evaluate=lambda m: accuracy(m, tx, ty),
        loss=cross_entropy_loss,
        logits=classifier_logits,
        metric_name="top-1 accuracy",
        metadata={
            "dataset": f"Fashion-MNIST (Debian dataset-fashion-mnist, {DATA_DIR})",
            "train_size": len(train[0]),
            "calib_size": calib_size,
            "test_size": len(tx),
            "classes": list(CLASSES),
        },
    )


def fashion_weights_cached(seed: int = 0, epochs: int = 2, calib_size: int = 5000) -> bool:
    """True when the trained weights are already in the user cache (tests use this to skip training)."""
    from mpsearch.cache import user_cache_dir

    return (user_cache_dir() / "models" / f"{_weights_key(seed, epochs, calib_size)}.pt").is_file()


def _weights_key(seed: int, epochs: int, calib_size: int) -> str:
    return f"fashion-cnn-{source_hash(seed, epochs, calib_size, 'v2')}"
