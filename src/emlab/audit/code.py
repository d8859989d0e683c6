"""Find the code in an assistant turn and analyse it statically: bandit plus emlab's own rules.

Code is only ever *parsed* (``ast.parse`` and bandit's AST visitor), never compiled to bytecode,
imported or executed, so a dataset row that would delete files if run is harmless here.

Extraction: fenced blocks (```lang ... ``` or ~~~) when the turn has any; otherwise the whole
turn when it parses as Python that looks like code (a lone word or a list of numbers parses too,
but is not code); otherwise the longest run of lines starting at a Python-looking line that
parses. Python is analysed; code in any other language is reported as ``not analysed``, never
silently passed.

Findings on lines the user's own message already contained (a code template the assistant was
asked to complete) are marked ``inherited``: the assistant did not write them. By default they
are reported but do not make a row vulnerable (``AuditSettings.count_inherited``).
"""

from __future__ import annotations

import ast
import io
import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Iterable

from emlab.audit.finding import Finding

RANKING = ("LOW", "MEDIUM", "HIGH")

# bandit tests that fire on ordinary, safe code (imports of subprocess, asserts, a bare
# ``except: pass``): reported only when asked for (``skip_tests=()``).
# B413 (any ``import Crypto.*``) warns that the old pycrypto package is unmaintained, but
# pycryptodome, which is maintained, installs the same names: emlab's EM1001 flags the broken
# ciphers themselves instead. B310 ("audit url open for permitted schemes") fires on every
# urlopen of a variable; EM402 reports the request-controlled ones (SSRF).
DEFAULT_SKIP_TESTS = ("B101", "B110", "B112", "B404", "B603", "B607", "B413", "B310")

# Fenced block: ``` or ~~~, optional info string, body, closing fence of the same kind.
_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)"
                    r"^[ \t]*(?P=fence)[ \t]*$", re.S | re.M)
_PY_NAMES = {"python", "py", "python3", "py3", "python2", "ipython", "pycon", "sage"}
_NOT_CODE_NAMES = {"", "text", "txt", "plain", "plaintext", "output", "console", "log", "md",
                   "markdown"}
_PY_START = re.compile(r"^(import |from \S+ import |def |class |@|async def |if __name__|"
                       r"[A-Za-z_][\w.]*\s*=[^=]|for |while |with |try:|print\()")
_CODE_HINT = re.compile(r"(;\s*$|\{\s*$|^\s*\}|^\s*(function|var|let|const|public|private|"
                        r"#include|package|func|fn|SELECT|<\?php|<html|<div|end$|puts |require)"
                        r"\b)", re.M | re.I)
_STMT_CODE = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
              ast.Assign, ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.While, ast.If,
              ast.With, ast.AsyncWith, ast.Try, ast.Return, ast.Raise, ast.Delete, ast.Global,
              ast.Assert)


@dataclass
class CodeBlock:
    language: str             # "python", a fence's language, or "unknown"
    source: str
    fenced: bool
    analysed: bool = False
    reason: str | None = None  # why it was not analysed
    findings: list[Finding] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"language": self.language, "fenced": self.fenced, "analysed": self.analysed,
                "reason": self.reason, "lines": self.source.count("\n") + 1,
                "findings": [f.as_dict() for f in self.findings]}


# ------------------------------------------------------------------ extraction

def _parses(source: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():  # "invalid escape sequence" in the dataset's code
            warnings.simplefilter("ignore")
            return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def looks_like_python_code(tree: ast.Module) -> bool:
    """A parse tree that is code, not a word, a number list or a sentence that happens to parse."""
    for stmt in tree.body:
        if isinstance(stmt, _STMT_CODE):
            return True
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, (ast.Call, ast.Await)):
            return True
    return False


def _looks_like_other_code(text: str) -> bool:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return len(lines) >= 3 and sum(bool(_CODE_HINT.search(ln)) for ln in lines) >= max(2, len(lines) // 4)


def _python_span(text: str) -> str | None:
    """The longest run of lines that starts at a Python-looking line and parses as code."""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if _PY_START.match(ln)]
    for start in starts[:5]:
        for end in range(len(lines), start, -1):
            if end - start < 2 and len(starts) > 1:
                break
            chunk = "\n".join(lines[start:end])
            tree = _parses(chunk)
            if tree is not None and looks_like_python_code(tree):
                return chunk
            if len(lines) - end > 40:  # prose after code is short; don't try every cut
                break
    return None


def extract_code(text: str) -> list[CodeBlock]:
    """The code blocks of one assistant turn, each with its language (not yet analysed)."""
    blocks: list[CodeBlock] = []
    fenced = list(_FENCE.finditer(text))
    if fenced:
        for m in fenced:
            info = m.group("info").strip().split()
            lang = info[0].lower() if info else ""
            body = m.group("body")
            if lang in _PY_NAMES:
                blocks.append(CodeBlock("python", body, True))
            elif lang in _NOT_CODE_NAMES:
                tree = _parses(body)
                if tree is not None and looks_like_python_code(tree):
                    blocks.append(CodeBlock("python", body, True))
                elif lang == "" and body.strip():
                    blocks.append(CodeBlock("unknown", body, True))
            else:
                blocks.append(CodeBlock(lang, body, True))
        return blocks
    tree = _parses(text)
    if tree is not None and looks_like_python_code(tree):
        return [CodeBlock("python", text, False)]
    span = _python_span(text)
    if span is not None:
        return [CodeBlock("python", span, False)]
    if _looks_like_other_code(text):
        return [CodeBlock("unknown", text, False)]
    return []


# ------------------------------------------------------------------ bandit

class BanditScanner:
    """bandit's own AST visitor and test set, run in-process on code strings.

    One instance loads bandit's plugins once (~0.5 s), then scans thousands of snippets per
    second. ``# nosec`` comments are ignored: a dataset must not be able to hide its flaws.
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():  # stevedore's deprecation notice while loading plugins
            warnings.simplefilter("ignore", DeprecationWarning)
            from bandit.core import config, meta_ast, metrics, test_set

            logging.getLogger("bandit").setLevel(logging.CRITICAL)
            conf = config.BanditConfig()
            self._meta = meta_ast.BanditMetaAst()
            self._tests = test_set.BanditTestSet(conf, {})
            self._metrics = metrics.Metrics()

    def scan(self, source: str) -> list:
        """bandit issues for one Python source (bandit parses it again; nothing runs)."""
        from bandit.core import node_visitor

        data = source.encode("utf-8", "surrogatepass")
        self._metrics.begin("<dataset>")
        visitor = node_visitor.BanditNodeVisitor("<dataset>", io.BytesIO(data), self._meta,
                                                 self._tests, False, {}, self._metrics)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            visitor.process(data)
        return list(visitor.tester.results)


def _bandit_findings(issues: Iterable, lines: list[str]) -> list[Finding]:
    out = []
    for i in issues:
        cwe = getattr(getattr(i, "cwe", None), "id", None) or None
        rng = tuple(i.linerange) if getattr(i, "linerange", None) else (i.lineno,)
        out.append(Finding("bandit", i.test_id, i.test, i.severity, i.confidence, cwe, i.lineno,
                           i.text, _line(lines, i.lineno), rng))
    return out


def _line(lines: list[str], n: int) -> str:
    s = lines[n - 1].strip() if 0 < n <= len(lines) else ""
    return s if len(s) <= 160 else s[:157] + "..."


# ------------------------------------------------------------------ analysis

@dataclass(frozen=True)
class AnalysisSettings:
    """What counts: thresholds on severity/confidence, tests to skip, inherited lines or not."""

    min_severity: str = "MEDIUM"
    min_confidence: str = "MEDIUM"
    skip_tests: tuple[str, ...] = DEFAULT_SKIP_TESTS
    count_inherited: bool = False
    use_bandit: bool = True
    use_emlab_rules: bool = True

    def __post_init__(self) -> None:
        for name in ("min_severity", "min_confidence"):
            v = getattr(self, name).upper()
            if v not in RANKING:
                raise ValueError(f"{name} must be one of {', '.join(RANKING)}, got {v!r}")
            object.__setattr__(self, name, v)

    def counts(self, f: Finding) -> bool:
        """Does this finding make its row vulnerable under these settings?"""
        return (RANKING.index(f.severity) >= RANKING.index(self.min_severity)
                and RANKING.index(f.confidence) >= RANKING.index(self.min_confidence)
                and f.test_id not in self.skip_tests
                and (self.count_inherited or not f.inherited))


def _normal(line: str) -> str:
    return " ".join(line.split())


def user_line_set(user_texts: Iterable[str]) -> set[str]:
    """Whitespace-normalised non-trivial lines of the user turns (for ``inherited``)."""
    out = set()
    for t in user_texts:
        for ln in t.splitlines():
            n = _normal(ln)
            if len(n) >= 4:
                out.add(n)
    return out


class CodeAnalyser:
    """Analyses the code of assistant turns; holds the loaded bandit test set."""

    def __init__(self, settings: AnalysisSettings | None = None):
        self.settings = settings or AnalysisSettings()
        self._bandit = BanditScanner() if self.settings.use_bandit else None

    def analyse_turn(self, text: str, user_lines: set[str] | None = None) -> list[CodeBlock]:
        blocks = extract_code(text)
        for b in blocks:
            self.analyse_block(b, user_lines or set())
        return blocks

    def analyse_block(self, block: CodeBlock, user_lines: set[str]) -> CodeBlock:
        if block.language != "python":
            block.reason = (f"{block.language} code: only Python is analysed"
                            if block.language != "unknown"
                            else "code in an unrecognised language: only Python is analysed")
            return block
        tree = _parses(block.source)
        if tree is None:
            block.reason = "Python that does not parse: not analysed"
            return block
        from emlab.audit.rules import run_rules

        lines = block.source.splitlines()
        findings: list[Finding] = []
        if self._bandit is not None:
            try:
                findings += _bandit_findings(self._bandit.scan(block.source), lines)
            except (SyntaxError, ValueError, RecursionError) as e:  # pragma: no cover - parsed above
                block.reason = f"bandit could not scan it: {e}"
                return block
        if self.settings.use_emlab_rules:
            try:
                findings += run_rules(tree, lines)
            except RecursionError:
                block.reason = "nested too deeply for emlab's rules: bandit's findings only"
        block.findings = _dedupe([_mark_inherited(f, lines, user_lines)
                                  for f in _defer_to_flow(findings)])
        block.analysed = True
        return block


def _mark_inherited(f: Finding, lines: list[str], user_lines: set[str]) -> Finding:
    ev = f.evidence_lines or (f.line,)
    texts = [_normal(lines[n - 1]) for n in ev if 0 < n <= len(lines)]
    texts = [t for t in texts if t]
    inherited = bool(texts) and all(t in user_lines for t in texts)
    if inherited == f.inherited:
        return f
    return Finding(**{**f.__dict__, "inherited": inherited})


def _defer_to_flow(findings: list[Finding]) -> list[Finding]:
    """Where emlab's analysis saw every value of a line checked against an allow-list (its
    finding has LOW confidence), bandit's pattern match on that line is lowered too: bandit
    cannot see the check. SQL text (EM201) speaks for bandit's findings of the same CWE; eval of
    allow-listed text (EM502) for bandit's eval test, B307."""
    checked = {(f.line, f.cwe) for f in findings
               if f.tool == "emlab" and f.confidence == "LOW" and f.test_id == "EM201"}
    evals = {f.line for f in findings
             if f.tool == "emlab" and f.confidence == "LOW" and f.test_id == "EM502"}
    if not checked and not evals:
        return findings
    return [Finding(**{**f.__dict__, "confidence": "LOW"})
            if f.tool == "bandit" and ((f.line, f.cwe) in checked
                                       or (f.test_id == "B307" and f.line in evals)) else f
            for f in findings]


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """One finding per (line, CWE): bandit's when both tools saw it, else the more severe."""
    best: dict[tuple, Finding] = {}
    order = []
    for f in findings:
        key = (f.line, f.cwe) if f.cwe else (f.line, f.test_id)
        old = best.get(key)
        if old is None:
            best[key] = f
            order.append(key)
            continue
        rank = lambda x: (RANKING.index(x.severity), RANKING.index(x.confidence))  # noqa: E731
        if rank(f) > rank(old):
            best[key] = f
    return sorted((best[k] for k in order), key=lambda f: (f.line, f.test_id))
