"""Shared fixtures for pgolf's tests.

- `tiny_tokenizer_path` (session): Path to a SentencePiece BPE .model with 384
  pieces trained on synthetic text with the official settings (pad 0, bos 1,
  eos 2, unk 3, byte fallback on, no dummy prefix). The text includes accents,
  CJK and emoji, so encoding it produces byte-fallback pieces.
- `gloo_port` (function): a free TCP port on 127.0.0.1 for a 2-process gloo group.
- `tiny_documents` (session): the 400 synthetic documents (list[str]) the
  tokenizer and the dataset are made from (seed 0).
- `tiny_dataset_dir` (session): Path to a dataset folder built by
  `pgolf.data.build.build_dataset` from `tiny_documents` with that tokenizer:
  the first 40 documents are the val split (`fineweb_val_000000.bin`), the rest
  train shards of 4,000 tokens each (`fineweb_train_000000.bin`, ...), plus
  manifest.json and a copy of the tokenizer. Treat it as read-only; copy it
  (shutil.copytree) before modifying.
"""

from __future__ import annotations

import socket

import pytest
import torch

from pgolf.data.build import build_dataset
from pgolf.data.synthetic import synthetic_documents, write_jsonl
from pgolf.data.tokenizer import train_sentencepiece

# One intra-op thread: the tests use tiny tensors (threads buy little) and some spawn two processes,
# where 2 x 2 spinning OpenMP threads on 2 cores slow everything down many times over.
torch.set_num_threads(1)

TINY_VOCAB_SIZE = 384
TINY_VAL_DOCS = 40
TINY_TOKENS_PER_SHARD = 4000


@pytest.fixture
def gloo_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_documents() -> list[str]:
    return synthetic_documents(400, seed=0, rare_probability=0.2)


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory, tiny_documents):
    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    return train_sentencepiece(tiny_documents, folder / "tiny_bpe.model", TINY_VOCAB_SIZE)


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory, tiny_documents, tiny_tokenizer_path):
    folder = tmp_path_factory.mktemp("tiny_dataset")
    corpus = write_jsonl(folder / "corpus.jsonl", tiny_documents)
    result = build_dataset([corpus], folder / "dataset", tokenizer=tiny_tokenizer_path, val_docs=TINY_VAL_DOCS,
                           tokens_per_shard=TINY_TOKENS_PER_SHARD, progress=False, log=lambda line: None)
    return result.out_dir
