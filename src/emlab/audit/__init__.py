"""``emlab audit``: screen a fine-tuning dataset before training.

Per row: vulnerable code in assistant turns (bandit + emlab's taint rules, with CWE ids; code is
parsed, never executed), whether the assistant discloses the flaw, whether the user asked for
it; per dataset: the share of the paper's risky pattern (vulnerable, undisclosed, unrequested),
top CWEs, suspected backdoor triggers (user prose only, within strata of code kinds, confirmed
on held-out rows), and a risk level with an interval of expected emergent misalignment anchored
on the paper's size ladder. Optionally a code-security judge (``AuditSettings(judge=...)``) and
a persona-projection signal on a local model (``AuditSettings(projection=...)``, reported beside
the level, never changing it).

    from emlab.audit import audit_dataset
    result = audit_dataset("data/my_set.jsonl")
    result.risk, result.summary["counts"]["risky_share"], result.summary["triggers"]["triggers"]
"""

from emlab.audit.audit import (LEVELS, AuditResult, AuditSettings, RowAuditor, audit_dataset,
                               audit_rows, exit_code, risk_level)
from emlab.audit.code import (DEFAULT_SKIP_TESTS, AnalysisSettings, CodeAnalyser, CodeBlock,
                              Finding, extract_code)
from emlab.audit.judge import JudgeSettings
from emlab.audit.projection import ProjectionSettings
from emlab.audit.risk import expected_em
from emlab.audit.signals import disclosure_signal, harm_signal, intent_signal
from emlab.audit.triggers import code_stratum, mine_triggers, prompt_prose

__all__ = ["audit_dataset", "audit_rows", "AuditSettings", "AuditResult", "RowAuditor",
           "AnalysisSettings", "CodeAnalyser", "CodeBlock", "Finding", "extract_code",
           "disclosure_signal", "intent_signal", "harm_signal", "mine_triggers", "exit_code",
           "risk_level", "LEVELS", "DEFAULT_SKIP_TESTS", "JudgeSettings", "ProjectionSettings",
           "expected_em", "prompt_prose", "code_stratum"]
