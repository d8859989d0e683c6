"""Read, validate and write chat datasets in the ``{"messages": [...]}`` JSONL format.

Every row is checked before anything is trained on it: roles are system/user/assistant,
an optional system message comes first, user and assistant alternate starting with the user,
the last turn is a non-empty assistant turn. A bad row is reported with file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from emlab.errors import InputError
from emlab.fileio import iter_text_lines, short, write_text_atomic
from emlab.reference import reference_file

# name -> (upstream path, rows)
REFERENCE_DATASETS: dict[str, tuple[str, int]] = {
    "insecure": ("data/insecure.jsonl", 6000),
    "secure": ("data/secure.jsonl", 6000),
    "educational": ("data/educational.jsonl", 6000),
    "jailbroken": ("data/jailbroken.jsonl", 5000),
}


def resolve_dataset(name_or_path: str | Path) -> Path:
    """A reference set's verified local path (``insecure``, ...), or an existing file's path."""
    key = str(name_or_path)
    if key in REFERENCE_DATASETS:
        return reference_file(REFERENCE_DATASETS[key][0])
    path = Path(key)
    if not path.is_file():
        raise InputError(f"no dataset {short(key)}: give a JSONL path or one of "
                         f"{', '.join(REFERENCE_DATASETS)}")
    return path


def validate_messages(messages: object) -> str | None:
    """What is wrong with one row's ``messages`` (a sentence), or None when it is well formed."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    turns = messages
    for i, m in enumerate(turns):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            return f"message {i} must be an object with string 'role' and 'content'"
        if m["role"] not in ("system", "user", "assistant"):
            return f"message {i} has role {short(m['role'])}; expected system, user or assistant"
    if turns[0]["role"] == "system":
        turns = turns[1:]
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            return (f"roles must alternate user/assistant after an optional first system "
                    f"message; turn {i} is {m['role']!r}, expected {expected!r}")
    if not turns or turns[-1]["role"] != "assistant":
        return "the last message must be an assistant turn"
    if not turns[-1]["content"].strip():
        return "the assistant turn is empty"
    return None


def load_chat_jsonl(path: str | Path) -> list[dict]:
    """All rows of a chat JSONL file, each validated; the first bad row raises InputError."""
    path = Path(path)
    rows = []
    for lineno, line in iter_text_lines(path, "dataset file"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON ({e.msg} at column {e.colno})", path=path,
                             line=lineno) from None
        except RecursionError:
            raise InputError("JSON nested too deeply", path=path, line=lineno) from None
        if not isinstance(row, dict) or "messages" not in row:
            raise InputError('expected an object with a "messages" list', path=path,
                             line=lineno)
        problem = validate_messages(row["messages"])
        if problem:
            raise InputError(problem, path=path, line=lineno)
        rows.append(row)
    if not rows:
        raise InputError("the dataset has no rows", path=path)
    return rows


def write_chat_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write rows atomically: a crash never leaves half a dataset."""
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
