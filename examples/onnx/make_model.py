"""Train a small LeNet-style CNN on scikit-learn's real 8x8 digits and export it as an ONNX file.

Writes ``model.onnx`` (opset 17, dynamic batch) and ``calib.npz`` (``inputs`` float32 (N, 1, 8, 8) and
``labels`` int64 (N,), samples the model was not trained on) for the ONNX input path:

    mpsearch optimize examples/onnx/model.onnx --calib examples/onnx/calib.npz

mpsearch uses the first half of calib.npz to calibrate and the second half to score plans.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


class LeNet8(nn.Module):
    """Conv-BN-ReLU-MaxPool twice, then a two-layer classifier (~4k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 2 * 2, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))
    x, y = x[perm], y[perm]
    n_train = 1100
    model = LeNet8()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(args.epochs):
        for i in range(0, n_train, 64):
            loss = nn.functional.cross_entropy(model(x[i : min(i + 64, n_train)]), y[i : min(i + 64, n_train)])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x[n_train:]).argmax(1) == y[n_train:]).float().mean())
    args.out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (x[:1],), str(args.out / "model.onnx"), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    np.savez(args.out / "calib.npz", inputs=x[n_train:].numpy(), labels=y[n_train:].numpy())
    print(f"held-out accuracy {acc:.3f}; wrote {args.out / 'model.onnx'} and {args.out / 'calib.npz'} ({len(x) - n_train} samples)")


if __name__ == "__main__":
    main()
