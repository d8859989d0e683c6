"""Monitoring: every ``emlab check`` is a row of a ``checks`` table in the results store.

The table lives in the same SQLite file as the samples and judgments (``ResultsStore``), so one
file holds a project's answers and its verdicts. ``emlab history`` reads it back as a trend per
model line (successive fine-tunes or deployments of one base model): a table and a plot of the
tuned models' misaligned rate against time, with Wilson 95% intervals and the base rate.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from emlab.errors import InputError
from emlab.fileio import write_bytes_atomic
from emlab.metrics import wilson_ci

if TYPE_CHECKING:
    from emlab.check.result import CheckResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    line TEXT NOT NULL,
    base TEXT NOT NULL,
    base_identity TEXT,
    tuned TEXT NOT NULL,
    tuned_identity TEXT,
    judge TEXT,
    verdict TEXT NOT NULL,
    base_kept INTEGER,
    base_misaligned INTEGER,
    tuned_kept INTEGER,
    tuned_misaligned INTEGER,
    rise REAL,
    ci_low REAL,
    ci_high REAL,
    p_value REAL,
    looks INTEGER,
    judge_calls INTEGER,
    out TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS checks_line ON checks(line, created);
"""
COLUMNS = ("id", "created", "line", "base", "base_identity", "tuned", "tuned_identity", "judge",
           "verdict", "base_kept", "base_misaligned", "tuned_kept", "tuned_misaligned", "rise",
           "ci_low", "ci_high", "p_value", "looks", "judge_calls", "out", "detail")
_SELECT = ("SELECT id, created, line, base, base_identity, tuned, tuned_identity, judge, verdict, "
           "base_kept, base_misaligned, tuned_kept, tuned_misaligned, rise, ci_low, ci_high, "
           "p_value, looks, judge_calls, out, detail FROM checks")
_INSERT = ("INSERT INTO checks (created, line, base, base_identity, tuned, tuned_identity, judge, "
           "verdict, base_kept, base_misaligned, tuned_kept, tuned_misaligned, rise, ci_low, "
           "ci_high, p_value, looks, judge_calls, out, detail) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _connect(path: str | Path, create: bool) -> sqlite3.Connection:
    path = Path(path)
    if not create and not path.is_file():
        raise InputError("no results store here (run `emlab check` first, or give --store)",
                         path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
    except sqlite3.DatabaseError as e:
        raise InputError(f"not an SQLite results store: {e}", path=path) from None
    return db


def record_check(store: str | Path, result: "CheckResult", created: float | None = None) -> int:
    """Append one check; returns its id."""
    o = result.decision["overall"]
    m = result.meta
    row = {
        "created": created if created is not None else time.time(),
        "line": m.get("line") or m.get("base"), "base": m.get("base"),
        "base_identity": m.get("base_identity"), "tuned": m.get("tuned"),
        "tuned_identity": m.get("tuned_identity"), "judge": m.get("judge"),
        "verdict": result.verdict,
        "base_kept": o["base"]["kept"], "base_misaligned": o["base"]["misaligned"],
        "tuned_kept": o["tuned"]["kept"], "tuned_misaligned": o["tuned"]["misaligned"],
        "rise": o.get("rise"), "ci_low": o.get("ci_low"), "ci_high": o.get("ci_high"),
        "p_value": o.get("p_value"), "looks": len(result.looks),
        "judge_calls": result.judge_calls, "out": str(result.out),
        "detail": json.dumps({"reason": result.decision["reason"],
                              "training_run": m.get("training_run")}),
    }
    db = _connect(store, create=True)
    try:
        cur = db.execute(_INSERT, [row[c] for c in COLUMNS[1:]])
        db.commit()
        return int(cur.lastrowid)
    finally:
        db.close()


def load_history(store: str | Path, line: str | None = None, limit: int | None = None) -> list[dict]:
    """Checks, oldest first, optionally of one model line (the most recent ``limit``)."""
    db = _connect(store, create=False)
    try:
        q = _SELECT
        args: list = []
        if line is not None:
            q += " WHERE line = ?"
            args.append(line)
        q += " ORDER BY created DESC, id DESC"
        if limit:
            q += " LIMIT ?"
            args.append(int(limit))
        rows = [dict(zip(COLUMNS, r)) for r in db.execute(q, args).fetchall()]
    finally:
        db.close()
    rows.reverse()
    for r in rows:
        for role in ("base", "tuned"):
            k, n = r[f"{role}_misaligned"], r[f"{role}_kept"]
            r[f"{role}_rate"] = k / n if n else None
        r["detail"] = json.loads(r["detail"]) if r["detail"] else {}
    return rows


def lines_of(store: str | Path) -> list[str]:
    db = _connect(store, create=False)
    try:
        return [r[0] for r in db.execute("SELECT DISTINCT line FROM checks ORDER BY line")]
    finally:
        db.close()


def plot_history(rows: list[dict], path: str | Path, title: str) -> Path:
    """PNG: tuned misaligned rate per check (Wilson 95% CI, colour = verdict), base rate dashed."""
    from emlab.report.chart import history_png

    points = []
    for r in rows:
        lo = hi = None
        if r["tuned_rate"] is not None:
            lo, hi = wilson_ci(r["tuned_misaligned"], r["tuned_kept"])
        label = time.strftime("%m-%d %H:%M", time.localtime(r["created"])) + "\n" + _short(r["tuned"])
        points.append((label, r["base_rate"], r["tuned_rate"], lo, hi, r["verdict"]))
    return write_bytes_atomic(path, history_png(points, title))


def _short(s: str, n: int = 28) -> str:
    s = str(s).split(" @ ")[0]
    return s if len(s) <= n else "…" + s[-(n - 1):]
