"""Evaluation time on 8xH100, predicted from one measured reference point.

Evaluation must finish within 600 s on 8xH100 (spec §6). The reference point
(spec §6-7): the PR-198 model's sliding-window evaluation, window 2048,
stride 64, over the 62,021,632 scored val tokens, took 69.8 s on 8 GPUs.
Every window runs a full forward pass over its 2048 positions, so the work is

    positions = num_windows(62,021,632, 2048, 64) x 2048 = 969,057 x 2048 ~ 1.985e9

which gives 1.985e9 / (8 x 69.8 s) ~ 3.55e6 token positions per second per
GPU for that model (`reference_positions_per_second()`). Another configuration
is predicted by scaling with its forward FLOPs per position relative to
PR-198's (`forward_flops_per_position`: 2 x the matmul weights the position
passes through, plus the causal attention term 2 x window x model_dim per
layer), i.e. assuming the same fraction of the H100's peak is reached. Small
models reach a lower fraction, so for them the prediction is optimistic; the
check is meant to catch configurations that are over by a wide margin
(stride 1, long windows, a much larger model), not to replace a measurement.

`pgolf verify` predicts for the split the submission is scored on: the
official sp1024 val split (62,021,846 tokens), or the local val split when it
is larger (a tokenizer with a larger vocabulary gives fewer tokens, so this is
conservative for it).
"""

from __future__ import annotations

import math

from pgolf.challenge import EVAL_SECONDS_LIMIT
from pgolf.challenge import OFFICIAL_SP1024_VAL_TARGETS
from pgolf.config import ModelConfig
from pgolf.verify.report import Check

REFERENCE_SECONDS = 69.8  # sliding eval of the PR-198 stack on 8xH100 (spec §7)
REFERENCE_GPUS = 8
REFERENCE_SCORED_TOKENS = OFFICIAL_SP1024_VAL_TARGETS
REFERENCE_SEQ_LEN = 2048
REFERENCE_STRIDE = 64


def num_windows(num_targets: int, seq_len: int, stride: int) -> int:
    """Windows `pgolf.evaluate.sliding_windows` uses: the first scores min(seq_len, N) targets, each later
    one `stride` more (the last moved back to end at the last target)."""
    if num_targets <= 0:
        return 0
    if num_targets <= seq_len:
        return 1
    return 1 + math.ceil((num_targets - seq_len) / stride)


def forward_flops_per_position(model: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs of one token position in a window of `seq_len` (multiply-add = 2 FLOPs)."""
    width = model.model_dim
    kv_width = model.num_kv_heads * model.head_dim
    per_layer_weights = 2 * width * width + 2 * width * kv_width + 2 * width * model.mlp_hidden  # q, proj, k, v, mlp
    matmul = model.num_layers * per_layer_weights + width * model.vocab_size  # tied output head
    if model.bigram_buckets > 0:
        matmul += model.bigram_dim * width
    attention = model.num_layers * 2 * seq_len * width  # QK^T and AV over on average seq_len / 2 keys
    return 2.0 * matmul + attention


def reference_positions_per_second() -> float:
    """Token positions per second per H100 in the reference sliding evaluation (~3.55e6)."""
    positions = num_windows(REFERENCE_SCORED_TOKENS, REFERENCE_SEQ_LEN, REFERENCE_STRIDE) * REFERENCE_SEQ_LEN
    return positions / (REFERENCE_GPUS * REFERENCE_SECONDS)


def predict_eval_seconds(model: ModelConfig, num_val_tokens: int, seq_len: int, stride: int,
                         num_gpus: int = 8) -> float:
    """Predicted wall time of evaluating `model` over `num_val_tokens` val tokens on `num_gpus` H100s."""
    reference_model = ModelConfig()  # PR-198's architecture, the model the reference time was measured on
    flops_ratio = (forward_flops_per_position(model, seq_len)
                   / forward_flops_per_position(reference_model, REFERENCE_SEQ_LEN))
    positions = num_windows(num_val_tokens - 1, seq_len, stride) * min(seq_len, max(num_val_tokens - 1, 1))
    return positions * flops_ratio / (reference_positions_per_second() * num_gpus)


def check_eval_budget(label: str, model: ModelConfig, num_val_tokens: int, seq_len: int, stride: int,
                      budget_seconds: float = EVAL_SECONDS_LIMIT) -> Check:
    seconds = predict_eval_seconds(model, num_val_tokens, seq_len, stride)
    ratio = forward_flops_per_position(model, seq_len) / forward_flops_per_position(ModelConfig(), REFERENCE_SEQ_LEN)
    windows = num_windows(num_val_tokens - 1, seq_len, stride)
    shown = f"{seconds:,.1f}" if seconds >= 1 else f"{seconds:.2g}"
    evidence = (f"{label}: window {seq_len}, stride {stride}: {windows:,} windows over {num_val_tokens:,} val "
                f"tokens, {ratio:.2f}x PR-198's FLOPs per position -> predicted {shown} s on 8xH100 "
                f"(budget {budget_seconds:.0f} s)")
    return Check("eval.time_budget", seconds <= budget_seconds, evidence)
