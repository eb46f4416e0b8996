"""`pgolf ablate` without training: the plan and grid.json, resume after a kill, the statistics, the table.

Runs are made by an in-process stand-in for `pgolf train` (ablate_fake_train.py) whose true effect is
known: smear_gate off costs 0.02 nats.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import replace

import pytest
from ablate_fake_train import fake_train, true_val_loss
from scipy import stats

from pgolf.ablate.launchers import Outcome, start_arguments
from pgolf.ablate.plan import PLAN_FILE, load_plan, make_plan, open_plan, run_state
from pgolf.ablate.runner import execute, report
from pgolf.ablate.table import build_table, format_markdown, verdict
from pgolf.config import tiny
from pgolf.errors import PgolfError
from pgolf.verify.stats import Difference, welch_difference

SETTINGS = ["iterations=4", "val_every=0"]


class FakeLauncher:
    """Runs each task in-process with the fake trainer; `crash_after` raises KeyboardInterrupt (a kill)
    when that many runs have started, the crashing run left without result.json (and maybe with a
    checkpoint)."""

    def __init__(self, crash_after: int | None = None, crash_with_checkpoint: bool = False):
        self.crash_after, self.crash_with_checkpoint = crash_after, crash_with_checkpoint
        self.started: list[tuple[str, str]] = []  # (task name, "fresh" or "resume")

    def launch(self, tasks, report):
        outcomes = []
        for task in tasks:
            arguments = start_arguments(task)
            self.started.append((task.name, "resume" if "--resume" in arguments else
                                 "overwrite" if "--overwrite" in arguments else "fresh"))
            if self.crash_after is not None and len(self.started) > self.crash_after:
                assert fake_train(arguments) == 0  # then undo its end: killed before result.json
                for name in ("result.json", "metrics.jsonl"):
                    (task.run_dir / name).unlink()
                (task.run_dir / "train.log").write_text("from the killed attempt")
                if self.crash_with_checkpoint:
                    (task.run_dir / "checkpoint").mkdir()
                    (task.run_dir / "checkpoint" / "meta.json").write_text('{"complete": true, "step": 2}')
                raise KeyboardInterrupt
            assert fake_train(arguments) == 0
            outcomes.append(Outcome(task, True, "ok"))
            report(outcomes[-1])
        return outcomes


def smear_plan(seeds="3", **kwargs):
    return make_plan("tiny", SETTINGS, ["smear_gate=true,false"], seeds, **kwargs)


# ---------------------------------------------------------------- the plan


def test_grid_cells_control_first_and_runs_per_seed():
    plan = make_plan("tiny", SETTINGS, ["smear_gate=true,false", "matrix_lr=0.02,3e-2"], "2",
                     control_texts=["matrix_lr=0.03"])
    assert [cell.name for cell in plan.cells] == [
        "smear_gate=true, matrix_lr=0.03", "smear_gate=true, matrix_lr=0.02", "smear_gate=false, matrix_lr=0.02",
        "smear_gate=false, matrix_lr=0.03"]
    assert plan.control == plan.cells[0].name and plan.seeds == (tiny().seed, tiny().seed + 1)
    assert plan.cells[3].config["matrix_lr"] == 0.03 and plan.cells[3].config["model"]["smear_gate"] is False
    assert plan.cells[0].config["iterations"] == 4 and "seed" not in plan.cells[0].config
    assert [run.folder for run in plan.runs()][:2] == ["runs/smear_gate=true__matrix_lr=0.03/seed1337",
                                                       "runs/smear_gate=true__matrix_lr=0.03/seed1338"]


def test_one_at_a_time_changes_one_setting_from_the_base():
    plan = make_plan("tiny", SETTINGS, ["smear_gate=on,off", "matrix_lr=0.02,0.03,0.04"], "5,9",
                     one_at_a_time=True)
    assert [cell.name for cell in plan.cells] == ["base", "smear_gate=false", "matrix_lr=0.03", "matrix_lr=0.04"]
    assert dict(plan.cells[0].assignments) == {"smear_gate": "true", "matrix_lr": "0.02"}
    assert dict(plan.cells[2].assignments) == {"smear_gate": "true", "matrix_lr": "0.03"}
    assert plan.seeds == (5, 9) and len(plan.runs()) == 8


@pytest.mark.parametrize("vary, settings, control, message", [
    (["data_dir=/a,/b"], [], [], "tokenizer or val set"),
    (["vocab_size=1024,2048"], [], [], "tokenizer or val set"),
    (["seed=1,2"], [], [], "--seeds"),
    (["smear_gate=true,1"], [], [], "values repeat"),
    (["smear_gate=true"], [], [], "at least two values"),
    (["smear_gate=true,false"], ["smear_gate=true"], [], "conflicts"),
    (["smear_gate=true,false"], [], ["matrix_lr=0.1"], "not a --vary setting"),
    (["smear_gate=true,false"], [], ["smear_gate=maybe"], "expected a boolean"),
    (["num_heads=4,3"], [], [], "not divisible"),
])
def test_bad_plans_are_refused_in_one_line(vary, settings, control, message):
    with pytest.raises(PgolfError, match=message) as error:
        make_plan("tiny", settings, vary, "2", control)
    assert "\n" not in str(error.value)


def test_changed_plan_is_refused_naming_the_difference(tmp_path):
    assert open_plan(tmp_path, smear_plan()) is False
    assert open_plan(tmp_path, smear_plan()) is True  # the same command resumes
    assert load_plan(tmp_path) == smear_plan()
    changes = [
        (make_plan("tiny", SETTINGS, ["smear_gate=true,false,"], "4"), '--seeds is [1337, 1338, 1339] there, '
                                                                      '[1337, 1338, 1339, 1340] here'),
        (make_plan("tiny", SETTINGS, ["smear_gate=false,true"], "3"), "--vary is"),
        (make_plan("tiny", SETTINGS + ["matrix_lr=0.03"], ["smear_gate=true,false"], "3"), "--set is"),
        (smear_plan(control_texts=["smear_gate=false"]), "the control cell"),
    ]
    for plan, message in changes:
        with pytest.raises(PgolfError, match=message.replace("[", r"\[").replace("]", r"\]")):
            open_plan(tmp_path, plan)
    # a preset whose defaults changed since grid.json was written: the resolved setting is named
    stored = json.loads((tmp_path / PLAN_FILE).read_text())
    stored["cells"][1]["config"]["embed_lr"] = 0.5
    (tmp_path / PLAN_FILE).write_text(json.dumps(stored))
    with pytest.raises(PgolfError, match=r"cell 'smear_gate=false' resolves embed_lr to 0.5 there, 0.035 here"):
        open_plan(tmp_path, smear_plan())


# ---------------------------------------------------------------- resume after a kill


def test_rerun_after_a_kill_keeps_finished_runs_and_resumes_the_rest(tmp_path):
    plan, out = smear_plan(), tmp_path / "ablation"
    first = FakeLauncher(crash_after=2, crash_with_checkpoint=True)
    with pytest.raises(KeyboardInterrupt):
        execute(out, plan, first, checkpoint_every=None, log=lambda line: None)
    finished = [out / run.folder / "result.json" for run in plan.runs()[:2]]
    before = [path.read_bytes() for path in finished]
    stamps = [path.stat().st_mtime_ns for path in finished]

    lines = []
    second = FakeLauncher(crash_after=1, crash_with_checkpoint=False)
    with pytest.raises(KeyboardInterrupt):
        execute(out, plan, second, checkpoint_every=None, log=lines.append)
    assert "2 finished (kept), 1 resume from a checkpoint, 0 restart, 3 new" in lines[0]
    assert second.started == [("smear_gate=true seed 1339", "resume"), ("smear_gate=false seed 1337", "fresh")]

    third = FakeLauncher()
    lines.clear()
    execute(out, plan, third, checkpoint_every=None, log=lines.append)
    assert "3 finished (kept), 0 resume from a checkpoint, 1 restart, 2 new" in lines[0]
    # the run killed before any checkpoint starts over, replacing its files
    assert third.started[0] == ("smear_gate=false seed 1337", "overwrite")
    assert not (out / plan.runs()[3].folder / "train.log").exists()
    assert [path.read_bytes() for path in finished] == before
    assert [path.stat().st_mtime_ns for path in finished] == stamps
    assert json.loads((out / plan.runs()[2].folder / "result.json").read_text())["resumed"] is True
    fourth = FakeLauncher()
    execute(out, plan, fourth, checkpoint_every=None, log=lines.append)
    assert fourth.started == [] and "6 finished (kept)" in lines[-1]


@pytest.mark.parametrize("layout", [{}, {"checkpoint": True}, {"checkpoint": False}, {"checkpoint.previous": True},
                                    {"checkpoint.partial": True}, {"checkpoint": "broken"}])
def test_run_state_finds_the_checkpoints_pgolf_checkpoint_finds(tmp_path, layout):
    from pgolf.checkpoint import find_checkpoint

    (tmp_path / "config.json").write_text("{}")
    for name, complete in layout.items():
        (tmp_path / name).mkdir()
        meta = "{" if complete == "broken" else json.dumps({"step": 3, "world_size": 1, "complete": complete})
        (tmp_path / name / "meta.json").write_text(meta)
    try:
        expected = "resumable" if find_checkpoint(tmp_path) is not None else "started"
    except json.JSONDecodeError:
        expected = "started"  # pgolf train --resume could not read it either: start over
    assert run_state(tmp_path) == expected
    (tmp_path / "result.json").write_text("{}")
    assert run_state(tmp_path) == "finished" and run_state(tmp_path / "absent") == "new"


def test_fresh_arguments_carry_the_plan_and_checkpoint_cadence(tmp_path):
    from pgolf.ablate.runner import make_tasks

    tasks, states = make_tasks(tmp_path, smear_plan(), checkpoint_every=None)
    assert states["new"] == 6 and len(tasks) == 6
    arguments = list(tasks[3].fresh_arguments)
    assert arguments[:3] == ["train", "--preset", "tiny"]
    assert arguments[arguments.index("--seed") + 1] == "1337" and "smear_gate=false" in arguments
    assert arguments[arguments.index("--checkpoint-every") + 1] == "1"  # a tenth of 4 steps, at least 1
    tasks, _ = make_tasks(tmp_path, smear_plan(), checkpoint_every=0)
    assert "--checkpoint-every" not in tasks[0].fresh_arguments


# ---------------------------------------------------------------- statistics


CELL = [2.031, 2.024, 2.040, 2.029]
CONTROL = [2.012, 2.018, 2.009]


def test_welch_difference_matches_scipy_and_a_transcription_of_the_interval():
    result = welch_difference(CELL, CONTROL)
    reference = stats.ttest_ind(CELL, CONTROL, equal_var=False)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-12)
    # Welch's interval written out: standard error, Welch-Satterthwaite df, t quantile
    var_cell, var_control = statistics.variance(CELL) / len(CELL), statistics.variance(CONTROL) / len(CONTROL)
    df = (var_cell + var_control) ** 2 / (var_cell ** 2 / (len(CELL) - 1) + var_control ** 2 / (len(CONTROL) - 1))
    half_width = stats.t.ppf(0.975, df) * math.sqrt(var_cell + var_control)
    difference = sum(CELL) / len(CELL) - sum(CONTROL) / len(CONTROL)
    assert result.df == pytest.approx(df, rel=1e-12) and result.mean == pytest.approx(difference, abs=1e-12)
    assert (result.low, result.high) == pytest.approx((difference - half_width, difference + half_width), abs=1e-12)
    assert result.low > 0 and result.p_value < 0.05  # clearly worse, and the two agree


def test_welch_interval_against_a_printed_t_table():
    # equal sizes and spreads: Welch's df is 2 (n - 1) = 4 exactly, and t_{0.975, 4} = 2.776 (printed tables)
    cell, control = [1.0, 2.0, 3.0], [3.0, 4.0, 5.0]
    result = welch_difference(cell, control)
    assert result.df == pytest.approx(4.0, rel=1e-12) and result.mean == pytest.approx(-2.0)
    assert result.high - result.mean == pytest.approx(2.776 * math.sqrt(2 / 3), rel=2e-4)


def test_welch_difference_without_spread_and_with_too_few_runs():
    flat = welch_difference([1.0, 1.0], [2.0, 2.0])
    assert (flat.mean, flat.low, flat.high) == (-1.0, -1.0, -1.0) and math.isnan(flat.p_value)
    with pytest.raises(PgolfError, match="at least 2 values"):
        welch_difference([1.0], [2.0, 2.1])


@pytest.mark.parametrize("low, high, words", [
    (-0.03, -0.01, "helps: better by more than 0.005 nats"),
    (0.006, 0.02, "hurts: worse by more than 0.005 nats"),
    (-0.004, 0.003, "no difference of 0.005 nats or more"),
    (-0.02, -0.001, "helps, maybe by less than 0.005 nats"),
    (0.001, 0.02, "hurts, maybe by less than 0.005 nats"),
    (-0.02, 0.02, "inconclusive: more seeds needed"),
])
def test_verdict_reads_the_interval_against_the_threshold(low, high, words):
    assert verdict(Difference((low + high) / 2, low, high, 0.01, 4.0, 0.95), 0.005) == words
    assert verdict(None, 0.005).startswith("too few runs")


# ---------------------------------------------------------------- the table


def _finished_ablation(tmp_path, plan):
    out = tmp_path / "ablation"
    execute(out, plan, FakeLauncher(), checkpoint_every=None, log=lambda line: None)
    return out


def test_table_numbers_guards_and_files(tmp_path):
    plan = smear_plan()
    out = _finished_ablation(tmp_path, plan)
    lines = []
    rows = report(out, plan, threshold=0.005, log=lines.append)
    control, off = rows
    assert control.is_control and control.verdict == "control" and off.num_runs == 3
    losses_on = [true_val_loss(replace(tiny(), seed=seed), seed) for seed in plan.seeds]
    losses_off = [true_val_loss(replace(tiny(), model=replace(tiny().model, smear_gate=False)), seed)
                  for seed in plan.seeds]
    assert off.val_loss == pytest.approx(losses_off, abs=1e-12)
    # identical seed offsets on both sides: the difference is exactly the true effect
    assert off.delta_loss.mean == pytest.approx(0.02, abs=1e-12)
    assert off.delta_loss.p_value == pytest.approx(stats.ttest_ind(losses_off, losses_on, equal_var=False).pvalue)
    assert off.roundtrip_gap == pytest.approx((0.002,) * 3, abs=1e-12)  # roundtrip_plain - prequant
    assert off.verdict.startswith("hurts")
    assert "smear_gate=false" in lines[0] and "hurts" in lines[0]
    with open(out / "table.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert float(written[1]["delta_val_loss_low"]) == pytest.approx(off.delta_loss.low)
    assert float(written[1]["delta_val_bpb"]) == pytest.approx(off.delta_bpb.mean)
    assert (out / "table.md").read_text() == format_markdown(rows, 0.005)
    for name in ("ablation.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_averaged_weights_are_the_round_trip_reference_when_reported(tmp_path):
    plan = smear_plan(seeds="2")
    out = _finished_ablation(tmp_path, plan)
    result_path = out / plan.runs()[0].folder / "result.json"
    result = json.loads(result_path.read_text())
    result_path.write_text(json.dumps({**result, "val_bpb_averaged": result["val_bpb_roundtrip_plain"] - 0.01}))
    assert build_table(out, plan)[0].roundtrip_gap[0] == pytest.approx(0.01, abs=1e-12)


def test_table_flags_missing_runs_and_uneven_steps(tmp_path):
    plan = make_plan("tiny", SETTINGS + ["max_wallclock_seconds=600"], ["smear_gate=true,false"], "3")
    out = _finished_ablation(tmp_path, plan)
    (out / plan.runs()[5].folder / "result.json").unlink()
    capped = out / plan.runs()[3].folder / "result.json"
    capped.write_text(json.dumps({**json.loads(capped.read_text()), "steps": 3}))
    rows = build_table(out, plan)
    assert rows[1].flags == ("2 of 3 runs finished", "runs stopped at different steps (3..4): the wall-clock cap, "
                                                    "not the step budget, ended them")
    assert rows[0].flags == ()
    lines = []
    report(out, plan, 0.005, log=lines.append, figures=False)
    assert "! smear_gate=false: 2 of 3 runs finished" in lines[0]


def test_table_refuses_a_run_with_another_config_or_other_val_data(tmp_path):
    plan = smear_plan(seeds="2")
    out = _finished_ablation(tmp_path, plan)
    config_path = out / plan.runs()[1].folder / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "matrix_lr": 0.5}))
    with pytest.raises(PgolfError, match="trained with matrix_lr=0.5 but the plan's cell 'smear_gate=true' says 0.025"):
        build_table(out, plan)
    config_path.write_text(json.dumps(config))
    result_path = out / plan.runs()[2].folder / "result.json"
    result_path.write_text(json.dumps({**json.loads(result_path.read_text()), "val_bytes_scored": 9999}))
    with pytest.raises(PgolfError, match="cells differ in tokenizer or val set"):
        build_table(out, plan)


def test_report_only_reads_the_plan_from_grid_json(tmp_path, capsys):
    from pgolf.cli import main

    out = _finished_ablation(tmp_path, smear_plan(seeds="2"))
    assert main(["ablate", "--out", str(out), "--report-only", "--threshold-nats", "0.05"]) == 0
    printed = capsys.readouterr().out
    assert "smear_gate=false" in printed and "no difference of 0.05 nats or more" in printed
    assert main(["ablate", "--out", str(tmp_path / "elsewhere"), "--report-only"]) == 1
    assert "is not an ablation folder" in capsys.readouterr().err
