"""Which pgolf modules an exported script bundles, and which third-party packages they need.

The training path's modules are found by walking `import` statements (anywhere in a file,
function bodies included) from `ENTRY_MODULES`; `OPTIONAL_MODULES` are left out on purpose,
each for the reason given beside it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path
from typing import Iterable

from pgolf.errors import PgolfError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
ENTRY_MODULES: tuple[str, ...] = ("pgolf.train", "pgolf.packaging.entry")
# modules that only some configs use (each imported where the feature runs): a script whose config does
# not use the feature leaves them out, and its code bytes do not pay for them
FEATURE_MODULES: dict[str, tuple[str, ...]] = {
    "ttt": ("pgolf.ttt", "pgolf.ttt_plan", "pgolf.lora"),  # eval_procedure "ttt"
    "tilt": ("pgolf.tilt",),  # eval_tilt
    "calibrated": ("pgolf.gptq", "pgolf.hessians"),  # a calibrated quantisation scheme
    "pergroup": ("pgolf.pergroup",),  # the per-group compressor
}


def unused_feature_modules(config) -> frozenset[str]:
    """The FEATURE_MODULES this run config never imports."""
    from pgolf.calibrated import CalibratedScheme, get_any_scheme

    scheme = get_any_scheme(config.quant_scheme)
    used = {"ttt": config.eval_procedure == "ttt", "tilt": config.eval_tilt,
            "calibrated": isinstance(scheme, CalibratedScheme), "pergroup": scheme.compressor == "pergroup"}
    return frozenset(module for feature, modules in FEATURE_MODULES.items() if not used[feature]
                     for module in modules)


OPTIONAL_MODULES: frozenset[str] = frozenset({
    # imported lazily inside a try by finish.write_curves: a plot is a convenience and needs matplotlib
    "pgolf.plot",
    # imported by train.code_bytes only when no code file is given; an exported script always gives its own
    "pgolf.packaging.export",
})
# provided by the challenge's environment and not listed in requirements.txt
PROVIDED_IMPORTS: frozenset[str] = frozenset({"torch", "pgolf"})
OPTIONAL_IMPORT_ERRORS = ("ImportError", "ModuleNotFoundError", "Exception", "BaseException")


def imported_names(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Every dotted name an import statement anywhere in `tree` may load, relative imports resolved.
    `from a import b` yields both `a` and `a.b` (b may be a submodule)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


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
