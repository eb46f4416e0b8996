"""Optional hand-written CPU kernels (install with `pip install -e ".[cpu-kernels]"`).

`cpu_attention`: bf16 causal attention, forward and backward, on the AMX tile unit of Intel Xeons
(~2x PyTorch's CPU flash attention at the pr198 shape, docs/performance.md). It is a speed-up for
CPU training only: the model and the training loop know nothing of it. A command that trains on
CPU calls `enable_cpu_attention` first; that registers the kernels with `pgolf.attention` when
they are asked for (`--cpu-kernels`), or when they were built before on this machine. They are
never part of an exported `train_gpt.py`.
"""

from __future__ import annotations

import importlib.util


def enable_cpu_attention(build: bool = False, announce=None) -> str | None:
    """Register pgolf's AMX attention kernels if this machine can run them and they are built (or `build`
    asks to compile them now, ~20 s once per machine). Returns None when in use, else why not."""
    if importlib.util.find_spec("ninja") is None:
        return 'the cpu-kernels extra is not installed (pip install -e ".[cpu-kernels]")'
    from pgolf.kernels import build as kernel_build
    from pgolf.kernels import cpu_attention

    if cpu_attention.attempted():
        return cpu_attention.unavailable_reason()
    if not build and not kernel_build.is_built(cpu_attention.LIBRARY_NAME):
        return "not built on this machine (--cpu-kernels builds it)"
    if announce is not None:
        announce("CPU attention: loading pgolf's AMX kernels" + (" (compiling on first use, ~20 s)" if build else ""))
    return cpu_attention.prepare()
