"""Cross-compile CUDA (sm_90) artifacts on a machine without a GPU, with device code embedded.

TVM 0.27 compiles CUDA source through the ``tvm_callback_cuda_compile`` hook; with
``TVM_CUDA_COMPILE_MODE=nvcc`` and the target in scope it produces a fatbin that is stored in the
exported library, so the target machine needs no compiler (notes/gpu.md). Building a CUDA module needs
``libtvm_runtime_cuda.so`` loaded, which links the driver ``libcuda.so.1``; on a GPU-less build machine we
load a stub exporting those entry points (each returns CUDA_ERROR_NO_DEVICE), compiled here with gcc
from the symbol list of the installed runtime (nothing binary is committed).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

from mpsearch.cache import user_cache_dir
from mpsearch.errors import MpsearchError

_LOADED = False


def _tvm_lib_dir() -> Path:
    import tvm

    return Path(tvm.__file__).parent / "lib"


def _driver_symbols(sidecar: Path) -> list[str]:
    out = subprocess.run(["nm", "-D", "--undefined-only", str(sidecar)], capture_output=True, text=True, check=True).stdout
    return sorted({line.split()[-1] for line in out.splitlines() if line.split() and line.split()[-1].startswith("cu")
                   and not line.split()[-1].startswith("cuda")})


def build_driver_stub(folder: Path | None = None) -> Path:
    """gcc-compile ``libcuda.so.1`` exporting the driver calls the CUDA sidecar links (all fail)."""
    folder = folder or (user_cache_dir() / "tvm-cuda-stub")
    lib = folder / "libcuda.so.1"
    if lib.is_file():
        return lib
    if shutil.which("gcc") is None or shutil.which("nm") is None:
        raise MpsearchError("building CUDA artifacts without a GPU needs gcc and nm (binutils) on this machine")
    syms = _driver_symbols(_tvm_lib_dir() / "libtvm_runtime_cuda.so")
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "cuda_stub.c"
    src.write_text("/* generated: CUDA driver stub for GPU-less cross compilation */\n"
                   + "".join(f"int {s}(void) {{ return 100; }}\n" for s in syms))
    tmp = folder / ".libcuda.so.1.tmp"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(src)], check=True)
    tmp.replace(lib)
    return lib


def load_cuda_sidecar() -> None:
    """Make TVM's CUDA runtime (module creation/serialisation) available in this process."""
    global _LOADED
    if _LOADED:
        return
    try:
        ctypes.CDLL("libcuda.so.1", ctypes.RTLD_GLOBAL)
    except OSError:
        ctypes.CDLL(str(build_driver_stub()), ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(_tvm_lib_dir() / "libtvm_runtime_cuda.so"), ctypes.RTLD_GLOBAL)
    _LOADED = True


@contextlib.contextmanager
def cuda_build_env() -> Iterator[None]:
    """nvcc-mode device compilation with the sidecar loaded; restores the environment afterwards."""
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").is_file():
        raise MpsearchError("compiling for CUDA needs nvcc on this machine (CUDA toolkit)")
    load_cuda_sidecar()
    saved = {k: os.environ.get(k) for k in ("TVM_CUDA_COMPILE_MODE", "CUDA_PATH", "PATH")}
    os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    os.environ.setdefault("CUDA_PATH", "/usr/local/cuda")
    os.environ["PATH"] = f"{os.environ['CUDA_PATH']}/bin:{os.environ.get('PATH', '')}"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
