"""`pgolf eval`: scores an artifact like the end of training, and refuses a foreign tokenizer."""

import ast
import json

import pytest

from pgolf.cli import main
from pgolf.data.shards import find_tokenizer
from pgolf.train import run_training
from test_train import small_config


@pytest.fixture(scope="module")
def trained_run(tiny_dataset_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval_run") / "run"
    result = run_training(small_config(tiny_dataset_dir, "iterations=3", "val_every=0"), run_dir, quiet=True)
    return run_dir, result


def eval_args(run_dir, dataset_dir, *extra):
    return ["eval", str(run_dir / "model.pgolf"), "--data", str(dataset_dir), "--seq-len", "32", "--stride", "8",
            "--batch-seqs", "8", "--fp32", "--compile", "off", *extra]


def test_standalone_eval_reproduces_the_training_score(trained_run, tiny_dataset_dir, capsys):
    run_dir, result = trained_run
    assert main(eval_args(run_dir, tiny_dataset_dir, "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["val_bpb"] == result["val_bpb"] and report["tokens_scored"] == result["val_tokens_scored"]
    assert report["predicted_seconds_8xh100_full_val"] > 0


def test_a_different_tokenizer_is_refused(trained_run, tiny_dataset_dir, tmp_path, capsys):
    run_dir, _ = trained_run
    other = tmp_path / "other.model"
    other.write_bytes(find_tokenizer(tiny_dataset_dir).read_bytes() + b"\0")
    assert main(eval_args(run_dir, tiny_dataset_dir, "--tokenizer", str(other))) == 1
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "is not the one this artifact was trained with" in error


@pytest.mark.slow
def test_eval_never_loads_training_code(trained_run, tiny_dataset_dir):
    """Scoring needs the artifact, the tokenizer and the val shards: not the optimiser, the schedule, the
    averaging, the training loop or its build and finish."""
    import subprocess
    import sys

    run_dir, _ = trained_run
    probe = (f"import sys; from pgolf.cli import main; code = main({eval_args(run_dir, tiny_dataset_dir, '--json')!r}); "
             "print(sorted(m for m in sys.modules if m.startswith('pgolf.'))); sys.exit(code)")
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    loaded = set(ast.literal_eval(completed.stdout.strip().splitlines()[-1]))
    assert "pgolf.scoring" in loaded and "pgolf.evaluate" in loaded
    training = {"pgolf.optim", "pgolf.schedule", "pgolf.averaging", "pgolf.train", "pgolf.build", "pgolf.finish",
                "pgolf.checkpoint", "pgolf.data.stream", "pgolf.kernels"}
    assert not training & loaded, training & loaded
