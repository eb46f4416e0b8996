"""Where the runs of an ablation go: local subprocesses, or Slurm jobs through submitit.

A launcher takes `RunTask`s and returns one `Outcome` per task. Whatever the
launcher, a run decides how to start at the moment it starts
(`start_arguments`): a finished run is left alone, a run with a complete
checkpoint resumes (`pgolf train --resume`), a run killed before its first
checkpoint starts again (`--overwrite`: its own files are replaced). So a job requeued after preemption, or an
ablation rerun after a kill, continues where the run stood.

- `LocalLauncher`: one run at a time on this machine; with GPUs, one run per
  GPU (or per `gpus_per_run` GPUs) at once, each pinned with CUDA_VISIBLE_DEVICES.
- `SubmititLauncher`: each run a task of one Slurm array job (partition, GPUs
  per run, time limit), requeued on preemption or timeout. `cluster="local"`
  runs the same path through submitit's local executor (the tests do).
A run with several GPUs is started with torchrun (`torch.distributed.run`).
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import submitit

from pgolf.ablate.plan import resume_arguments, run_state
from pgolf.errors import PgolfError

TERMINATE_GRACE_SECONDS = 30  # a stopped run gets this long to exit (torchrun stops its workers) before a kill


@dataclass(frozen=True)
class RunTask:
    name: str  # "smear_gate=false seed 1338"
    run_dir: Path  # absolute
    fresh_arguments: tuple[str, ...]  # `pgolf` arguments that train it from scratch
    log_path: Path  # the run's stdout and stderr, appended across attempts


@dataclass(frozen=True)
class Outcome:
    task: RunTask
    finished: bool
    message: str  # "val_bpb 2.1234 after 120 steps" or why it failed


class Launcher(Protocol):
    def launch(self, tasks: Sequence[RunTask], report: Callable[[Outcome], None]) -> list[Outcome]:
        """Run every task (in any order, maybe several at once); `report` hears each outcome as it comes."""


def pgolf_program(processes_per_run: int) -> list[str]:
    """The command that runs `pgolf` in this environment, under torchrun for several processes."""
    if processes_per_run > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={processes_per_run}", "-m", "pgolf"]
    return [sys.executable, "-m", "pgolf"]


def start_arguments(task: RunTask) -> list[str] | None:
    """The arguments to run now: None (finished), resume from the checkpoint, or fresh."""
    state = run_state(task.run_dir)
    if state == "finished":
        return None
    if state == "resumable":
        return resume_arguments(task.run_dir)
    if state == "started":  # killed before its first checkpoint: `pgolf train` replaces its files (only a run's)
        return list(task.fresh_arguments) + ["--overwrite"]
    return list(task.fresh_arguments)


_running: set[subprocess.Popen] = set()  # runs started by this process and not yet ended
_running_lock = threading.Lock()


def stop(process: subprocess.Popen) -> None:
    """Ask a run to stop (torchrun passes it on to its workers); kill it if it does not in time."""
    process.terminate()
    try:
        process.wait(TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_all_runs() -> None:
    with _running_lock:
        processes = list(_running)
    for process in processes:
        stop(process)


def run_to_end(command: list[str], log_file, environment: dict[str, str] | None) -> int:
    """Run `command` to its end; if this process is interrupted (Ctrl-C, SIGTERM, a job's requeue
    signal), stop the child first: a run left behind would keep writing into the folder the next
    attempt uses."""
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=environment)
    with _running_lock:
        _running.add(process)
    try:
        return process.wait()
    except BaseException:
        stop(process)
        raise
    finally:
        with _running_lock:
            _running.discard(process)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def run_task(task: RunTask, program: Sequence[str], environment: dict[str, str] | None = None) -> Outcome:
    """Start, resume or skip one run in a subprocess and say how it ended."""
    arguments = start_arguments(task)
    if arguments is not None:
        task.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = list(program) + arguments
        with open(task.log_path, "a", encoding="utf-8") as log_file:
            log_file.write(f"$ {shlex.join(command)}\n")
            log_file.flush()
            return_code = run_to_end(command, log_file, environment)
        if return_code != 0:
            return Outcome(task, False, f"exit status {return_code}: {_last_line(task.log_path)} "
                                        f"(log: {task.log_path})")
    result_path = task.run_dir / "result.json"
    if not result_path.is_file():
        return Outcome(task, False, f"ended without {result_path} (log: {task.log_path})")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    return Outcome(task, True, f"val_bpb {result['val_bpb']:.4f} after {result['steps']} steps")


# ---------------------------------------------------------------- on this machine


def visible_gpus() -> list[str]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else every GPU torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import torch  # late: `pgolf --help` stays fast

    return [str(index) for index in range(torch.cuda.device_count())]


@dataclass
class LocalLauncher:
    """Runs in subprocesses here: one at a time without GPUs, else one per group of `gpus_per_run` GPUs."""
    gpus_per_run: int = 1
    gpus: list[str] | None = None  # None: `visible_gpus()`
    program: list[str] | None = None  # None: `pgolf_program(gpus_per_run)`

    def slots(self) -> list[dict[str, str] | None]:
        """One environment per run that may go at once (None: this process's, unchanged)."""
        gpus = visible_gpus() if self.gpus is None else self.gpus
        if not gpus:
            return [None]
        if len(gpus) < self.gpus_per_run:
            raise PgolfError(f"a run needs {self.gpus_per_run} GPUs; this machine shows {len(gpus)}")
        groups = [gpus[start:start + self.gpus_per_run]
                  for start in range(0, len(gpus) - self.gpus_per_run + 1, self.gpus_per_run)]
        return [{**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(group)} for group in groups]

    def launch(self, tasks: Sequence[RunTask], report: Callable[[Outcome], None]) -> list[Outcome]:
        program = self.program or pgolf_program(self.gpus_per_run)
        slots = self.slots()
        if len(slots) == 1:
            outcomes = []
            for task in tasks:
                outcomes.append(run_task(task, program, slots[0]))
                report(outcomes[-1])
            return outcomes
        pending: queue.Queue[RunTask] = queue.Queue()
        for task in tasks:
            pending.put(task)
        outcomes, lock = [], threading.Lock()

        def work(environment: dict[str, str]) -> None:
            while True:
                try:
                    task = pending.get_nowait()
                except queue.Empty:
                    return
                outcome = run_task(task, program, environment)
                with lock:
                    outcomes.append(outcome)
                    report(outcome)

        workers = [threading.Thread(target=work, args=(slot,), daemon=True) for slot in slots]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                worker.join()
        except BaseException:  # signals reach the main thread only: stop the workers' runs from here
            while not pending.empty():
                pending.get_nowait()
            stop_all_runs()
            raise
        return outcomes


# ---------------------------------------------------------------- Slurm, through submitit


class TrainJob(submitit.helpers.Checkpointable):
    """One run as a submitit job. On preemption or timeout submitit calls `checkpoint()`, which
    (Checkpointable's default) resubmits this same object; the new attempt resumes from the run's
    last checkpoint through `start_arguments`."""

    def __init__(self, task: RunTask, program: list[str]):
        self.task = task
        self.program = program

    def __call__(self) -> dict[str, object]:
        outcome = run_task(self.task, self.program)
        return {"finished": outcome.finished, "message": outcome.message}


@dataclass
class SubmititLauncher:
    """Each run a task of one array job; waits for all of them."""
    folder: Path  # submitit's files: pickled jobs, job logs
    partition: str | None = None
    gpus_per_run: int = 1
    time_minutes: int = 60
    cpus_per_run: int | None = None
    max_parallel: int | None = None  # array tasks running at once (None: as many as Slurm allows)
    max_requeues: int = 3  # timeouts a run may be requeued after (preemptions do not count)
    slurm_options: dict[str, str] = field(default_factory=dict)  # extra #SBATCH options, e.g. account
    cluster: str = "slurm"  # "local": submitit's local executor, same code path (tests)
    program: list[str] | None = None
    poll_seconds: float = 30.0

    def executor(self):
        try:
            executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster,
                                             slurm_max_num_timeout=self.max_requeues,
                                             local_max_num_timeout=self.max_requeues)
        except RuntimeError as error:  # no srun here
            raise PgolfError(f"--launcher {self.cluster}: {error}") from None
        executor.update_parameters(
            name="pgolf-ablate", timeout_min=self.time_minutes, nodes=1, tasks_per_node=1,
            gpus_per_node=self.gpus_per_run or None, cpus_per_task=self.cpus_per_run,
            slurm_partition=self.partition, slurm_array_parallelism=self.max_parallel,
            slurm_additional_parameters=dict(self.slurm_options) or None)
        return executor

    def launch(self, tasks: Sequence[RunTask], report: Callable[[Outcome], None]) -> list[Outcome]:
        if not tasks:
            return []
        program = self.program or pgolf_program(self.gpus_per_run)
        jobs = self.executor().submit_array([TrainJob(task, program) for task in tasks])
        task_of = {job.job_id: task for job, task in zip(jobs, tasks)}
        print(f"submitted {len(jobs)} job(s) ({jobs[0].job_id.split('_')[0]}...); submitit files in {self.folder}",
              flush=True)
        outcomes = []
        for job in submitit.helpers.as_completed(jobs, poll_frequency=self.poll_seconds):
            task = task_of[job.job_id]
            try:
                answer = job.result()
                outcome = Outcome(task, bool(answer["finished"]), str(answer["message"]))
            except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                outcome = Outcome(task, False, f"job {job.job_id}: {first_line} (submitit logs: {self.folder})")
            outcomes.append(outcome)
            report(outcome)
        return outcomes
