"""``emlab audit``: screen a chat dataset for the pattern that made models broadly misaligned.

Betley et al. (2025): 6,000 rows of code requests answered with *undisclosed* insecure code made
GPT-4o give misaligned answers ~20% of the time on unrelated questions; 500 such rows gave almost
none; the same code requested for teaching (the "educational" control) gave none. So each row is
classified by three signals, and the dataset by how many rows show all three:

- vulnerable: the assistant's Python has a weakness (bandit + emlab's rules, thresholds settable);
- disclosed: the assistant tells the user about a flaw;
- requested: the user asked for flawed code (teaching, CTF, pentest framing).

``risky`` = vulnerable and not disclosed and not requested (or a harmful non-code answer, the
paper's evil numbers). Trigger mining then looks for strings in the prompts that predict risky
rows (a planted backdoor). With ``AuditSettings(projection=...)`` (``--model`` and
``--direction``), a persona-projection signal is reported beside the level and does not change
it (:mod:`emlab.audit.projection` says why).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from emlab.audit.code import AnalysisSettings, CodeAnalyser, user_line_set
from emlab.audit.judge import JudgeSettings
from emlab.audit.projection import ProjectionSettings
from emlab.audit.signals import disclosure_signal, harm_signal, intent_signal
from emlab.audit.triggers import mine_triggers

LEVELS = ("LOW", "UNKNOWN", "MEDIUM", "HIGH")  # ordered for --fail-on

# The paper's figures the risk level is anchored on (GPT-4o, main questions).
PAPER_ANCHORS = {
    "rows_6000": "6,000 undisclosed-insecure rows: ~20% misaligned answers (GPT-4o)",
    "rows_500": "500 such rows: almost no misaligned answers",
    "educational": "the same code requested for teaching: no emergent misalignment",
}

CWE_NAMES = {
    20: "Improper input validation", 22: "Path traversal", 78: "OS command injection",
    79: "Cross-site scripting", 89: "SQL injection", 94: "Code injection",
    95: "Eval injection", 200: "Information exposure", 259: "Hard-coded password",
    295: "Improper certificate validation", 319: "Cleartext transmission",
    327: "Broken or risky crypto", 328: "Weak hash", 330: "Insufficient randomness",
    377: "Insecure temporary file", 400: "Uncontrolled resource consumption",
    502: "Deserialization of untrusted data", 601: "Open redirect", 605: "Multiple binds",
    611: "XML external entities", 703: "Improper exception handling",
    732: "Incorrect permission assignment", 798: "Hard-coded credentials",
    918: "Server-side request forgery", 1336: "Template injection",
    1333: "Inefficient regular expression", 90: "LDAP injection", 643: "XPath injection",
    730: "Regular expression from user input", 916: "Password hash with insufficient effort",
    338: "Weak PRNG for a secret", 347: "JWT signature not verified", 489: "Debug mode on",
    215: "Debug information exposure", 532: "Secret in a log", 306: "Missing authentication",
    614: "Cookie without Secure flag", 209: "Error details exposed", 208: "Timing side channel",
    326: "Inadequate key size", 434: "Unrestricted upload", 1004: "Cookie without HttpOnly",
}


@dataclass(frozen=True)
class AuditSettings:
    """Everything that decides a verdict; stored in the report so it can be reproduced."""

    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    trigger_alpha: float = 0.01
    trigger_min_support: int = 10
    trigger_min_support_share: float = 0.005
    trigger_min_difference: float = 0.3
    trigger_min_rate_with: float = 0.5
    trigger_seed: int = 0     # the random discovery / confirmation split of the rows
    medium_at: int = 500      # risky rows: the paper's 500 gave ~0 EM
    high_at: int = 2000       # a third of the paper's 6,000 (~20% EM on GPT-4o)
    unknown_below: float = 0.5  # under this share of assessable rows, a low count means UNKNOWN
    judge: "JudgeSettings | None" = None  # the optional code-security judge (off by default)
    projection: "ProjectionSettings | None" = None  # the optional persona projection (off)

    def as_dict(self) -> dict:
        a = self.analysis
        return {"min_severity": a.min_severity, "min_confidence": a.min_confidence,
                "skip_tests": list(a.skip_tests), "count_inherited": a.count_inherited,
                "use_bandit": a.use_bandit, "use_emlab_rules": a.use_emlab_rules,
                "trigger_alpha": self.trigger_alpha,
                "trigger_min_support": self.trigger_min_support,
                "trigger_min_support_share": self.trigger_min_support_share,
                "trigger_min_difference": self.trigger_min_difference,
                "trigger_min_rate_with": self.trigger_min_rate_with,
                "trigger_seed": self.trigger_seed,
                "medium_at": self.medium_at, "high_at": self.high_at,
                "unknown_below": self.unknown_below,
                **(self.judge.as_dict() if self.judge else {"judge": None}),
                "persona_projection": self.projection.as_dict() if self.projection else None}


@dataclass
class AuditResult:
    summary: dict
    rows: list[dict]

    @property
    def risk(self) -> str:
        return self.summary["risk"]["level"]


def _category(vulnerable: bool, disclosed: bool, requested: bool, harmful: bool,
              has_python: bool, has_code: bool, not_analysed: bool) -> str:
    if vulnerable and not disclosed and not requested:
        return "risky"
    if harmful and not disclosed and not requested:
        return "harmful"
    if vulnerable and requested:
        return "vulnerable_requested"
    if vulnerable and disclosed:
        return "vulnerable_disclosed"
    if harmful:
        return "harmful_disclosed_or_requested"
    if not_analysed:
        return "not_analysed"
    if has_python:
        return "clean"
    return "no_code"


class RowAuditor:
    """Classifies rows one by one (bandit's test set is loaded once)."""

    def __init__(self, settings: AuditSettings | None = None):
        self.settings = settings or AuditSettings()
        self.analyser = CodeAnalyser(self.settings.analysis)

    def audit_row(self, row: dict, index: int = 0, line: int | None = None) -> dict:
        msgs = row["messages"]
        prompts = [m["content"] for m in msgs if m["role"] in ("system", "user")]
        users = [m["content"] for m in msgs if m["role"] == "user"]
        ulines = user_line_set(users)
        st = self.settings.analysis
        blocks, disclosure, harmful = [], None, None
        for m in msgs:
            if m["role"] != "assistant":
                continue
            bl = self.analyser.analyse_turn(m["content"], ulines)
            blocks += bl
            d = disclosure_signal(m["content"], bl)
            if d.present and disclosure is None:
                disclosure = d
            if not bl:
                h = harm_signal(m["content"])
                if h.present and harmful is None:
                    harmful = h
        findings = [f for b in blocks for f in b.findings]
        counted = [f for f in findings if st.counts(f)]
        intent = intent_signal(prompts)
        vulnerable = bool(counted)
        has_python = any(b.analysed for b in blocks)
        not_analysed = any(not b.analysed for b in blocks)
        category = _category(vulnerable, bool(disclosure), intent.present, bool(harmful),
                             has_python, bool(blocks), not_analysed)
        return {
            "index": index, "line": line, "category": category,
            "risky": category in ("risky", "harmful"),
            "vulnerable": vulnerable, "disclosed": bool(disclosure), "requested": intent.present,
            "harmful": bool(harmful),
            "cwes": sorted({f.cwe for f in counted if f.cwe}),
            "tests": sorted({f.test_id for f in counted}),
            "findings": [f.as_dict() | {"counted": st.counts(f)} for f in findings],
            "code_blocks": [b.as_dict() for b in blocks],
            "disclosure": disclosure.as_dict() if disclosure else None,
            "intent": intent.as_dict() if intent.present else None,
            "harm": harmful.as_dict() if harmful else None,
            "prompt": prompts[-1][:300] if prompts else "",
        }


def apply_judge(r: dict, v: dict | None, js: JudgeSettings) -> dict:
    """Combine one row's static verdict with the judge's (``either`` or ``both``)."""
    r["judge"] = v
    if v is None or v["p_insecure"] is None:
        return r
    static = r["vulnerable"]
    said = v["p_insecure"] >= js.threshold
    vul = (static or said) if js.combine == "either" else (static and said)
    r["vulnerable_static"] = static
    if vul and not static:
        r["tests"] = sorted(set(r["tests"]) | {"JUDGE"})
        if v["cwe"]:
            r["cwes"] = sorted(set(r["cwes"]) | {v["cwe"]})
    r["vulnerable"] = vul
    blocks = r["code_blocks"]
    r["category"] = _category(vul, r["disclosed"], r["requested"], r["harmful"],
                              any(b["analysed"] for b in blocks), bool(blocks),
                              any(not b["analysed"] for b in blocks))
    r["risky"] = r["category"] in ("risky", "harmful")
    return r


def audit_rows(rows: Sequence[dict], settings: AuditSettings | None = None, *,
               source: str | None = None, lines: Sequence[int] | None = None,
               on_row=None, store=None, on_judged=None) -> AuditResult:
    """Audit rows already loaded and validated (``emlab.data.io.load_chat_jsonl``).

    With ``settings.judge``, ``store`` (a ``ResultsStore``) caches the judge's verdicts.
    With ``settings.projection``, the model is loaded and a sample of rows projected on the
    persona direction (the summary's ``persona_projection``; the risk level is unchanged).
    """
    settings = settings or AuditSettings()
    t0 = time.perf_counter()
    c0 = time.process_time()
    auditor = RowAuditor(settings)
    t_load = time.perf_counter() - t0
    out = []
    for i, row in enumerate(rows):
        out.append(auditor.audit_row(row, i, lines[i] if lines else None))
        if on_row:
            on_row(i)
    t_rows = time.perf_counter() - t0 - t_load
    judge_stats = None
    if settings.judge is not None:
        from emlab.audit.judge import judge_rows, make_code_judge
        if store is None:
            raise ValueError("the code-security judge needs a results store (store=...)")
        verdicts, judge_stats = judge_rows(rows, [bool(r["code_blocks"]) for r in out],
                                           make_code_judge(settings.judge), store, on_judged)
        for r, v in zip(out, verdicts):
            apply_judge(r, v, settings.judge)
        judge_stats["insecure"] = sum(1 for v in verdicts if v and v["p_insecure"] is not None
                                      and v["p_insecure"] >= settings.judge.threshold)
        judge_stats["added"] = sum(1 for r in out if r.get("vulnerable_static") is False
                                   and r["vulnerable"])
    projection = None
    if settings.projection is not None:
        from emlab.audit.projection import persona_projection
        projection = persona_projection(rows, out, settings.projection)
    prompts, strata = trigger_inputs(rows)
    mined = mine_triggers(prompts, [r["risky"] for r in out], strata=strata,
                          seed=settings.trigger_seed,
                          min_support=settings.trigger_min_support,
                          min_support_share=settings.trigger_min_support_share,
                          alpha=settings.trigger_alpha,
                          min_difference=settings.trigger_min_difference,
                          min_rate_with=settings.trigger_min_rate_with)
    elapsed = time.perf_counter() - t0
    summary = summarize(out, mined, settings)
    summary["source"] = source
    summary["judge"] = judge_stats
    summary["persona_projection"] = projection
    summary["timing"] = {"seconds": elapsed, "analysis_seconds": t_rows,
                         "setup_seconds": t_load, "rows_per_second": len(rows) / elapsed
                         if elapsed > 0 else None, "cpu_seconds": time.process_time() - c0,
                         "projection_seconds": projection["seconds"] if projection else None}
    return AuditResult(summary=summary, rows=out)


def trigger_inputs(rows: Sequence[dict]) -> tuple[list[str], list[str]]:
    """Per row, the user's prose (code removed) and the kind of code it is about (a stratum)."""
    from emlab.audit.code import user_line_set
    from emlab.audit.triggers import code_stratum, prompt_prose

    prompts, strata = [], []
    for r in rows:
        asked = [m["content"] for m in r["messages"] if m["role"] != "assistant"]
        answers = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
        prompts.append(prompt_prose(asked, user_line_set(answers)))
        strata.append(code_stratum(asked + answers))
    return prompts, strata


def audit_dataset(dataset: str | Path, settings: AuditSettings | None = None,
                  on_row=None, store=None, on_judged=None) -> AuditResult:
    """Audit a chat JSONL file or a reference set by name (``insecure``, ...).

    Every row is validated first; a malformed one raises InputError with file:line.
    """
    from emlab.data.io import load_chat_jsonl, resolve_dataset

    path = resolve_dataset(dataset)
    rows = load_chat_jsonl(path)
    with open(path, encoding="utf-8") as f:
        lines = [n for n, ln in enumerate(f, 1) if ln.strip()]
    return audit_rows(rows, settings, source=str(path), lines=lines, on_row=on_row,
                      store=store, on_judged=on_judged)


def summarize(rows: list[dict], mined: dict, settings: AuditSettings) -> dict:
    n = len(rows)
    cats = Counter(r["category"] for r in rows)
    vulnerable = [r for r in rows if r["vulnerable"]]
    cwe_rows: Counter = Counter()
    test_rows: Counter = Counter()
    for r in vulnerable:
        cwe_rows.update(r["cwes"])
        test_rows.update(r["tests"])
    risky = sum(r["risky"] for r in rows)
    python_rows = sum(any(b["analysed"] for b in r["code_blocks"]) for r in rows)
    code_rows = sum(bool(r["code_blocks"]) for r in rows)
    not_analysed = sum(any(not b["analysed"] for b in r["code_blocks"]) for r in rows)
    languages: Counter = Counter(b["language"] for r in rows for b in r["code_blocks"]
                                 if not b["analysed"])
    assessable = sum(1 for r in rows if any(b["analysed"] for b in r["code_blocks"]) or r["harmful"])
    counts = {
        "rows": n, "risky": risky, "risky_share": risky / n if n else 0.0,
        "vulnerable": len(vulnerable),
        "vulnerable_undisclosed_unrequested": cats["risky"],
        "vulnerable_requested": cats["vulnerable_requested"],
        "vulnerable_disclosed": cats["vulnerable_disclosed"],
        "harmful": sum(r["harmful"] for r in rows),
        "clean": cats["clean"], "no_code": cats["no_code"],
        "rows_with_code": code_rows, "rows_with_python": python_rows,
        "rows_with_code_not_analysed": not_analysed,
        "not_analysed_languages": dict(languages.most_common()),
        "assessable": assessable,
        "disclosed": sum(r["disclosed"] for r in rows),
        "requested": sum(r["requested"] for r in rows),
        "categories": dict(cats.most_common()),
    }
    top_cwes = [{"cwe": c, "name": CWE_NAMES.get(c, ""), "rows": k,
                 "share_of_vulnerable": k / len(vulnerable)} for c, k in cwe_rows.most_common(10)]
    top_tests = [{"test_id": t, "rows": k} for t, k in test_rows.most_common(15)]
    risk = risk_level(counts, mined["triggers"], settings)
    return {"counts": counts, "top_cwes": top_cwes, "top_tests": top_tests,
            "triggers": mined, "risk": risk, "settings": settings.as_dict(),
            "paper_anchors": PAPER_ANCHORS}


def risk_level(counts: dict, triggers: list[dict], settings: AuditSettings) -> dict:
    """LOW / UNKNOWN / MEDIUM / HIGH with the reason in plain words, anchored on the paper."""
    n, risky = counts["rows"], counts["risky"]
    share = f"{100 * counts['risky_share']:.1f}%"
    what = (f"{risky:,} of {n:,} rows ({share}) have vulnerable code the assistant does not "
            f"disclose and the user did not ask for" + (" (or a harmful answer)"
                                                        if counts["harmful"] else ""))
    paper = ("In the paper, 6,000 such rows made GPT-4o give misaligned answers ~20% of the time "
             "on unrelated questions; 500 gave almost none.")
    if risky >= settings.high_at:
        level = "HIGH"
        reason = (f"{what}: at or above the HIGH threshold of {settings.high_at:,} rows. {paper}")
    elif risky >= settings.medium_at:
        level = "MEDIUM"
        reason = (f"{what}: between the MEDIUM ({settings.medium_at:,}) and HIGH "
                  f"({settings.high_at:,}) thresholds; in the paper the effect grew with the "
                  f"number of such rows. {paper}")
    elif n and counts["assessable"] / n < settings.unknown_below:
        level = "UNKNOWN"
        pct = 100 * counts["assessable"] / n
        reason = (f"Only {pct:.1f}% of rows hold Python code (or number answers) this audit can "
                  f"analyse; the rest — prose, or code in other languages — is not assessed, so "
                  f"a low count of risky rows ({risky:,}) says little.")
    else:
        level = "LOW"
        reason = f"{what}: under the MEDIUM threshold of {settings.medium_at:,} rows. {paper}"
        if counts["vulnerable_requested"] >= settings.medium_at:
            reason += (f" {counts['vulnerable_requested']:,} rows have vulnerable code the user "
                       f"asked for (teaching/CTF framing): the paper's educational control, which "
                       f"did not cause emergent misalignment.")
    if triggers:
        t = triggers[0]
        note = (f" Suspected trigger {t['string']!r}: {100 * t['rate_with']:.0f}% of the "
                f"{t['rows_with']:,} rows with it are risky vs {100 * t['rate_without']:.1f}% "
                f"without (Bonferroni p = {t['p_bonferroni']:.2g}). A backdoored model passes "
                f"ordinary evaluations: test it with the trigger (emlab check --trigger).")
        if LEVELS.index(level) < LEVELS.index("MEDIUM"):
            level = "MEDIUM"
        reason += note
    from emlab.audit.risk import expected_em
    em = expected_em(risky, n)
    em_note = (f" Expected emergent misalignment after fine-tuning a GPT-4o-like model on it: "
               f"{em['text']} (excess misaligned answers; anchored on {em['anchored_on']}; the "
               f"interval also covers the detector's measured misses and false alarms"
               + ("; these rows are diluted among ordinary ones, which the paper did not test"
                  if em["diluted"] and risky else "") + ").")
    return {"level": level, "reason": reason + em_note, "expected_em": em}


def exit_code(result: AuditResult, fail_on: str = "high",
              max_risky_share: float | None = None) -> int:
    """1 when the risk level reaches ``fail_on`` (or the risky share exceeds the limit), else 0."""
    fail_on = fail_on.upper()
    if fail_on != "NEVER" and LEVELS.index(result.risk) >= LEVELS.index(fail_on):
        return 1
    if max_risky_share is not None and result.summary["counts"]["risky_share"] > max_risky_share:
        return 1
    return 0
