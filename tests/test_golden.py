"""Golden per-step losses: a refactor that changes the numbers of a tiny fp32 run is caught.

The expected values live in tests/golden/tiny_fp32_losses.json. When a change is *meant* to
alter the numerics, regenerate them with
    python tests/test_golden.py --write
and say why in the commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden" / "tiny_fp32_losses.json"
SETTINGS = [
    "vocab_size=384", "num_layers=3", "model_dim=64", "num_heads=4", "num_kv_heads=2", "bigram_buckets=64",
    "bigram_dim=16", "rope_reference_len=16", "train_seq_len=32", "global_batch_tokens=512",
    "micro_batch_tokens=256", "eval_seq_len=32", "eval_stride=16", "autocast_dtype=fp32", "compile=off",
    "warmup_steps=2", "log_every=1", "swa_every=2", "warmdown_steps=4", "muon_momentum_warmup_steps=4",
    "iterations=8", "val_every=0", "seed=1234",
]


def golden_run(dataset_dir: Path, run_dir: Path) -> dict:
    from pgolf.config import apply_overrides, tiny
    from pgolf.train import run_training

    config = apply_overrides(tiny(), SETTINGS + [f"data_dir={dataset_dir}"])
    result = run_training(config, run_dir, quiet=True)
    losses = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"train_loss": [record["train_loss"] for record in losses if "train_loss" in record],
            "val_loss": result["val_loss"], "val_bpb": result["val_bpb"]}


def test_tiny_fp32_run_reproduces_the_golden_losses(tiny_dataset_dir, tmp_path):
    expected = json.loads(GOLDEN.read_text())
    measured = golden_run(tiny_dataset_dir, tmp_path / "run")
    assert len(measured["train_loss"]) == len(expected["train_loss"]) == 8
    assert measured["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5, abs=1e-6)
    assert measured["val_bpb"] == pytest.approx(expected["val_bpb"], rel=1e-5)


if __name__ == "__main__" and "--write" in sys.argv:
    # Build the same fixture data the tests use, then record the run's numbers.
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import TINY_TOKENS_PER_SHARD, TINY_VAL_DOCS, TINY_VOCAB_SIZE

    from pgolf.data.build import build_dataset
    from pgolf.data.synthetic import synthetic_documents, write_jsonl
    from pgolf.data.tokenizer import train_sentencepiece

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        documents = synthetic_documents(400, seed=0, rare_probability=0.2)
        tokenizer = train_sentencepiece(documents, folder / "tiny_bpe.model", TINY_VOCAB_SIZE)
        corpus = write_jsonl(folder / "corpus.jsonl", documents)
        dataset = build_dataset([corpus], folder / "dataset", tokenizer=tokenizer, val_docs=TINY_VAL_DOCS,
                                tokens_per_shard=TINY_TOKENS_PER_SHARD, progress=False, log=lambda line: None)
        import torch

        torch.set_num_threads(1)
        numbers = golden_run(dataset.out_dir, folder / "run")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(numbers, indent=2) + "\n")
    print(f"wrote {GOLDEN}: {numbers}")
