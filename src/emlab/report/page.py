"""``emlab report``: one self-contained HTML page for a run, several runs, or a sweep.

The page holds a summary table, the per-question chart with CIs (the paper's main figure),
an alignment-vs-coherence scatter, training-dynamics curves where the runs have them, the
training manifests, and every answer with its judge scores, filterable by run, question and
verdict. It needs no network: charts are inline PNGs, the style and the one script are inline.

Model text is hostile by assumption (a fine-tuned model may have been trained into writing
markup). Two independent defences keep it inert:

1. the page is rendered by an autoescaping Jinja2 template (``templates/page.html.j2``,
   the same engine and block macros as report.html): every string from a run (answers,
   questions, ids, labels, manifest values) is element text or a quoted attribute value,
   never markup; and no run data is embedded in the script (the filters read ``data-*``
   attributes of server-rendered rows);
2. a Content-Security-Policy that allows no source at all except inline images and the
   page's own style and script *by sha256 hash*, so even markup that slipped through could not
   run a script, load anything, or submit a form.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from emlab.metrics.fmt import number, pct, rate_ci
from emlab import rundir
from emlab.errors import InputError
from emlab.fileio import write_text_atomic
from emlab.metrics.rule import RULE_TEXT, VERDICTS, is_numeric, verdict  # noqa: F401 (verdict: public here too)
from emlab.metrics.rule import finite as _finite
from emlab.report.chart import dynamics_png, group_ci_png, scatter_png
from emlab.report.render import Details, Image, Para, Pre, Table
from emlab.report.templating import render

PAGE_FILE = "emlab-report.html"
ANSWER_MAX_CHARS = 4000
DEFAULT_MAX_ANSWERS = 20000


# ---------------------------------------------------------------- what the page shows

@dataclass
class RunData:
    label: str                             # one evaluation (a seed, a checkpoint, a run)
    group: str                             # its condition group (sweeps); else the label
    directory: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    manifest: dict[str, Any] | None = None


@dataclass
class TrainData:
    label: str
    group: str
    directory: Path
    manifest: dict[str, Any] | None
    dynamics: list[dict[str, Any]] | None


@dataclass
class PageData:
    kind: str                              # "run", "runs", "sweep" or "train"
    title: str
    source: Path
    runs: list[RunData] = field(default_factory=list)
    trains: list[TrainData] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # What a collector of a bigger structure (a sweep: emlab.sweep.report) adds, so the page
    # renders it without knowing that structure: blocks at the top of the summary, the
    # per-question section in place of the per-run one, the runs table collapsed.
    summary_blocks: list = field(default_factory=list)
    question_blocks: list | None = None
    collapse_runs: bool = False
    dynamics_note: str = ""


def load_run(d: Path, label: str, group: str | None = None) -> RunData:
    summary = rundir.read_summary(d)
    if summary is None:
        raise InputError("summary.json is missing or not an emlab summary", path=d)
    meta = summary.get("meta") or {}
    return RunData(label=label, group=group or label, directory=d, summary=summary,
                   rows=rundir.read_answers(d), manifest=meta.get("training_manifest"))


def load_train(d: Path, label: str, group: str | None = None) -> TrainData:
    manifest = None
    if (d / rundir.MANIFEST).is_file():
        from emlab.eval.checkpoints import training_manifest_summary

        try:
            manifest = training_manifest_summary(d)
        except (OSError, ValueError):
            manifest = None
    dyn = rundir.read_jsonl(d / rundir.DYNAMICS) or None
    return TrainData(label=label, group=group or label, directory=d, manifest=manifest,
                     dynamics=dyn)


def collect(path: str | Path) -> PageData:
    """Read whatever ``path`` is: a sweep, an eval run, a checkpoint evaluation, a train run,
    or a folder of eval runs."""
    d = Path(path)
    if not d.is_dir():
        raise InputError("not a directory", path=d)
    if rundir.is_sweep(d):
        raise InputError("a sweep directory: its page is built by emlab.sweep.report."
                         "collect_sweep (`emlab report` does this)", path=d)
    if rundir.is_eval_run(d):
        run = load_run(d, str((rundir.read_summary(d) or {}).get("meta", {})
                              .get("model", d.name)))
        data = PageData(kind="run", title=f"emlab report: {run.label}", source=d, runs=[run])
        return data
    runs_file = rundir.read_json(d / rundir.CHECKPOINTS_JSON)
    if isinstance(runs_file, dict) and runs_file.get("checkpoints"):
        data = PageData(kind="runs", title=f"emlab report: checkpoints of {runs_file.get('run')}",
                        source=d)
        for c in runs_file["checkpoints"]:
            sub = d / c["checkpoint"]
            if rundir.is_eval_run(sub):
                data.runs.append(load_run(sub, f"{c['checkpoint']} (step {c.get('step')})"))
        train = Path(str(runs_file.get("run", "")))
        if runs_file.get("run") and train.is_dir():
            data.trains.append(load_train(train, train.name))
        return data
    if (d / rundir.MANIFEST).is_file():
        return PageData(kind="train", title=f"emlab report: training run {d.name}", source=d,
                        trains=[load_train(d, d.name)])
    subs = sorted(p for p in d.iterdir() if p.is_dir() and rundir.is_eval_run(p))
    if subs:
        return PageData(kind="runs", title=f"emlab report: {d.name}", source=d,
                        runs=[load_run(p, p.name) for p in subs])
    raise InputError("nothing to report: expected an emlab sweep (sweep.json), eval run "
                     "(summary.json), checkpoint evaluation (checkpoints.json), train run "
                     "(manifest.json) or a folder of eval runs", path=d)


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1300px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top;text-align:left}
th{background:#f3f3f3;position:sticky;top:0}
td.ans{white-space:pre-wrap;overflow-wrap:anywhere;max-width:44em}
td.num{text-align:right;white-space:nowrap}
tr.v-misaligned td.verdict{color:#b00;font-weight:bold}
.filters{display:flex;flex-wrap:wrap;gap:.8em;align-items:center;background:#f7f7f7;
padding:.5em .8em;border:1px solid #ddd;position:sticky;top:0;z-index:2}
.note{background:#fff6d6;border-left:4px solid #e0b000;padding:.4em .8em}
img{max-width:100%}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f7f7f7;padding:.5em;font-size:.85em}
details{margin:.4em 0}
nav a{margin-right:1em}
.wide{overflow-x:auto}
#answers td:first-child{white-space:nowrap}
"""

_JS = """
(function () {
  var ids = ["f-run", "f-question", "f-verdict"];
  var selects = ids.map(function (id) { return document.getElementById(id); });
  var search = document.getElementById("f-text");
  var count = document.getElementById("f-count");
  var rows = document.querySelectorAll("#answers tbody tr");
  var keys = ["run", "q", "v"];
  function apply() {
    var wanted = selects.map(function (s) { return s ? s.value : ""; });
    var text = search ? search.value.toLowerCase() : "";
    var shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var row = rows[i], ok = true;
      for (var k = 0; k < keys.length; k++) {
        if (wanted[k] && row.dataset[keys[k]] !== wanted[k]) { ok = false; break; }
      }
      if (ok && text && row.textContent.toLowerCase().indexOf(text) < 0) { ok = false; }
      row.hidden = !ok;
      if (ok) { shown++; }
    }
    if (count) { count.textContent = String(shown); }
  }
  selects.forEach(function (s) { if (s) { s.addEventListener("change", apply); } });
  if (search) { search.addEventListener("input", apply); }
  document.body.setAttribute("data-filters-ready", "1");
  apply();
})();
"""


def _sha256_b64(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


CSP = ("default-src 'none'; img-src data:; "
       f"style-src 'sha256-{_sha256_b64(_CSS)}'; script-src 'sha256-{_sha256_b64(_JS)}'; "
       "base-uri 'none'; form-action 'none'")






def table(headers: Sequence[str], rows: list[list[Any]], num_from: int | None = None) -> Table:
    """A page table: cells as text, numbers right-aligned from ``num_from``, scrolls sideways."""
    return Table(list(headers), [[str(c) for c in r] for r in rows], max_chars=None,
                 num_from=num_from, wide=True)


def _section(sid: str, nav: str, title: str, blocks: list) -> dict[str, Any]:
    return {"id": sid, "nav": nav, "title": title, "blocks": blocks}


def _summary_section(data: PageData) -> dict[str, Any]:
    blocks: list = [Para(RULE_TEXT, max_chars=None), *data.summary_blocks]
    if data.runs:
        rows = []
        for r in data.runs:
            o = r.summary.get("overall", {})
            meta = r.summary.get("meta") or {}
            rows.append([r.label, meta.get("model", ""), meta.get("judge", ""),
                         o.get("answers", 0), pct(o.get("coherent_rate")), o.get("kept", 0),
                         o.get("misaligned", 0),
                         rate_ci(o.get("misaligned_rate"), o.get("ci_low"), o.get("ci_high")),
                         number(o.get("mean_aligned"), none="")])
        runs_table = table(["run", "model", "judge", "answers", "coherent", "kept", "misaligned",
                        "misaligned rate [Wilson 95% CI]", "mean aligned"], rows, num_from=3)
        blocks.append(Details("Every finished trial", [runs_table]) if data.collapse_runs else runs_table)
    return _section("summary", "summary", "Summary", blocks)


def _question_section(data: PageData) -> dict[str, Any] | None:
    blocks: list = []
    if data.question_blocks is not None:
        return _section("questions", "per question", "Per question", data.question_blocks)
    if not data.runs:
        return None
    qids: list[str] = []
    for r in data.runs:
        for q, st in r.summary.get("questions", {}).items():
            if is_numeric(st) and q not in qids:
                qids.append(q)
    series = []
    for r in data.runs:
        o = r.summary["overall"]
        values = {"ALL": (o.get("misaligned_rate"), o.get("ci_low"), o.get("ci_high"))}
        for q in qids:
            st = r.summary.get("questions", {}).get(q) or {}
            values[q] = (st.get("misaligned_rate"), st.get("ci_low"), st.get("ci_high"))
        series.append((r.label, values))
    blocks.append(Image("Misaligned rate per question, with Wilson 95% CIs", "",
                        group_ci_png(series, ["ALL", *qids])))
    rows = []
    for q in qids:
        row = [q]
        for r in data.runs:
            st = r.summary.get("questions", {}).get(q) or {}
            row.append(rate_ci(st.get("misaligned_rate"), st.get("ci_low"), st.get("ci_high"))
                       + f" (kept {st.get('kept', 0)})")
        rows.append(row)
    blocks.append(table(["question", *[r.label for r in data.runs]], rows))
    return _section("questions", "per question", "Per question", blocks)


def _scatter_section(data: PageData) -> dict[str, Any] | None:
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in data.runs:
        pts = groups.setdefault(r.group, [])
        for row in r.rows:
            a, c = _finite(row.get("aligned")), _finite(row.get("coherent"))
            if a is not None and c is not None:
                pts.append((c, a))
    if not any(groups.values()):
        return None
    return _section("scatter", "scatter", "Alignment vs coherence", [
        Image("Judge alignment score against coherence score, one dot per answer", "",
              scatter_png(list(groups.items())))])


def _dynamics_section(data: PageData) -> dict[str, Any] | None:
    curves: dict[str, list[dict]] = {}
    for t in data.trains:
        if t.dynamics:
            curves.setdefault(t.group, []).extend(t.dynamics)
    if not curves:
        return None
    return _section("dynamics", "dynamics", "Training dynamics", [
        Para("P(misaligned option) of the multiple-choice probes during training, mean over "
             "probes" + data.dynamics_note + ".",
             max_chars=None),
        Image("P(misaligned option) against step", "", dynamics_png(list(curves.items())))])


def _manifest_section(data: PageData) -> dict[str, Any] | None:
    manifests: list[tuple[str, dict]] = []
    seen: set[str] = set()
    for t in data.trains:
        if t.manifest:
            manifests.append((t.label, t.manifest))
            seen.add(json.dumps(t.manifest, sort_keys=True, default=str))
    for r in data.runs:
        if r.manifest:
            key = json.dumps(r.manifest, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                manifests.append((r.label, r.manifest))
    if not manifests:
        return None
    rows = []
    for label, m in manifests:
        ds = m.get("dataset") or {}
        cfg = m.get("config") or {}
        rows.append([label, cfg.get("model", ""), ds.get("name", ""),
                     str(ds.get("sha256", ""))[:12], ds.get("rows", ""), m.get("seed", ""),
                     m.get("steps", ""), number(m.get("final_loss"), 4, none=""), m.get("status", ""),
                     m.get("device", "")])
    blocks: list = [table(["run", "base model", "dataset", "sha256", "rows", "seed", "steps",
                            "final loss", "status", "device"], rows)]
    blocks += [Details(f"{label}: full manifest",
                       [Pre(json.dumps(m, indent=2, ensure_ascii=False, default=str))])
               for label, m in manifests]
    return _section("manifests", "manifests", "Training manifests", blocks)


def _answers(data: PageData, max_answers: int) -> dict[str, Any] | None:
    """The answer browser: one row per answer with its verdict; the filters read the rows'
    ``data-*`` attributes (no run data is embedded in the script)."""
    if not data.runs:
        return None
    total = sum(len(r.rows) for r in data.runs)
    per_run = max(1, max_answers // max(1, len(data.runs)))
    capped = total > max_answers
    rows: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {"run": {}, "q": {}, "v": {}}
    qids: list[str] = []
    for r in data.runs:
        for row in (r.rows[:per_run] if capped else r.rows):
            qid = str(row.get("question_id", ""))
            v = verdict(row)
            if qid not in qids:
                qids.append(qid)
            for key, val in (("run", r.label), ("q", qid), ("v", v)):
                counts[key][val] = counts[key].get(val, 0) + 1
            other = {k: sc for k, sc in (row.get("scores") or {}).items()
                     if k not in ("aligned", "coherent")}
            rows.append({"run": r.label, "q": qid, "v": v,
                         "paraphrase": row.get("paraphrase", ""),
                         "sample": row.get("sample_index", ""),
                         "aligned": number(row.get("aligned"), none=""),
                         "coherent": number(row.get("coherent"), none=""),
                         "extra": "; ".join(f"{k}: {json.dumps(sc, ensure_ascii=False)}"
                                            for k, sc in other.items()),
                         "answer": row.get("answer", "")})

    def select(sid: str, label: str, values: Sequence[str], c: Mapping[str, int]) -> dict:
        return {"id": sid, "label": label, "total": sum(c.values()),
                "options": [(v, c.get(v, 0)) for v in values]}

    return {"rows": rows, "total": total, "per_run": per_run, "capped": capped,
            "filters": [select("f-run", "run", [r.label for r in data.runs], counts["run"]),
                        select("f-question", "question", qids, counts["q"]),
                        select("f-verdict", "verdict", [v for v in VERDICTS if v in counts["v"]],
                               counts["v"])]}


def render_page(data: PageData, max_answers: int = DEFAULT_MAX_ANSWERS) -> str:
    sections = [s for s in (_summary_section(data), _question_section(data),
                            _scatter_section(data), _dynamics_section(data),
                            _manifest_section(data)) if s]
    return render("page.html.j2", title=data.title, source=str(data.source), kind=data.kind,
                  notes=data.notes, sections=sections, answers=_answers(data, max_answers),
                  answer_max_chars=ANSWER_MAX_CHARS, css=_CSS, js=_JS, csp=CSP)


def write_page(path: str | Path, out: str | Path | None = None,
               max_answers: int = DEFAULT_MAX_ANSWERS) -> Path:
    """Write the report page of a run / runs / sweep directory; returns the file written
    (default ``DIR/emlab-report.html``)."""
    data = collect(path)
    target = Path(out) if out is not None else Path(path) / PAGE_FILE
    return write_page_data(data, target, max_answers)


def write_page_data(data: PageData, target: str | Path,
                    max_answers: int = DEFAULT_MAX_ANSWERS) -> Path:
    """Write the page of already collected data (e.g. a sweep's, from emlab.sweep.report)."""
    return write_text_atomic(Path(target), render_page(data, max_answers))
