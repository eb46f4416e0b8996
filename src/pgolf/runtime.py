"""How a model runs on a device: autocast precision and whether to compile.

Shared by training and scoring, so `pgolf eval` runs an artifact exactly as the
training run that wrote it scored it (bf16 kernels differ compiled vs eager).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from typing import Callable

import torch

from pgolf.attention import resolve_backend


def autocast_dtype(setting: str) -> torch.dtype | None:
    """bf16 autocast unless "fp32" is asked for (on CPU too: AMX and AVX512-BF16 make it faster)."""
    return None if setting == "fp32" else torch.bfloat16


def autocast_context(dtype: torch.dtype | None, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the autocast context the model's forward runs under."""
    if dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype)


def should_compile(setting: str, device: torch.device) -> bool:
    """`setting` is "auto", "on" or "off". Auto compiles on GPU, and on CPU where a C++ compiler exists
    for inductor's kernels: `pgolf bench train` measured bf16 + compile fastest on CPU too."""
    if setting == "auto":
        return device.type == "cuda" or any(shutil.which(name) for name in ("g++", "clang++", "c++"))
    return setting == "on"


def compiled(model: torch.nn.Module, setting: str, device: torch.device) -> torch.nn.Module:
    """`model` compiled for fixed shapes when `should_compile` says so, else the model itself. The attention
    backend for `device` is decided here, once, so that compiled code reads a plain value
    (`attention.resolve_backend`)."""
    resolve_backend(device)
    return torch.compile(model, dynamic=False) if should_compile(setting, device) else model
