#!/usr/bin/env bash
# Speed and health check for a lent GPU (one H200): pr198 and frontier training, evaluation, compiled graphs,
# host syncs; synthetic tokens, nothing downloaded. Every row is printed as it is measured ("row: ..."),
# then the whole table; the Python part stops starting measurements near 440 s (under 8 minutes in all).
#
# Run from the repository root:  bash benchmarks/gpu_check.sh
# Dry run on CPU with tiny shapes:  PGOLF_GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh
#   (PGOLF_GPU_CHECK_DRY=fa3-fails also plants a failing FlashAttention 3, to show the SDPA fallback.)
# Choices: PGOLF_GPU_CHECK_PRESETS=frontier (default pr198,frontier), PGOLF_GPU_CHECK_SECONDS=440.
#
# Needs torch with CUDA, Triton and numpy, as the lent machine's image has them (torch 2.11, python3);
# it has no FlashAttention 3 and no zstandard, and neither is needed (without FA3, attention is SDPA).
#
# From a later session, with the device tool (it sends the session's checkout; the files it needs are tracked):
#   run(command="set -o pipefail; bash benchmarks/gpu_check.sh 2>&1 | tee $OUT/gpu_check.log", timeout_s=540)
# The reply's output_tail holds the table; $OUT/gpu_check.log comes back whole. To measure FA3 too, carry
# a wheel of it built for that image (Python 3.12, torch 2.11, CUDA 13; nothing can be fetched there):
#   here, once:  echo /.whl/ >> .git/info/exclude; mkdir -p .whl; cp /path/to/flash_attn_3-*.whl .whl/
#   run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; set -o pipefail;
#       bash benchmarks/gpu_check.sh 2>&1 | tee $OUT/gpu_check.log", carry=[".whl"], timeout_s=540)
# A first call starts the machine (a minute or more of the session's device time): run it once, whole.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
if [ -n "${PGOLF_GPU_CHECK_DRY:-}" ] && [ -x .venv/bin/python ] && [ "$PYTHON" = python3 ]; then
    PYTHON=.venv/bin/python  # the dry run uses the project's virtual environment when there is one
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true
if [ -n "${PGOLF_GPU_CHECK_DRY:-}" ]; then
    exec "$PYTHON" benchmarks/gpu_check.py  # CPU compilation takes its time; no budget
fi
# a backstop only: the Python part watches its own budget (PGOLF_GPU_CHECK_SECONDS) and prints the table
exec timeout --kill-after=5 470 "$PYTHON" benchmarks/gpu_check.py
