"""Time the soft-capped cross-entropy on CPU: 30*tanh(z/30) vs the sigmoid form 60*sigmoid(z/15).

The frontier's fused Triton loss uses z' = 2c*sigmoid(2z/c) = c*tanh(z/c) + c (the constant
cancels in the softmax). This asks whether the identity alone, without a fused kernel, makes
the plain PyTorch loss faster on CPU, eager and compiled. Prints the median of 5 forward+backward
calls per (rows, vocab) and the largest loss difference between the forms.

    PYTHONPATH=src python benchmarks/cpu_softcap_ce.py --threads 2
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from cpu_attention_dtype import median_milliseconds  # sibling script: benchmarks/ is on sys.path

SOFTCAP = 30.0
SHAPES = ((8192, 1024), (2048, 8192))  # a tiny step's logits; one 2,048-token sequence at vocab 8192


def tanh_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(SOFTCAP * torch.tanh(logits / SOFTCAP), targets)


def sigmoid_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(2 * SOFTCAP * torch.sigmoid(logits * (2 / SOFTCAP)), targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for rows, vocab in SHAPES:
        generator = torch.Generator().manual_seed(0)
        logits = (8 * torch.randn(rows, vocab, generator=generator)).requires_grad_()
        targets = torch.randint(0, vocab, (rows,), generator=generator)
        difference = (tanh_loss(logits, targets) - sigmoid_loss(logits, targets)).abs().item()
        timings = {}
        for name, loss_function in (("tanh", tanh_loss), ("sigmoid", sigmoid_loss)):
            for mode, function in (("eager", loss_function), ("compiled", torch.compile(loss_function))):
                def forward_backward(function=function):
                    logits.grad = None
                    function(logits, targets).backward()
                timings[f"{name}_{mode}"] = median_milliseconds(forward_backward)
        cells = " ".join(f"{name}:{value:.1f}ms" for name, value in timings.items())
        print(f"rows:{rows} vocab:{vocab} {cells} loss_difference:{difference:.2e}")


if __name__ == "__main__":
    main()
