"""The package's layers (docs/design.md): a module imports only modules of its own layer or below.

Imports anywhere in a file count, function bodies included. A module that is not in the table
fails the test: a new module is placed in a layer on purpose, in docs/design.md and here alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pgolf

# (layer, modules relative to src/pgolf without .py; a trailing "/" takes the whole folder)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("__init__", "errors", "challenge", "machine", "progress", "config", "distributed")),
    ("data and source tools", ("data/", "packaging/__init__", "packaging/packcode")),
    ("recipe", ("flash3", "attention", "model", "model_summary", "layout", "optim", "schedule", "averaging", "quant", "gptq",
                "calibrated", "hessians", "compressors", "pergroup", "metric", "flops")),
    ("scoring", ("evaluate", "procedures", "ttt", "ttt_plan", "lora", "tilt", "artifact", "weights", "runtime",
                 "scoring", "packaging/size", "packaging/bundle", "packaging/export", "plot", "kernels/")),
    ("the run", ("build", "checkpoint", "runlog", "finish", "train")),
    ("tools", ("bench", "demo", "packaging/entry", "packaging/submit", "verify/", "ablate/", "requantize")),
    ("command line", ("commands/", "cli", "__main__")),
]
ROOT = Path(pgolf.__file__).resolve().parent


def layer_of(relative: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if (member.endswith("/") and relative.startswith(member)) or relative == member:
                return index
    raise AssertionError(f"{relative}.py is in no layer of docs/design.md; place it there and in LAYERS")


def imported_pgolf_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        if not name.startswith("pgolf."):
            continue
        relative = name.removeprefix("pgolf.").replace(".", "/")
        if (ROOT / f"{relative}.py").is_file():
            found.add(relative)
        elif (ROOT / relative / "__init__.py").is_file():
            found.add(f"{relative}/__init__")
    return found


def test_every_import_goes_to_the_same_layer_or_below():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("").as_posix()
        mine = layer_of(relative)
        for target in imported_pgolf_modules(path):
            if layer_of(target) > mine:
                upward.append(f"{relative} ({LAYERS[mine][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert upward == []


def test_the_layer_table_is_the_design_pages():
    design = (ROOT.parents[1] / "docs" / "design.md").read_text()
    for name, members in LAYERS:
        assert name in design, name
        for member in members:
            assert f"`{member}" in design, member
