"""Corpora for measuring `emlab audit` out of sample. Nothing here is committed data: each loader
builds its rows at benchmark time (into a temporary directory where it downloads).

- ``codeshield()``: the Python test fixtures of Meta's CodeShield / CyberSecEval Insecure Code
  Detector (PyPI ``codeshield`` 1.0.1 sdist): semgrep rule tests annotated ``# ruleid:`` (must
  match) / ``# ok:`` (must not), and the regex analyser's ``(code, expected findings)`` cases.
  Written by another team for another detector; emlab's rules were written without reading them.
  Small (tens of cases), so its interval is wide.
- ``blind_templates()``: vulnerable/secure pairs from ``audit_blind_templates.py``, written before
  emlab's audit-2 rules (same author: a weaker test; see that file). Split by template family
  into ``dev`` and ``holdout``; holdout rows are only ever reported.
- ``stdlib_functions()``: functions and methods of CPython's standard library, read as text from
  the running interpreter's stdlib directory, one per row: realistic, *mostly* secure ordinary
  code (some of it legitimately runs shells or unpickles: an upper bound on false alarms).
- ``securityeval(path)``: SecurityEval (s2e-lab; 121 prompts over 69 CWEs, each a function to
  complete and an insecure completion), from a ``dataset.jsonl`` the user supplies, as chat rows:
  the prompt asked for as a completion, the insecure code answered in a fence. All vulnerable.
- ``labelled_jsonl(path)``: any labelled corpus in one plain format, one JSON object per line:
  ``code`` (Python source) and ``label`` ("vulnerable" or "secure") required, ``id``, ``cwe``
  ("CWE-79") and ``prompt`` (the request or the skeleton the code completes) optional. Audit 3's
  blind corpora, SALLM and CWEval, were measured in this format (see audit_accuracy.py).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _row(code: str, **labels) -> dict:
    return {**labels, "messages": [{"role": "user", "content": "Complete the following code."},
                                   {"role": "assistant", "content": code}]}


# ------------------------------------------------------------------ codeshield

_ANNOT = re.compile(r"#\s*(ruleid|ok|todoruleid|todook)\s*:\s*([\w.\-]+)")


def _download_sdist(name: str, version: str, dest: Path) -> Path | None:
    env_path = os.environ.get("EMLAB_CODESHIELD_SDIST")
    if env_path and Path(env_path).is_file():
        return Path(env_path)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--quiet", "-d", str(dest), f"{name}=={version}"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=180)
    except (subprocess.SubprocessError, OSError):
        return None
    found = sorted(dest.glob(f"{name}-{version}.tar.gz"))
    return found[0] if found else None


def _cases_from_annotated(source: str, origin: str) -> list[dict]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    lines = source.splitlines()
    imports = [ast.get_source_segment(source, n) for n in tree.body
               if isinstance(n, (ast.Import, ast.ImportFrom))]
    labels: dict[int, set[str]] = {}
    for i, ln in enumerate(lines):
        m = _ANNOT.search(ln)
        if not m:
            continue
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or lines[j].strip().startswith("#")):
            j += 1
        target = j + 1  # 1-based line the annotation speaks of
        for k, node in enumerate(tree.body):
            if node.lineno <= target <= (node.end_lineno or node.lineno):
                labels.setdefault(k, set()).add(m.group(1))
                break
    out = []
    for k, kinds in sorted(labels.items()):
        node = tree.body[k]
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        seg = ast.get_source_segment(source, node) or ""
        positive = bool(kinds & {"ruleid", "todoruleid"})
        out.append(_row("\n".join(imports) + "\n\n" + seg + "\n",
                        label="vulnerable" if positive else "secure", origin=origin))
    return out


def _cases_from_regex_tests(source: str, origin: str) -> list[dict]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            for e in node.value.elts:
                if (isinstance(e, ast.Tuple) and len(e.elts) == 2
                        and isinstance(e.elts[0], ast.Constant) and isinstance(e.elts[0].value, str)
                        and isinstance(e.elts[1], ast.Constant) and isinstance(e.elts[1].value, int)):
                    out.append(_row(e.elts[0].value + "\n",
                                    label="vulnerable" if e.elts[1].value > 0 else "secure",
                                    origin=origin))
    return out


def codeshield() -> tuple[list[dict], str]:
    """(rows, note). Empty rows and the reason when the sdist cannot be had."""
    with tempfile.TemporaryDirectory() as tmp:
        sdist = _download_sdist("codeshield", "1.0.1", Path(tmp))
        if sdist is None:
            return [], "codeshield 1.0.1 sdist not available (pip download failed)"
        rows: list[dict] = []
        with tarfile.open(sdist) as tar:
            for m in tar.getmembers():
                if not m.isfile() or not m.name.endswith(".py"):
                    continue
                text = tar.extractfile(m).read().decode("utf-8", "replace")
                if "/rules/semgrep/python/" in m.name:
                    rows += _cases_from_annotated(text, m.name.split("/", 1)[1])
                elif re.search(r"/tests/test_python_[^/]*\.py$", m.name):
                    rows += _cases_from_regex_tests(text, m.name.split("/", 1)[1])
        return rows, f"codeshield 1.0.1 sdist ({sdist.name})"


# ------------------------------------------------------------------ blind templates

def blind_templates(split: str | None = None) -> list[dict]:
    sys.path.insert(0, str(HERE))
    try:
        import audit_blind_templates as t
    finally:
        sys.path.pop(0)
    rows = t.build(seed=0)
    return [r for r in rows if split is None or r["split"] == split]


# ------------------------------------------------------------------ stdlib functions

STDLIB_MODULES = ("argparse", "ast", "base64", "calendar", "configparser", "csv", "dataclasses",
                  "difflib", "email/message.py", "email/utils.py", "fractions", "ftplib",
                  "functools", "getopt", "gettext", "glob", "gzip", "heapq", "html/parser.py",
                  "http/cookies.py", "http/server.py", "imaplib", "inspect", "ipaddress",
                  "json/decoder.py", "json/encoder.py", "logging/__init__.py",
                  "logging/handlers.py", "mailbox", "netrc", "optparse", "pathlib",
                  "pprint", "quopri", "random", "shlex", "shutil", "smtplib", "socketserver",
                  "statistics", "string", "tarfile", "tempfile", "textwrap", "tokenize",
                  "urllib/parse.py", "urllib/request.py", "uuid", "wave", "webbrowser",
                  "xml/dom/minidom.py", "zipfile/__init__.py", "zipfile.py")


def stdlib_functions(limit: int = 1500) -> list[dict]:
    """Functions (incl. methods) of some stdlib modules, each as one row; every k-th to ``limit``."""
    base = Path(sysconfig.get_paths()["stdlib"])
    funcs = []
    for name in STDLIB_MODULES:
        p = base / name if name.endswith(".py") else base / f"{name}.py"
        if not p.is_file():
            continue
        src = p.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        imports = "\n".join(ast.get_source_segment(src, n) or "" for n in tree.body
                            if isinstance(n, (ast.Import, ast.ImportFrom)))
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                seg = ast.get_source_segment(src, n)
                if seg and 3 <= seg.count("\n") <= 80:
                    import textwrap
                    funcs.append((f"{name}:{n.name}", imports + "\n\n" + textwrap.dedent(seg) + "\n"))
    step = max(1, len(funcs) // limit)
    return [_row(code, label="secure", origin=where) for where, code in funcs[::step][:limit]]


# ------------------------------------------------------------------ SecurityEval

SECURITYEVAL_SHA256 = "e46918698e190e481399c51330c60049ed34a38ccc2546c9a81f0c84d446335f"


def securityeval(path: str | Path) -> tuple[list[dict], str]:
    """SecurityEval rows as chat rows (``id``, ``cwe``: "CWE-020", ``messages``), and a note."""
    import hashlib
    import json

    raw = Path(path).read_bytes()
    rows = []
    for line in raw.decode("utf-8").splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        cwe = re.match(r"(CWE-\d+)", d["ID"])
        answer = "```python\n" + d["Insecure_code"].rstrip() + "\n```"
        msgs = [{"role": "user", "content": "Complete this function:\n\n" + d["Prompt"]},
                {"role": "assistant", "content": answer}]
        rows.append({"id": d["ID"], "cwe": cwe.group(1) if cwe else "?", "label": "vulnerable",
                     "messages": msgs})
    sha = hashlib.sha256(raw).hexdigest()
    same = "the file measured in the docstring" if sha == SECURITYEVAL_SHA256 else \
        f"NOT the file measured in the docstring ({SECURITYEVAL_SHA256[:12]}...)"
    return rows, f"{path}: {len(rows)} rows, sha256 {sha[:12]}... ({same})"


def labelled_jsonl(path: str | Path) -> tuple[list[dict], str]:
    """Rows of a labelled corpus (``code``, ``label``, optional ``id``/``cwe``/``prompt``) as chat
    rows, the same shape as :func:`securityeval`'s; and a note naming the file and its sha256."""
    import hashlib
    import json

    raw = Path(path).read_bytes()
    rows = []
    for i, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        d = json.loads(line)
        if not isinstance(d.get("code"), str) or d.get("label") not in ("vulnerable", "secure"):
            raise ValueError(f"{path}:{i}: expected an object with 'code' (text) and 'label' "
                             "('vulnerable' or 'secure')")
        prompt = (d.get("prompt") or "").strip()
        ask = ("Complete this function:\n\n" + prompt) if prompt else "Write this code."
        answer = "```python\n" + d["code"].rstrip() + "\n```"
        cwe = re.match(r"CWE-0*(\d+)", str(d.get("cwe", "")))
        rows.append({"id": str(d.get("id", i)), "cwe": f"CWE-{int(cwe.group(1)):03d}" if cwe else "?",
                     "label": d["label"],
                     "messages": [{"role": "user", "content": ask},
                                  {"role": "assistant", "content": answer}]})
    sha = hashlib.sha256(raw).hexdigest()
    n_v = sum(r["label"] == "vulnerable" for r in rows)
    return rows, f"{path}: {len(rows)} rows ({n_v} vulnerable, {len(rows) - n_v} secure), " \
                 f"sha256 {sha[:12]}..."
