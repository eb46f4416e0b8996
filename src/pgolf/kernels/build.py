"""Compile and load a C++ operator library that ships next to this file, once per process.

The library is built by `torch.utils.cpp_extension.load` into PyTorch's extension cache
(`TORCH_EXTENSIONS_DIR`, by default ~/.cache/torch_extensions), so only the first process on a
machine pays the compile (~15 s); later ones load the cached library, and an edited source is
rebuilt. Failures never propagate: the caller gets the reason and keeps its fallback.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path


SOURCE_DIR = Path(__file__).resolve().parent
DISABLE_VARIABLE = "PGOLF_CPU_KERNELS"  # "0" switches every hand-written CPU kernel off

# The kernels use AVX-512 (with bf16 conversions) through ATen's vector types; OpenMP so that
# at::parallel_for, which is inline in ATen's headers, really runs on all threads.
AVX512_FLAGS = ["-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16",
                "-mfma", "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def amx_unavailable_reason() -> str | None:
    """Why AMX bf16 kernels cannot run here, or None when they can."""
    if os.environ.get(DISABLE_VARIABLE, "1") == "0":
        return f"switched off by {DISABLE_VARIABLE}=0"
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"needs an x86-64 CPU, this is {platform.machine()}"
    missing = {"amx_bf16", "amx_tile", "avx512_bf16"} - cpu_flags()
    if missing:
        return f"the CPU lacks {', '.join(sorted(missing))}"
    if not any(shutil.which(name) for name in ("c++", "g++", "clang++")):
        return "no C++ compiler on PATH"
    return None


def is_built(name: str) -> bool:
    """Whether PyTorch's extension cache already holds a library built for operator library `name`."""
    from torch.utils import cpp_extension

    folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    return any(folder.glob(f"{name}*.so"))


def load_operator_library(name: str, source: str) -> str | None:
    """Build (or reuse) and load `source` as operator library `name`; None on success, else why not."""
    from torch.utils import cpp_extension

    try:
        cpp_extension.load(name=name, sources=[str(SOURCE_DIR / source)], extra_cflags=AVX512_FLAGS,
                           extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
    except (RuntimeError, OSError, ImportError, subprocess.CalledProcessError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"building {source} failed: {first_line}"
    return None
