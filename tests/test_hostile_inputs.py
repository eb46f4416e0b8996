"""Hostile or careless inputs other than artifacts: each gives a one-line error, never a traceback,
and a failed `data build --overwrite` never loses the old dataset."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf import checkpoint, layout
from pgolf.cli import main
from pgolf.config import ModelConfig, baseline, pr198, tiny
from pgolf.data.build import build_dataset
from pgolf.data.shards import ShardError, list_shards, write_shard
from pgolf.data.stream import TokenStream
from pgolf.data.synthetic import synthetic_documents, write_jsonl
from pgolf.errors import PgolfError
from pgolf.model import GPT, num_parameters


def one_line_error(capsys, code: int) -> str:
    captured = capsys.readouterr()
    assert code == 1, captured.out[-500:]
    assert captured.err.startswith("pgolf: error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    return captured.err


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("assignment, words", [
    ("num_heads=0", "num_heads must be >= 1"), ("num_heads=-2", "num_heads must be >= 1"),
    ("num_kv_heads=0", "num_kv_heads must be >= 1"), ("model_dim=0", "model_dim must be >= 1"),
    ("mlp_mult=-1", "mlp_mult must be >= 1"), ("vocab_size=0", "vocab_size"),
    ("train_seq_len=0", "train_seq_len must be >= 1"), ("eval_seq_len=-1", "eval_seq_len must be >= 1"),
    ("global_batch_tokens=0", "global_batch_tokens must be >= 1"), ("micro_batch_tokens=-8", "micro_batch_tokens"),
    ("eval_batch_seqs=0", "eval_batch_seqs"), ("log_every=0", "log_every must be >= 1"),
    ("max_wallclock_seconds=nan", "finite number"), ("max_wallclock_seconds=-1", "max_wallclock_seconds"),
    ("iterations=1e400", "iterations"), ("iterations=-5", "iterations must be >= 0"),
    ("warmdown_steps=-1", "warmdown_steps must be >= 0"), ("val_every=-1", "val_every must be >= 0"),
    ("grad_clip_norm=-0.1", "grad_clip_norm must be >= 0"), ("bigram_buckets=-3", "bigram_buckets"),
    ("bigram_buckets=1", "bigram_buckets"), ("rope_base=0", "rope_base must be > 0"),
    ("logit_softcap=inf", "finite number"), ("adam_beta2=1.5", "adam_beta2"), ("bos_id=5000", "bos_id"),
])
def test_bad_settings_are_refused_in_one_line(assignment, words, capsys):
    error = one_line_error(capsys, main(["train", "--preset", "tiny", "--set", assignment, "--dry-run"]))
    assert words in error


def test_configs_from_json_are_type_checked():
    with pytest.raises(PgolfError, match="num_layers must be a finite int"):
        ModelConfig(num_layers="11").validate()
    with pytest.raises(PgolfError, match="smear_gate must be a finite bool"):
        ModelConfig(smear_gate=1).validate()
    with pytest.raises(PgolfError, match="num_layers must be a finite int"):
        ModelConfig(num_layers=True).validate()
    for preset in (pr198(), baseline(), tiny()):
        preset.validate()


# ---------------------------------------------------------------- parameters without building the model


@pytest.mark.parametrize("config", [
    pr198().model, baseline().model, tiny().model,
    replace(tiny().model, num_layers=17), replace(tiny().model, num_layers=18, smear_gate=False),
    replace(pr198().model, num_layers=21, bigram_buckets=0), replace(baseline().model, num_layers=34),
    replace(tiny().model, num_layers=1),
])
def test_layout_and_count_match_the_built_model(config):
    with torch.device("meta"):
        model = GPT(config)
    assert layout.count_parameters(config) == num_parameters(model)
    assert layout.state_layout(config) == {name: (tuple(tensor.shape), tensor.dtype)
                                           for name, tensor in model.state_dict().items()}


def test_dry_run_with_a_million_layers_builds_only_shallow_models(capsys, monkeypatch):
    depths = []
    original = GPT.__init__

    def spy(self, config):
        depths.append(config.num_layers)
        original(self, config)

    monkeypatch.setattr(GPT, "__init__", spy)
    assert main(["train", "--preset", "tiny", "--set", "num_layers=1000000", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert max(depths) <= layout.EXACT_MAX_LAYERS + 4 and len(depths) <= 12
    # per two layers the count grows by a fixed amount: extrapolate by hand from 4 and 6 layers
    model = tiny().model
    at_4, at_6 = (num_parameters(GPT(replace(model, num_layers=depth))) for depth in (4, 6))
    assert f"parameters:{at_4 + (1_000_000 - 4) // 2 * (at_6 - at_4)}" in text
    assert "fits:False" in text


# ---------------------------------------------------------------- data build


@pytest.fixture
def built(tmp_path, tiny_tokenizer_path):
    """A dataset built into out/, beside a user's own file there."""
    corpus = write_jsonl(tmp_path / "corpus.jsonl", synthetic_documents(30, seed=4))
    out = tmp_path / "out"
    build_dataset([corpus], out, tokenizer=tiny_tokenizer_path, val_docs=3, progress=False, log=lambda line: None)
    (out / "notes.txt").write_text("mine")
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_failed_overwrite_keeps_the_old_dataset(built, tmp_path, tiny_tokenizer_path, capsys):
    before = snapshot(built)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    code = main(["data", "build", "--input", str(bad), "--out", str(built), "--tokenizer", str(tiny_tokenizer_path),
                 "--val-docs", "1", "--overwrite"])
    assert f"{bad}:2" in one_line_error(capsys, code)
    assert snapshot(built) == before
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []  # no staging left


def test_successful_overwrite_replaces_only_the_dataset(built, tmp_path, tiny_tokenizer_path):
    corpus = write_jsonl(tmp_path / "other.jsonl", synthetic_documents(20, seed=9))
    old_train = (built / "fineweb_train_000000.bin").read_bytes()
    build_dataset([corpus], built, tokenizer=tiny_tokenizer_path, val_docs=2, overwrite=True, progress=False,
                  log=lambda line: None)
    assert (built / "notes.txt").read_text() == "mine"
    assert (built / "fineweb_train_000000.bin").read_bytes() != old_train
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []


def test_a_file_the_build_did_not_make_is_never_overwritten(tmp_path, tiny_tokenizer_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    own = out / tiny_tokenizer_path.name  # the user's own file, with the name the tokenizer copy would take
    own.write_text("not this tokenizer")
    corpus = write_jsonl(tmp_path / "corpus.jsonl", synthetic_documents(10, seed=1))
    code = main(["data", "build", "--input", str(corpus), "--out", str(out), "--tokenizer", str(tiny_tokenizer_path),
                 "--val-docs", "2"])
    assert "is not part of the dataset" in one_line_error(capsys, code)
    assert snapshot(out) == {own.name: b"not this tokenizer"}


def test_failed_first_build_creates_nothing(tmp_path, tiny_tokenizer_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "one"}\n')
    code = main(["data", "build", "--input", str(bad), "--out", str(tmp_path / "new"), "--tokenizer",
                 str(tiny_tokenizer_path), "--val-docs", "1"])
    assert "lower --val-docs" in one_line_error(capsys, code)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.jsonl"]


@pytest.mark.parametrize("name, content, words", [
    ("latin1.txt", "caf\u00e9 au lait\n".encode("latin-1"), "is not UTF-8 text"),
    ("binary.txt", bytes(range(128, 256)) * 4, "is not UTF-8 text"),
    ("binary.jsonl", b'{"text": "ok"}\n\xff\xfe\x00garbage\n', "is not UTF-8 text"),
    ("surrogate.jsonl", b'{"text": "ok"}\n{"text": "\\ud800 lone"}\n', "unpaired surrogate"),
])
def test_undecodable_input_is_one_line(tmp_path, tiny_tokenizer_path, capsys, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    code = main(["data", "build", "--input", str(path), "--out", str(tmp_path / "o"), "--tokenizer",
                 str(tiny_tokenizer_path), "--val-docs", "1"])
    assert words in one_line_error(capsys, code)
    assert not (tmp_path / "o").exists()


def test_a_directory_or_unreadable_input_is_one_line(tmp_path, tiny_tokenizer_path, capsys, monkeypatch):
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    code = main(["data", "build", "--input", str(folder), "--out", str(tmp_path / "o"), "--tokenizer",
                 str(tiny_tokenizer_path)])
    assert "is a directory" in one_line_error(capsys, code)
    readable = write_jsonl(tmp_path / "c.jsonl", ["text"])

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)  # root ignores chmod 000, so the error is planted
    code = main(["data", "build", "--input", str(readable), "--out", str(tmp_path / "o"), "--tokenizer",
                 str(tiny_tokenizer_path)])
    assert "Permission denied" in one_line_error(capsys, code)


# ---------------------------------------------------------------- shards, checkpoints, evaluation


def test_a_train_shard_with_ids_beyond_the_vocabulary_is_refused_when_opened(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(100) % 50)
    write_shard(tmp_path / "fineweb_train_000001.bin", np.array([1, 2, 3, 700, 4]))
    stream = TokenStream(list_shards(tmp_path, "train"), vocab_size=512)
    assert stream.take(100).max() == 49  # the first shard is fine
    with pytest.raises(ShardError, match="token id 700 .* position 3.* 512-piece vocabulary"):
        stream.take(3)


def test_truncated_or_mismatched_checkpoints_are_refused(tmp_path):
    config = replace(tiny().model, num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, bigram_buckets=0)
    model = GPT(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    shared = {"model": model.state_dict(), "averager": {}, "stream": {"shard": 0, "offset": 0},
              "rng": checkpoint.rng_state(), "step": 3, "train_seconds": 1.0, "train_tokens": 10}
    checkpoint.write_rank_state(tmp_path, 0, [optimizer.state_dict()], shared)
    checkpoint.publish(tmp_path, 3, 1)
    loaded, _ = checkpoint.load_checkpoint(tmp_path, 0, 1, model=model, optimizers=[optimizer])
    assert loaded["step"] == 3

    wider = GPT(replace(config, model_dim=128))
    with pytest.raises(PgolfError, match=r"does not fit this run: model tensor .* \(was the config changed"):
        checkpoint.load_checkpoint(tmp_path, 0, 1, model=wider)
    with pytest.raises(PgolfError, match="1 optimiser states for 2 optimisers"):
        checkpoint.load_checkpoint(tmp_path, 0, 1, model=model, optimizers=[optimizer, optimizer])

    state = tmp_path / "checkpoint" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(PgolfError, match="state.pt is truncated or corrupt"):
        checkpoint.load_checkpoint(tmp_path, 0, 1)
    (tmp_path / "checkpoint" / "meta.json").write_text('{"step": 3, "compl')
    with pytest.raises(PgolfError, match="no complete checkpoint"):
        checkpoint.load_checkpoint(tmp_path, 0, 1)


def test_eval_of_nan_weights_fails_in_one_line(tmp_path, tiny_dataset_dir, capsys):
    from pgolf.artifact import write_artifact
    from pgolf.data.shards import find_tokenizer
    from pgolf.data.tokenizer import sha256_file
    from pgolf.quant import quantize_state_dict

    config = ModelConfig(vocab_size=384, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1,
                         bigram_buckets=0, rope_reference_len=64)
    quantized = quantize_state_dict(GPT(config).state_dict(), "pr198")
    quantized.tensors["blocks.0.attn_scale"].parts["data"][:] = float("nan")  # written as stored, unchecked
    path = tmp_path / "nan.pgolf"
    write_artifact(path, config, quantized, sha256_file(find_tokenizer(tiny_dataset_dir)), 384)
    code = main(["eval", str(path), "--data", str(tiny_dataset_dir), "--seq-len", "64", "--stride", "64",
                 "--max-tokens", "256", "--device", "cpu", "--compile", "off", "--fp32", "--quiet"])
    assert "evaluation loss is nan" in one_line_error(capsys, code)


def test_a_directory_given_as_a_file_is_one_line(tmp_path, capsys):
    assert "not a file" in one_line_error(capsys, main(["inspect", str(tmp_path)]))
    run = tmp_path / "run"
    (run / "result.json").mkdir(parents=True)
    code = main(["submit", str(run), "--name", "n", "--author", "a", "--github-id", "g", "--no-export",
                 "--out", str(tmp_path / "out")])
    assert "result.json" in one_line_error(capsys, code)
