"""The ablation plan: cells x seeds, each run a normal `pgolf train` folder, fixed in `grid.json`.

A cell is one assignment of the varied settings. `--vary KEY=V1,V2` lists a
setting's values; the cells are every combination (a grid) or, with
`--one-at-a-time`, a base (the control's values) plus one cell per other value
of one setting, the rest left at the base. Every cell runs every seed; run
folders are `OUT/runs/<cell folder>/seed<N>`.

`grid.json` records the request (preset, `--set`, `--vary`, control, seeds)
and each cell's resolved config (seed and checkpoint cadence left out): a
rerun of the same command finds it and resumes; a rerun whose plan differs,
a changed preset included, is refused with the first difference named.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.config import ModelConfig, RunConfig, apply_overrides, get_preset, run_config_to_dict
from pgolf.errors import PgolfError
from pgolf.verify.run_checks import config_differences, flatten

PLAN_FILE = "grid.json"
PLAN_FORMAT = 1
RUNS_FOLDER = "runs"
BASE_CELL = "base"
# settings that are not part of what a cell means: the seed varies by design, checkpoints change no number
RUN_ONLY_KEYS = ("seed", "checkpoint_every")
# cells must share the data they are scored on
DATA_KEYS = ("data_dir", "tokenizer_path", "model.vocab_size")


@dataclass(frozen=True)
class Cell:
    name: str  # "smear_gate=false", "matrix_lr=0.03, smear_gate=true" or "base"
    folder: str  # the name, file-name safe: "matrix_lr=0.03__smear_gate=true"
    assignments: tuple[tuple[str, str], ...]  # (setting as typed, canonical value text)
    config: dict[str, Any]  # the resolved RunConfig as a dict, RUN_ONLY_KEYS left out


@dataclass(frozen=True)
class PlannedRun:
    cell: Cell
    seed: int
    folder: str  # relative to the ablation folder


@dataclass(frozen=True)
class Plan:
    preset: str
    settings: tuple[str, ...]  # --set, in order
    vary: tuple[tuple[str, tuple[str, ...]], ...]  # (setting, canonical values)
    one_at_a_time: bool
    control: str  # a cell name
    seeds: tuple[int, ...]
    cells: tuple[Cell, ...]

    def runs(self) -> list[PlannedRun]:
        return [PlannedRun(cell, seed, f"{RUNS_FOLDER}/{cell.folder}/seed{seed}")
                for cell in self.cells for seed in self.seeds]

    def cell(self, name: str) -> Cell:
        return next(cell for cell in self.cells if cell.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "preset": self.preset, "settings": list(self.settings),
                "vary": [[key, list(values)] for key, values in self.vary], "one_at_a_time": self.one_at_a_time,
                "control": self.control, "seeds": list(self.seeds),
                "cells": [{"name": cell.name, "folder": cell.folder,
                           "assignments": [list(pair) for pair in cell.assignments], "config": cell.config}
                          for cell in self.cells]}


# ---------------------------------------------------------------- settings and values


def setting_path(key: str) -> str:
    """The flattened config path a `--set` key addresses ("smear_gate" -> "model.smear_gate"), as
    `apply_overrides` resolves it."""
    model_fields = {field.name for field in dataclasses.fields(ModelConfig)}
    run_fields = {field.name for field in dataclasses.fields(RunConfig)} - {"model"}
    bare = key.removeprefix("model.")
    if key.startswith("model.") or (bare in model_fields and bare not in run_fields):
        return f"model.{bare}"
    return key


def _value_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def canonical_value(config: RunConfig, key: str, text: str) -> str:
    """`text` parsed as the setting's type and written back ("1" -> "true" for a switch, "3e-2" -> "0.03")."""
    resolved = flatten(run_config_to_dict(apply_overrides(config, [f"{key}={text}"])))
    return _value_text(resolved[setting_path(key)])


def parse_vary(text: str) -> tuple[str, list[str]]:
    """"KEY=V1,V2[,...]" -> (KEY, [V1, V2, ...])."""
    if "=" not in text:
        raise PgolfError(f"--vary expects KEY=V1,V2[,...], got {text!r}")
    key, values = text.split("=", 1)
    values = [value.strip() for value in values.split(",") if value.strip()]
    if len(values) < 2:
        raise PgolfError(f"--vary {key.strip()}: give at least two values (KEY=V1,V2), got {text!r}")
    return key.strip(), values


def parse_seeds(text: str, first_seed: int) -> tuple[int, ...]:
    """"3" -> three seeds from the config's seed on; "1,7,9" -> those seeds."""
    try:
        if "," in text:
            seeds = tuple(int(part) for part in text.split(",") if part.strip())
        else:
            seeds = tuple(range(first_seed, first_seed + int(text)))
    except ValueError:
        raise PgolfError(f"--seeds expects a count or a comma-separated list, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise PgolfError(f"--seeds needs at least one seed and no repeats, got {text!r}")
    return seeds


def _folder_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)


# ---------------------------------------------------------------- making the plan


def _check_keys(vary_keys: list[str], settings: list[str], control: dict[str, str]) -> None:
    paths = [setting_path(key) for key in vary_keys]
    for key, path in zip(vary_keys, paths):
        if path in RUN_ONLY_KEYS:
            raise PgolfError(f"--vary {key}: seeds come from --seeds, and checkpoints change no number")
        if path in DATA_KEYS:
            raise PgolfError(f"--vary {key}: cells that differ in tokenizer or val set are not comparable; "
                             "an ablation compares settings on one dataset")
    if len(set(paths)) != len(paths):
        raise PgolfError(f"--vary names a setting twice: {', '.join(vary_keys)}")
    for assignment in settings:
        key = assignment.split("=", 1)[0].strip()
        if setting_path(key) == "seed":
            raise PgolfError("--set seed: the seeds come from --seeds")
        if setting_path(key) in paths:
            raise PgolfError(f"--set {key} conflicts with --vary {key}")
    unknown = [key for key in control if setting_path(key) not in paths]
    if unknown:
        raise PgolfError(f"--control {unknown[0]}: not a --vary setting ({', '.join(vary_keys)})")


def _cell_assignments(vary: list[tuple[str, list[str]]], base: dict[str, str],
                      one_at_a_time: bool) -> list[tuple[str, list[tuple[str, str]]]]:
    """(name, assignments) of every cell; the control cell is the first."""
    if one_at_a_time:
        base_pairs = [(key, base[key]) for key, _ in vary]
        cells = [(BASE_CELL, base_pairs)]
        for index, (key, values) in enumerate(vary):
            for value in values:
                if value != base[key]:
                    pairs = list(base_pairs)
                    pairs[index] = (key, value)
                    cells.append((f"{key}={value}", pairs))
        return cells
    combinations = [list(zip([key for key, _ in vary], values))
                    for values in itertools.product(*[values for _, values in vary])]
    control = [(key, base[key]) for key, _ in vary]
    combinations.sort(key=lambda pairs: pairs != control)  # stable: the control first, the rest in order
    return [(", ".join(f"{key}={value}" for key, value in pairs), pairs) for pairs in combinations]


def make_plan(preset: str, settings: list[str], vary_texts: list[str], seeds_text: str,
              control_texts: list[str] = (), one_at_a_time: bool = False) -> Plan:
    """Resolve every cell's config (errors now, not after hours of training)."""
    if not vary_texts:
        raise PgolfError("give at least one --vary KEY=V1,V2")
    base_config = apply_overrides(get_preset(preset), list(settings))
    raw_vary = [parse_vary(text) for text in vary_texts]
    control_raw = {}
    for text in control_texts:
        if "=" not in text:
            raise PgolfError(f"--control expects KEY=VALUE, got {text!r}")
        key, value = (part.strip() for part in text.split("=", 1))
        control_raw[key] = value
    _check_keys([key for key, _ in raw_vary], list(settings), control_raw)

    vary = []
    for key, values in raw_vary:
        canonical = [canonical_value(base_config, key, value) for value in values]
        if len(set(canonical)) != len(canonical):
            raise PgolfError(f"--vary {key}: values repeat once parsed ({', '.join(values)} -> "
                             f"{', '.join(canonical)})")
        vary.append((key, canonical))
    base = {key: values[0] for key, values in vary}
    for key, text in control_raw.items():
        vary_key = next(name for name, _ in vary if setting_path(name) == setting_path(key))
        value = canonical_value(base_config, vary_key, text)
        if value not in dict(vary)[vary_key]:
            raise PgolfError(f"--control {key}={text}: not one of the --vary values "
                             f"({', '.join(dict(vary)[vary_key])})")
        base[vary_key] = value

    cells = []
    for name, pairs in _cell_assignments(vary, base, one_at_a_time):
        config = apply_overrides(base_config, [f"{key}={value}" for key, value in pairs])
        config.validate()
        config_dict = run_config_to_dict(config)
        for key in RUN_ONLY_KEYS:
            config_dict.pop(key)
        folder = _folder_name(name.replace(", ", "__"))
        cells.append(Cell(name, folder, tuple(pairs), config_dict))
    if len({cell.folder for cell in cells}) != len(cells):
        raise PgolfError("two cells map to the same folder name; use plainer --vary values")
    return Plan(preset, tuple(settings), tuple((key, tuple(values)) for key, values in vary), one_at_a_time,
                cells[0].name, parse_seeds(seeds_text, base_config.seed), tuple(cells))


# ---------------------------------------------------------------- grid.json: write, compare, resume


def plan_difference(stored: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """The first way `wanted` differs from `stored` (both `Plan.to_dict()`), in words; None if equal."""
    for key, flag in (("preset", "--preset"), ("settings", "--set"), ("vary", "--vary"),
                      ("one_at_a_time", "--one-at-a-time"), ("control", "the control cell"), ("seeds", "--seeds")):
        if stored.get(key) != wanted.get(key):
            return f"{flag} is {json.dumps(stored.get(key))} there, {json.dumps(wanted.get(key))} here"
    stored_cells = {cell["name"]: cell for cell in stored.get("cells", [])}
    for cell in wanted["cells"]:
        previous = stored_cells.get(cell["name"])
        if previous is None:
            return f"cell {cell['name']!r} is new"
        differences = config_differences(previous["config"], cell["config"], ignored=frozenset())
        if differences:
            key, before, after = differences[0]
            return (f"cell {cell['name']!r} resolves {key} to {json.dumps(before)} there, {json.dumps(after)} "
                    "here (did the preset change?)")
    return None


def open_plan(out_dir: Path, plan: Plan) -> bool:
    """Write `grid.json`, or check the one there is this plan. Returns whether it already existed."""
    path = Path(out_dir) / PLAN_FILE
    wanted = plan.to_dict()
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise PgolfError(f"{path} is not valid JSON; move it away to start a new ablation there") from None
        difference = plan_difference(stored, wanted)
        if difference:
            raise PgolfError(f"{path} holds another plan: {difference}; rerun with that plan's arguments or "
                             "choose another --out")
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.partial")
    temporary.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
    return False


def load_plan(out_dir: Path) -> Plan:
    """The plan in `out_dir/grid.json` (for reporting without the original arguments)."""
    path = Path(out_dir) / PLAN_FILE
    if not path.is_file():
        raise PgolfError(f"{path} not found: {out_dir} is not an ablation folder")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != PLAN_FORMAT:
        raise PgolfError(f"{path}: unknown format {data.get('format')!r}")
    cells = tuple(Cell(cell["name"], cell["folder"], tuple(tuple(pair) for pair in cell["assignments"]),
                       cell["config"]) for cell in data["cells"])
    return Plan(data["preset"], tuple(data["settings"]), tuple((key, tuple(values)) for key, values in data["vary"]),
                data["one_at_a_time"], data["control"], tuple(data["seeds"]), cells)


# ---------------------------------------------------------------- one run's state and command


# pgolf.checkpoint's folders, read here without importing torch: a job that only waits for its run's
# process should not load it (tests/test_ablate.py checks both agree)
CHECKPOINT_FOLDERS = ("checkpoint", "checkpoint.previous")


def has_complete_checkpoint(run_dir: Path) -> bool:
    """What `pgolf.checkpoint.find_checkpoint` finds: a checkpoint whose meta.json says it is complete."""
    for name in CHECKPOINT_FOLDERS:
        meta = Path(run_dir) / name / "meta.json"
        try:
            if meta.is_file() and json.loads(meta.read_text()).get("complete"):
                return True
        except (OSError, json.JSONDecodeError):
            continue
    return False


def run_state(run_dir: Path) -> str:
    """"finished" (result.json), "resumable" (a complete checkpoint), "started" (anything else there) or "new"."""
    run_dir = Path(run_dir)
    if (run_dir / "result.json").is_file():
        return "finished"
    if not run_dir.exists():
        return "new"
    return "resumable" if has_complete_checkpoint(run_dir) else "started"


CHECKPOINTS_PER_RUN = 10  # by default; a checkpoint costs a write, a lost run costs all its steps


def train_arguments(plan: Plan, run: PlannedRun, run_dir: Path, checkpoint_every: int | None) -> list[str]:
    """`pgolf` arguments that start the run from scratch (checkpoint_every None: a tenth of the steps)."""
    if checkpoint_every is None:
        checkpoint_every = max(1, run.cell.config["iterations"] // CHECKPOINTS_PER_RUN)
    arguments = ["train", "--preset", plan.preset]
    for assignment in list(plan.settings) + [f"{key}={value}" for key, value in run.cell.assignments]:
        arguments += ["--set", assignment]
    arguments += ["--seed", str(run.seed), "--out", str(run_dir), "--quiet"]
    if checkpoint_every > 0:
        arguments += ["--checkpoint-every", str(checkpoint_every)]
    return arguments


def resume_arguments(run_dir: Path) -> list[str]:
    return ["train", "--resume", str(run_dir), "--quiet"]
