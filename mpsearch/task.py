"""Task: what a user hands in, and how it is loaded from a built-in name or ``file.py:factory``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mpsearch.errors import MpsearchError

Batch = Any  # whatever ``loss`` accepts: a tensor, a tuple (inputs, targets), a dict of tensors


@dataclass
class Task:
    """A float model plus the data and metrics that search and verification need.

    ``evaluate(model) -> float`` is higher-is-better on held-out data; ``loss(model, batch)`` is a scalar
    differentiable loss used for second-order sensitivity; ``forward(model, batch)`` runs the model on a
    calibration batch (default: ``model(batch[0])`` for tuples, ``model(**batch)`` for dicts).
    """

    name: str
    model: torch.nn.Module
    example_input: tuple[torch.Tensor, ...]
    calib_batches: Sequence[Batch]
    evaluate: Callable[[torch.nn.Module], float]
    loss: Callable[[torch.nn.Module, Batch], torch.Tensor]
    metric_name: str = "accuracy"
    forward: Callable[[torch.nn.Module, Batch], Any] | None = None
    #: optional ``logits(model, batch) -> Tensor[..., classes]`` such that ``loss`` is the mean cross-entropy
    #: of these logits against the batch's labels; enables Gauss-Newton sensitivity (``method=ggn``)
    logits: Callable[[torch.nn.Module, Batch], torch.Tensor] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def run_forward(self, model: torch.nn.Module, batch: Batch) -> Any:
        if self.forward is not None:
            return self.forward(model, batch)
        if isinstance(batch, dict):
            return model(**batch)
        if isinstance(batch, (tuple, list)):
            return model(batch[0])
        return model(batch)

    def validate(self) -> "Task":
        """Reject tasks the pipeline cannot work with, with a one-line reason."""
        if not isinstance(self.model, torch.nn.Module):
            raise MpsearchError(f"task {self.name!r}: model is not a torch.nn.Module")
        if len(self.calib_batches) == 0:
            raise MpsearchError(f"task {self.name!r}: the calibration set is empty; provide at least one batch")
        for i, b in enumerate(self.calib_batches):
            for t in _tensors(b):
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise MpsearchError(f"task {self.name!r}: calibration batch {i} contains NaN or Inf")
        if not isinstance(self.example_input, tuple):
            self.example_input = (self.example_input,)
        return self


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


BUILTIN_TASKS: dict[str, str] = {
    "digits-cnn": "mpsearch.tasks.digits:digits_cnn",
    "fashion-cnn": "mpsearch.tasks.fashion:fashion_cnn",
    "minilm": "mpsearch.tasks.minilm:minilm_retrieval",
}


def load_task(spec: str, **kwargs: Any) -> Task:
    """Load a Task from a built-in name or ``path/to/file.py:factory``; errors are one line."""
    if spec in BUILTIN_TASKS:
        module_name, func = BUILTIN_TASKS[spec].split(":")
        factory = getattr(importlib.import_module(module_name), func)
    elif ":" in spec:
        path_text, func = spec.rsplit(":", 1)
        path = Path(path_text)
        if not path.is_file():
            raise MpsearchError(f"task file {path_text!r} does not exist", hint="give path/to/file.py:factory")
        mod_name = f"_mpsearch_user_task_{abs(hash(str(path.resolve())))}"
        try:
            spec_obj = importlib.util.spec_from_file_location(mod_name, path)
            if spec_obj is None or spec_obj.loader is None:
                raise MpsearchError(f"task file {path_text!r} is not a Python module")
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules[mod_name] = module
            spec_obj.loader.exec_module(module)
        except MpsearchError:
            raise
        except Exception as e:  # user code: report, do not crash
            raise MpsearchError(f"task file {path_text!r} failed to import: {type(e).__name__}: {e}") from None
        factory = getattr(module, func, None)
        if not callable(factory):
            raise MpsearchError(f"task file {path_text!r} has no function {func!r}")
    else:
        raise MpsearchError(f"unknown task {spec!r}", hint=f"built-in: {', '.join(BUILTIN_TASKS)}; or path/to/file.py:factory")
    try:
        task = factory(**kwargs)
    except MpsearchError:
        raise
    except Exception as e:
        raise MpsearchError(f"task factory {spec!r} raised {type(e).__name__}: {e}") from None
    if not isinstance(task, Task):
        raise MpsearchError(f"task factory {spec!r} returned {type(task).__name__}, expected mpsearch.Task")
    return task.validate()
