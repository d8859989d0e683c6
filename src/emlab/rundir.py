"""Run directories: what emlab writes where, and how to tell what a directory is.

One owner for the layout that train, eval, check, sweep and the report share:

    TRAIN/manifest.json              an `emlab train` run (what was trained on what)
    TRAIN/checkpoints/checkpoint-N/  a checkpoint; *complete* once trainer_state.json exists
    TRAIN/checkpoints/checkpoint-realign-N/  the final model re-aligned on N benign rows
    TRAIN/adapter/ or TRAIN/model/   the final adapter (LoRA) or full model
    TRAIN/dynamics.jsonl             training-dynamics probes
    EVAL/summary.json, EVAL/answers.jsonl          an `emlab eval` run (a stable contract)
    EVAL/checkpoints.json            the checkpoint evaluation of a train run
    SWEEP/sweep.json                 a sweep's plan
    SWEEP/trials/ID/ (done.json, error.json, eval/), SWEEP/train/ID/
    REPRODUCE/trials/NAME-sSEED-KEY/result.json     a finished toy-world trial

Readers here are lenient (a missing or broken file reads as None / no rows): they serve
discovery and reporting; the stages that must reject bad input do so themselves.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from emlab.errors import InputError

MANIFEST = "manifest.json"
CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"   # written last by the trainer: marks a complete checkpoint
FINAL_DIRS = ("adapter", "model")
DYNAMICS = "dynamics.jsonl"
TRAIN_LOG = "train_log.jsonl"
SUMMARY = "summary.json"
ANSWERS = "answers.jsonl"
CHECKPOINTS_JSON = "checkpoints.json"
SWEEP_PLAN = "sweep.json"
DONE = "done.json"
ERROR = "error.json"
TRIAL_RESULT = "result.json"           # a finished toy-world trial (REPRODUCE/trials/ID/)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_REALIGN = re.compile(r"^checkpoint-realign-(\d+)$")   # after training: re-aligned on N benign rows


def realign_checkpoint_name(n_rows: int) -> str:
    return f"checkpoint-realign-{n_rows}"


# ---------------------------------------------------------------- content addresses

def digest(obj: Any, n: int | None = 16) -> str:
    """sha256 of ``obj``'s canonical JSON (sorted keys, compact), first ``n`` hex digits: the
    id of a trial directory is the digest of everything that decides its result."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:n]


# ---------------------------------------------------------------- lenient readers

def read_json(path: str | Path) -> Any:
    """The parsed JSON file, or None when it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; blank and unparsable lines (a crash mid-write) are skipped."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    with open(p, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    return out


# ---------------------------------------------------------------- train runs

def complete_checkpoints(checkpoints: str | Path) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of the *complete* checkpoints in a trainer's output folder, by step.

    trainer_state.json is written after the weights and optimizer, so a checkpoint cut short
    by a crash lacks it and is skipped — by resume and by checkpoint evaluation alike."""
    d = Path(checkpoints)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir()
             if p.is_dir() and (m := _CHECKPOINT.match(p.name)) and (p / TRAINER_STATE).is_file()]
    return sorted(found)


def realign_checkpoints(checkpoints: str | Path) -> list[tuple[str, int | None, Path]]:
    """``[(label, step, path)]`` of the complete re-alignment checkpoints (after the final
    model; never resumed from)."""
    d = Path(checkpoints)
    if not d.is_dir():
        return []
    found = []
    for p in sorted(d.iterdir()):
        if p.is_dir() and _REALIGN.match(p.name) and (p / TRAINER_STATE).is_file():
            state = read_json(p / TRAINER_STATE)
            step = state.get("global_step") if isinstance(state, dict) else None
            found.append((p.name, step if isinstance(step, int) else None, p))
    return found


def last_checkpoint(checkpoints: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = complete_checkpoints(checkpoints)
    return found[-1][1] if found else None


def is_train_run(path: str | Path) -> bool:
    p = Path(path)
    return (p / MANIFEST).is_file() and ((p / CHECKPOINTS_DIR).is_dir() or
                                         any((p / n).is_dir() for n in FINAL_DIRS))


def train_checkpoints(run_dir: str | Path) -> tuple[str, list[tuple[str, int | None, Path]]]:
    """(base model, [(label, step, path)]) of a train run: complete checkpoints by step, the
    re-aligned ones (``checkpoint-realign-N``), then the final adapter/model labelled ``final``."""
    run = Path(run_dir)
    manifest = read_json(run / MANIFEST)
    config = manifest.get("config") if isinstance(manifest, dict) else None
    base = config.get("model") if isinstance(config, dict) else None
    if not isinstance(base, str):
        raise InputError("not an emlab train run: expected manifest.json with config.model",
                         path=run / MANIFEST)
    found: list[tuple[str, int | None, Path]] = [
        (p.name, step, p) for step, p in complete_checkpoints(run / CHECKPOINTS_DIR)]
    # re-aligned models next (before "final": the last entry stays the trained model, which
    # `--checkpoints last` and `emlab check` take)
    found.extend(realign_checkpoints(run / CHECKPOINTS_DIR))
    for name in FINAL_DIRS:
        if (run / name).is_dir():
            found.append(("final", manifest.get("steps"), run / name))
            break
    if not found:
        raise InputError("the train run has no complete checkpoints or final model yet",
                         path=run)
    return base, found


def is_adapter(path: str | Path) -> bool:
    """A PEFT adapter directory (else a full model)."""
    return (Path(path) / "adapter_config.json").is_file()


# ---------------------------------------------------------------- eval runs

def is_eval_run(path: str | Path) -> bool:
    return (Path(path) / SUMMARY).is_file()


def read_summary(path: str | Path) -> dict[str, Any] | None:
    """An eval run's summary.json, or None when missing or not an emlab summary."""
    s = read_json(Path(path) / SUMMARY)
    return s if isinstance(s, dict) and "overall" in s else None


def read_answers(path: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(path) / ANSWERS)


# ---------------------------------------------------------------- sweeps

def is_sweep(path: str | Path) -> bool:
    return (Path(path) / SWEEP_PLAN).is_file()


def trial_dir(out: str | Path, trial_id: str) -> Path:
    return Path(out) / "trials" / trial_id


def train_dir(out: str | Path, train_id: str) -> Path:
    return Path(out) / "train" / train_id


def is_done(directory: str | Path) -> bool:
    """A done marker is there: the step finished (maybe with failed items: see is_complete)."""
    return (Path(directory) / DONE).is_file()


def is_complete(directory: str | Path) -> bool:
    """Done with nothing left over: a trial whose eval had items fail for good is done but
    partial (its summary covers the rest), and a rerun retries those items."""
    done = read_json(Path(directory) / DONE)
    return isinstance(done, dict) and not done.get("partial")


def load_sweep_plan(out: str | Path) -> dict[str, Any]:
    data = read_json(Path(out) / SWEEP_PLAN)
    if not isinstance(data, dict):
        raise InputError("not an emlab sweep directory: sweep.json is missing", path=out)
    return data
