"""The outcome of ``emlab check`` (its own module: the suite produces it, the reports and the
history read it, and neither needs the other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CheckResult:
    verdict: str
    exit_code: int
    decision: dict
    looks: list[dict]
    out: Path
    meta: dict
    judge_calls: int
    fixed_judge_calls: int
    examples: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "exit_code": self.exit_code, "meta": self.meta,
                "decision": self.decision, "looks": self.looks, "judge_calls": self.judge_calls,
                "fixed_judge_calls": self.fixed_judge_calls, "examples": self.examples}
