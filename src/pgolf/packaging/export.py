"""Generate the challenge's single-file `train_gpt.py` from the package (never a hand-kept copy).

The challenge runs one file, `torchrun --standalone --nproc_per_node=8
train_gpt.py`, and counts its bytes as the code size. The package stays the
source of truth; `export_script` writes a *bundle*:

- the source text of exactly the pgolf modules the training path imports
  (`pgolf.packaging.bundle`), installed under the package name `pgolf` by a small
  meta-path finder at the top of the script, so the run executes the very
  same code as `pgolf train`;
- the resolved `RunConfig` as JSON (data and tokenizer locations left empty:
  the challenge's `DATA_PATH` / `TOKENIZER_PATH` or its default layout
  decide them at run time, see `pgolf.packaging.entry`);
- a last line calling `pgolf.packaging.entry.main_from_environment`.

The config's `code_packing` decides the form: "plain" is the readable
bundle; "lzma" strips docstrings and comments (via `ast.unparse`) and wraps
the result in an LZMA + base85 self-extractor; "minify-brotli" minifies with
python-minifier and wraps a brotli + base85 self-extractor (the frontier
records' form and every preset's; the run then needs brotli). Either way the counted code
size is the size of the file written, which the script itself reports
(`run_training(code_path=...)`), and which `exported_code_bytes` gives
`pgolf train` for the same config. `requirements.txt` beside it names the
third-party distributions the bundled modules import (torch aside).
"""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from pgolf import __version__
from pgolf.challenge import SCRIPT_NAME
from pgolf.config import PRESETS, RunConfig, apply_overrides, get_preset, run_config_from_dict, run_config_to_dict
from pgolf.errors import PgolfError
from pgolf.packaging.bundle import (OPTIONAL_MODULES, PACKAGE_ROOT, bundled_modules, module_file, requirement_lines,
                                   third_party_imports, unused_feature_modules)
from pgolf.packaging.packcode import minify_source, pack_source

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
    from pgolf.packaging.entry import main_from_environment

    raise SystemExit(main_from_environment(CONFIG_JSON, __file__))
'''


def _literal(text: str) -> str:
    """A Python literal for `text`: a raw triple-quoted string where that is exact, else repr()."""
    if "'''" not in text and not text.endswith(("\\", "'")) and "\r" not in text:
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
        f"Third-party imports beyond torch: {', '.join(requirements) or 'none'} (requirements.txt).\n\n"
        "What it needs: torch 2.4 or later (torch.library.custom_op) with CUDA, and Triton for torch.compile;\n"
        "numpy; sentencepiece; the compressor of the config's quant_scheme (checked before training: a\n"
        "missing one stops the run in seconds, not after it); tqdm when its output is a terminal (progress\n"
        "bars). Used when installed: safetensors (full-precision weights beside the artifact),\n"
        "flash_attn_interface (FlashAttention 3 on Hopper GPUs; without it attention runs on PyTorch SDPA:\n"
        "the run log's attention_backend says which).\n"
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


def build_script(config: RunConfig) -> tuple[str, list[str]]:
    """(the script's text, its requirements) for a resolved config, packed as `config.code_packing` says."""
    modules = bundled_modules(excluded=OPTIONAL_MODULES | unused_feature_modules(config))
    sources = {module: module_file(module).read_text(encoding="utf-8") for module in modules}
    requirements = requirement_lines(third_party_imports(sources.values()))
    if config.code_packing == "plain":
        return render_script(config, modules, sources, requirements), requirements
    if config.code_packing == "lzma":
        stripped = {module: strip_source(source) for module, source in sources.items()}
        inner = strip_source(render_script(config, modules, stripped, requirements))
        return pack_source(inner, "lzma", minify=False), requirements
    # "minify-brotli", the frontier records' form (frontier.md §5): every module minified, the bundle
    # minified again, brotli-11, base85; the stub imports brotli, so the run needs it too
    requirements = sorted({*requirements, *requirement_lines(["brotli"])}, key=str.lower)
    minified = {module: minify_source(source) for module, source in sources.items()}
    return pack_source(render_script(config, modules, minified, requirements), "brotli"), requirements


def exported_code_bytes(config: RunConfig) -> int:
    """The counted code size of a run with this config: the bytes of the script `pgolf export` writes."""
    text, _ = build_script(replace(config, data_dir="", tokenizer_path=""))
    return len(text.encode("utf-8"))


def artifact_code_bytes(header: dict) -> int:
    """Code bytes for an artifact alone (no run folder at hand): the script, packed the default way, of a
    run config holding the artifact's model config and scheme. A run's own figure is `bytes_code` in its result.json."""
    from pgolf.config import RunConfig, model_config_from_dict

    config = RunConfig(model=model_config_from_dict(header["model_config"]), quant_scheme=str(header["scheme"]),
                       preset="artifact")
    return exported_code_bytes(config)


def export_script(run_dir_or_preset: Path | str, out_dir: Path, overrides: Iterable[str] = ()) -> Path:
    """Write OUT_DIR/train_gpt.py and OUT_DIR/requirements.txt; returns the script's path.
    The script's size on disk is the counted code size."""
    config = resolve_export_config(run_dir_or_preset, overrides)
    text, requirements = build_script(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    script = out_dir / SCRIPT_NAME
    script.write_bytes(text.encode("utf-8"))  # bytes, so no platform newline translation changes the size
    (out_dir / "requirements.txt").write_text("".join(line + "\n" for line in requirements))
    return script
