"""Nothing trains on val: which pgolf modules can reach the val split at all.

The val split may only be read to evaluate. This scans the package source
(with `ast`, nothing is imported or run) for the ways in: calls of
`load_val_tokens`, `list_shards(..., "val")`, and string literals naming
`fineweb_val` shards. Every module that has one must be on the allow list
below, each entry with its reason; a training module (the loop, the token
stream, the optimisers) that gains one makes the check fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pgolf.verify.report import Check

# module (relative to the package) -> why it may touch the val split
ALLOWED_VAL_READERS = {
    "data/shards.py": "defines the shard readers",
    "data/build.py": "writes the val shards",
    "data/fetch.py": "downloads the val shards",
    "data/check.py": "validates the dataset folder",
    "scoring.py": "loads val to score a model, the evaluation path",
    "evaluate.py": "scores val",
    "commands/eval.py": "`pgolf eval`",
}
SKIPPED_PACKAGES = ("verify/",)  # the checks themselves read val


def _touches_val(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return "fineweb_val" in node.value
    if isinstance(node, ast.Call):
        function = node.func
        name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", "")
        if name == "load_val_tokens":
            return True
        if name == "list_shards":
            arguments = list(node.args) + [keyword.value for keyword in node.keywords]
            return any(isinstance(arg, ast.Constant) and arg.value == "val" for arg in arguments)
    return False


def val_access_sites(package_root: Path | None = None) -> dict[str, list[int]]:
    """module -> line numbers where it reaches the val split."""
    if package_root is None:
        import pgolf

        package_root = Path(pgolf.__file__).resolve().parent
    sites: dict[str, list[int]] = {}
    for path in sorted(package_root.rglob("*.py")):
        relative = path.relative_to(package_root).as_posix()
        if relative.startswith(SKIPPED_PACKAGES):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        lines = sorted({node.lineno for node in ast.walk(tree) if _touches_val(node)})
        if lines:
            sites[relative] = lines
    return sites


def check_val_isolation(package_root: Path | None = None) -> Check:
    sites = val_access_sites(package_root)
    unexpected = {module: lines for module, lines in sites.items() if module not in ALLOWED_VAL_READERS}
    if unexpected:
        details = tuple(f"{module} lines {', '.join(map(str, lines))} reach the val split" for module, lines
                        in unexpected.items())
        return Check("isolation.val_readers", False,
                     f"{len(unexpected)} module(s) outside the evaluation path can read val: "
                     f"{', '.join(unexpected)}", details)
    return Check("isolation.val_readers", True,
                 f"only {', '.join(sorted(sites))} reach the val split (data plumbing and the evaluation path)")
