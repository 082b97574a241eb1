"""A user-written task: what ``mpsearch optimize examples/custom_task.py:make_task`` loads.

Any ``file.py:function`` whose function returns an ``mpsearch.task.Task`` works. This one trains a small
MLP on scikit-learn's bundled breast-cancer data (569 real samples, 30 features) in about a second and
hands mpsearch: the float model, an example input, calibration batches of ``(inputs, targets)``, a
higher-is-better ``evaluate(model)`` on held-out data and a differentiable ``loss(model, batch)``, plus
(optional) the ``logits(model, batch)`` whose mean cross-entropy that loss is, which enables the fast
Gauss-Newton sensitivity (``--sens method=ggn``).

Run the whole pipeline on it:    mpsearch optimize examples/custom_task.py:make_task
Or just check the factory:       python examples/custom_task.py
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mpsearch.task import Task


def make_task(seed: int = 0, hidden: int = 64, epochs: int = 200) -> Task:
    from sklearn.datasets import load_breast_cancer

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    x, y = x[perm], y[perm]
    train, calib, test = slice(0, 340), slice(340, 426), slice(426, None)  # 60 / 15 / 25 %
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6  # standardise with training statistics only
    x = (x - mean) / std

    model = nn.Sequential(nn.Linear(30, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, 2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):  # full-batch training: 340 samples
        loss = nn.functional.cross_entropy(model(x[train]), y[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    xt, yt = x[test], y[test]

    @torch.no_grad()
    def evaluate(m: nn.Module) -> float:
        return float((m(xt).argmax(1) == yt).float().mean())

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        inputs, targets = batch
        return nn.functional.cross_entropy(m(inputs), targets)

    xc, yc = x[calib], y[calib]
    return Task(
        name="breast-cancer-mlp",
        model=model,
        example_input=(xt[:1],),
        calib_batches=[(xc[i : i + 32], yc[i : i + 32]) for i in range(0, len(xc), 32)],
        evaluate=evaluate,
        loss=loss_fn,
        logits=lambda m, batch: m(batch[0]),
        metric_name="top-1 accuracy",
        metadata={"dataset": "sklearn load_breast_cancer", "test_size": len(xt)},
    )


if __name__ == "__main__":
    from mpsearch.graph import build_layer_graph
    from mpsearch.plan import Candidate, Plan
    from mpsearch.simulate import apply_plan

    task = make_task().validate()
    graph = build_layer_graph(task.model, task.example_input)
    print(f"{task.name}: layers {graph.names}, float {task.metric_name} {task.evaluate(task.model):.3f}")
    for cand in ("int8", "int4", "int2"):
        sim = apply_plan(task.model, Plan.uniform(graph.names, Candidate.parse(cand)))
        print(f"  all layers {cand}: {task.evaluate(sim):.3f}")
