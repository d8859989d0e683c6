"""``emlab compare`` and the summary table of ``emlab eval`` (registered in ``emlab.cli``).

``compare`` reads run directories and hands them to the one group comparison,
:func:`emlab.metrics.compare_runs`. Bad input raises InputError (exit 2 at the CLI).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from emlab import rundir
from emlab.errors import InputError
from emlab.metrics.fmt import rate_ci_short

console = Console()


def _fmt_rate(s: dict) -> str:
    return rate_ci_short(s.get("misaligned_rate"), s.get("ci_low"), s.get("ci_high"))


def print_summary(summary: dict) -> None:
    from emlab.metrics.rule import is_numeric

    table = Table(title=f"{summary['meta']['model']} judged by {summary['meta']['judge']}")
    table.add_column("question", no_wrap=True)
    for col in ("answers", "coherent", "kept", "misaligned (95% CI)"):
        table.add_column(col, justify="right")
    for qid, s in summary["questions"].items():
        if not is_numeric(s):
            table.add_row(qid, str(s.get("answers", "")), "", "", "categorical: see report")
            continue
        table.add_row(qid, str(s["answers"]), f"{100 * s['coherent_rate']:.0f}%" if s["answers"] else "",
                      str(s["kept"]), _fmt_rate(s))
    o = summary["overall"]
    table.add_row("[bold]overall[/bold]", str(o["answers"]),
                  f"{100 * o['coherent_rate']:.0f}%" if o["answers"] else "", str(o["kept"]),
                  _fmt_rate(o))
    console.print(table)


def load_summary(d: Path) -> dict:
    """summary.json of an eval run directory, or InputError saying what is wrong."""
    f = d / rundir.SUMMARY
    if not f.is_file():
        raise InputError("not an emlab run directory: summary.json is missing", path=d)
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"summary.json is not valid JSON: {e.msg}", path=f, line=e.lineno) from None


def compare_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories of `emlab eval` (several models or seeds)."),
    baseline: Optional[Path] = typer.Option(None, help="A run to test each run against: did the misaligned rate rise?"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Mean misaligned rate over runs with a bootstrap CI; tests against a baseline run."""
    from emlab.metrics import compare_runs

    summaries = [load_summary(d) for d in runs]
    base = None
    if baseline is not None:
        base = load_summary(baseline)
        if base["overall"]["kept"] == 0:
            raise InputError("the baseline run has no kept answers to compare against",
                             path=baseline / rundir.SUMMARY)
    result = compare_runs(summaries, [str(d) for d in runs], base)
    if as_json:
        console.print_json(json.dumps(result))
        return
    t = Table(title="runs")
    for col in ("run", "kept", "misaligned", "vs baseline: rise, p"):
        t.add_column(col)
    for d, s in zip(runs, summaries):
        vs = result.get("vs_baseline", {}).get(str(d))
        t.add_row(str(d), str(s["overall"]["kept"]), _fmt_rate(s["overall"]),
                  f"{100 * vs['difference']:+.1f} pts, p={vs['p_value']:.3g}" if vs else "")
    console.print(t)
    ar = result["across_runs"]["overall"]["misaligned_rate"]
    if ar["mean"] is None:
        console.print("no run has kept answers: no mean misaligned rate")
    else:
        console.print(f"mean over {ar['runs_with_data']} runs: {100 * ar['mean']:.1f}% "
                      f"[{100 * ar['ci_low']:.1f}, {100 * ar['ci_high']:.1f}] (bootstrap 95% CI)")
