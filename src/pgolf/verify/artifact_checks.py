"""The artifact: readable and intact, within 16,000,000 bytes with its code, made for this tokenizer."""

from __future__ import annotations

from pathlib import Path

from pgolf.errors import PgolfError
from pgolf.verify.report import Check


def check_artifact(path, tokenizer_sha256: str, vocab_size: int, code_bytes: int | None = None):
    """Checks of one `.pgolf` file; returns (checks, header or None when unreadable)."""
    from pgolf.artifact import read_artifact
    from pgolf.challenge import BUDGET_BYTES
    from pgolf.packaging.export import artifact_code_bytes

    path = Path(path)
    try:
        contents = read_artifact(path)  # magic, lengths, payload sha256, tensor table
    except PgolfError as error:
        return [Check("artifact.integrity", False, str(error))], None
    header = contents.header
    checks = [Check("artifact.integrity", True,
                    f"{path.name}: payload sha256 {header['payload']['sha256'][:16]}... matches, "
                    f"{len(header['tensors'])} tensors, scheme {header['scheme']!r} "
                    f"({header['compressor']} level {header['level']})")]
    code = artifact_code_bytes(header) if code_bytes is None else int(code_bytes)
    total = contents.bytes_file + code
    budget = BUDGET_BYTES
    checks.append(Check("artifact.size", total <= budget,
                        f"model {contents.bytes_file:,} + code {code:,} = {total:,} bytes "
                        f"{'<=' if total <= budget else '>'} {budget:,} "
                        f"({'headroom' if total <= budget else 'over by'} {abs(budget - total):,})"))
    recorded = str(header.get("tokenizer_sha256", ""))
    problems = []
    if recorded != tokenizer_sha256:
        problems.append(f"artifact was made for tokenizer sha256 {recorded[:16]}..., the dataset's is "
                        f"{tokenizer_sha256[:16]}...")
    if int(header.get("vocab_size", -1)) != vocab_size:
        problems.append(f"artifact vocab_size {header.get('vocab_size')} but the tokenizer has {vocab_size} pieces")
    if problems:
        checks.append(Check("artifact.tokenizer", False, "; ".join(problems), tuple(problems)))
    else:
        checks.append(Check("artifact.tokenizer", True,
                            f"tokenizer sha256 {recorded[:16]}... and vocab_size {vocab_size} match the dataset's"))
    return checks, header
