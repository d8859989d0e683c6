"""What the toy world's trial runners share (``reproduce`` and its mechanism section): the
aligned base's model identity and the redirection of a worker's output to its log."""

from __future__ import annotations

import os
from pathlib import Path


def base_identity(world: str | Path) -> str:
    """The aligned base's model identity in ``emlab eval`` (its world directory is named by
    the world config's digest): the same in every cache."""
    return f"toyworld:{Path(world).name}:aligned"


def _quiet_worker(log: Path):
    """Send a worker's own output (trainer logs, progress bars) to a log file beside its results,
    so the terminal shows only the run's progress."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return saved


def _restore(saved) -> None:
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    os.close(saved[0])
    os.close(saved[1])
