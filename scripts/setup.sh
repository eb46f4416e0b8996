#!/usr/bin/env bash
# Set up pgolf in ./.venv: torch first (CPU build pinned on machines without a GPU, so no
# multi-GB CUDA wheel is ever pulled there), then the package with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        .venv/bin/pip install --quiet torch
    else
        .venv/bin/pip install --quiet torch==2.13.0
    fi
fi
.venv/bin/pip install --quiet -e ".[test]"
.venv/bin/python -c "import torch, pgolf; print(f'pgolf {pgolf.__version__} ready (torch {torch.__version__})')"
