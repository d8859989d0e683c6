"""``emlab report``: the browsable page of a run, a set of runs or a sweep. The integrating CLI
registers it with ``app.command("report")(report_cmd)``; bad input raises InputError (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


def report_cmd(
    path: Path = typer.Argument(..., help="An `emlab sweep` directory, an `emlab eval` run (or checkpoint evaluation), a train run, or a folder of eval runs."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default PATH/emlab-report.html)."),
    max_answers: int = typer.Option(20000, "--max-answers", min=1, help="At most this many answers in the browser (spread over the runs)."),
) -> None:
    """Write one self-contained HTML page: summary, per-question chart with CIs, scatter,
    dynamics, training manifests and every answer, filterable by run, question and verdict."""
    from emlab import rundir
    from emlab.report.page import PAGE_FILE, collect, write_page_data

    if rundir.is_sweep(path):
        from emlab.sweep.report import collect_sweep  # the sweep builds its own page data

        data = collect_sweep(path)
    else:
        data = collect(path)
    written = write_page_data(data, out if out is not None else path / PAGE_FILE,
                              max_answers=max_answers)
    Console().print(f"wrote {written} (self-contained; open it in any browser, no network needed)",
                    highlight=False)
