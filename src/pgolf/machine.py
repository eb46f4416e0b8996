"""What machine a number was measured on: the CPU model (or GPU name), cores, and torch version.

Speed figures and time-budgeted scores depend on the machine, so every table that shows one
names it (the demo's summary, `pgolf bench`, the run log's header).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name as Linux reports it (e.g. "Intel(R) Xeon(R) Processor", "AMD EPYC 9R14"),
    with its matrix extensions, else what `platform` knows."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    name = names[0] if names else (platform.processor() or platform.machine())
    extension = " with AMX" if "amx_bf16" in text else (" with AVX512-BF16" if "avx512_bf16" in text else "")
    return name + extension


def describe_machine(device) -> str:
    """One line naming the device a measurement ran on."""
    import torch

    if getattr(device, "type", device) == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"
