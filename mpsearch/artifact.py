"""The deployment artifact's manifest: what was built, for which target, and the checksum of every file.

An artifact is a directory (compiled library, packed weights, plan JSON, manifest.json). The manifest is
the contract between the compiler (``backends.tvm``) and the runtime loader (``backends.artifact``): the
loader trusts nothing in the directory that the manifest does not vouch for. No TVM import here, so the
CLI and reports can inspect an artifact without the compiler.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mpsearch.atomic import atomic_write_json
from mpsearch.errors import MpsearchError


def _mpsearch_version() -> str:
    """The running mpsearch version (also when the package is imported as a namespace package)."""
    try:
        from mpsearch import __version__

        return str(__version__)
    except ImportError:
        from importlib.metadata import version

        return version("mpsearch")


MPSEARCH_VERSION = _mpsearch_version()

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, streamed (weights can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class TensorSpec:
    """Name, shape and dtype of one runtime input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorSpec":
        return cls(str(d["name"]), tuple(int(s) for s in d["shape"]), str(d["dtype"]))


@dataclass
class Artifact:
    """Manifest of a compiled plan: ``files`` maps each relative path to its sha256.

    ``library`` is the compiled module, ``weights`` the packed parameter file (their order is
    ``param_names``), ``inputs``/``outputs`` the runtime signature, ``versions`` the mpsearch/TVM
    versions that built it, ``parity`` the measured agreement with the PyTorch simulation.
    """

    directory: Path
    target: str
    target_kind: str
    plan: dict[str, Any]
    files: dict[str, str]
    versions: dict[str, str]
    library: str = "model.so"
    weights: str = "weights.safetensors"
    param_names: list[str] = field(default_factory=list)
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    parity: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    # -- (de)serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("directory")
        d["mpsearch_artifact"] = MANIFEST_VERSION
        return d

    def save(self) -> Path:
        """Write manifest.json (atomically) after hashing every listed file."""
        self.files = {rel: sha256_file(self.directory / rel) for rel in sorted(self.files)}
        return atomic_write_json(self.directory / MANIFEST_NAME, self.to_dict())

    @classmethod
    def load(cls, directory: str | Path) -> "Artifact":
        """Read the manifest (no checksum check: call ``verify()``)."""
        import json

        d = Path(directory)
        mpath = d / MANIFEST_NAME
        if not mpath.is_file():
            raise MpsearchError(f"{str(d)!r} is not an mpsearch artifact: {MANIFEST_NAME} is missing")
        try:
            data = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MpsearchError(f"artifact manifest {str(mpath)!r} is corrupt: {e}") from None
        if not isinstance(data, dict) or data.get("mpsearch_artifact") != MANIFEST_VERSION:
            raise MpsearchError(
                f"artifact manifest {str(mpath)!r} has format version {data.get('mpsearch_artifact') if isinstance(data, dict) else None!r}, "
                f"this mpsearch reads {MANIFEST_VERSION}"
            )
        try:
            return cls(
                directory=d,
                target=str(data["target"]),
                target_kind=str(data["target_kind"]),
                plan=dict(data["plan"]),
                files={str(k): str(v) for k, v in data["files"].items()},
                versions={str(k): str(v) for k, v in data["versions"].items()},
                library=str(data.get("library", "model.so")),
                weights=str(data.get("weights", "weights.safetensors")),
                param_names=[str(p) for p in data.get("param_names", [])],
                inputs=[TensorSpec.from_dict(t) for t in data.get("inputs", [])],
                outputs=[TensorSpec.from_dict(t) for t in data.get("outputs", [])],
                parity=dict(data.get("parity", {})),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise MpsearchError(f"artifact manifest {str(mpath)!r} is malformed: missing or bad field {e}") from None

    # -- checks -------------------------------------------------------------------------------------
    def verify(self, *, expected_kind: str | None = None) -> "Artifact":
        """Refuse the artifact unless every file matches its sha256 and it was built by this mpsearch.

        ``expected_kind`` ("llvm" / "cuda") additionally rejects an artifact built for another target.
        """
        built_with = self.versions.get("mpsearch")
        if built_with != MPSEARCH_VERSION:
            raise MpsearchError(
                f"artifact {str(self.directory)!r} was built by mpsearch {built_with}, this is {MPSEARCH_VERSION}",
                hint="rebuild it with this version",
            )
        if expected_kind is not None and self.target_kind != expected_kind:
            raise MpsearchError(
                f"artifact {str(self.directory)!r} targets {self.target_kind!r}, not {expected_kind!r}",
                hint="compile the plan for this target",
            )
        for needed in (self.library, self.weights):
            if needed not in self.files:
                raise MpsearchError(f"artifact manifest does not list its own {needed!r}; the artifact is corrupt")
        root = self.directory.resolve()
        for rel, digest in self.files.items():
            p = (self.directory / rel).resolve()
            if root not in p.parents:
                raise MpsearchError(f"artifact manifest names a file outside the artifact: {rel!r}")
            if not p.is_file():
                raise MpsearchError(f"artifact file {rel!r} is missing from {str(self.directory)!r}")
            if sha256_file(p) != digest:
                raise MpsearchError(
                    f"artifact file {rel!r} does not match its sha256 in the manifest (modified or corrupt)",
                    hint="rebuild the artifact",
                )
        return self
