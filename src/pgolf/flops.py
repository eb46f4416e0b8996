"""FLOP counting for the GPT (pure functions of the config), used to turn speed into utilisation.

Convention (the one the challenge community and the PaLM paper use):

* every weight that multiplies the activations of every token costs 2 FLOPs
  per token forward and 4 backward, so 6 per token for a training step. Those
  "matrix parameters" are the linears inside the blocks (q, k, v, attention
  output, MLP in and out), the bigram projection and the tied output head
  (the token embedding used as a matrix). Lookups (token embedding on the
  input side, bigram table) and element-wise work (norms, gates, rotary,
  soft-cap) are not counted;
* causal attention: q k^T and attention x v each cost 2 * T * width FLOPs per
  query position and layer over the full T x T square, i.e. 4 * T * width
  forward; causality halves it to 2 * T * width forward and 6 * T * width for
  forward plus backward.

So a training token costs 6 * N_matrix + 6 * layers * T * width, and a
forward-only (evaluation) position 2 * N_matrix + 2 * layers * T * width.
The optimiser's Newton-Schulz work is not in the count (it is not per token).
"""

from __future__ import annotations

import math

from torch import nn


from pgolf.config import ModelConfig


def block_matrix_parameters(config: ModelConfig) -> int:
    """Weights of one block's linears: q, k, v, attention output, MLP in, MLP out."""
    width, kv_width, hidden = config.model_dim, config.num_kv_heads * config.head_dim, config.mlp_hidden
    attention = width * width + 2 * width * kv_width + width * width
    mlp = 2 * width * hidden
    return attention + mlp


def matrix_parameters(config: ModelConfig) -> int:
    """Weights every token is multiplied by: all block linears, the bigram projection, the output head."""
    bigram = config.bigram_dim * config.model_dim if config.bigram_buckets > 0 else 0
    head = config.vocab_size * config.model_dim  # tied: the input embedding is a lookup, not counted
    return config.num_layers * block_matrix_parameters(config) + bigram + head


def matrix_parameters_of_model(model: nn.Module) -> int:
    """The same count read off a built model: every nn.Linear weight plus the tied head `tok_emb`."""
    linear = sum(module.weight.numel() for module in model.modules() if isinstance(module, nn.Linear))
    return linear + model.tok_emb.weight.numel()


def attention_flops_per_token(config: ModelConfig, seq_len: int, backward: bool = True) -> int:
    """Causal attention score and mixing FLOPs per position: 2*T*width forward, x3 with backward."""
    forward = 2 * config.num_layers * seq_len * config.model_dim
    return 3 * forward if backward else forward


def training_flops_per_token(config: ModelConfig, seq_len: int) -> int:
    """6 * matrix parameters + 6 * layers * seq_len * width."""
    return 6 * matrix_parameters(config) + attention_flops_per_token(config, seq_len, backward=True)


def forward_flops_per_position(config: ModelConfig, seq_len: int) -> int:
    """2 * matrix parameters + 2 * layers * seq_len * width: one evaluation position in a window of seq_len."""
    return 2 * matrix_parameters(config) + attention_flops_per_token(config, seq_len, backward=False)


def sliding_window_count(num_targets: int, seq_len: int, stride: int) -> int:
    """Number of windows `evaluate.sliding_windows` makes, in closed form (no list of ~1 M tuples).

    The first window scores min(seq_len, N) targets and each later one `stride` more (the last
    one possibly fewer), so windows = 1 + ceil((N - L) / stride) with L = min(seq_len, N).
    """
    if num_targets <= 0:
        return 0
    length = min(seq_len, num_targets)
    return 1 + math.ceil((num_targets - length) / stride)


def sliding_positions(num_targets: int, seq_len: int, stride: int) -> int:
    """Token positions the model processes (every window is full length) to score `num_targets` once."""
    return sliding_window_count(num_targets, seq_len, stride) * min(seq_len, max(num_targets, 0))


def utilisation(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Achieved FLOP/s as a fraction of the peak (model FLOP utilisation, "MFU")."""
    return tokens_per_second * flops_per_token / peak_flops if peak_flops > 0 else float("nan")
