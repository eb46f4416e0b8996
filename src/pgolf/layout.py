"""A model's tensor names, shapes and counts without building it at its full depth.

Building a GPT on the meta device costs no tensor memory but about 2 ms of
Python per layer, so a header or a `--set` asking for 100,000 layers would
take minutes and gigabytes of module objects before anything could object.
Instead two shallow models are built on the meta device and the layout is
extrapolated in the number of layers:

- tensors outside `blocks.` (embedding, bigram, smear, skip weights) grow
  linearly in the layer count within one parity class (the U-Net skips number
  num_layers // 2), so the base models have the target's parity and differ by
  two layers;
- block i of the target copies block i of the base model for the first
  EDGE_LAYERS blocks, the matching block from the end for the last
  EDGE_LAYERS, and a middle block otherwise, so a switch that treats the first
  or last few layers differently is still predicted.

Every extrapolation is checked on the base models themselves (the smaller one
extrapolated to the larger one's depth must reproduce it exactly); a model
whose layout is not of this kind raises PgolfError instead of guessing.
Up to EXACT_MAX_LAYERS layers the model is simply built on the meta device.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Callable

import torch

from pgolf.config import ModelConfig
from pgolf.errors import PgolfError

Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]  # {tensor name: (shape, dtype)}
EDGE_LAYERS = 6
EXACT_MAX_LAYERS = 2 * EDGE_LAYERS + 4
BLOCK_NAME = re.compile(r"blocks\.(\d{1,9})\.(.+)")  # 9 digits: int() of any match is cheap


def _meta_model(config: ModelConfig) -> torch.nn.Module:
    from pgolf.model import GPT  # imported on use: model imports config, config users need not import torch models

    with torch.device("meta"):
        return GPT(config)


def _state_of(model: torch.nn.Module) -> Layout:
    return {name: (tuple(tensor.shape), tensor.dtype) for name, tensor in model.state_dict().items()}


def _parameters_of(model: torch.nn.Module) -> Layout:
    return {name: (tuple(tensor.shape), tensor.dtype) for name, tensor in model.named_parameters()}


def _split(layout: Layout) -> tuple[Layout, dict[int, Layout]]:
    """(tensors outside the blocks, {block index: {name inside the block: (shape, dtype)}})."""
    top: Layout = {}
    blocks: dict[int, Layout] = {}
    for name, entry in layout.items():
        match = BLOCK_NAME.fullmatch(name)
        if match:
            blocks.setdefault(int(match.group(1)), {})[match.group(2)] = entry
        else:
            top[name] = entry
    return top, blocks


def _extrapolate(small: Layout, small_layers: int, larger: Layout, larger_layers: int, num_layers: int) -> Layout:
    """The layout at `num_layers` from two layouts `larger_layers - small_layers` (= 2) layers apart."""
    small_top, small_blocks = _split(small)
    larger_top, _ = _split(larger)
    if set(small_top) != set(larger_top) or sorted(small_blocks) != list(range(small_layers)):
        raise PgolfError(f"cannot predict the tensor layout of a {num_layers}-layer model: the tensors outside "
                         "the blocks differ between two shallow copies")
    steps, remainder = divmod(num_layers - small_layers, larger_layers - small_layers)
    if remainder:
        raise PgolfError(f"internal error: {num_layers} layers are not reachable from {small_layers} in steps of "
                         f"{larger_layers - small_layers}")
    layout: Layout = {}
    for name, (shape, dtype) in small_top.items():
        larger_shape = larger_top[name][0]
        if len(larger_shape) != len(shape):
            raise PgolfError(f"cannot predict the tensor layout of a {num_layers}-layer model: {name} changes rank")
        layout[name] = (tuple(a + steps * (b - a) for a, b in zip(shape, larger_shape)), dtype)
    middle = small_layers // 2
    for index in range(num_layers):
        if index < EDGE_LAYERS:
            source = index
        elif index >= num_layers - EDGE_LAYERS:
            source = index - (num_layers - small_layers)
        else:
            source = middle
        for inner, entry in small_blocks[source].items():
            layout[f"blocks.{index}.{inner}"] = entry
    return layout


def _layout(config: ModelConfig, collect: Callable[[torch.nn.Module], Layout]) -> Layout:
    config.validate()
    if config.num_layers <= EXACT_MAX_LAYERS:
        return collect(_meta_model(config))
    # base depths with the target's parity, deep enough to hold both edges and a middle block
    first = 2 * EDGE_LAYERS + 1 + (config.num_layers - 2 * EDGE_LAYERS - 1) % 2
    depths = (first, first + 2, first + 4)
    base = [collect(_meta_model(replace(config, num_layers=depth))) for depth in depths]
    if _extrapolate(base[0], depths[0], base[1], depths[1], depths[2]) != base[2]:
        raise PgolfError(f"cannot predict the tensor layout of a {config.num_layers}-layer model: its layers are "
                         f"not repeats of one block (checked at {depths[0]}, {depths[1]} and {depths[2]} layers)")
    return _extrapolate(base[0], depths[0], base[1], depths[1], config.num_layers)


def state_layout(config: ModelConfig) -> Layout:
    """{name: (shape, dtype)} of `GPT(config).state_dict()`, in O(1) model builds whatever the depth."""
    return _layout(config, _state_of)


def parameter_layout(config: ModelConfig) -> Layout:
    """{name: (shape, dtype)} of `GPT(config).named_parameters()` (tied weights once)."""
    return _layout(config, _parameters_of)


def count_elements(layout: Layout) -> int:
    total = 0
    for shape, _ in layout.values():
        count = 1
        for size in shape:
            count *= size
        total += count
    return total


def count_parameters(config: ModelConfig) -> int:
    """What `pgolf.model.num_parameters(GPT(config))` returns, without building the model (nor its layout:
    a million layers would be ten million names)."""
    return extrapolate_in_layers(config, lambda shallow: count_elements(parameter_layout(shallow)))


def extrapolate_in_layers(config: ModelConfig, measure: Callable[[ModelConfig], int],
                          relative_tolerance: float = 0.0) -> int:
    """`measure(config)` for a deep config, from the same measure at three shallow depths of its parity.

    For quantities that grow by the same amount every two layers past the edges (parameters, stored
    bytes of a layout); exact up to EXACT_MAX_LAYERS layers, where `measure` is called directly. The
    growth must be constant over the three shallow depths (within `relative_tolerance` of it: a
    predicted file size grows a few bytes faster as offsets gain digits), else PgolfError.
    """
    config.validate()
    if config.num_layers <= EXACT_MAX_LAYERS:
        return measure(config)
    first = 2 * EDGE_LAYERS + 1 + (config.num_layers - 2 * EDGE_LAYERS - 1) % 2
    values = [measure(replace(config, num_layers=depth)) for depth in (first, first + 2, first + 4)]
    growth, later_growth = values[1] - values[0], values[2] - values[1]
    if abs(later_growth - growth) > relative_tolerance * abs(growth):
        raise PgolfError(f"cannot extrapolate to {config.num_layers} layers: the growth per two layers is not "
                         f"constant ({growth} then {later_growth})")
    return values[2] + (config.num_layers - first - 4) // 2 * later_growth
