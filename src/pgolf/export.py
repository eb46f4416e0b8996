"""Generate the challenge's single-file `train_gpt.py` from the package (never a hand-kept copy).

The challenge runs one file, `torchrun --standalone --nproc_per_node=8
train_gpt.py`, and counts its bytes as the code size. The package stays the
source of truth; `export_script` writes a *bundle*:

- the source text of exactly the pgolf modules the training path imports
  (found by walking `import` statements from `ENTRY_MODULES`, see
  `bundled_modules`), installed under the package name `pgolf` by a small
  meta-path finder at the top of the script, so the run executes the very
  same code as `pgolf train`;
- the resolved `RunConfig` as JSON (data and tokenizer locations left empty:
  the challenge's `DATA_PATH` / `TOKENIZER_PATH` or its default layout
  decide them at run time, see `pgolf.challenge_entry`);
- a last line calling `pgolf.challenge_entry.main_from_environment`.

`compact=True` strips docstrings and comments (via `ast.unparse`) and wraps
the result in an LZMA + base85 self-extractor. Either way the counted code
size is the size of the file written, which the script itself reports
(`run_training(code_path=...)`). `requirements.txt` beside it names the
third-party distributions the bundled modules import (torch aside).
"""

from __future__ import annotations

import ast
import base64
import importlib.metadata
import json
import lzma
import sys
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from pgolf import __version__
from pgolf.accounting import imported_names
from pgolf.config import PRESETS, RunConfig, apply_overrides, get_preset, run_config_from_dict, run_config_to_dict
from pgolf.errors import PgolfError

PACKAGE_ROOT = Path(__file__).resolve().parent
SCRIPT_NAME = "train_gpt.py"
ENTRY_MODULES: tuple[str, ...] = ("pgolf.train", "pgolf.challenge_entry")
# imported only lazily inside a try: by finalize.write_curves (a plot is a convenience and needs
# matplotlib; the bundle reports it as missing and the run logs `curves_error`), and by
# assemble.prepare_cpu_attention (a CPU training kernel built from a C++ file the bundle lacks)
OPTIONAL_MODULES: frozenset[str] = frozenset({"pgolf.plot", "pgolf.kernels", "pgolf.kernels.cpu_attention"})
# provided by the challenge's environment and not listed in requirements.txt
PROVIDED_IMPORTS: frozenset[str] = frozenset({"torch", "pgolf"})
OPTIONAL_IMPORT_ERRORS = ("ImportError", "ModuleNotFoundError", "Exception", "BaseException")

# ---------------------------------------------------------------- which modules go into the bundle


def module_file(module: str, root: Path = PACKAGE_ROOT) -> Path | None:
    """`pgolf.a.b` -> root/a/b.py or root/a/b/__init__.py, if it exists."""
    parts = module.split(".")[1:]
    for candidate in (root.joinpath(*parts).with_suffix(".py") if parts else None,
                      root.joinpath(*parts, "__init__.py")):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def bundled_modules(entries: Iterable[str] = ENTRY_MODULES, root: Path = PACKAGE_ROOT,
                    excluded: frozenset[str] = OPTIONAL_MODULES) -> list[str]:
    """The pgolf modules reachable by imports from `entries` (parent packages included), sorted."""
    found: set[str] = set()
    pending = list(entries)
    while pending:
        module = pending.pop()
        if module in found or module in excluded:
            continue
        path = module_file(module, root)
        if path is None:
            raise PgolfError(f"module {module} has no source file under {root}")
        found.add(module)
        pieces = module.split(".")
        pending += [".".join(pieces[:depth]) for depth in range(1, len(pieces))]  # parents run first
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in imported_names(tree, module, path.name == "__init__.py"):
            if (name == "pgolf" or name.startswith("pgolf.")) and module_file(name, root) is not None:
                pending.append(name)
    return sorted(found)


def third_party_imports(sources: Iterable[str]) -> list[str]:
    """Top-level names of non-stdlib imports the sources need (optional `try: import` ones left out)."""
    names: set[str] = set()
    for source in sources:
        tree = ast.parse(source)
        optional: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                    handler.type is None or _handler_names(handler.type) & set(OPTIONAL_IMPORT_ERRORS)
                    for handler in node.handlers):
                optional.update(id(inner) for statement in node.body for inner in ast.walk(statement))
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return sorted(name for name in names
                  if name not in sys.stdlib_module_names and name not in PROVIDED_IMPORTS and name != "__future__")


def _handler_names(node: ast.expr) -> set[str]:
    if isinstance(node, ast.Tuple):
        return {element.id for element in node.elts if isinstance(element, ast.Name)}
    return {node.id} if isinstance(node, ast.Name) else set()


def requirement_lines(import_names: Iterable[str]) -> list[str]:
    """Distribution names for import names (e.g. `yaml` -> `PyYAML`), from the installed metadata."""
    distributions = importlib.metadata.packages_distributions()
    return sorted({(distributions.get(name) or [name])[0] for name in import_names}, key=str.lower)


# ---------------------------------------------------------------- compaction


def strip_source(source: str) -> str:
    """The same module without docstrings and comments (what `ast.unparse` gives back)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body.pop(0)
                if not body and not isinstance(node, ast.Module):
                    body.append(ast.Pass())
    return ast.unparse(tree) + "\n"


def self_extracting(source: str) -> str:
    """A two-line script that decompresses `source` and runs it in its own globals (so `__file__`
    and `__name__` stay the script's)."""
    packed = lzma.compress(source.encode("utf-8"), format=lzma.FORMAT_ALONE, preset=9 | lzma.PRESET_EXTREME)
    return f"import lzma,base64\nexec(lzma.decompress(base64.b85decode('{base64.b85encode(packed).decode()}')))\n"


# ---------------------------------------------------------------- the script


LOADER = '''
import importlib.abc
import importlib.util
import linecache
import sys


class BundledPgolf(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `pgolf` and its submodules from PGOLF_SOURCES. Any other pgolf module is reported
    missing, never taken from an installed copy: the run is exactly what this file holds."""

    def find_spec(self, name, path=None, target=None):
        if name != "pgolf" and not name.startswith("pgolf."):
            return None
        if name not in PGOLF_SOURCES:
            raise ModuleNotFoundError(f"No module named {name!r} in this script's bundle", name=name)
        return importlib.util.spec_from_loader(name, self, is_package=PGOLF_SOURCES[name][1])

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        relative, _, source = PGOLF_SOURCES[module.__name__]
        # a distinct file name per module, registered with linecache, so tracebacks show the lines
        filename = f"{__file__}#pgolf/{relative}"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        module.__file__ = __file__  # the code lives in this file
        exec(compile(source, filename, "exec", dont_inherit=True), module.__dict__)


for loaded in [name for name in sys.modules if name == "pgolf" or name.startswith("pgolf.")]:
    del sys.modules[loaded]
sys.meta_path.insert(0, BundledPgolf())

if __name__ == "__main__":
    from pgolf.challenge_entry import main_from_environment

    raise SystemExit(main_from_environment(CONFIG_JSON, __file__))
'''


def _literal(text: str) -> str:
    """A Python literal for `text`: a raw triple-quoted string where that is exact, else repr()."""
    if "'''" not in text and not text.endswith("\\") and "\r" not in text:
        return "r'''" + text + "'''"
    return repr(text)


def render_script(config: RunConfig, modules: list[str], sources: dict[str, str], requirements: list[str]) -> str:
    """The readable bundle: header docstring, embedded modules and config, loader, entry call."""
    header = (
        f'"""Parameter-golf training script generated by `pgolf export` (pgolf {__version__}); '
        f"preset {config.preset}.\n\n"
        "Do not edit: regenerate it from the package. Run as\n"
        f"    torchrun --standalone --nproc_per_node=8 {SCRIPT_NAME}    (or: python {SCRIPT_NAME})\n"
        "from a folder holding ./data/datasets/fineweb10B_sp1024/ and ./data/tokenizers/, or set DATA_PATH\n"
        "and TOKENIZER_PATH. SEED, ITERATIONS, MAX_WALLCLOCK_SECONDS, WARMUP_STEPS, WARMDOWN_ITERS,\n"
        "VAL_LOSS_EVERY and TRAIN_LOG_EVERY override the embedded config; RUN_ID names the folder\n"
        "logs/<RUN_ID>/ that receives train.log, metrics.jsonl and result.json. The artifact model.pgolf\n"
        "is written next to this file.\n\n"
        f"Embedded pgolf modules: {', '.join(modules)}.\n"
        f"Third-party imports beyond torch: {', '.join(requirements) or 'none'} (requirements.txt).\n"
        '"""\n'
    )
    entries = []
    for module in modules:
        path = module_file(module)
        relative = path.relative_to(PACKAGE_ROOT).as_posix()
        entries.append(f"    {module!r}: ({relative!r}, {path.name == '__init__.py'}, {_literal(sources[module])}),")
    config_json = json.dumps(run_config_to_dict(config), indent=1, sort_keys=True)
    return (header
            + "\n# the resolved run config (pgolf.config.RunConfig as JSON)\n"
            + f"CONFIG_JSON = {_literal(config_json)}\n\n"
            + "# pgolf module name -> (path inside the package, is a package, source text)\n"
            + "PGOLF_SOURCES = {\n" + "\n".join(entries) + "\n}\n"
            + LOADER)


def resolve_export_config(run_dir_or_preset: Path | str, overrides: Iterable[str] = ()) -> RunConfig:
    """A finished or running run folder's config.json, or a preset; then `--set` overrides.
    The data and tokenizer locations are cleared: on the organisers' machine the environment decides."""
    source = Path(run_dir_or_preset)
    if source.is_dir():
        config_path = source / "config.json"
        if not config_path.is_file():
            raise PgolfError(f"{source} is not a run folder (no config.json)")
        config = run_config_from_dict(json.loads(config_path.read_text()))
    elif str(run_dir_or_preset) in PRESETS:
        config = get_preset(str(run_dir_or_preset))
    else:
        raise PgolfError(f"{run_dir_or_preset} is neither a run folder nor a preset "
                         f"({', '.join(sorted(PRESETS))})")
    config = apply_overrides(replace(config, data_dir="", tokenizer_path=""), list(overrides))
    config.validate()
    return config


def build_script(config: RunConfig, compact: bool = False) -> tuple[str, list[str]]:
    """(the script's text, its requirements) for a resolved config."""
    modules = bundled_modules()
    sources = {module: module_file(module).read_text(encoding="utf-8") for module in modules}
    requirements = requirement_lines(third_party_imports(sources.values()))
    if not compact:
        return render_script(config, modules, sources, requirements), requirements
    stripped = {module: strip_source(source) for module, source in sources.items()}
    inner = strip_source(render_script(config, modules, stripped, requirements))
    return self_extracting(inner), requirements


def export_script(run_dir_or_preset: Path | str, out_dir: Path, compact: bool = False,
                  overrides: Iterable[str] = ()) -> Path:
    """Write OUT_DIR/train_gpt.py and OUT_DIR/requirements.txt; returns the script's path.
    The script's size on disk is the counted code size."""
    config = resolve_export_config(run_dir_or_preset, overrides)
    text, requirements = build_script(config, compact)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    script = out_dir / SCRIPT_NAME
    script.write_bytes(text.encode("utf-8"))  # bytes, so no platform newline translation changes the size
    (out_dir / "requirements.txt").write_text("".join(line + "\n" for line in requirements))
    return script
