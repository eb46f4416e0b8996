"""Measured compression ratios of trained runs, and the size predictor's error on their artifacts.

For each run folder (RUN_DIR/weights.safetensors, written by every `pgolf train` run) and
scheme: quantise, compress each kind of stored part (int6 values, int8 values, scales, fp16, ...)
on its own to get its ratio, write the real artifact, and compare its size with
`pgolf.packaging.size.predict_model_bytes`.

    PYTHONPATH=src python benchmarks/size_prediction.py RUN_DIR [RUN_DIR ...] [--scheme pr198 --scheme baseline]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from pgolf.packaging import size as accounting
from pgolf.artifact import save_artifact, tensor_bytes
from pgolf.compressors import compress
from pgolf.config import run_config_from_dict
from pgolf.quant import choose_rule, get_scheme, quantize_state_dict
from pgolf.weights import FULL_WEIGHTS_NAME, load_full_weights


def kind_ratios(state: dict[str, torch.Tensor], scheme_name: str) -> dict[str, dict[str, float]]:
    """{kind: {"stored": bytes, "compressed": bytes, "ratio": ...}} with each kind compressed as one stream."""
    scheme = get_scheme(scheme_name)
    quantized = quantize_state_dict(state, scheme)
    chunks: dict[str, list[bytes]] = {}
    for name, entry in quantized.tensors.items():
        rule = choose_rule(name, state[name], scheme)
        for part, tensor in entry.parts.items():
            chunks.setdefault(accounting.part_kind(entry.method, part, rule.floor), []).append(tensor_bytes(tensor))
    result = {}
    for kind, pieces in chunks.items():
        data = b"".join(pieces)
        compressed = len(compress(data, scheme.compressor, scheme.level)) if data else 0
        result[kind] = {"stored": len(data), "compressed": compressed, "ratio": compressed / max(len(data), 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--scheme", action="append", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in map(Path, args.runs):
        config = run_config_from_dict(json.loads((run / "config.json").read_text()))
        state = load_full_weights(run / FULL_WEIGHTS_NAME)
        for scheme in args.scheme or ["pr198", "baseline"]:
            with tempfile.TemporaryDirectory() as folder:
                info = save_artifact(Path(folder) / "model.pgolf", config.model, state, scheme, "0" * 64,
                                     config.model.vocab_size)
            ratios = {kind: round(value["ratio"], 4) for kind, value in kind_ratios(state, scheme).items()}
            row = {"run": str(run), "scheme": scheme, "measured": info.bytes_model}
            for profile in ("trained", "cpu-short"):
                predicted = accounting.predict_model_bytes(config.model, scheme, profile=profile)
                row[profile] = predicted
                row[f"error_{profile}"] = round((predicted - info.bytes_model) / info.bytes_model, 4)
            print(json.dumps({**row, "ratios": ratios}))


if __name__ == "__main__":
    main()
