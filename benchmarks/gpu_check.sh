#!/usr/bin/env bash
# Speed check for a lent GPU (one H200): PR-198 training and sliding-window evaluation, synthetic tokens.
# Run from the repository root:  bash benchmarks/gpu_check.sh
# Needs torch with CUDA (+ triton for torch.compile) and numpy; nothing is downloaded; zstandard is not needed.
# Dry run of the Python part on CPU with tiny shapes:  PGOLF_GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python}"
if [ -n "${PGOLF_GPU_CHECK_DRY:-}" ] && [ -x .venv/bin/python ] && [ -z "${PYTHON_SET:-}" ]; then
    PYTHON=.venv/bin/python  # the dry run uses the project's virtual environment when there is one
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true
# 8-minute budget: compile (~1-2 min) + training + evaluation, with an SDPA rerun only if FA3 imports.
exec timeout 470 "$PYTHON" benchmarks/gpu_check.py
