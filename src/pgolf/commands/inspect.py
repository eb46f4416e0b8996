"""`pgolf inspect ARTIFACT [--json]`: where the bytes of an artifact go.

Per tensor and per category (attention, mlp, embedding, bigram, control): the
elements, the storage method, the bytes stored before compression, the bytes
after compression, the bits per parameter and, for int6/int8 tensors, how many
rows sit on the scale floor (1/31, 1/127; see pgolf.quant). To attribute compressed bytes,
each tensor's stored parts are compressed on their own with the artifact's
compressor; the sum differs a little from the real payload, which is compressed
as one stream. Then the header facts and the budget: file bytes + code bytes
against 16,000,000.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import zlib
from pathlib import Path
from typing import Any

from pgolf.errors import PgolfError, printable

CATEGORIES = ("attention", "mlp", "embedding", "bigram", "control")


def category_of(name: str) -> str:
    """Which part of the model a parameter belongs to, for size reports."""
    if fnmatch.fnmatchcase(name, "blocks.*.attn.*.weight"):
        return "attention"
    if fnmatch.fnmatchcase(name, "blocks.*.mlp.*.weight"):
        return "mlp"
    if name.startswith("tok_emb."):
        return "embedding"
    if name.startswith("bigram."):
        return "bigram"
    return "control"


FLOOR_MAX_VALUES = {"int6": 31, "int8": 127}  # the floor is 1 / this (pgolf.quant)


def floor_rows(entry) -> int:
    """How many rows sit on the floor grid: stored scale == fp16(1/31) (int6) or fp16(1/127) (int8).
    (A floor-free row whose bound happens to be exactly 1 counts too; that is rare.)"""
    import torch

    from pgolf.quant import SCALE_DTYPE

    if entry.method not in FLOOR_MAX_VALUES:
        return 0
    floor_scale = torch.tensor(1.0 / FLOOR_MAX_VALUES[entry.method]).to(SCALE_DTYPE)
    return int((entry.parts["scale"] == floor_scale).sum())


def tensor_summary(name: str, entry) -> dict:
    """One JSON-able row for `pgolf inspect`: what is stored and how big it is before compression."""
    scale = entry.parts.get("scale")
    return {
        "name": name,
        "category": category_of(name),
        "method": entry.method,
        "shape": list(entry.shape),
        "dtype": str(entry.dtype).removeprefix("torch."),
        "elements": entry.num_elements,
        "stored_bytes": entry.stored_bytes,
        "rows": 0 if scale is None else scale.numel(),
        "floor_rows": floor_rows(entry),
    }


def register(subparsers) -> None:
    parser = subparsers.add_parser("inspect", help="show where the bytes of a .pgolf artifact go",
                                   description="Per-tensor and per-category sizes of a .pgolf artifact, "
                                               "its header and the size budget.")
    parser.add_argument("artifact", help="a .pgolf file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--compare-compressors", action="store_true",
                        help="also compress the same payload with every compressor of pgolf.compressors "
                             "(zpaq and pergroup are slow: tens of kB/s to a few MB/s)")
    parser.set_defaults(func=run)


def _bits_per_parameter(compressed_bytes: int, elements: int) -> float:
    return 8.0 * compressed_bytes / elements if elements else 0.0


def compressor_bytes(contents) -> tuple[dict[str, int], dict[str, str]]:
    """Payload bytes of the same stored tensors under every compressor (default levels) this
    environment can run, and, for the others, the package each one needs."""
    from pgolf.artifact import build_payload
    from pgolf.compressors import COMPRESSORS, compress, missing_package

    raw, table = build_payload(contents.quantized)
    sizes, unavailable = {}, {}
    for name, compressor in COMPRESSORS.items():
        package = missing_package(name)
        if package:
            unavailable[name] = f"needs the {package} package"
        else:
            sizes[name] = len(compress(raw, name, compressor.default_level, table))
    return sizes, unavailable


def inspect_artifact(path: Path, compare_compressors: bool = False) -> dict[str, Any]:
    """The whole report as a JSON-able dict (also what `--json` prints)."""
    from pgolf.artifact import compress, read_artifact, tensor_bytes
    from pgolf.challenge import BUDGET_BYTES
    from pgolf.errors import PgolfError
    from pgolf.packaging.export import artifact_code_bytes
    from pgolf.packaging.size import size_report

    contents = read_artifact(path)
    header = contents.header

    def compressed_size(data: bytes) -> int:
        try:
            return len(compress(data, header["compressor"], header["level"]))
        except (ValueError, OverflowError, zlib.error):  # a level the compressor refuses; the file is readable
            raise PgolfError(f"{path}: compression level {header['level']} is not valid for "
                             f"{header['compressor']}; cannot attribute compressed bytes") from None

    tensors = []
    for name, entry in contents.quantized.tensors.items():
        row = tensor_summary(name, entry)
        stored = b"".join(tensor_bytes(part) for part in entry.parts.values())
        row["compressed_bytes"] = compressed_size(stored) if stored else 0
        row["bits_per_parameter"] = _bits_per_parameter(row["compressed_bytes"], row["elements"])
        tensors.append(row)

    categories = {}
    for category in CATEGORIES:
        rows = [row for row in tensors if row["category"] == category]
        elements = sum(row["elements"] for row in rows)
        compressed = sum(row["compressed_bytes"] for row in rows)
        categories[category] = {
            "tensors": len(rows),
            "methods": sorted({row["method"] for row in rows}),
            "elements": elements,
            "stored_bytes": sum(row["stored_bytes"] for row in rows),
            "compressed_bytes": compressed,
            "bits_per_parameter": _bits_per_parameter(compressed, elements),
        }

    try:
        bytes_code: int | None = artifact_code_bytes(header)
        code_note = "the plain train_gpt.py `pgolf export` writes for this model and scheme"
    except PgolfError as error:
        bytes_code, code_note = None, str(error)
    elements = sum(row["elements"] for row in tensors)
    totals = {
        "elements": elements,
        "bytes_header": contents.bytes_header,
        "bytes_payload_raw": header["payload"]["raw_bytes"],
        "bytes_payload_compressed": header["payload"]["compressed_bytes"],
        "bytes_tensors_compressed_separately": sum(row["compressed_bytes"] for row in tensors),
        "bits_per_parameter_file": _bits_per_parameter(contents.bytes_file, elements),
        "code_note": code_note,
    }
    if bytes_code is None:
        totals.update(bytes_model=contents.bytes_file, bytes_code=None, bytes_total=None,
                      bytes_budget=BUDGET_BYTES, bytes_headroom=None, fits=None)
    else:
        totals.update(size_report(contents.bytes_file, bytes_code))
    facts = {key: header.get(key) for key in ("format_version", "pgolf_version", "scheme", "compressor", "level",
                                              "tokenizer_sha256", "vocab_size", "model_config")}
    facts["payload_sha256"] = header["payload"]["sha256"]
    report = {"artifact": str(path), "header": facts, "tensors": tensors, "categories": categories, "totals": totals}
    if compare_compressors:
        report["compressors"], report["compressors_unavailable"] = compressor_bytes(contents)
    return report


def _table(rows: list[list[str]], right_aligned: set[int]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(width) if column in right_aligned else cell.ljust(width)
                 for column, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    header, totals = report["header"], report["totals"]
    tensor_rows = [["tensor", "category", "method", "elements", "stored", "compressed", "bits/param",
                    "floor rows"]]
    for row in report["tensors"]:
        floor = f"{row['floor_rows']:,}/{row['rows']:,}" if row["rows"] else "-"
        tensor_rows.append([printable(row["name"]), row["category"], row["method"], f"{row['elements']:,}",
                            f"{row['stored_bytes']:,}", f"{row['compressed_bytes']:,}",
                            f"{row['bits_per_parameter']:.3f}", floor])
    category_rows = [["category", "tensors", "methods", "elements", "stored", "compressed", "bits/param"]]
    for name, row in report["categories"].items():
        category_rows.append([name, str(row["tensors"]), ",".join(row["methods"]) or "-", f"{row['elements']:,}",
                              f"{row['stored_bytes']:,}", f"{row['compressed_bytes']:,}",
                              f"{row['bits_per_parameter']:.3f}"])

    def number(value) -> str:
        return "unavailable" if value is None else f"{value:,}"

    header = {key: printable(value) if isinstance(value, str) else value for key, value in header.items()}
    lines = [
        f"artifact: {printable(report['artifact'])}",
        f"format: {header['format_version']}  written by pgolf {printable(header['pgolf_version'])}",
        f"scheme: {header['scheme']}  compressor: {header['compressor']} level {header['level']}",
        f"tokenizer_sha256: {header['tokenizer_sha256']}  vocab_size: {header['vocab_size']}",
        f"payload_sha256: {header['payload_sha256']}",
        "model_config: " + json.dumps(header["model_config"], sort_keys=True),
        "",
        _table(tensor_rows, right_aligned={3, 4, 5, 6, 7}),
        "",
        _table(category_rows, right_aligned={1, 3, 4, 5, 6}),
        "",
        f"parameters: {totals['elements']:,}",
        f"bytes_header: {totals['bytes_header']:,}  payload raw: {totals['bytes_payload_raw']:,}  "
        f"payload compressed: {totals['bytes_payload_compressed']:,}  "
        f"(tensors compressed one by one: {totals['bytes_tensors_compressed_separately']:,})",
        f"bytes_model: {totals['bytes_model']:,}  ({totals['bits_per_parameter_file']:.3f} bits/param)",
        f"bytes_code: {number(totals['bytes_code'])}  ({totals['code_note']})",
        f"bytes_total: {number(totals['bytes_total'])}  budget: {totals['bytes_budget']:,}  "
        f"headroom: {number(totals['bytes_headroom'])}  fits: {totals['fits']}",
    ]
    if "compressors" in report:
        lines.append("payload bytes by compressor: " + "  ".join(
            f"{name} {size:,}" for name, size in sorted(report["compressors"].items(), key=lambda item: item[1])))
        for name, reason in report.get("compressors_unavailable", {}).items():
            lines.append(f"  {name}: not measured, {reason}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = inspect_artifact(Path(args.artifact), args.compare_compressors)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
