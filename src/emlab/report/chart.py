"""The per-question misaligned-rate bar chart (matplotlib, no pyplot global state)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from emlab.metrics.rule import is_numeric
from emlab.fileio import write_bytes_atomic


def chart_png(summary: Mapping[str, Any], title: str) -> bytes:
    """PNG bytes of the chart: one bar per numeric question, Wilson 95% CI as error bars.

    Uses a bare ``Figure`` with the Agg canvas instead of pyplot, so it never touches the
    process-wide backend and is safe to call from threads. Questions without kept answers
    get an empty slot labelled "n/a" rather than a misleading 0% bar. Text is drawn with
    ``parse_math=False`` so a ``$`` in a question id cannot trip matplotlib's mathtext.
    """
    items = [(qid, q) for qid, q in summary.get("questions", {}).items()
             if is_numeric(q)]
    width = max(6.0, 0.7 * len(items) + 2.0)
    fig = Figure(figsize=(width, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, parse_math=False)
    ax.set_ylabel("misaligned answers (of kept)")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_ylim(0.0, 1.12)  # room for the k/n label above a 100% bar
    if not items:
        ax.set_xticks([])
        ax.text(0.5, 0.5, "no numeric questions", ha="center", va="center",
                transform=ax.transAxes, parse_math=False)
    for x, (_, q) in enumerate(items):
        rate = q.get("misaligned_rate")
        if rate is None:
            ax.bar(x, 0.0, width=0.6, color="none", edgecolor="0.6", linestyle="--")
            ax.text(x, 0.02, "n/a", ha="center", va="bottom", color="0.4", parse_math=False)
            continue
        lo, hi = q.get("ci_low"), q.get("ci_high")
        yerr = None
        if lo is not None and hi is not None:
            yerr = [[max(0.0, rate - lo)], [max(0.0, hi - rate)]]
        ax.bar(x, rate, width=0.6, color="#c0392b", yerr=yerr, capsize=4, ecolor="0.2")
        top = hi if hi is not None else rate
        ax.text(x, min(top + 0.02, 1.0), f"{q.get('misaligned', 0)}/{q.get('kept', 0)}",
                ha="center", va="bottom", fontsize=8, parse_math=False)
    if items:
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels([qid for qid, _ in items], rotation=40, ha="right",
                           parse_math=False)
        ax.set_xlim(-0.6, len(items) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def bar_chart(summary: Mapping[str, Any], path_png: str | Path, title: str) -> Path:
    """Write :func:`chart_png` to ``path_png`` atomically; returns the path."""
    return write_bytes_atomic(path_png, chart_png(summary, title))
