"""A run folder holds one run; every rank writes the same folder; a run fails in seconds, not at its end.

(Issues 23 and 25: fresh runs refuse a folder with content unless --overwrite, resume keeps its config,
a finished run is left alone, a foreign tokenizer is refused, the end of the run is checked before the
compile warm-up, a checkpoint that cannot be written leaves the last one usable.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pgolf import build, checkpoint
from pgolf.cli import main
from pgolf.errors import PgolfError
from pgolf.runlog import claim_run_dir
from pgolf.train import run_training
from test_train import TEST_SETTINGS, small_config


def train_args(dataset_dir: Path, out: Path, *extra: str) -> list[str]:
    settings = TEST_SETTINGS + ["iterations=2", "val_every=0", "warmup_steps=0"]
    return ["train", "--preset", "tiny", "--data", str(dataset_dir), "--out", str(out), "--quiet",
            *[item for setting in settings for item in ("--set", setting)], *extra]


def test_claim_run_dir_refuses_content_and_overwrites_only_run_files(tmp_path):
    run_dir = tmp_path / "run"
    claim_run_dir(run_dir, overwrite=False)  # missing: fine
    run_dir.mkdir()
    claim_run_dir(run_dir, overwrite=False)  # empty: fine
    (run_dir / "train.log").write_text("old")
    (run_dir / "checkpoint").mkdir()
    with pytest.raises(PgolfError, match="another run's files"):
        claim_run_dir(run_dir, overwrite=False)
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(PgolfError, match="notes.txt"):
        claim_run_dir(run_dir, overwrite=True)
    assert (run_dir / "train.log").exists()  # nothing removed while a foreign file is there
    (run_dir / "notes.txt").unlink()
    claim_run_dir(run_dir, overwrite=True)
    assert list(run_dir.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(PgolfError, match="is a file"):
        claim_run_dir(tmp_path / "file", overwrite=True)


def test_a_new_run_into_a_used_folder_is_refused_and_resume_keeps_its_config(tiny_dataset_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_dataset_dir, out)) == 0
    finished = (out / "result.json").read_text()
    capsys.readouterr()
    assert main(train_args(tiny_dataset_dir, out, "--seed", "5")) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "already holds a finished run" in error
    assert (out / "result.json").read_text() == finished
    # resuming a finished run says so and leaves it alone
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert "finished run" in capsys.readouterr().out and (out / "result.json").read_text() == finished
    # a resumed run keeps its config: no overrides
    assert main(["train", "--resume", str(out), "--set", "iterations=9"]) == 1
    assert "keeps the config it started with" in capsys.readouterr().err
    # --overwrite starts again
    assert main(train_args(tiny_dataset_dir, out, "--overwrite", "--seed", "5")) == 0
    assert json.loads((out / "result.json").read_text())["seed"] == 5


def test_resume_refuses_a_checkpoint_of_another_config(tiny_dataset_dir, tmp_path):
    config = small_config(tiny_dataset_dir, "iterations=6", "checkpoint_every=2", "val_every=0")
    run_training(config, tmp_path / "run", quiet=True, halt_at_step=3)
    other = small_config(tiny_dataset_dir, "iterations=6", "checkpoint_every=2", "val_every=0", "seed=99")
    with pytest.raises(PgolfError, match="another config"):
        run_training(other, tmp_path / "run", resume=True, quiet=True)


def test_a_foreign_tokenizer_is_refused_unless_allowed(tiny_dataset_dir, tmp_path):
    from pgolf.data.shards import find_tokenizer

    other = tmp_path / "other.model"
    other.write_bytes(find_tokenizer(tiny_dataset_dir).read_bytes())
    same = small_config(tiny_dataset_dir, f"tokenizer_path={other}")
    assert build.load_run_data(same).tokenizer_is_the_datasets  # a copy of the same file is fine
    from pgolf.data.synthetic import synthetic_documents
    from pgolf.data.tokenizer import train_sentencepiece

    foreign = train_sentencepiece(synthetic_documents(400, seed=5, rare_probability=0.2), tmp_path / "foreign.model",
                                  384)
    config = small_config(tiny_dataset_dir, f"tokenizer_path={foreign}")
    with pytest.raises(PgolfError, match="not the dataset's"):
        build.load_run_data(config)
    allowed = small_config(tiny_dataset_dir, f"tokenizer_path={foreign}", "allow_foreign_tokenizer=true")
    assert not build.load_run_data(allowed).tokenizer_is_the_datasets


def test_what_the_end_of_a_run_needs_is_checked_before_training(tiny_dataset_dir, tmp_path, monkeypatch):
    config = small_config(tiny_dataset_dir, "iterations=2")
    assert build.preflight_problems(config, tmp_path / "run", bytes_needed=1) == []
    from pgolf.compressors import COMPRESSORS

    unmet = COMPRESSORS["zstd"]._replace(requires=("no_such_compressor_package",))
    monkeypatch.setitem(COMPRESSORS, "zstd", unmet)
    problems = build.preflight_problems(config, tmp_path / "run", bytes_needed=1)
    assert len(problems) == 1 and "no_such_compressor_package" in problems[0]
    monkeypatch.undo()
    (tmp_path / "a_file").write_text("x")
    assert "cannot write to the run folder" in build.preflight_problems(config, tmp_path / "a_file" / "run", 1)[0]
    assert "bytes free" in build.preflight_problems(config, tmp_path / "run", bytes_needed=2**62)[0]
    # frontier's 98,304-token packed rows need FA3's varlen kernel: SDPA's mask alone would be 9 GiB
    from pgolf.config import frontier

    row = build.preflight_problems(frontier(), tmp_path / "run", bytes_needed=1)
    assert len(row) == 1 and "FlashAttention 3" in row[0] and "packed_rows=false" in row[0]

    stepped = []
    monkeypatch.setitem(COMPRESSORS, "zstd", unmet)
    import pgolf.train as train_module

    monkeypatch.setattr(train_module, "run_compile_warmup", lambda trainer: stepped.append(1))
    with pytest.raises(PgolfError, match="no_such_compressor_package"):
        run_training(config, tmp_path / "run2", quiet=True)
    assert stepped == []  # refused before the warm-up, let alone training


def test_a_checkpoint_that_cannot_be_written_keeps_the_last_one(tiny_dataset_dir, tmp_path, monkeypatch):
    config = small_config(tiny_dataset_dir, "iterations=6", "checkpoint_every=2", "val_every=0")
    real_save = torch.save
    calls = []

    def full_disk(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 2:  # the first checkpoint (optimiser + state) goes through, then the disk is full
            Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(PgolfError, match="No space left on device.*last one"):
        run_training(config, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / checkpoint.PARTIAL).exists()
    shared, _ = checkpoint.load_checkpoint(tmp_path / "run", rank=0, world_size=1)
    assert shared["step"] == 2


@pytest.mark.slow
def test_two_ranks_started_a_second_apart_write_one_folder(tiny_dataset_dir, tmp_path, gloo_port):
    """Without --out each rank used to name the folder from its own clock; rank 0 now decides."""
    launcher = textwrap.dedent(f"""
        import os, sys, time
        rank = int(sys.argv[1])
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT="{gloo_port}", OMP_NUM_THREADS="1")
        if rank == 1:
            time.sleep(1.5)
        from pgolf.cli import main
        args = {train_args(tiny_dataset_dir, Path('UNUSED'), '--set', 'micro_batch_tokens=128')!r}
        index = args.index("--out")
        del args[index:index + 2]
        sys.exit(main(args))
    """)
    script = tmp_path / "launch.py"
    script.write_text(launcher)
    processes = [subprocess.Popen([sys.executable, str(script), str(rank)], cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, error) in zip(processes, outputs):
        assert process.returncode == 0, error[-2000:]
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1 and (folders[0] / "result.json").is_file()
    assert json.loads((folders[0] / "result.json").read_text())["world_size"] == 2
