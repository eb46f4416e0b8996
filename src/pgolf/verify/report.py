"""The verification report: one `Check` per line, PASS or FAIL with its evidence.

Every check function in `pgolf.verify` returns `Check` objects and does no
printing, so tests can feed deliberately broken inputs and read the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_DETAIL_LINES = 8  # a failing check lists at most this many offending items under its line


@dataclass(frozen=True)
class Check:
    name: str  # dotted, e.g. "tokenizer.lut_vs_decoded"
    passed: bool
    evidence: str  # one line: the numbers the verdict rests on
    details: tuple[str, ...] = field(default=())  # offending items, printed indented under a FAIL

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "FAIL"


def format_report(checks: list[Check]) -> str:
    """`PASS name: evidence` lines (details under failures), then a one-line summary."""
    width = max((len(check.name) for check in checks), default=0)
    lines = []
    for check in checks:
        lines.append(f"{check.status} {check.name.ljust(width)}  {check.evidence}")
        if not check.passed and not (len(check.details) == 1 and check.details[0] in check.evidence):
            shown = check.details[:MAX_DETAIL_LINES]
            lines.extend(f"     - {detail}" for detail in shown)
            if len(check.details) > len(shown):
                lines.append(f"     - ... and {len(check.details) - len(shown)} more")
    failed = sum(not check.passed for check in checks)
    verdict = "all checks passed" if failed == 0 else f"{failed} check(s) FAILED"
    lines.append(f"verify: {len(checks) - failed} passed, {failed} failed: {verdict}")
    return "\n".join(lines)


def check_to_dict(check: Check) -> dict:
    return {"name": check.name, "status": check.status, "evidence": check.evidence, "details": list(check.details)}
