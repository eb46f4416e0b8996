"""Phased score-first LoRA test-time training (spec frontier.md §6), an eval procedure.

Documents (`ttt_plan.document_spans`) are batched by length and processed longest
batch first. In a batch, chunk c of every document that still has one is scored
(a window of up to `context_tokens` document tokens ending at the chunk's end,
dense causal attention, one padded row per document) and emitted; THEN one AdamW
step is taken on the sum over those documents of their chunk's mean loss (a
document's last chunk is scored, not trained on). The adapters are per document
(`lora.BatchedLoRA`); between batches B and the Adam state are zeroed and A is
kept, except that A is drawn again after a global phase and whenever a batch's
size is not `batch_docs`.

When the count of scored documents reaches a phase boundary, every rank pauses;
the scored documents, ordered by (batch index, position) - shortest first - are cut
to the boundary's count, concatenated and trained on for one epoch of SGD over
all base weights (momentum, cosine lr over the chunks, grads averaged over ranks,
clipped), in chunks of `global_batch_seqs` rows of `global_seq_len`
(document-isolated), the last chunk skipped. Only scored documents are ever
trained on. The base weights are restored when the procedure ends.

Ranks claim batches from a shared counter (the process group's store); one
process claims them in order. With `adapt` off the same windows are scored with
no adapter and no update: the plain scoring TTT adapts from.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pgolf.distributed import DistInfo, all_reduce_sum, broadcast_object
from pgolf.errors import PgolfError
from pgolf.evaluate import Event, Scored, Updated, scored_nll
from pgolf.lora import LORA_TARGETS, BatchedLoRA
from pgolf.ttt_plan import (Document, chunk_windows, cosine_lr, document_spans, length_batches, num_chunks,
                            phase_sequences, segment_boundaries)

if TYPE_CHECKING:  # imported when the tilt stage is on (an exported script without it leaves pgolf.tilt out)
    from pgolf.tilt import TiltSettings


@dataclass(frozen=True)
class TTTSettings:
    """Spec frontier.md §6's numbers are the defaults (RunConfig's ttt_* fields carry them)."""

    context_tokens: int = 2048
    chunk_tokens: int = 48
    batch_docs: int = 64
    lora_rank: int = 80
    lora_alpha: float = 144.0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    lr: float = 1e-4
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-10
    weight_decay: float = 0.5
    phase_boundaries: tuple[int, ...] = (833, 1666, 2500)
    global_lr: float = 1e-3
    global_momentum: float = 0.9
    global_clip: float = 1.0
    global_seq_len: int = 2048
    global_batch_seqs: int = 16
    seed: int = 0
    adapt: bool = True  # False: score the same windows with no adapter and no update


class BatchQueue:
    """Which batch a rank takes next, and how many documents all ranks have scored."""

    def __init__(self, num_batches: int, dist: DistInfo):
        self.num_batches = num_batches
        self.store = None
        self.next_local = 0
        self.scored_local = 0
        self.done_local = False
        if dist.is_distributed:
            from torch.distributed import distributed_c10d

            self.store = distributed_c10d._get_default_store()
            nonce = broadcast_object(f"ttt{time.time_ns()}", dist)  # fresh keys for every evaluation
            self.key = nonce
            self.world_size = dist.world_size

    def claim(self) -> int | None:
        """The next batch in processing order (longest first), or None when all are taken."""
        if self.store is None:
            position, self.next_local = self.next_local, self.next_local + 1
        else:
            position = self.store.add(f"{self.key}/next", 1) - 1
        return self.num_batches - 1 - position if position < self.num_batches else None

    def add_scored(self, count: int) -> None:
        if self.store is None:
            self.scored_local += count
        else:
            self.store.add(f"{self.key}/scored", count)

    def scored(self) -> int:
        return self.scored_local if self.store is None else self.store.add(f"{self.key}/scored", 0)

    def mark_done(self) -> None:
        if self.store is None:
            self.done_local = True
        else:
            self.store.add(f"{self.key}/done", 1)

    def all_done(self) -> bool:
        return self.done_local if self.store is None else self.store.add(f"{self.key}/done", 0) >= self.world_size


@dataclass
class TTTProcedure:
    settings: TTTSettings = field(default_factory=TTTSettings)
    autocast_dtype: torch.dtype | None = None
    tilt_settings: TiltSettings | None = None

    timings: dict[str, float] = field(default_factory=dict)  # seconds by part, of the last run

    @property
    def name(self) -> str:
        return "ttt" if self.settings.adapt else "document-chunks"

    def events(self, model: nn.Module, tokens: torch.Tensor, dist: DistInfo, record: bool = False,
               progress: Callable[[int, int], None] | None = None) -> Iterator[Event]:
        base = getattr(model, "_orig_mod", model)  # hooks go on the network itself, not a compiled wrapper
        if not hasattr(base, "blocks") or not hasattr(base, "config"):
            raise PgolfError("test-time training needs a pgolf GPT")
        tilt = None
        if self.tilt_settings is not None:  # filled in this procedure's scoring order, not stream order
            from pgolf.tilt import TokenTilt

            tilt = TokenTilt.from_tokens(tokens, self.tilt_settings, base.config.bos_id, online=True)
        self.timings = {"score_seconds": 0.0, "update_seconds": 0.0, "global_phase_seconds": 0.0}
        run = _TTTRun(base, tokens, self.settings, dist, self.autocast_dtype, tilt, record, progress, self.timings)
        return run.events()


class _TTTRun:
    """One pass of the procedure over one token stream (state shared by the batch loop and the phases)."""

    def __init__(self, model, tokens, settings: TTTSettings, dist: DistInfo, autocast_dtype, tilt, record,
                 progress, timings: dict[str, float]):
        self.model, self.tokens, self.settings, self.dist = model, tokens, settings, dist
        self.tilt, self.record, self.progress = tilt, record, progress
        self.device = tokens.device
        self.autocast = (contextlib.nullcontext if autocast_dtype is None else
                         lambda: torch.autocast(device_type=self.device.type, dtype=autocast_dtype))
        self.documents = document_spans(tokens.cpu().numpy(), model.config.bos_id)
        self.batches = length_batches(self.documents, settings.batch_docs)
        self.generator = torch.Generator(device="cpu").manual_seed(settings.seed * 1009 + dist.rank)
        self.lora: BatchedLoRA | None = None
        self.redraw = True
        self.timings = timings  # wall seconds of the work between yields, by part

    def events(self) -> Iterator[Event]:
        settings = self.settings
        saved = {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}
        was_training = self.model.training
        requires_grad = {name: parameter.requires_grad for name, parameter in self.model.named_parameters()}
        self.model.eval()
        queue = BatchQueue(len(self.batches), self.dist)
        scored_batches: list[int] = []
        boundaries = list(settings.phase_boundaries) if settings.adapt else []
        try:
            done = 0
            while True:
                while boundaries and queue.scored() >= boundaries[0]:
                    yield from self.global_phase(scored_batches, boundaries.pop(0))
                batch = queue.claim()
                if batch is None:
                    break
                yield from self.score_batch(self.batches[batch])
                queue.add_scored(len(self.batches[batch]))
                scored_batches.append(batch)
                done += 1
                if self.progress is not None:
                    self.progress(done, len(self.batches))
            queue.mark_done()
            while boundaries:  # join the phases other ranks still reach
                finished = queue.all_done()  # read first: once all are done, the count is final
                if queue.scored() >= boundaries[0]:
                    yield from self.global_phase(scored_batches, boundaries.pop(0))
                elif finished:
                    break
                else:
                    time.sleep(0.005)
        finally:
            with torch.no_grad():
                self.model.load_state_dict(saved)
            for name, parameter in self.model.named_parameters():
                parameter.requires_grad_(requires_grad[name])
            self.model.train(was_training)

    # ------------------------------------------------------------ per-document chunks

    def fresh_adapters(self, num_docs: int) -> BatchedLoRA:
        """A kept from the last batch (warm start) unless a phase ran or the batch size is not batch_docs."""
        settings = self.settings
        keep = (self.lora is not None and not self.redraw and num_docs == settings.batch_docs
                and self.lora.num_docs == num_docs)
        if keep:
            self.lora.zero_b()
        else:
            self.lora = BatchedLoRA(self.model.config, self.model.looping, settings.lora_targets,
                                    settings.lora_rank, settings.lora_alpha, num_docs, self.generator, self.device)
            self.redraw = False
        return self.lora

    def score_batch(self, batch: list[int]) -> Iterator[Event]:
        settings = self.settings
        docs = [self.documents[index] for index in batch]
        windows = [chunk_windows(doc.num_targets, settings.chunk_tokens, settings.context_tokens) for doc in docs]
        steps = max(num_chunks(doc.num_targets, settings.chunk_tokens) for doc in docs)
        if not settings.adapt:
            for chunk in range(steps):
                started = time.perf_counter()
                with torch.inference_mode():
                    scored, _ = self.score_chunk(docs, windows, chunk)
                self.timings["score_seconds"] += time.perf_counter() - started
                yield scored
            return
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        lora = self.fresh_adapters(len(docs))
        optimizer = torch.optim.AdamW(lora.parameters(), lr=settings.lr, betas=(settings.beta1, settings.beta2),
                                      eps=settings.eps, weight_decay=settings.weight_decay)
        with lora.attached(self.model):
            for chunk in range(steps):
                active = [row for row, doc_windows in enumerate(windows) if chunk < len(doc_windows)]
                started = time.perf_counter()
                lora.select(torch.tensor(active, device=self.device))
                scored, losses = self.score_chunk(docs, windows, chunk)
                self.timings["score_seconds"] += time.perf_counter() - started
                yield scored
                started = time.perf_counter()
                trained = [(row, loss, targets) for row, loss, targets in losses
                           if chunk < len(windows[row]) - 1]  # a document's last chunk is not trained on
                if not trained:
                    continue
                total = torch.stack([loss for _, loss, _ in trained]).sum()
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                self.timings["update_seconds"] += time.perf_counter() - started
                yield Updated(targets=torch.cat([targets for _, _, targets in trained]), kind="lora")
        lora.select(None)

    def score_chunk(self, docs: list[Document], windows, chunk: int):
        """Score chunk `chunk` of every document that has one: one right-padded row per document."""
        rows = [(row, doc, windows[row][chunk]) for row, doc in enumerate(docs) if chunk < len(windows[row])]
        length = max(window.score_to - window.window_start for _, _, window in rows)
        inputs = torch.full((len(rows), length), self.model.config.bos_id, dtype=torch.long, device=self.device)
        targets = torch.zeros_like(inputs)
        target_index = torch.zeros_like(inputs)
        scored_mask = torch.zeros_like(inputs, dtype=torch.bool)
        for position, (_, doc, window) in enumerate(rows):
            first = doc.first_target + window.window_start
            width = window.score_to - window.window_start
            inputs[position, :width] = self.tokens[first:first + width]
            targets[position, :width] = self.tokens[first + 1:first + width + 1]
            target_index[position, :width] = torch.arange(first, first + width, device=self.device)
            scored_mask[position, window.score_from - window.window_start:width] = True
        with self.autocast():
            logits = self.model(inputs)  # (R, L, V) fp32, causal: padding after a row never reaches it
        flat_targets, flat_index = targets[scored_mask], target_index[scored_mask]
        nll, log_probs = scored_nll(logits[scored_mask], flat_targets, flat_index, self.tilt, self.record)
        losses = []  # (row, mean loss of its chunk, its target indices) per document, for the update
        if torch.is_grad_enabled():
            model_nll = nll if self.tilt is None else F.cross_entropy(logits[scored_mask], flat_targets,
                                                                       reduction="none")  # never tilted
            counts = scored_mask.sum(dim=1).tolist()
            for (row, _, _), piece, index in zip(rows, model_nll.split(counts), flat_index.split(counts)):
                losses.append((row, piece.mean(), index))
        scored = Scored(targets=flat_index, nll=nll.detach(), log_probs=None if log_probs is None
                        else log_probs.detach())
        return scored, losses

    # ------------------------------------------------------------ global phases

    def global_phase(self, scored_batches: list[int], boundary: int) -> Iterator[Event]:
        """One epoch of SGD over all base weights on the first `boundary` scored documents."""
        settings, dist, model = self.settings, self.dist, self.model
        everyone = scored_batches
        if dist.is_distributed:
            gathered = [None] * dist.world_size
            torch.distributed.all_gather_object(gathered, list(scored_batches))
            everyone = [batch for part in gathered for batch in part]
        ordered = [index for batch in sorted(everyone) for index in self.batches[batch]][:boundary]
        plan = phase_sequences(self.tokens.cpu().numpy(), [self.documents[index] for index in ordered],
                               settings.global_seq_len, settings.global_batch_seqs)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        optimizer = torch.optim.SGD(model.parameters(), lr=settings.global_lr, momentum=settings.global_momentum)
        num_trained = plan.inputs.shape[0]
        my_rows = list(range(settings.global_batch_seqs))[dist.rank::dist.world_size]
        for chunk in range(num_trained):
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(settings.global_lr, chunk, num_trained + 1)  # the skipped chunk is the last
            optimizer.zero_grad(set_to_none=False)
            if my_rows:
                inputs = torch.from_numpy(plan.inputs[chunk, my_rows]).to(self.device)
                targets = torch.from_numpy(plan.targets[chunk, my_rows]).to(self.device)
                boundaries = segment_boundaries([plan.row_starts[chunk][row] for row in my_rows],
                                                settings.global_seq_len)
                with self.autocast():
                    loss = model(inputs, targets, cu_seqlens=torch.from_numpy(boundaries).to(self.device),
                                 max_seqlen=settings.global_seq_len)
                loss.backward()
            if dist.is_distributed:
                for parameter in model.parameters():
                    if parameter.grad is None:
                        parameter.grad = torch.zeros_like(parameter)
                    all_reduce_sum(parameter.grad, dist)
                    parameter.grad /= dist.world_size
            if settings.global_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.global_clip)
            optimizer.step()
            self.timings["global_phase_seconds"] += time.perf_counter() - started
            yield Updated(targets=torch.from_numpy(np.ascontiguousarray(plan.target_index[chunk]).reshape(-1)),
                          kind="global")
        for parameter in model.parameters():
            parameter.requires_grad_(False)
            parameter.grad = None
        self.redraw = True  # A is drawn again after every phase
