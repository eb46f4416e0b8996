"""Where ablation runs go: local subprocesses pinned to GPUs, Slurm array jobs through submitit's local
executor (requeue included), and one real end-to-end ablation on a tiny config (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

import pgolf
from pgolf.ablate.launchers import LocalLauncher, SubmititLauncher, TrainJob, pgolf_program
from pgolf.ablate.plan import make_plan
from pgolf.ablate.runner import make_tasks
from pgolf.cli import main

FAKE_TRAIN = [sys.executable, str(Path(__file__).with_name("ablate_fake_train.py"))]
SETTINGS = ["iterations=4", "val_every=0"]


@pytest.fixture(autouse=True)
def importable_pgolf(monkeypatch):
    """Child processes (the fake trainer, submitit's job processes) import this checkout's pgolf."""
    source = str(Path(pgolf.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])))


def _tasks(out_dir, seeds="2"):
    plan = make_plan("tiny", SETTINGS, ["smear_gate=true,false"], seeds)
    return make_tasks(out_dir, plan, checkpoint_every=None)[0]


def _result(task):
    return json.loads((task.run_dir / "result.json").read_text())


# ---------------------------------------------------------------- local


def test_local_slots_pin_gpus_in_groups():
    assert LocalLauncher(gpus=[]).slots() == [None]
    slots = LocalLauncher(gpus=["0", "1", "2", "3", "4"], gpus_per_run=2).slots()
    assert [slot["CUDA_VISIBLE_DEVICES"] for slot in slots] == ["0,1", "2,3"]
    assert [slot["CUDA_VISIBLE_DEVICES"] for slot in LocalLauncher(gpus=["4", "6"]).slots()] == ["4", "6"]
    with pytest.raises(pgolf.errors.PgolfError, match="needs 8 GPUs"):
        LocalLauncher(gpus=["0"], gpus_per_run=8).slots()
    assert pgolf_program(1) == [sys.executable, "-m", "pgolf"]
    assert pgolf_program(4)[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]


def test_local_launcher_runs_one_per_gpu_and_reports_a_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_FAIL_SEED", "1338")
    tasks = _tasks(tmp_path)
    heard = []
    outcomes = LocalLauncher(gpus=["0", "1"], program=FAKE_TRAIN).launch(tasks, heard.append)
    assert len(heard) == 4 and sorted(outcome.task.name for outcome in outcomes) == sorted(task.name for task in tasks)
    failed = [outcome for outcome in outcomes if not outcome.finished]
    assert sorted(outcome.task.name for outcome in failed) == ["smear_gate=false seed 1338",
                                                               "smear_gate=true seed 1338"]
    assert "exit status 1: pgolf: error: fake failure for seed 1338" in failed[0].message
    finished = [outcome.task for outcome in outcomes if outcome.finished]
    assert {_result(task)["cuda_visible_devices"] for task in finished} <= {"0", "1"}
    assert "val_bpb" in outcomes[0].message or "val_bpb" in outcomes[1].message


STOPPABLE_LAUNCH = """
import signal, sys
from pathlib import Path
from pgolf.ablate.launchers import LocalLauncher, RunTask
from pgolf.commands.ablate import _exit_on_sigterm

signal.signal(signal.SIGTERM, _exit_on_sigterm)  # as `pgolf ablate` does
out = Path(sys.argv[1])
tasks = [RunTask(name, out / name, ("train", "--preset", "tiny", "--seed", "1", "--out", str(out / name)),
                 out / (name + ".log")) for name in ("first", "second")]
LocalLauncher(gpus=sys.argv[2:], program=[sys.executable, {fake!r}]).launch(tasks, print)
"""


@pytest.mark.parametrize("gpus", [[], ["0", "1"]])
def test_stopping_the_launcher_stops_its_runs(tmp_path, monkeypatch, gpus):
    monkeypatch.setenv("FAKE_TRAIN_STALL", "1")
    script = STOPPABLE_LAUNCH.format(fake=FAKE_TRAIN[1])
    launcher = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), *gpus])
    pid_files = [tmp_path / name / "fake.pid" for name in (["first"] if not gpus else ["first", "second"])]
    for _ in range(600):  # the runs are up once they wrote their pid (at most 60 s)
        if all(path.is_file() and path.read_text() for path in pid_files) or launcher.poll() is not None:
            break
        time.sleep(0.1)
    run_pids = [int(path.read_text()) for path in pid_files]
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(60) == 128 + signal.SIGTERM
    for pid in run_pids:  # stopped and reaped by the launcher, not left running as orphans
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# ---------------------------------------------------------------- Slurm, through submitit


def test_slurm_parameters_reach_the_sbatch_script(tmp_path, monkeypatch):
    with pytest.raises(pgolf.errors.PgolfError, match="srun"):
        SubmititLauncher(folder=tmp_path).executor()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for srun, never runs it here
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    launcher = SubmititLauncher(folder=tmp_path, partition="h100", gpus_per_run=8, time_minutes=30,
                                max_parallel=4, slurm_options={"account": "golf"})
    executor = launcher.executor()._executor
    script = executor._make_submission_file_text("COMMAND", "uid")
    for line in ("#SBATCH --partition=h100", "#SBATCH --gpus-per-node=8", "#SBATCH --time=30",
                 "#SBATCH --account=golf", "#SBATCH --job-name=pgolf-ablate", "#SBATCH --signal=USR2@90"):
        assert line in script
    assert executor.parameters["array_parallelism"] == 4 and executor.max_num_timeout == 3
    assert TrainJob(_tasks(tmp_path)[0], pgolf_program(8)).program[4] == "--nproc_per_node=8"


def test_slurm_path_through_submitits_local_executor(tmp_path):
    tasks = _tasks(tmp_path / "ablation")
    launcher = SubmititLauncher(folder=tmp_path / "submitit", cluster="local", gpus_per_run=0, time_minutes=5,
                                program=FAKE_TRAIN, poll_seconds=0.2)
    heard = []
    outcomes = launcher.launch(tasks, heard.append)
    assert len(outcomes) == 4 and all(outcome.finished for outcome in outcomes), outcomes
    assert {_result(task)["seed"] for task in tasks} == {1337, 1338}
    assert all(not _result(task)["resumed"] for task in tasks)


@pytest.mark.slow  # waits for the timeout signal by design
def test_a_timed_out_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_STALL", "1")  # a fresh start writes a checkpoint, then hangs
    task = _tasks(tmp_path / "ablation", seeds="1")[0]
    executor = submitit.LocalExecutor(tmp_path / "submitit", max_num_timeout=1)
    executor.update_parameters(timeout_min=12 / 60, signal_delay_s=6)  # the timeout signal after 6 s
    job = executor.submit(TrainJob(task, FAKE_TRAIN))
    answer = job.result()
    assert answer["finished"], answer
    assert _result(task)["resumed"] is True
    log = task.log_path.read_text()
    assert "checkpoint written, stalling" in log and f"train --resume {task.run_dir} --quiet" in log


# ---------------------------------------------------------------- the real thing, tiny


@pytest.mark.slow
def test_pgolf_ablate_end_to_end_then_resumes_with_nothing_to_do(tiny_dataset_dir, tmp_path, capsys):
    from test_train import TEST_SETTINGS

    out = tmp_path / "ablation"
    arguments = ["ablate", "--preset", "tiny", "--vary", "smear_gate=true,false", "--seeds", "2", "--out", str(out)]
    for setting in TEST_SETTINGS + [f"data_dir={tiny_dataset_dir}", "iterations=3", "val_every=0"]:
        arguments += ["--set", setting]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "0 finished (kept), 0 resume from a checkpoint, 0 restart, 4 new" in printed
    assert "smear_gate=false" in printed and "2/2" in printed
    for name in ("grid.json", "table.csv", "table.md", "ablation.png", "curves.png"):
        assert (out / name).is_file(), name
    run_dir = out / "runs" / "smear_gate=false" / "seed1338"
    result = json.loads((run_dir / "result.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert result["steps"] == 3 and config["model"]["smear_gate"] is False and config["seed"] == 1338
    assert (run_dir / "checkpoint" / "meta.json").is_file()  # runs checkpoint (here every step)
    assert main(arguments) == 0
    assert "4 finished (kept), 0 resume from a checkpoint, 0 restart, 0 new" in capsys.readouterr().out
    assert main(arguments + ["--seeds", "3"]) == 1  # a changed plan: one line, nothing run
    assert "holds another plan: --seeds is [1337, 1338] there, [1337, 1338, 1339] here" in capsys.readouterr().err
