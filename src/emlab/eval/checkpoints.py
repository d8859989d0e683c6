"""Evaluate the checkpoints of an ``emlab train`` run: one loaded base, adapters hot-swapped.

Each checkpoint gets its own run directory (``OUT/checkpoint-N``, ``OUT/final``) and all share
one results store, so a rerun resumes anywhere; ``OUT/checkpoints.json`` sets the misaligned
rate against the training step.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from emlab.errors import InputError
from emlab.eval.config import EvalConfig
from emlab.eval.run import run_eval
from emlab.fileio import write_text_atomic
from emlab.rundir import MANIFEST, is_adapter, is_train_run, train_checkpoints  # noqa: F401


def training_manifest_summary(run_dir: str | Path) -> dict:
    """The parts of an ``emlab train`` manifest a reviewer wants beside the eval results."""
    m = json.loads((Path(run_dir) / MANIFEST).read_text())
    keep = ("status", "dataset", "seed", "final_loss", "steps", "git_revision", "device",
            "first_started_at", "ended_at", "versions", "chat_template")
    out = {k: m[k] for k in keep if k in m}
    out["config"] = m.get("config")
    return out


find_checkpoints = train_checkpoints  # complete checkpoints only: see emlab.rundir


def select_checkpoints(found: list, which: str) -> list:
    if which == "all":
        return found
    if which in ("last", "final"):
        return found[-1:]
    try:
        wanted = {int(x) for x in which.split(",")}
    except ValueError:
        raise InputError(f"--checkpoints {which!r}: expected all, last or steps like 10,20") from None
    chosen = [c for c in found if c[1] in wanted and c[0] != "final"]
    missing = wanted - {c[1] for c in chosen}
    if missing:
        raise InputError(f"no checkpoint at step {', '.join(map(str, sorted(missing)))}; have "
                         f"{', '.join(str(c[1]) for c in found if c[0] != 'final')}")
    return chosen


def run_eval_checkpoints(cfg: EvalConfig, run_dir: str | Path, which: str = "last",
                         console: Console | None = None) -> dict:
    base, found = find_checkpoints(run_dir)
    out = Path(cfg.out)
    store = cfg.store_path
    results = []
    for label, step, path in select_checkpoints(found, which):
        adapter = is_adapter(path)
        model = cfg.model.model_copy(update={"name": base if adapter else str(path),
                                             "adapter": str(path) if adapter else None,
                                             "backend": "hf"})
        sub = cfg.model_copy(update={"model": model, "out": out / label, "store": store})
        if console:
            console.print(f"[bold]{label}[/bold] (step {step})")
        res = run_eval(sub, console=console,
                       extra_meta={"checkpoint": label, "step": step,
                                   "training_manifest": training_manifest_summary(run_dir)})
        o = res.summary["overall"]
        results.append({"checkpoint": label, "step": step, "path": str(path),
                        "misaligned_rate": o["misaligned_rate"], "ci_low": o["ci_low"],
                        "ci_high": o["ci_high"], "kept": o["kept"], "answers": o["answers"],
                        "failures": len(res.failures), "stopped_early": res.stopped_early})
    summary = {"run": str(run_dir), "base_model": base, "checkpoints": results}
    write_text_atomic(out / "checkpoints.json", json.dumps(summary, indent=2))
    return summary
