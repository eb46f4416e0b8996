"""Optimisation: parameter groups, the Muon optimiser, and the optimiser set-up of the recipe.

Three groups, decided by one name-pattern table (`PARAMETER_GROUP_RULES`):
"matrix" (2-D weights inside the blocks plus the bigram projection) go to Muon;
"embed" (token embedding, bigram table) and "scalar" (vectors, scalars and the
small control tensors) go to AdamW as two parameter groups.

Why our own Muon and not `torch.optim.Muon` (torch 2.13, `torch/optim/_muon.py`)?
Same as ours: the Newton-Schulz coefficients (3.4445, -4.7750, 2.0315), the bf16
iteration (fused addmm) on the Frobenius-normalised matrix (transposed when rows > cols),
the "original" lr adjustment sqrt(max(1, rows/cols)), and the decoupled weight
decay p <- p * (1 - lr * wd) with the unadjusted lr before the update.
Different:
  * momentum is an EMA there: buf <- m*buf + (1-m)*g and the Nesterov update
    is (1-m)*g + m*buf, i.e. exactly (1-m) times ours (buf <- m*buf + g,
    update g + m*buf). The Frobenius normalisation cancels the factor, so the
    two agree only up to bf16 rounding of a differently scaled input (and the
    momentum buffers in a checkpoint are not interchangeable);
  * the normalisation divides by norm.clamp(min=eps), ours by (norm + eps)
    (identical in bf16 unless the norm is below ~1e-5);
  * the shape scaling is applied to the lr (in fp32), ours multiplies the bf16
    update (as the reference does), so rounding differs;
  * the iteration itself is the same (fused addmm, bf16): with momentum 0 and
    a square or wide matrix the two steps are bit-identical;
  * it orthogonalises one matrix at a time; ours stacks matrices of the same
    shape (the 11 c_q, the 11 fc, ...) into one (n, rows, cols) batch;
  * it has no distributed mode. Ours shards the orthogonalisation: with W
    processes, the matrices, ordered shape group by shape group, are dealt
    round-robin to the ranks (`shard_by_shape`); each rank writes its results
    into one flat bf16 buffer, and one all-reduce (a sum where every slot has
    exactly one non-zero contributor, hence exact) gives every rank every
    update. With one process there is no buffer.
`tests/test_optim.py` measures how close the two are.

Frontier options (spec frontier.md §4), both off by default: `row_normalize`
(MuonEq-R: each row of the Nesterov update divided by its L2 norm, clamped at
1e-7, before orthogonalising) and `coefficients="polar_express"` (five
per-iteration (a, b, c) tuples instead of one quintic repeated). The shape
factor sqrt(max(1, rows/cols)) is the same rule for both: 2 for the MLP-up
matrices (4 * dim, dim), 1 for every other matrix of the frontier model.

Every rank keeps the momentum buffers of all matrices (DDP has already made
the gradients identical, and the element-wise update is cheap), so optimiser
state is the same on every rank; only the Newton-Schulz work is split.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from pgolf.config import RunConfig
from pgolf.distributed import DistInfo, all_reduce_sum
from pgolf.errors import PgolfError

NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_EPS = 1e-7
# Polar Express (a, b, c) for iterations 1..5 (spec frontier.md §4).
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
ROW_NORM_EPS = 1e-7  # MuonEq-R: rows divided by max(norm, this)


# ---------------------------------------------------------------- parameter groups


@dataclass(frozen=True)
class GroupRule:
    group: str
    pattern: str  # full-match regular expression on the parameter name
    ndims: tuple[int, ...] | None = None  # allowed tensor ranks; None = any


CONTROL_TENSOR_PATTERN = (
    r"blocks\.\d+\.(attn\.q_gain|attn\.gate|attn_scale|mlp_scale|resid_mix)|skip_weights|skip_gates"
    r"|smear\.(gate|strength)|bigram\.scale|lane_mix|lane_residual"
)

# A parameter may match several rules, but all of them must name the same group.
PARAMETER_GROUP_RULES: tuple[GroupRule, ...] = (
    GroupRule("embed", r"tok_emb\.weight|bigram\.table\.weight"),
    GroupRule("matrix", r"blocks\.\d+\..+\.weight|bigram\.proj\.weight", ndims=(2,)),
    GroupRule("scalar", CONTROL_TENSOR_PATTERN),  # control tensors of any shape (resid_mix may be (2, dim))
    GroupRule("scalar", r".+", ndims=(0, 1)),  # any other vector or scalar
)
GROUP_NAMES = ("matrix", "embed", "scalar")


def parameter_group_of(name: str, parameter: torch.Tensor) -> str:
    """The group of one parameter; raises PgolfError when no rule or conflicting rules match."""
    groups = {
        rule.group
        for rule in PARAMETER_GROUP_RULES
        if re.fullmatch(rule.pattern, name) and (rule.ndims is None or parameter.ndim in rule.ndims)
    }
    if not groups:
        raise PgolfError(
            f"parameter {name!r} with shape {tuple(parameter.shape)} matches no optimiser group; "
            "add it to PARAMETER_GROUP_RULES in pgolf/optim.py"
        )
    if len(groups) > 1:
        raise PgolfError(f"parameter {name!r} matches several optimiser groups: {', '.join(sorted(groups))}")
    return groups.pop()


def parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Split `model.named_parameters()` into "matrix", "embed" and "scalar", each parameter exactly once."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {name: [] for name in GROUP_NAMES}
    for name, parameter in model.named_parameters():  # shared (tied) parameters appear once
        groups[parameter_group_of(name, parameter)].append((name, parameter))
    return groups


# ---------------------------------------------------------------- Muon


def iteration_coefficients(name: str, num_steps: int) -> tuple[tuple[float, float, float], ...]:
    """The (a, b, c) of each Newton-Schulz iteration: "quintic" repeats one tuple, "polar_express" has five."""
    if name == "quintic":
        return (NEWTON_SCHULZ_COEFFICIENTS,) * num_steps
    if name == "polar_express":
        if not 1 <= num_steps <= len(POLAR_EXPRESS_COEFFICIENTS):
            raise PgolfError(f"polar_express has {len(POLAR_EXPRESS_COEFFICIENTS)} iterations, "
                             f"got ns_steps={num_steps}")
        return POLAR_EXPRESS_COEFFICIENTS[:num_steps]
    raise PgolfError(f"unknown Newton-Schulz coefficients {name!r}; choose quintic or polar_express")


def normalize_rows(update: torch.Tensor) -> torch.Tensor:
    """MuonEq-R: each row (last dim) divided by its L2 norm, clamped at ROW_NORM_EPS; (..., rows, cols)."""
    return update / update.norm(dim=-1, keepdim=True).clamp_min(ROW_NORM_EPS)


def orthogonalize(matrix: torch.Tensor, num_steps: int,
                  coefficients: tuple[tuple[float, float, float], ...] | None = None) -> torch.Tensor:
    """Approximate U V^T of `matrix` by a quintic Newton-Schulz iteration in bf16.

    `matrix` is one (rows, cols) matrix or a batch (n, rows, cols) of same-shape matrices, each
    normalised and iterated on its own (batched matmuls: fewer, larger kernels). The iteration
    does not converge to exactly 1 singular values (they land roughly in [0.7, 1.2]); that is
    what the recipe uses. `coefficients`: one (a, b, c) per iteration (`iteration_coefficients`);
    None repeats the quintic tuple `num_steps` times. Returns bf16 with the input's shape.
    """
    if coefficients is None:
        coefficients = (NEWTON_SCHULZ_COEFFICIENTS,) * num_steps
    x = matrix.bfloat16()
    transposed = x.size(-2) > x.size(-1)
    if transposed:
        x = x.mT  # (..., small, large): the Gram matrix x x^T is the small one
    if x.ndim == 2:
        norm = x.norm()
        multiply_add = torch.addmm
    else:
        norm = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)  # (n, 1, 1): one norm per matrix
        multiply_add = torch.baddbmm
    x = x / (norm + NEWTON_SCHULZ_EPS)  # spectral norm <= Frobenius norm <= 1
    for a, b, c in coefficients:
        gram = x @ x.mT  # (..., small, small)
        # fused multiply-adds round to bf16 once per product: closer to exact arithmetic than
        # separate b*A + c*A@A (about 1.5% vs 3.5% from a float64 iteration on random matrices)
        polynomial = multiply_add(gram, gram, gram, beta=b, alpha=c)  # b*A + c*A@A
        x = multiply_add(x, polynomial, x, beta=a)  # a*X + B@X
    return x.mT if transposed else x


@dataclass
class _ShapeBatch:
    """Matrices of one shape and ns_steps that this rank orthogonalises together."""
    ns_steps: int
    indices: list[int]  # positions in the step's entry list


def shard_by_shape(shapes: list[tuple[int, int, int]], rank: int, world_size: int) -> list[_ShapeBatch]:
    """This rank's batches: matrices grouped by (rows, cols, ns_steps), dealt out round-robin.

    The deal runs over the matrices ordered group by group (first appearance order), so every
    rank gets about 1/world of every shape (balanced work) and each matrix exactly one owner.
    Pure function of the shapes: every rank computes the same assignment.
    """
    groups: dict[tuple[int, int, int], list[int]] = {}
    for index, key in enumerate(shapes):
        groups.setdefault(key, []).append(index)
    batches, position = [], 0
    for key, indices in groups.items():
        mine = [index for offset, index in enumerate(indices) if (position + offset) % world_size == rank]
        position += len(indices)
        if mine:
            batches.append(_ShapeBatch(ns_steps=key[2], indices=mine))
    return batches


class Muon(torch.optim.Optimizer):
    """Momentum + Newton-Schulz orthogonalisation for 2-D weights, batched by shape, sharded over ranks.

    Per matrix (rows, cols): buf <- momentum*buf + g; u <- g + momentum*buf (Nesterov);
    o <- orthogonalize(u) * sqrt(max(1, rows/cols)) in bf16; p <- p*(1 - lr*wd); p <- p - lr*o.
    With `batch_by_shape`, matrices of the same shape are orthogonalised as one (n, rows, cols)
    batch; a shape held by one matrix only takes the 2-D path (bit-identical to torch.optim.Muon's
    iteration). None means: batch on CUDA (fewer kernel launches), not on CPU, where batching
    gave no consistent gain for pr198's 67 matrices (`benchmarks/cpu/cpu_muon_batching.py`,
    docs/performance.md).
    """

    def __init__(self, params, lr: float, momentum: float, ns_steps: int = 5, weight_decay: float = 0.0,
                 dist: DistInfo | None = None, batch_by_shape: bool | None = None, row_normalize: bool = False,
                 coefficients: str = "quintic"):
        if lr < 0 or momentum < 0 or weight_decay < 0 or ns_steps < 1:
            raise PgolfError(f"Muon needs lr, momentum, weight_decay >= 0 and ns_steps >= 1 "
                             f"(got lr={lr}, momentum={momentum}, weight_decay={weight_decay}, ns_steps={ns_steps})")
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps, weight_decay=weight_decay))
        self.dist = dist if dist is not None else DistInfo()
        self.row_normalize = row_normalize
        self.coefficients = coefficients
        for group in self.param_groups:
            iteration_coefficients(coefficients, group["ns_steps"])  # a bad name or step count fails here
        on_cuda = False
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.ndim != 2:
                    raise PgolfError(f"Muon only takes 2-D parameters, got shape {tuple(parameter.shape)}")
                on_cuda = on_cuda or parameter.is_cuda
        # On GPU the bf16 Newton-Schulz runs as one compiled kernel chain per shape; eager elsewhere
        # (compiled on CPU it was slower: 73 vs 47 ms per `tiny` step, docs/performance.md). Not
        # fullgraph: a model with more matrix shapes than dynamo's recompile limit then runs the
        # extra shapes eagerly instead of failing.
        self._orthogonalize = torch.compile(orthogonalize, dynamic=False) if on_cuda else orthogonalize
        self.batch_by_shape = on_cuda if batch_by_shape is None else batch_by_shape

    def _nesterov_updates(self) -> list[torch.Tensor]:
        """Advance every momentum buffer (all ranks keep all of them) and return g + m*buf per matrix."""
        updates: list[torch.Tensor] = []
        for group in self.param_groups:
            parameters = [p for p in group["params"] if p.grad is not None]
            if not parameters:
                continue
            gradients = [p.grad for p in parameters]
            buffers = []
            for parameter in parameters:
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(parameter.grad)
                buffers.append(state["momentum_buffer"])
            momentum = group["momentum"]
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, gradients)
            updates.extend(torch._foreach_add(gradients, buffers, alpha=momentum))
        return updates

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # every rank walks the same list in the same order, so the shard assignment agrees
        entries = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not entries:
            return loss
        rank, world_size = self.dist.rank, self.dist.world_size
        updates = self._nesterov_updates()  # same order as entries: groups, then parameters with a gradient
        shapes = [(p.size(0), p.size(1), group["ns_steps"]) for group, p in entries]
        orthogonal: list[torch.Tensor | None] = [None] * len(entries)  # bf16 (rows, cols), this rank's only
        batches = shard_by_shape(shapes, rank, world_size)
        if not self.batch_by_shape:
            batches = [_ShapeBatch(batch.ns_steps, [index]) for batch in batches for index in batch.indices]
        for batch in batches:
            rows, cols, _ = shapes[batch.indices[0]]
            coefficients = iteration_coefficients(self.coefficients, batch.ns_steps)
            if len(batch.indices) == 1:
                update = updates[batch.indices[0]]
                update = normalize_rows(update) if self.row_normalize else update
                results = [self._orthogonalize(update, batch.ns_steps, coefficients)]
            else:
                stacked = torch.stack([updates[index] for index in batch.indices])  # (n, rows, cols)
                stacked = normalize_rows(stacked) if self.row_normalize else stacked
                results = self._orthogonalize(stacked.bfloat16(), batch.ns_steps, coefficients).unbind(0)
            scale = math.sqrt(max(1.0, rows / cols))
            for index, result in zip(batch.indices, results):
                orthogonal[index] = result * scale  # bf16 product, as the recipe rounds it
        if world_size > 1:
            # bf16 holds the updates exactly as computed; each slot has one non-zero contributor,
            # so the sum over ranks is exact and every rank ends with identical updates
            total = sum(p.numel() for _, p in entries)
            flat_updates = torch.zeros(total, dtype=torch.bfloat16, device=entries[0][1].device)
            offset = 0
            for index, (_, parameter) in enumerate(entries):
                if orthogonal[index] is not None:
                    flat_updates[offset:offset + parameter.numel()] = orthogonal[index].reshape(-1)
                offset += parameter.numel()
            all_reduce_sum(flat_updates, self.dist)
            offset = 0
            for index, (_, parameter) in enumerate(entries):
                orthogonal[index] = flat_updates[offset:offset + parameter.numel()].view_as(parameter)
                offset += parameter.numel()
        for group in self.param_groups:  # one multi-tensor kernel per group and operation, not one per matrix
            members = [(parameter, update) for (owner, parameter), update in zip(entries, orthogonal)
                       if owner is group]
            if not members:
                continue
            parameters = [parameter for parameter, _ in members]
            lr = group["lr"]
            if group["weight_decay"] > 0:
                torch._foreach_mul_(parameters, 1.0 - lr * group["weight_decay"])  # decoupled: not in the gradient
            torch._foreach_add_(parameters, [update.to(parameter.dtype) for parameter, update in members], alpha=-lr)
        return loss


# ---------------------------------------------------------------- the recipe's optimisers


def build_optimizers(model: nn.Module, config: RunConfig, dist: DistInfo) -> list[torch.optim.Optimizer]:
    """[Muon for the matrices, AdamW for embeddings and scalars]; every group carries "base_lr"."""
    groups = parameter_groups(model)
    optimizers: list[torch.optim.Optimizer] = []
    matrices = [p for _, p in groups["matrix"]]
    if matrices:
        optimizers.append(Muon([{"params": matrices, "base_lr": config.matrix_lr}], lr=config.matrix_lr,
                               momentum=config.muon_momentum, ns_steps=config.muon_ns_steps,
                               weight_decay=config.muon_weight_decay, dist=dist,
                               row_normalize=config.muon_row_normalize, coefficients=config.muon_coefficients))
    embed_weight_decay = config.embed_weight_decay if config.embed_weight_decay >= 0 else config.adam_weight_decay
    adam_groups = [
        {"params": [p for _, p in groups[name]], "lr": lr, "base_lr": lr, "weight_decay": weight_decay}
        for name, lr, weight_decay in (("embed", config.embed_lr, embed_weight_decay),
                                       ("scalar", config.scalar_lr, config.adam_weight_decay))
        if groups[name]
    ]
    if adam_groups:
        on_cuda = all(group["params"][0].is_cuda for group in adam_groups)
        optimizers.append(torch.optim.AdamW(adam_groups, betas=(config.adam_beta1, config.adam_beta2),
                                            eps=config.adam_eps, weight_decay=config.adam_weight_decay,
                                            fused=on_cuda))
    return optimizers


def set_learning_rate(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * multiplier


def set_muon_momentum(optimizers: list[torch.optim.Optimizer], momentum: float) -> None:
    for optimizer in optimizers:
        if isinstance(optimizer, Muon):
            for group in optimizer.param_groups:
                group["momentum"] = momentum
