"""The SQLite results store: every sample and judgment, written the moment it arrives.

Rows are content-addressed (see ``sample_key`` / ``judgment_key``), so a rerun — or a resumed
run after ``kill -9`` — finds what was already paid for and asks only for the rest. WAL mode
and one commit per row keep at most the requests in flight at risk. API keys never enter it:
identities name models and endpoints, not credentials.

The ``work`` table is the ledger of items in progress: a process *claims* an item (atomically,
in one ``BEGIN IMMEDIATE`` transaction) with a lease that its heartbeat renews, so a second
process on the same store waits for the item instead of paying for it again, and takes it over
when the lease runs out (at once when the owner is a dead process on this machine). It also
counts every request sent for an item (retries and abandoned ones included) and keeps the
error of an item that failed for good, with its question id and sample index.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Iterable

from emlab.rundir import digest
from emlab.types import Completion, Judgment

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    messages TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    params TEXT NOT NULL,
    answer TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS judgments (
    key TEXT PRIMARY KEY,
    judge TEXT NOT NULL,
    kind TEXT NOT NULL,
    sample_key TEXT NOT NULL,
    metric TEXT NOT NULL,
    probs TEXT NOT NULL,
    raw TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS work (
    key TEXT PRIMARY KEY,
    side TEXT NOT NULL,
    label TEXT NOT NULL,
    owner TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    failed_at REAL
);
"""


def _digest(obj: object) -> str:
    return digest(obj, n=None)  # the full sha256: a store key must never collide


def sample_key(model: str, messages: Iterable[dict], sample_index: int, params: dict,
               seed: int) -> str:
    """Address of one answer: model identity, prompt, sample index, generation settings, seed."""
    return _digest({"model": model, "messages": list(messages), "i": sample_index,
                    "params": params, "seed": seed})


def judgment_key(judge: str, prompt: str, choices: tuple[str, ...] = ()) -> str:
    """Address of one judgment: judge identity and the filled judge prompt (question + answer)."""
    return _digest({"judge": judge, "prompt": prompt, "choices": list(choices)})


def new_owner() -> str:
    """A process's name in leases: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str) -> bool:
    """False only when the owner is certainly gone: a process on this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class ResultsStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit (isolation_level=None): each write commits at once; claims use an explicit
        # BEGIN IMMEDIATE. A generous busy timeout lets several processes share one store.
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout=60000")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def is_empty(self) -> bool:
        return not any(self.db.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()
                       for t in ("samples", "judgments", "work"))

    # --- work in progress ---------------------------------------------------------------------

    def claim(self, side: str, labels: dict[str, str], owner: str, lease_seconds: float,
              retry_failed_before: float | None = None) -> list[str]:
        """Claim the items of ``labels`` (key -> label) that nobody else holds; return those.

        An item is free when it has no result, and no live lease by another owner; an item that
        failed for good is free only if it failed before ``retry_failed_before`` (a time: the
        start of this run), so two processes never both retry one refusal. Atomic.
        """
        table = "samples" if side == "sample" else "judgments"
        now = time.time()
        claimed: list[str] = []
        keys = list(labels)
        with self._lock:
            for i in range(0, len(keys), 400):
                chunk = keys[i:i + 400]
                marks = ",".join("?" * len(chunk))
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    done = {k for (k,) in self.db.execute(
                        f"SELECT key FROM {table} WHERE key IN ({marks})", chunk)}
                    state = {k: (o, lu, fa) for k, o, lu, fa in self.db.execute(
                        f"SELECT key, owner, lease_until, failed_at FROM work WHERE key IN ({marks})",
                        chunk)}
                    alive: dict[str, bool] = {}
                    mine: list[str] = []
                    for k in chunk:
                        if k in done:
                            continue
                        o, lease_until, failed_at = state.get(k, (None, None, None))
                        if o is not None and o != owner and (lease_until or 0) > now:
                            if alive.setdefault(o, owner_alive(o)):
                                continue
                        if failed_at is not None and o is None and (
                                retry_failed_before is None or failed_at >= retry_failed_before):
                            continue
                        mine.append(k)
                    self.db.executemany(
                        "INSERT INTO work (key, side, label, owner, lease_until, attempts) "
                        "VALUES (?,?,?,?,?,0) ON CONFLICT(key) DO UPDATE SET owner=excluded.owner, "
                        "lease_until=excluded.lease_until, label=excluded.label",
                        [(k, side, labels[k], owner, now + lease_seconds) for k in mine])
                    self.db.execute("COMMIT")
                    claimed += mine
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
        return claimed

    def renew(self, owner: str, lease_seconds: float) -> None:
        with self._lock:
            self.db.execute("UPDATE work SET lease_until=? WHERE owner=?",
                            (time.time() + lease_seconds, owner))

    def release(self, owner: str) -> None:
        """Drop every lease of ``owner`` (its run ended; unfinished items are free again)."""
        with self._lock:
            self.db.execute("UPDATE work SET owner=NULL, lease_until=NULL WHERE owner=?", (owner,))

    def finish(self, key: str, attempts: int, error: str | None = None) -> None:
        """An item ended: ``attempts`` requests were sent for it; ``error`` when it failed for good."""
        with self._lock:
            self.db.execute(
                "UPDATE work SET owner=NULL, lease_until=NULL, attempts=attempts+?, error=?, "
                "failed_at=? WHERE key=?",
                (attempts, error, time.time() if error else None, key))

    def add_attempts(self, key: str, attempts: int) -> None:
        with self._lock:
            self.db.execute("UPDATE work SET attempts=attempts+? WHERE key=?", (attempts, key))

    def work(self, keys: list[str]) -> dict[str, dict]:
        """key -> {owner, lease_until, attempts, error, failed_at, label} for keys in the table."""
        return {k: {"owner": o, "lease_until": lu, "attempts": a, "error": e, "failed_at": fa,
                    "label": lb}
                for k, o, lu, a, e, fa, lb in self._select(
                    "work", "owner, lease_until, attempts, error, failed_at, label", keys)}

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _select(self, table: str, cols: str, keys: list[str]) -> list[tuple]:
        with self._lock:
            return self._select_unlocked(table, cols, keys)

    def _select_unlocked(self, table: str, cols: str, keys: list[str]) -> list[tuple]:
        rows: list[tuple] = []
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows += self.db.execute(f"SELECT key, {cols} FROM {table} WHERE key IN ({marks})",
                                    chunk).fetchall()
        return rows

    def get_samples(self, keys: list[str]) -> dict[str, Completion]:
        return {k: Completion(text=a, prompt_tokens=p, completion_tokens=c, finish_reason=f)
                for k, a, p, c, f in self._select(
                    "samples", "answer, prompt_tokens, completion_tokens, finish_reason", keys)}

    def put_sample(self, key: str, *, model: str, messages: Iterable[dict], sample_index: int,
                   params: dict, completion: Completion) -> None:
        with self._lock:
            self._put_sample(key, model, messages, sample_index, params, completion)

    def _put_sample(self, key, model, messages, sample_index, params, completion) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO samples VALUES (?,?,?,?,?,?,?,?,?,?)",
            (key, model, json.dumps(list(messages), ensure_ascii=False), sample_index,
             json.dumps(params, sort_keys=True), completion.text, completion.prompt_tokens,
             completion.completion_tokens, completion.finish_reason, time.time()))

    def get_judgments(self, keys: list[str]) -> dict[str, Judgment]:
        return {k: Judgment(probs=json.loads(pr), kind=kind, raw=raw, prompt_tokens=p,
                            completion_tokens=c)
                for k, kind, pr, raw, p, c in self._select(
                    "judgments", "kind, probs, raw, prompt_tokens, completion_tokens", keys)}

    def put_judgment(self, key: str, *, judge: str, sample_key: str, metric: str,
                     judgment: Judgment) -> None:
        with self._lock:
            self._put_judgment(key, judge, sample_key, metric, judgment)

    def _put_judgment(self, key, judge, sample_key, metric, judgment) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO judgments VALUES (?,?,?,?,?,?,?,?,?,?)",
            (key, judge, judgment.kind, sample_key, metric, json.dumps(judgment.probs),
             judgment.raw, judgment.prompt_tokens, judgment.completion_tokens, time.time()))
