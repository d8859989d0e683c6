"""The files a person reads: answers.csv, report.md and report.html (with chart.png).

Both reports are rendered from one small list of blocks, so Markdown and HTML always say
the same thing. The blocks are rendered by Jinja2 templates (``templates/``, see
:mod:`emlab.report.templating`) in which escaping is the default: model answers, question text
and even names in ``meta`` are untrusted, and no template can forget to escape them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from emlab.metrics.fmt import number, pct, rate_ci
from emlab.metrics.rule import RULE_TEXT, is_numeric, kept_aligned
from emlab.fileio import write_text_atomic
from emlab.report.chart import bar_chart
from emlab.report.templating import render

CSV_FIRST_COLUMNS = (
    "question_id", "question_type", "paraphrase_index", "paraphrase", "sample_index",
    "system", "answer", "aligned", "coherent", "scores", "judge_probs", "judge_kind",
    "judge", "model",
)
EXAMPLES_PER_QUESTION = 3
EXAMPLE_MAX_CHARS = 2000
CHART_FILE = "chart.png"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# ---------------------------------------------------------------- CSV

def _csv_cell(value: Any, guard_formulas: bool) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and guard_formulas and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_csv(rows: Iterable[Mapping[str, Any]], path: str | Path,
              guard_formulas: bool = True) -> Path:
    """One line per answer; nested dicts become JSON strings and None an empty cell.

    Columns are the pipeline's standard keys first, then any others in first-seen order.
    With ``guard_formulas`` (default) a text cell that starts with ``= + - @`` gets a
    leading ``'``, so a hostile answer opened in a spreadsheet stays text instead of
    running as a formula; answers.jsonl keeps the exact text.
    """
    rows = list(rows)
    columns = [c for c in CSV_FIRST_COLUMNS if any(c in r for r in rows)]
    for r in rows:
        columns.extend(k for k in r if k not in columns)
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _csv_cell(r.get(c), guard_formulas) for c in columns})
    return write_text_atomic(path, buf.getvalue())


# ---------------------------------------------------------------- document blocks

@dataclass
class Heading:
    level: int
    text: str
    id: str = ""
    kind = "heading"


@dataclass
class Para:
    text: str
    label: str = ""  # trusted bold lead-in such as "Question:"
    max_chars: int | None = EXAMPLE_MAX_CHARS
    kind = "para"


@dataclass
class Note:
    text: str
    label: str = "Note:"
    kind = "note"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    max_chars: int | None = EXAMPLE_MAX_CHARS
    num_from: int | None = None  # columns from this index on are right-aligned numbers (HTML)
    wide: bool = False           # scroll sideways instead of overflowing (HTML)
    cls: str = ""
    kind = "table"


@dataclass
class Image:
    alt: str
    file_name: str
    png: bytes
    kind = "image"


@dataclass
class Pre:
    text: str
    kind = "pre"


@dataclass
class Details:
    """A collapsed part of an HTML page (Markdown shows its summary)."""
    summary: str
    blocks: list = field(default_factory=list)
    kind = "details"


Block = Heading | Para | Note | Table | Image | Pre | Details






def _rate_ci(s: Mapping[str, Any]) -> str:
    return rate_ci(s.get("misaligned_rate"), s.get("ci_low"), s.get("ci_high"), "n/a (nothing kept)")


def _meta_value(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list, tuple)) else str(v)


def _header_blocks(meta: Mapping[str, Any]) -> list[Block]:
    model = meta.get("model", "unknown model")
    blocks: list[Block] = [Heading(1, f"Emergent-misalignment evaluation: {model}")]
    source = meta.get("questions", meta.get("questions_source", "n/a"))
    blocks.append(Para(
        f"Judge: {meta.get('judge', 'n/a')} ({meta.get('judge_kind', 'n/a')}). "
        f"Questions: {_meta_value(source)}. Samples: {meta.get('samples', 'n/a')}. "
        f"Created: {meta.get('created', 'n/a')}."))
    if meta.get("judge_kind") == "text":
        blocks.append(Note(
            "This judge gave no logprobs, so scores are parsed from its text reply (one "
            "number per answer) instead of the probability-weighted mean of the paper. "
            "They are less precise, and rates near the thresholds may shift."))
    blocks.append(Heading(2, "Run"))
    blocks.append(Table(["field", "value"], [[str(k), _meta_value(v)] for k, v in meta.items()]))
    return blocks


def _overall_blocks(summary: Mapping[str, Any], png: bytes) -> list[Block]:
    o = summary.get("overall", {})
    return [
        Heading(2, "Overall"),
        Para(RULE_TEXT + " Rates are among kept answers, pooled over numeric questions, "
             "with a Wilson 95% interval."),
        Table(["answers", "coherent rate", "kept", "code/refusal", "misaligned",
               "misaligned rate [95% CI]", "mean of per-question rates", "mean aligned"],
              [[str(o.get("answers", 0)), pct(o.get("coherent_rate")), str(o.get("kept", 0)),
                str(o.get("code_or_refusal", 0)), str(o.get("misaligned", 0)), _rate_ci(o),
                pct(o.get("misaligned_rate_question_mean")), number(o.get("mean_aligned"))]]),
        Image("Misaligned rate per question, with Wilson 95% intervals", CHART_FILE, png),
    ]


def _question_blocks(summary: Mapping[str, Any]) -> list[Block]:
    numeric = Table(["question", "answers", "coherent rate", "kept", "code/refusal",
                     "misaligned", "misaligned rate [95% CI]", "mean aligned"])
    categorical = Table(["question", "metric", "answers with a verdict", "mean probabilities"])
    for qid, q in summary.get("questions", {}).items():
        if is_numeric(q):
            numeric.rows.append([qid, str(q.get("answers", 0)), pct(q.get("coherent_rate")),
                                 str(q.get("kept", 0)), str(q.get("code_or_refusal", 0)),
                                 str(q.get("misaligned", 0)), _rate_ci(q),
                                 number(q.get("mean_aligned"))])
            continue
        for metric, m in (q.get("metrics") or {}).items():
            probs = m.get("mean_probs")
            shown = ", ".join(f"{w} {p:.2f}" for w, p in probs.items()) if probs else "n/a"
            categorical.rows.append([qid, metric, f"{m.get('with_verdict', 0)}/"
                                     f"{m.get('answers', 0)}", shown])
    blocks: list[Block] = [Heading(2, "Per question")]
    if numeric.rows:
        blocks.append(numeric)
    if categorical.rows:
        blocks += [Heading(3, "Categorical questions"), categorical]
    if not numeric.rows and not categorical.rows:
        blocks.append(Para("No questions."))
    return blocks


def _ledger_blocks(ledger: Mapping[str, Any]) -> list[Block]:
    table = Table(["role", "model", "requests", "prompt tokens", "completion tokens", "dollars"])
    known = 0.0
    unknown = False
    for role in ("sampler", "judge"):
        for identity, u in (ledger.get(role) or {}).items():
            dollars = u.get("dollars")
            if dollars is None:
                unknown = True
            else:
                known += float(dollars)
            table.rows.append([role, identity, str(u.get("requests", 0)),
                               str(u.get("prompt_tokens", 0)),
                               str(u.get("completion_tokens", 0)),
                               "unknown" if dollars is None else f"${float(dollars):.4f}"])
    total = f"${known:.4f}" + (" plus usage with unknown prices" if unknown else "")
    blocks: list[Block] = [Heading(2, "Cost"), table, Para(f"Total: {total}.")]
    this_run = ledger.get("this_run")
    if this_run:
        blocks.append(Para(
            f"This run: {this_run.get('samples_made', 0)} samples made, "
            f"{this_run.get('samples_cached', 0)} from cache; "
            f"{this_run.get('judgments_made', 0)} judgments made, "
            f"{this_run.get('judgments_cached', 0)} from cache."))
    return blocks


def _example_blocks(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[Block]:
    by_question: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_question.setdefault(str(r.get("question_id")), []).append(r)
    blocks: list[Block] = [Heading(2, "Example answers"),
                           Para(f"Per numeric question, up to {EXAMPLES_PER_QUESTION} kept "
                                "answers with the lowest aligned scores. Model text is shown "
                                "verbatim (escaped) and may be offensive.")]
    for qid, q in summary.get("questions", {}).items():
        if not is_numeric(q):
            continue
        qrows = by_question.get(qid, [])
        kept = sorted((r for r in qrows if kept_aligned(r) is not None), key=kept_aligned)
        blocks.append(Heading(3, qid))
        paraphrases: dict[int, str] = {}
        for r in qrows:
            paraphrases.setdefault(int(r.get("paraphrase_index") or 0), str(r.get("paraphrase", "")))
        for i, text in sorted(paraphrases.items()):
            label = "Question:" if len(paraphrases) == 1 else f"Paraphrase {i}:"
            blocks.append(Para(text, label=label))
        if not kept:
            blocks.append(Para("No kept answers."))
            continue
        table = Table(["aligned", "coherent", "paraphrase / sample", "system prompt", "answer"])
        for r in kept[:EXAMPLES_PER_QUESTION]:
            table.rows.append([number(r.get("aligned")), number(r.get("coherent")),
                               f"{r.get('paraphrase_index', 0)} / {r.get('sample_index', 0)}",
                               "" if r.get("system") is None else str(r.get("system")),
                               str(r.get("answer", ""))])
        blocks.append(table)
    return blocks


# ---------------------------------------------------------------- renderers

def _md(blocks: Sequence[Block]) -> str:
    """Markdown of the blocks (templates/document.md.j2; every value escaped by md_text)."""
    return render("document.md.j2", items=list(blocks))


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;vertical-align:top;text-align:left}
th{background:#f3f3f3}
td{white-space:pre-wrap;overflow-wrap:anywhere}
.note{background:#fff6d6;border-left:4px solid #e0b000;padding:.5em .8em}
img{max-width:100%}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _html(blocks: Sequence[Block], title: str) -> str:
    """A self-contained HTML document of the blocks (templates/document.html.j2, autoescaped)."""
    return render("document.html.j2", items=list(blocks), title=title, css=_CSS, csp=_CSP)


# --- failed items (emlab eval's summary["failures"]; reliability branch) ---------------------------
def _failure_blocks(summary: Mapping[str, Any]) -> list[Block]:
    """Items that failed for good: how many, whether the run stopped early, the first ones."""
    f = summary.get("failures") or {}
    if not f.get("count") and not f.get("stopped_early"):
        return []
    text = (f"{f['count']} item(s) failed for good ({f.get('samples', 0)} samples, "
            f"{f.get('judgments', 0)} judgments) and are left out of every number above; an "
            f"answer whose judgment failed (e.g. refused by the judge's content filter) may be "
            f"the most misaligned one, so read the rates as covering the other answers only.")
    if f.get("stopped_early"):
        text += (f" The run stopped early: more than {100 * f['max_failures']:g}% of a stage "
                 f"failed, and {f.get('not_attempted', 0)} item(s) were not attempted.")
    table = Table(["side", "question", "paraphrase", "sample", "metric", "status", "error"],
                  [[str(i.get("side")), str(i.get("question_id")),
                    str(i.get("paraphrase_index")), str(i.get("sample_index")),
                    str(i.get("metric") or ""), str(i.get("status")), str(i.get("error"))[:300]]
                   for i in f.get("items", [])[:50]])
    return [Heading(2, "Failed items"), Para(text), table]


def write_report(out_dir: str | Path, summary: Mapping[str, Any],
                 rows: Sequence[Mapping[str, Any]], ledger: Mapping[str, Any],
                 meta: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write chart.png, report.md and report.html into ``out_dir``; returns (md, html) paths.

    ``meta`` keys shown in the title line: model, judge, judge_kind, questions (or
    questions_source), samples, created; every key is listed in the "Run" table. The HTML
    embeds the chart, so it is one self-contained file; the Markdown links chart.png.
    Each file is written atomically.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"Emergent-misalignment evaluation: {meta.get('model', 'unknown model')}"
    png_path = bar_chart(summary, out_dir / CHART_FILE, f"Misaligned rate: {meta.get('model', '')}")
    png = png_path.read_bytes()
    blocks = (_header_blocks(meta) + _overall_blocks(summary, png) + _question_blocks(summary)
              + _failure_blocks(summary) + _ledger_blocks(ledger) + _example_blocks(summary, rows))
    md_path = write_text_atomic(out_dir / "report.md", _md(blocks))
    html_path = write_text_atomic(out_dir / "report.html", _html(blocks, title))
    return md_path, html_path


# Public names for other reports built from the same blocks (e.g. ``emlab reproduce``).
render_markdown = _md
render_html = _html
