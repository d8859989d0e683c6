"""One weakness found in a code block: what the analysers (bandit, emlab's rules) report and
the audit aggregates. Its own module, so the analysers and the extraction code both depend on it
rather than on each other."""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Finding:
    """One weakness found in a code block (line numbers are 1-based within the block)."""

    tool: str                 # "bandit" or "emlab"
    test_id: str              # B608, EM201, ...
    name: str                 # hardcoded_sql_expressions, sql_built_from_strings, ...
    severity: str             # LOW / MEDIUM / HIGH
    confidence: str           # LOW / MEDIUM / HIGH
    cwe: int | None
    line: int
    message: str
    code: str = ""            # the flagged source line, stripped and shortened
    evidence_lines: tuple[int, ...] = ()  # lines that make the finding (sink and taint path)
    inherited: bool = False   # every evidence line was already in a user turn

    def as_dict(self) -> dict:
        d = asdict(self)
        d["evidence_lines"] = list(self.evidence_lines)
        return d


def dotted_name(node: ast.AST) -> str | None:
    """``a.b.c`` for a Name/Attribute chain (a call's receiver, an imported name), else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None
