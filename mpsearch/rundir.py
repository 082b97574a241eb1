"""The run directory: every stage's result lands here atomically, so an interrupted run resumes.

A stage is recomputed only if its file is missing or was written under a different configuration
(each checkpoint records the fingerprint of the settings that produced it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, TypeVar

from mpsearch.atomic import atomic_write_json
from mpsearch.errors import MpsearchError

T = TypeVar("T")


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object (settings, plans)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunDir:
    """``runs/<name>/``: resolved config, checkpoints, plans, plots, report, artifact."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if create:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise MpsearchError(f"cannot create run directory {str(self.path)!r}: {e.strerror}") from None
        elif not self.path.is_dir():
            raise MpsearchError(f"run directory {str(self.path)!r} does not exist", hint="run 'mpsearch optimize' first")

    def file(self, name: str) -> Path:
        return self.path / name

    def read_json(self, name: str) -> Any:
        p = self.file(name)
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            raise MpsearchError(f"{p} is missing", hint="run the stage that produces it, or 'mpsearch optimize'") from None
        except json.JSONDecodeError as e:
            raise MpsearchError(f"{p} is corrupt ({e.msg}); delete it to recompute that stage") from None

    def write_json(self, name: str, data: Any) -> Path:
        return atomic_write_json(self.file(name), data)

    def stage(self, name: str, key: Any, compute: Callable[[], T], *, dump: Callable[[T], Any], load: Callable[[Any], T],
              resume: bool = True) -> tuple[T, bool]:
        """Return (value, reused): the checkpoint ``name`` if written under the same ``key``, else compute it."""
        fp = fingerprint(key)
        p = self.file(name)
        if resume and p.is_file():
            try:
                data = json.loads(p.read_text())
                if data.get("key") == fp:
                    return load(data["value"]), True
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                pass  # corrupt or foreign checkpoint: recompute
        value = compute()
        atomic_write_json(p, {"key": fp, "value": dump(value)})
        return value, False
