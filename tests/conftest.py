"""Shared test set-up: one torch thread (tiny models are faster and deterministic that way)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def digits_task():
    """The built-in digits CNN task (trained once, cached in the user cache dir)."""
    from mpsearch.task import load_task

    return load_task("digits-cnn")


@pytest.fixture(scope="session")
def digits_graph(digits_task):
    from mpsearch.graph import build_layer_graph

    return build_layer_graph(digits_task.model, digits_task.example_input)
