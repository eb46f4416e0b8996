"""The offline demo: the whole pipeline on a laptop in minutes, with no download.

corpus (docstrings of the installed Python standard library) -> a 1024-piece
SentencePiece BPE tokenizer trained with the official settings -> shards in
the challenge format -> the `tiny` preset trained with every PR-198 technique on -> SWA ->
int6/int8 + zstd-22 artifact -> read back -> sliding-window score -> a summary
table naming the machine.

The user's budget is wall-clock minutes, so the score depends on the machine's
speed (a 2-core Xeon with AMX runs about four times the steps of one without).
A budget in steps (`--steps`) gives the same training on any machine: tests
use it.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any

from pgolf.challenge import BUDGET_BYTES
from pgolf.config import RunConfig, tiny
from pgolf.data.build import build_dataset
from pgolf.data.stdlib_corpus import iter_stdlib_documents, split_documents, write_jsonl
from pgolf.metric import bits_per_byte

DEMO_VAL_FRACTION = 0.1  # about 60k validation tokens: a sliding-window score in seconds on 2 cores


def demo_config(dataset_dir: Path, minutes: float = 3.0, steps: int | None = None) -> RunConfig:
    """`tiny` trained against the wall clock (`minutes`), so the time-aware warmdown and SWA both
    happen; or for exactly `steps` steps, with the warmdown and SWA scaled to the same proportions
    (a 3-minute demo on the AMX Xeon ran ~410 steps: warmdown 120, a snapshot every 10)."""
    common = dict(data_dir=str(dataset_dir), val_every=100, log_every=25)
    if steps is None:
        return dataclasses.replace(tiny(), max_wallclock_seconds=60.0 * minutes, iterations=1_000_000,
                                   warmdown_steps=120, swa_every=10, **common)
    return dataclasses.replace(tiny(), max_wallclock_seconds=0.0, iterations=steps,
                               warmdown_steps=max(1, round(0.3 * steps)), swa_every=max(1, steps // 40), **common)


def build_demo_dataset(out_dir: Path, quiet: bool, log=print, caseops: bool = False) -> tuple[Path, dict[str, Any]]:
    """corpus.jsonl and a 1024-piece dataset made from it in `out_dir` (`dataset/`, or with `caseops` the
    frontier's CaseOps form with its byte sidecar in `dataset_caseops/`)."""
    documents = list(iter_stdlib_documents())
    train, val = split_documents(documents, val_fraction=DEMO_VAL_FRACTION, seed=0)
    corpus = out_dir / "corpus.jsonl"
    num_documents, num_bytes = write_jsonl(corpus, val + train)  # build takes the first --val-docs as val
    log(f"corpus: {num_documents:,} documents, {num_bytes:,} bytes of standard-library docstrings -> {corpus}")
    built = build_dataset([corpus], out_dir / ("dataset_caseops" if caseops else "dataset"), vocab_size=1024,
                          val_docs=len(val), overwrite=True, is_caseops=caseops, progress=not quiet, log=log)
    return built.out_dir, {"documents": num_documents, "bytes": num_bytes, **built.stats}


def summary_rows(result: dict[str, Any], corpus: dict[str, Any], wall_seconds: float,
                 run_dir: Path, machine: str) -> list[tuple[str, str]]:
    uniform = bits_per_byte(math.log(1024) * result["val_tokens_scored"], max(result["val_bytes_scored"], 1))
    return [
        ("corpus", f"{corpus['documents']:,} docs, {corpus['bytes']:,} bytes (Python stdlib docstrings)"),
        ("val bpb, live weights at the last step (plain)", f"{result['val_bpb_prequant']:.4f}"),
        ("val bpb, averaged (SWA), before quantisation (plain)", f"{result['val_bpb_averaged']:.4f}"),
        ("val bpb, after round trip (plain)", f"{result['val_bpb_roundtrip_plain']:.4f}"),
        (f"val bpb, after round trip (sliding, stride {result['eval_stride']})", f"{result['val_bpb']:.4f}"),
        ("val bpb of a uniform model (for scale)", f"{uniform:.4f}"),
        ("artifact bytes (model + code)",
         f"{result['bytes_total']:,} = {result['bytes_model']:,} + {result['bytes_code']:,} "
         f"of {BUDGET_BYTES:,} budget"),
        ("steps / tokens trained", f"{result['steps']:,} / {result['train_tokens']:,}"),
        ("training tokens/s", f"{result['tokens_per_second']:,.0f}"),
        ("wall time (everything)", f"{wall_seconds:.0f} s"),
        ("machine", machine),
        ("files", f"{run_dir} (model.pgolf, train.log, metrics.jsonl, curves.png, result.json)"),
    ]


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name.ljust(width)}  {value}" for name, value in rows)


def run_demo(out_dir: Path, minutes: float = 3.0, steps: int | None = None, quiet: bool = False,
             log=print) -> dict[str, Any]:
    from pgolf.kernels import enable_cpu_attention
    from pgolf.train import run_training

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset_dir, corpus = build_demo_dataset(out_dir, quiet, log)
    run_dir = out_dir / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo owns this folder; a rerun starts clean
    enable_cpu_attention()  # pgolf's CPU attention kernels if this machine has them built
    result = run_training(demo_config(dataset_dir, minutes, steps), run_dir, quiet=quiet)
    wall = time.perf_counter() - started
    table = format_table(summary_rows(result, corpus, wall, run_dir, result["machine"]))
    log("\npgolf demo summary\n" + table)
    (out_dir / "summary.txt").write_text(table + "\n")
    return {**result, "wall_seconds": wall, "run_dir": str(run_dir), "corpus": corpus}
