"""Runtime loader for compiled artifacts: verify every checksum, then run with only the TVM runtime.

Imports nothing from the TVM compiler (``tvm.relax`` needs it), so an artifact runs on a machine that has
just the runtime (``TVM_USE_RUNTIME_LIB=1``, see notes/gpu.md). Weights are read from the safetensors
file with a small reader of our own, so the target needs numpy and TVM's runtime only.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.artifact import Artifact
from mpsearch.errors import MpsearchError

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "U8": np.uint8, "I8": np.int8, "U16": np.uint16,
              "I16": np.int16, "I32": np.int32, "U32": np.uint32, "F64": np.float64, "I64": np.int64}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Minimal safetensors reader (header length, JSON header, raw little-endian data)."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise MpsearchError(f"weights file {str(path)!r} is truncated")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MpsearchError(f"weights file {str(path)!r} has a corrupt header: {e}") from None
    base = 8 + n
    out: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dt = _ST_DTYPES.get(meta.get("dtype"))
        if dt is None:
            raise MpsearchError(f"weights file {str(path)!r}: tensor {name!r} has unsupported dtype {meta.get('dtype')!r}")
        lo, hi = meta["data_offsets"]
        out[name] = np.frombuffer(data[base + lo : base + hi], dtype=dt).reshape(meta["shape"]).copy()
    return out


def _load_cuda_runtime() -> None:
    """In runtime-only mode TVM does not load its CUDA sidecar by itself (notes/gpu.md)."""
    import tvm

    lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    if lib.is_file():
        try:
            ctypes.CDLL(str(lib), ctypes.RTLD_GLOBAL)
        except OSError as e:  # no NVIDIA driver on this machine (libcuda.so.1 missing)
            raise MpsearchError(f"this artifact targets CUDA but the CUDA runtime cannot load here ({e})",
                                hint="run it on a machine with an NVIDIA GPU and driver, or compile for llvm") from None


def cuda_device_available(device_id: int = 0) -> bool:
    """Whether a CUDA artifact could run here (driver, TVM's CUDA runtime and a device all present)."""
    import tvm

    try:
        _load_cuda_runtime()
        return bool(tvm.cuda(device_id).exist)
    except (MpsearchError, RuntimeError, OSError):
        return False


class LoadedArtifact:
    """A verified artifact bound to a device: ``run(*inputs) -> np.ndarray`` (the first output).

    Per-call work is kept to a minimum (a 10-layer CNN runs in tens of microseconds, so Python-side
    conversions would dominate): input buffers are allocated once, the VM function is bound to them and
    to the weights once (``save_function``: a call passes no arguments), and on the CPU inputs are copied
    into numpy views of those buffers and outputs are returned as zero-copy numpy views (DLPack) of the
    tensors the VM returns (fresh per call).
    """

    def __init__(self, manifest: Artifact, vm: Any, params: list[Any], device: Any) -> None:
        import tvm

        self.manifest = manifest
        self._vm = vm
        self._main = vm["main"]
        self._params = params
        self.device = device
        # input buffers are allocated once and refilled per call (allocation costs more than small models)
        self._inputs = [tvm.runtime.empty(tuple(s.shape), s.dtype, device) for s in manifest.inputs]
        self._cpu = device.dlpack_device_type() == 1 if hasattr(device, "dlpack_device_type") else device.device_type == 1
        self._views = [np.from_dlpack(b) for b in self._inputs] if self._cpu else None
        vm.save_function("main", "mpsearch_bound_main", *self._inputs, *self._params)
        self._bound = vm["mpsearch_bound_main"]

    def _call(self, inputs: tuple) -> list[np.ndarray]:
        specs = self.manifest.inputs
        if len(inputs) != len(specs):
            raise MpsearchError(f"the artifact takes {len(specs)} input(s), got {len(inputs)}")
        for i, (spec, x) in enumerate(zip(specs, inputs)):
            a = x if isinstance(x, np.ndarray) else np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
            if a.shape != spec.shape:
                raise MpsearchError(f"input {spec.name!r} must have shape {list(spec.shape)}, got {list(a.shape)}")
            if self._views is not None:
                np.copyto(self._views[i], a, casting="unsafe")
            else:
                self._inputs[i].copyfrom(np.ascontiguousarray(a, dtype=spec.dtype))
        return _flatten(self._bound(), self._cpu)

    def run(self, *inputs: Any) -> np.ndarray:
        """Run on numpy arrays (or torch tensors) of the manifest's input shapes; returns output 0."""
        return self._call(inputs)[0]

    def run_all(self, *inputs: Any) -> list[np.ndarray]:
        return self._call(inputs)

    def check_reference(self) -> tuple[float, float]:
        """(max abs diff, bound) of this artifact vs the simulation outputs stored at build time.

        The bound is ``atol + rtol * max|reference|`` with the tolerances in the manifest; this is how a
        CUDA artifact, built on a GPU-less machine, is checked on the GPU it runs on.
        """
        path = self.manifest.directory / "reference.npz"
        if "reference.npz" not in self.manifest.files:
            raise MpsearchError("this artifact has no reference.npz to check against")
        with np.load(path, allow_pickle=False) as ref:
            inputs = [ref[f"input{i}"] for i in range(len(self.manifest.inputs))]
            outs = [ref[f"output{i}"] for i in range(len(self.manifest.outputs))]
        got = self.run_all(*inputs)
        atol = float(self.manifest.parity.get("atol", 1e-4))
        rtol = float(self.manifest.parity.get("rtol", 2e-3))
        diff = max(float(np.abs(g - r).max()) for g, r in zip(got, outs))
        bound = min(atol + rtol * float(np.abs(r).max(initial=0.0)) for r in outs)
        return diff, bound

    def time(self, *inputs: Any, number: int = 20, repeat: int = 5) -> float:
        """Median seconds per call (TVM's time_evaluator, after warm-up)."""
        import tvm

        args = [tvm.runtime.tensor(np.ascontiguousarray(np.asarray(x, dtype=s.dtype)), self.device)
                for s, x in zip(self.manifest.inputs, inputs)]
        self._vm["main"](*args, *self._params)
        f = self._vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        return float(f(*args, *self._params).median)


def _flatten(out: Any, cpu: bool = False) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [np.from_dlpack(out) if cpu else out.numpy()]
    res: list[np.ndarray] = []
    for o in out:
        res.extend(_flatten(o, cpu))
    return res


def load_artifact(directory: str | Path, *, target: str | None = None, device_id: int = 0) -> LoadedArtifact:
    """Verify ``directory``'s manifest (sha256 of every file, mpsearch version, target) and load it."""
    man = Artifact.load(directory)
    man.verify(expected_kind=target)
    import tvm

    built, here = _release(man.versions.get("tvm", "")), _release(tvm.__version__)
    if built != here:  # compiled libraries carry no ABI promise across TVM releases
        raise MpsearchError(f"artifact was built with TVM {man.versions.get('tvm')!r}, this runtime is TVM {tvm.__version__!r}",
                            hint="rebuild the artifact with this TVM, or install the TVM it was built with")

    if man.target_kind == "cuda":
        _load_cuda_runtime()
        dev = tvm.cuda(device_id)
        if not dev.exist:
            raise MpsearchError("this artifact targets CUDA but no CUDA device is available here")
    elif man.target_kind == "llvm":
        dev = tvm.cpu(device_id)
        host = man.extra.get("host_cpu")
        here = _host_cpu()
        if host and here and host != here and os.environ.get("MPSEARCH_ALLOW_OTHER_CPU") != "1":
            raise MpsearchError(f"artifact was compiled for CPU {host!r}, this machine is {here!r}",
                                hint="recompile, or set MPSEARCH_ALLOW_OTHER_CPU=1 if the instruction sets match")
    else:
        raise MpsearchError(f"artifact target {man.target_kind!r} is not runnable by this loader")
    weights = read_safetensors(man.directory / man.weights)
    missing = [n for n in man.param_names if n not in weights]
    if missing:
        raise MpsearchError(f"weights file lacks parameters {missing[:3]}; the artifact is corrupt")
    from tvm.runtime.vm import VirtualMachine  # a submodule: not imported by ``import tvm`` in runtime-only mode

    lib = tvm.runtime.load_module(str(man.directory / man.library))
    vm = VirtualMachine(lib, dev)
    params = [tvm.runtime.tensor(weights[n], dev) for n in man.param_names]
    return LoadedArtifact(man, vm, params, dev)


def _release(version: str) -> str:
    """``0.27.0.post1`` -> ``0.27.0``: post releases only repackage the same runtime."""
    return version.split(".post")[0].split("+")[0]


def _host_cpu() -> str | None:
    try:
        import tvm

        return str(tvm.target.codegen.llvm_get_system_cpu())
    except Exception:  # runtime-only TVM has no LLVM: skip the check  # noqa: BLE001
        return None


def run_artifact(directory: str | Path, input_npy_path: str | Path) -> np.ndarray:
    """``mpsearch run ARTIFACT INPUT``: load the artifact, run it on one ``.npy`` input, return output 0."""
    p = Path(input_npy_path)
    if not p.is_file():
        raise MpsearchError(f"input file {str(p)!r} not found")
    try:
        x = np.load(p, allow_pickle=False)
    except ValueError as e:
        raise MpsearchError(f"input file {str(p)!r} is not a .npy array: {e}") from None
    return load_artifact(directory).run(x)
