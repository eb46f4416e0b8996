"""Train a run that also keeps its averaged full-precision weights (RUN_DIR/weights.safetensors).

Until the run's finish writes that file itself, this script wraps the artifact writer of
`pgolf.finalize` so that the state dict it is handed (the base model after SWA) is also saved
with `pgolf.requantize.save_full_weights`; everything else is `pgolf train`.

    PYTHONPATH=src python scripts/train_keep_weights.py RUN_DIR --preset tiny \
        --set data_dir=/tmp/quant-demo/dataset --set iterations=150
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pgolf import finalize, requantize
from pgolf.config import apply_overrides, get_preset
from pgolf.train import run_training


def keep_weights_on_save(writer):
    def save_and_keep(path, model_config, state_dict, *args, **kwargs):
        requantize.save_full_weights(Path(path).parent / requantize.FULL_WEIGHTS_NAME, state_dict)
        return writer(path, model_config, state_dict, *args, **kwargs)

    return save_and_keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = apply_overrides(get_preset(args.preset), args.set)
    finalize.save_artifact = keep_weights_on_save(finalize.save_artifact)
    result = run_training(config, Path(args.run_dir), quiet=True)
    print(json.dumps({key: result[key] for key in ("val_bpb", "val_bpb_prequant", "bytes_model", "steps")}))


if __name__ == "__main__":
    main()
