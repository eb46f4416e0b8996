"""A run's averaged weights in full precision, `RUN_DIR/weights.safetensors` (safetensors: no pickle).

The run's finish writes them beside the artifact, so that `pgolf quantize` can quantise the same
weights again with any scheme and compressor without retraining.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pgolf.errors import PgolfError

FULL_WEIGHTS_NAME = "weights.safetensors"


def save_full_weights(path, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write a state dict (CPU copies of its tensors) atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state_dict.items()}
    temporary = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(temporary))
    temporary.replace(path)
    return path


def load_full_weights(path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"{path}: no full-precision weights (a run keeps them as {FULL_WEIGHTS_NAME})")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise PgolfError(f"{path}: not a readable safetensors file ({str(error).splitlines()[0]})") from None
