"""The challenge's fixed facts, each defined once: the byte budget, the time limits, the file
names a submission uses, and the official sp1024 val split (spec pr198.md §1, §5, §6)."""

from __future__ import annotations

BUDGET_BYTES = 16_000_000  # decimal: code bytes + model bytes
TRAIN_SECONDS_LIMIT = 600.0  # on 8xH100, the training loop minus validation
EVAL_SECONDS_LIMIT = 600.0  # the whole evaluation on 8xH100

ARTIFACT_NAME = "model.pgolf"  # the artifact inside a run folder (and next to an exported script)
SCRIPT_NAME = "train_gpt.py"  # the single file the challenge runs and counts as code

# The official sp1024 export: its tokenizer, and its val split before and after the cut to a
# multiple of 2048 plus one token (62,021,632 scored targets).
OFFICIAL_SP1024_TOKENIZER_SHA256 = "849ea920119b5135ace5016137e82ab397738fc29d723d5f9a6b74c4e31af191"
OFFICIAL_SP1024_VAL_TOKENS = 62_021_846
OFFICIAL_SP1024_VAL_DOCS = 50_000
OFFICIAL_SP1024_VAL_TARGETS = 62_021_632
