"""Candidates and plans: what the search chooses, serialisable to versioned JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from mpsearch.atomic import atomic_write_text
from mpsearch.errors import MpsearchError
from mpsearch.formats import parse_format

PLAN_VERSION = 1


@dataclass(frozen=True, order=True)
class Candidate:
    """One choice for a layer: weight format and input-activation format (canonical spellings)."""

    weight: str
    act: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", parse_format(self.weight).spelling)
        object.__setattr__(self, "act", parse_format(self.act).spelling)

    @property
    def key(self) -> str:
        """``w/a`` spelling used as a table key, e.g. ``int4/fp32``."""
        return f"{self.weight}/{self.act}"

    @classmethod
    def parse(cls, text: str) -> "Candidate":
        """``int4`` (weight-only) or ``int8/int8`` (weight/activation)."""
        if not isinstance(text, str) or not text.strip():
            raise MpsearchError(f"candidate must be a non-empty string like 'int4' or 'int8/int8', got {text!r}")
        parts = text.split("/")
        if len(parts) > 2:
            raise MpsearchError(f"candidate {text!r} has more than one '/'; write weight/act, e.g. int8/int8")
        return cls(parts[0], parts[1] if len(parts) == 2 else "fp32")

    def __str__(self) -> str:
        return self.key


def parse_candidates(texts: Iterable[str]) -> list[Candidate]:
    """Parse a list of candidate spellings, de-duplicated in order."""
    seen: dict[str, Candidate] = {}
    for t in texts:
        c = Candidate.parse(t)
        seen.setdefault(c.key, c)
    if not seen:
        raise MpsearchError("no candidate formats given")
    return list(seen.values())


@dataclass
class Plan:
    """The chosen candidate per quantizable layer, plus free-form provenance."""

    layers: dict[str, Candidate]
    task: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def uniform(cls, layer_names: Iterable[str], candidate: Candidate, task: str = "") -> "Plan":
        return cls({n: candidate for n in layer_names}, task=task, metadata={"uniform": candidate.key})

    def to_dict(self) -> dict[str, Any]:
        return {
            "mpsearch_plan": PLAN_VERSION,
            "task": self.task,
            "layers": {n: {"weight": c.weight, "act": c.act} for n, c in self.layers.items()},
            "metadata": self.metadata,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any, *, layer_names: Iterable[str] | None = None) -> "Plan":
        """Validate and build; with ``layer_names`` the plan must cover exactly those layers."""
        if not isinstance(data, Mapping):
            raise MpsearchError("malformed plan: top level must be a JSON object")
        version = data.get("mpsearch_plan")
        if version != PLAN_VERSION:
            raise MpsearchError(f"malformed plan: 'mpsearch_plan' version is {version!r}, this mpsearch reads {PLAN_VERSION}")
        layers = data.get("layers")
        if not isinstance(layers, Mapping) or not layers:
            raise MpsearchError("malformed plan: 'layers' must be a non-empty object of layer -> {weight, act}")
        parsed: dict[str, Candidate] = {}
        for name, entry in layers.items():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("weight"), str):
                raise MpsearchError(f"malformed plan: layer {name!r} needs a 'weight' format string")
            act = entry.get("act", "fp32")
            if not isinstance(act, str):
                raise MpsearchError(f"malformed plan: layer {name!r} has a non-string 'act'")
            parsed[str(name)] = Candidate(entry["weight"], act)
        if layer_names is not None:
            expected = set(layer_names)
            missing, extra = expected - parsed.keys(), parsed.keys() - expected
            if missing or extra:
                raise MpsearchError(
                    f"plan does not match the model: missing layers {sorted(missing)[:3]}, unknown layers {sorted(extra)[:3]}"
                )
        meta = data.get("metadata", {})
        task = data.get("task", "")
        if not isinstance(meta, Mapping) or not isinstance(task, str):
            raise MpsearchError("malformed plan: 'metadata' must be an object and 'task' a string")
        return cls(parsed, task=task, metadata=dict(meta))

    @classmethod
    def from_json(cls, text: str, **kw: Any) -> "Plan":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
            raise MpsearchError(f"malformed plan JSON: {e}") from None
        return cls.from_dict(data, **kw)

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path, **kw: Any) -> "Plan":
        p = Path(path)
        if not p.is_file():
            raise MpsearchError(f"plan file {str(p)!r} not found")
        return cls.from_json(p.read_text(errors="replace"), **kw)
