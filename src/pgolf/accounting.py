"""Size accounting: what counts against the 16,000,000-byte budget, and an early size prediction.

Counted size = code bytes + model bytes (spec §5; decimal megabytes).

Model bytes are the whole `.pgolf` file. Code bytes are the package source
files needed to load and evaluate an artifact, listed explicitly in
`CODE_MODULES` (paths relative to `src/pgolf`):

- `__init__.py`, `data/__init__.py`: executed by every import of the package;
- `errors.py`, `config.py`: the error type and `ModelConfig` the artifact rebuilds;
- `model.py`, `attention.py`: the network;
- `quant.py`, `artifact.py`, `compressors.py`, `pergroup.py`: reading, checking, decompressing
  and dequantising the file;
- `metric.py`, `evaluate.py`: bits per byte and (sliding-window) evaluation;
- `distributed.py`: evaluation spreads windows over ranks and all-reduces sums;
- `data/shards.py`: reading the validation shards;
- `data/tokenizer.py`: loading the SentencePiece model the byte tables come from.

Command-line plumbing, training, plotting and data download are not needed to
score an artifact and are not counted; third-party libraries (torch, numpy,
zstandard, sentencepiece) are not counted, as in the challenge.
`uncounted_imports()` checks that the list is closed under pgolf imports.

Bytes are counted from the files on disk with CRLF normalised to LF, so a
Windows checkout (autocrlf) counts the same as the committed LF files; file
times and paths play no part.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import torch

from pgolf.config import ModelConfig
from pgolf.errors import PgolfError
from pgolf.quant import (
    Scheme,
    choose_method,
    choose_rule,
    get_scheme,
    quantize_int6_rows,
    quantize_int8_rows,
    stored_layout,
)

BUDGET_BYTES = 16_000_000  # decimal, code + model
PACKAGE_ROOT = Path(__file__).resolve().parent

StateLayout = dict[str, tuple[tuple[int, ...], torch.dtype]]  # {tensor name: (shape, dtype)}

CODE_MODULES: tuple[str, ...] = (
    "__init__.py",
    "artifact.py",
    "attention.py",
    "compressors.py",
    "config.py",
    "data/__init__.py",
    "data/shards.py",
    "data/tokenizer.py",
    "distributed.py",
    "errors.py",
    "evaluate.py",
    "metric.py",
    "model.py",
    "pergroup.py",
    "quant.py",
)

# ---------------------------------------------------------------- code bytes


def code_files(root: Path | None = None) -> list[Path]:
    """The counted source files, sorted by their path relative to the package root."""
    root = PACKAGE_ROOT if root is None else Path(root)
    files = [root / relative for relative in sorted(CODE_MODULES)]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise PgolfError(f"counted source files are missing: {', '.join(missing)}")
    return files


def counted_bytes(path: Path) -> int:
    """Size of one source file as committed: raw bytes with CRLF line endings counted as LF."""
    return len(Path(path).read_bytes().replace(b"\r\n", b"\n"))


def code_bytes(root: Path | None = None) -> int:
    return sum(counted_bytes(path) for path in code_files(root))


def _module_file(root: Path, module: str) -> str | None:
    """`pgolf.a.b` -> "a/b.py" or "a/b/__init__.py" (relative to the package root), if it exists."""
    parts = module.split(".")[1:]
    candidates = ["/".join(parts) + ".py", "/".join(parts + ["__init__.py"])] if parts else ["__init__.py"]
    for candidate in candidates:
        if (root / candidate).is_file():
            return candidate
    return None


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


def _imported_files(root: Path, relative: str) -> set[str]:
    """Package files one source file imports (its parents' __init__.py included)."""
    tree = ast.parse((root / relative).read_bytes(), filename=relative)
    modules = imported_names(tree, "pgolf." + relative.removesuffix(".py").replace("/", "."), is_package=False)
    found: set[str] = set()
    for module in modules:
        if module != "pgolf" and not module.startswith("pgolf."):
            continue
        pieces = module.split(".")
        for depth in range(1, len(pieces) + 1):  # importing pgolf.data.shards runs pgolf/__init__ and data/__init__
            file = _module_file(root, ".".join(pieces[:depth]))
            if file is not None:
                found.add(file)
    return found


def uncounted_imports(root: Path | None = None) -> dict[str, list[str]]:
    """{counted file: [pgolf files it imports that are not counted]}; empty when the list is closed."""
    root = PACKAGE_ROOT if root is None else Path(root)
    counted = set(CODE_MODULES)
    result = {}
    for relative in sorted(CODE_MODULES):
        extra = sorted(_imported_files(root, relative) - counted)
        if extra:
            result[relative] = extra
    return result


def size_report(bytes_model: int, bytes_code: int, budget: int = BUDGET_BYTES) -> dict[str, int | bool]:
    total = int(bytes_model) + int(bytes_code)
    return {"bytes_model": int(bytes_model), "bytes_code": int(bytes_code), "bytes_total": total,
            "bytes_budget": budget, "bytes_headroom": budget - total, "fits": total <= budget}


def check_budget(bytes_model: int, bytes_code: int, budget: int = BUDGET_BYTES) -> dict[str, int | bool]:
    report = size_report(bytes_model, bytes_code, budget)
    if not report["fits"]:
        raise PgolfError(f"artifact over budget: model {bytes_model:,} + code {bytes_code:,} = "
                         f"{report['bytes_total']:,} bytes > {budget:,}")
    return report


# ---------------------------------------------------------------- size prediction

# Compressed bytes per stored byte, by kind of stored part ("_floor": a rule with the reference's
# scale floor, pgolf.quant).
#
# "gaussian" is measured by `measure_compression_ratios(compressor, level)` (defaults: seed 0,
# weights N(0, 0.02) quantised per row, with and without the floor; int6 on a 1536x512 matrix,
# int8 on 1024x512, fp16 on 65,536 values; scales are the int6 matrix's 1536 fp16 scales),
# rounded to 3 decimals. N(0, 0.02) rows all sit on the floor grid, hence the small _floor ratios.
#
# "cpu-short" is measured on brief CPU runs of the demo corpus (benchmarks/size_prediction.py on
# tiny at 150 steps, width 384 at 150 steps, ...; docs/results.md): per kind the mean ratio of
# each kind compressed as one stream. Short runs keep weights near their initial size, so floored
# int6 rows use few integers (0.38) whereas the reference's 7,000-step weights do not.
#
# "trained" is for budget warnings and must not under-predict: per kind the largest of the
# gaussian and cpu-short measurements and the reference. int6_floor is the one implied by the PR-198 sibling
# run, floored as we now are (15,468,512 model bytes, spec §5): (15,468,512 - every other predicted
# byte of the pr198 config) / 25,952,256 int6 values = 0.559 for zstd-22; zlib-9 keeps the gaussian
# zlib/zstd proportion (x1.039 for int6, x1.0 otherwise, rounded up).
COMPRESSION_RATIOS: dict[tuple[str, str], dict[str, float]] = {
    ("zstd", "gaussian"): {"int6": 0.670, "int6_floor": 0.213, "int8": 0.923, "int8_floor": 0.432, "scale": 0.723,
                           "fp16": 0.920, "exact": 1.0},
    ("zlib", "gaussian"): {"int6": 0.696, "int6_floor": 0.230, "int8": 0.926, "int8_floor": 0.492, "scale": 0.748,
                           "fp16": 0.923, "exact": 1.0},
    ("zstd", "cpu-short"): {"int6": 0.641, "int6_floor": 0.384, "int8": 0.917, "int8_floor": 0.869, "scale": 0.808,
                            "fp16": 0.921, "exact": 1.0},
    ("zlib", "cpu-short"): {"int6": 0.666, "int6_floor": 0.399, "int8": 0.920, "int8_floor": 0.694, "scale": 0.808,
                            "fp16": 0.923, "exact": 1.0},
    ("zstd", "trained"): {"int6": 0.670, "int6_floor": 0.559, "int8": 0.923, "int8_floor": 0.923, "scale": 0.810,
                          "fp16": 0.922, "exact": 1.0},
    ("zlib", "trained"): {"int6": 0.696, "int6_floor": 0.581, "int8": 0.926, "int8_floor": 0.926, "scale": 0.810,
                          "fp16": 0.924, "exact": 1.0},
}


KINDS = ("int6", "int6_floor", "int8", "int8_floor", "scale", "fp16", "exact")


def part_kind(method: str, part: str, floor: bool = False) -> str:
    """Which ratio a stored part is predicted with: its method, "_floor" when the rule floors the scale."""
    if part == "scale":
        return "scale"
    if method in ("int6", "int8"):
        return method + ("_floor" if floor else "")
    return "fp16" if method == "fp16" else "exact"


def model_state_layout(model_config: ModelConfig) -> StateLayout:
    """{name: (shape, dtype)} of the model's state dict, from a GPT built on the meta device (no memory)."""
    from pgolf.model import GPT  # imported here: accounting is also used where no model is needed

    with torch.device("meta"):
        model = GPT(model_config)
    return {name: (tuple(tensor.shape), tensor.dtype) for name, tensor in model.state_dict().items()}


def stored_bytes_by_kind(layout: StateLayout, scheme: str | Scheme) -> dict[str, int]:
    """Bytes before compression per kind of stored part (`KINDS`)."""
    totals = dict.fromkeys(KINDS, 0)
    for name, (shape, dtype) in layout.items():
        rule = choose_rule(name, torch.empty(shape, dtype=dtype, device="meta"), scheme)
        for part, (part_shape, part_dtype) in stored_layout(shape, dtype, rule.method).items():
            itemsize = torch.empty((), dtype=part_dtype).element_size()
            totals[part_kind(rule.method, part, rule.floor)] += math.prod(part_shape) * itemsize
    return totals


def predict_header_bytes(layout: StateLayout, scheme: str | Scheme,
                         model_config: ModelConfig) -> int:
    """Exact size of magic + prefix + JSON header for this layout, up to the digits of a few numbers."""
    from pgolf import artifact

    resolved = get_scheme(scheme)
    table, offset = [], 0
    for name, (shape, dtype) in layout.items():
        method = choose_method(name, torch.empty(shape, dtype=dtype, device="meta"), resolved)
        row, offset = artifact.table_row(name, method, shape, dtype, stored_layout(shape, dtype, method), offset)
        table.append(row)
    header = artifact.build_header(model_config, resolved, "0" * 64, model_config.vocab_size, table,
                                   payload_sha256="0" * 64, compressed_bytes=offset, raw_bytes=offset)
    return artifact.PREFIX_BYTES + len(artifact.encode_header(header))


def predict_model_bytes(model_config: ModelConfig, scheme: str | Scheme, profile: str = "trained",
                        layout: StateLayout | None = None) -> int:
    """Predicted `.pgolf` file size for this config before training (see COMPRESSION_RATIOS).

    profile "trained" is calibrated on the reference run; "gaussian" fits freshly initialised
    Gaussian weights. `layout` overrides the state-dict layout (default: the GPT's).
    """
    resolved = get_scheme(scheme)
    if (resolved.compressor, profile) not in COMPRESSION_RATIOS:
        raise PgolfError(f"no compression ratios for compressor {resolved.compressor!r}, profile {profile!r}")
    ratios = COMPRESSION_RATIOS[(resolved.compressor, profile)]
    layout = model_state_layout(model_config) if layout is None else layout
    stored = stored_bytes_by_kind(layout, resolved)
    payload = sum(stored[kind] * ratios[kind] for kind in stored)
    return int(round(payload)) + predict_header_bytes(layout, resolved, model_config)


def measure_compression_ratios(compressor: str = "zstd", level: int = 22, seed: int = 0,
                               std: float = 0.02) -> dict[str, float]:
    """Compressed / stored bytes for Gaussian weights, per kind of stored part (how the constants were made)."""
    from pgolf.compressors import compress

    def ratio(data: bytes) -> float:
        return len(compress(data, compressor, level)) / len(data)

    ratios = {}
    for floor in (False, True):
        generator = torch.Generator().manual_seed(seed)  # the same weights with and without the floor
        int6_values, int6_scale = quantize_int6_rows(torch.randn(1536, 512, generator=generator) * std, floor)
        int8_values, _ = quantize_int8_rows(torch.randn(1024, 512, generator=generator) * std, floor)
        suffix = "_floor" if floor else ""
        ratios["int6" + suffix] = ratio(int6_values.numpy().tobytes())
        ratios["int8" + suffix] = ratio(int8_values.numpy().tobytes())
        if not floor:
            ratios["scale"] = ratio(int6_scale.numpy().tobytes())
            fp16 = (torch.randn(65_536, generator=generator) * std).to(torch.float16)
            ratios["fp16"] = ratio(np.ascontiguousarray(fp16.numpy()).tobytes())
    return ratios
