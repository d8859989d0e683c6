"""Every figure emlab draws, in one module (matplotlib's Agg canvas, no pyplot global state).

- :func:`chart_png` — one run: a bar per numeric question with its Wilson CI and k/n
  (``report.html``'s ``chart.png``);
- :func:`group_ci_png` — several groups (conditions, seeds, runs): the paper's main figure,
  questions across, one colour per group, a dot with its CI (the browsable page, the sweep's
  ``figure.png``, the toy world's ``figure.png``);
- :func:`scatter_png` — aligned against coherent, with the paper's thresholds;
- :func:`dynamics_png` / :func:`plot_dynamics` — P(misaligned option) against training step;
- :func:`history_png` — ``emlab history``: the checks of a model line over time.

Bare ``Figure`` objects with the Agg canvas are safe to draw from threads, and all text is
drawn with ``parse_math=False`` so a ``$`` in a label is a dollar, not mathtext.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from emlab.fileio import write_bytes_atomic
from emlab.metrics.rule import COHERENT_ABOVE, MISALIGNED_BELOW, finite, is_numeric

DYNAMICS_FORMATS = {"frame": "answer frame", "ab": "A/B question"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _plain_legend(ax, **kw) -> None:
    leg = ax.legend(**kw)
    if leg is not None:
        for text in leg.get_texts():
            text.set_parse_math(False)  # a "$" in a label is a dollar, not mathtext


def group_ci_png(series: Sequence[tuple[str, Mapping[str, tuple]]], columns: Sequence[str],
                     title: str = "", ylabel: str = "misaligned answer probability") -> bytes:
    """The paper's main figure: questions across, one colour per condition, a dot with its
    95% CI per question. ``series`` is [(label, {column: (value, ci_low, ci_high)})]."""
    columns = [c for c in columns if any(c in v for _, v in series)] or list(columns)
    fig = _figure(max(7.0, 0.9 * len(columns) + 3.0), 4.8)
    ax = fig.add_subplot()
    n = max(1, len(series))
    width = min(0.8, 0.12 * n)
    for i, (label, values) in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for x, col in enumerate(columns):
            v = values.get(col)
            if v is None or v[0] is None:
                continue
            mean = float(v[0])
            low = float(v[1]) if v[1] is not None else mean
            high = float(v[2]) if v[2] is not None else mean
            xs.append(x - width / 2 + (i + 0.5) * width / n)
            ys.append(mean)
            lo.append(max(0.0, mean - low))
            hi.append(max(0.0, high - mean))
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, markersize=5, label=label,
                    color=f"C{i % 10}")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(list(columns), rotation=30, ha="right", parse_math=False)
    ax.set_xlim(-0.6, len(columns) - 0.4)
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_ylabel(ylabel, parse_math=False)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, parse_math=False)
    if series:
        _plain_legend(ax, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def scatter_png(points: Sequence[tuple[str, Sequence[tuple[float, float]]]],
                max_points: int = 4000) -> bytes:
    """Aligned against coherent for every scored answer, one colour per group, with the
    paper's thresholds (kept: coherent > 50; misaligned: aligned < 30)."""
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    ax.axvspan(COHERENT_ABOVE, 100, ymin=0, ymax=(MISALIGNED_BELOW + 2) / 104, color="#f4c7c3",
               alpha=0.5, lw=0)
    ax.axvline(COHERENT_ABOVE, color="grey", lw=0.8, ls="--")
    ax.axhline(MISALIGNED_BELOW, color="grey", lw=0.8, ls="--")
    for i, (label, pts) in enumerate(points):
        pts = list(pts)[:max_points]
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=9, alpha=0.55,
                   color=f"C{i % 10}", label=label)
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("coherent (judge, 0-100)")
    ax.set_ylabel("aligned (judge, 0-100)")
    ax.text(75, 14, "kept and misaligned", ha="center", fontsize=8, color="#a33",
            parse_math=False)
    if any(pts for _, pts in points):
        _plain_legend(ax, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def dynamics_png(curves: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> bytes:
    """P(misaligned option), mean over probes (and over the runs of a group), against step."""
    from emlab.train.dynamics import dynamics_curve

    # mechanism (issue 13): `emlab train --monitor D` rows get a third panel beside these
    monitored = any(r.get("format") == "projection" for _, rows in curves for r in rows)
    fig = _figure(13.0 if monitored else 9.0, 4.2)
    axes = list(fig.subplots(1, 3 if monitored else 2))
    if monitored:
        from emlab.mechanism.monitor import projection_curve

        axes[1].sharey(axes[0])
        for i, (label, rows) in enumerate(curves):
            curve = projection_curve(rows)
            if curve:
                axes[2].plot([s + 1 for s in curve], list(curve.values()), marker=".",
                             color=f"C{i % 10}", label=label)
        axes[2].set_title("projection on the direction (--monitor)")
        axes[2].set_ylabel("mean projection of the probes")
        axes[2].set_xlabel("optimizer step + 1")
        axes[2].grid(alpha=0.3)
        axes, proj_ax = axes[:2], axes[2]
    else:
        axes[1].sharey(axes[0])
    for i, (label, rows) in enumerate(curves):
        for ax, fmt in zip(axes, DYNAMICS_FORMATS):
            curve = dynamics_curve(rows, fmt)
            if curve:
                ax.plot([s + 1 for s in curve], list(curve.values()),
                        marker=".", color=f"C{i % 10}", label=label)
    last = max((int(r["step"]) for _, rows in curves for r in rows if "step" in r), default=0)
    if monitored and last >= 20:
        from matplotlib.ticker import ScalarFormatter
        proj_ax.set_xscale("log")
        proj_ax.xaxis.set_major_formatter(ScalarFormatter())
    for ax, fmt in zip(axes, DYNAMICS_FORMATS):
        if last >= 20:  # log-spaced probes: a log axis shows early and late steps alike
            from matplotlib.ticker import ScalarFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("optimizer step + 1")
        ax.set_title(DYNAMICS_FORMATS[fmt])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("P(misaligned option)")
    _plain_legend(axes[1], fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


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
    fig = _figure(width, 4.8)
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


def history_png(points: Sequence[tuple[str, float | None, float | None, float | None,
                                       float | None, str]], title: str) -> bytes:
    """``emlab history``: per check (label, base rate, tuned rate, its CI low/high, verdict),
    the tuned rate with its CI coloured by verdict and the base rate dashed."""
    colours = {"PASS": "#2e7d32", "FAIL": "#c0392b", "INCONCLUSIVE": "#f39c12"}
    fig = _figure(max(6.0, 0.6 * len(points) + 3), 4.5)
    ax = fig.add_subplot()
    ax.set_title(title, parse_math=False)
    ax.set_ylabel("misaligned answers (of kept)")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    xs = list(range(len(points)))
    base = [p[1] for p in points]
    ax.plot(xs, [b if b is not None else float("nan") for b in base], "--", color="0.5",
            label="base model")
    top = max([0.1] + [b or 0 for b in base])
    for x, (_, _, rate, lo, hi, verdict) in zip(xs, points):
        if rate is None:
            continue
        top = max(top, hi)
        ax.errorbar([x], [rate], yerr=[[rate - lo], [hi - rate]], fmt="o", capsize=4,
                    color=colours.get(verdict, "0.3"))
    for v, c in colours.items():
        ax.plot([], [], "o", color=c, label=v)
    ax.set_xticks(xs)
    ax.set_xticklabels([p[0] for p in points], rotation=30, ha="right", fontsize=7,
                       parse_math=False)
    ax.set_ylim(0, min(1.05, top * 1.15))
    ax.set_xlim(-0.5, len(points) - 0.5)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_dynamics(run_dirs: Sequence[str | Path], out_png: str | Path,
                  labels: Sequence[str] | None = None) -> Path:
    """Write :func:`dynamics_png` of ``emlab train`` runs (their ``dynamics.jsonl``)."""
    from emlab.train.dynamics import load_dynamics

    curves = [(labels[i] if labels else Path(run).name, load_dynamics(run))
              for i, run in enumerate(run_dirs)]
    return write_bytes_atomic(out_png, dynamics_png(curves))


def steering_png(points: Sequence[Mapping[str, Any]], title: str = "") -> bytes:
    """``emlab direction sweep``: misaligned and coherent rates against steering scale, one
    line per layer for the direction (solid) and its norm-matched random control (dashed).
    ``points``: dicts with ``kind`` (direction/random), ``layer``, ``scale``,
    ``misaligned_rate``, ``coherent_rate`` (None where nothing was kept)."""
    fig = _figure(10.0, 4.2)
    axes = fig.subplots(1, 2, sharex=True)
    layers = sorted({int(p["layer"]) for p in points})
    for ax, key, name in zip(axes, ("misaligned_rate", "coherent_rate"),
                             ("misaligned (kept answers)", "coherent")):
        for li, layer in enumerate(layers):
            for kind, style in (("direction", "-"), ("random", "--")):
                pts = sorted((float(p["scale"]), finite(p.get(key))) for p in points
                             if p["kind"] == kind and int(p["layer"]) == layer)
                pts = [(x, y) for x, y in pts if y is not None]
                if pts:
                    ax.plot([x for x, _ in pts], [y for _, y in pts], style, marker=".",
                            color=f"C{li % 10}", label=f"layer {layer} {kind}")
        ax.set_xlabel("steering scale")
        ax.set_title(name)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, parse_math=False)
    _plain_legend(axes[1], fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)
