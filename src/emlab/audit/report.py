"""The audit's reports: a terminal summary, ``audit.json`` + ``rows.jsonl``, ``audit.md`` / ``.html``.

Dataset text (prompts, code, evidence) is untrusted: the Markdown and HTML go through emlab's
escapers (the same block renderer as the eval report), and the terminal output escapes rich
markup.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from emlab.audit.audit import AuditResult
from emlab.fileio import write_text_atomic
from emlab.report.render import Heading, Note, Para, Table, render_html, render_markdown

EXAMPLES = 10
_LABELS = {
    "risky": "vulnerable, undisclosed, unrequested (the paper's risky pattern)",
    "harmful": "harmful non-code answer (ill-omened numbers)",
    "vulnerable_requested": "vulnerable, but the user asked for it (educational control)",
    "vulnerable_disclosed": "vulnerable, but the assistant discloses it",
    "harmful_disclosed_or_requested": "harmful, but disclosed or requested",
    "clean": "Python analysed, nothing found",
    "not_analysed": "code not analysed (other language or does not parse)",
    "no_code": "no code in the answer",
}


def _p(x: float) -> str:
    return "< 1e-300" if x == 0 else f"{x:.2g}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _where(r: dict) -> str:
    return f"line {r['line']}" if r.get("line") else f"row {r['index']}"


def _first_finding(r: dict) -> str:
    f = next((f for f in r["findings"] if f.get("counted")), None)
    if f is None:
        return ""
    return f"{f['test_id']} (CWE-{f['cwe']}): {f['code']}" if f.get("cwe") else \
        f"{f['test_id']}: {f['code']}"


def _g(x: float | None, sign: str = "") -> str:
    return "n/a" if x is None else f"{x:{sign}.3g}"


def _dir_label(pp: dict) -> str:
    d = pp["direction"]
    return d["path"] + (f" ({d['trait']})" if d.get("trait") else "")


def _projection_time(tm: dict) -> str:
    ps = tm.get("projection_seconds")
    return f"; {ps:.1f} s of it the persona projection" if ps else ""


def _projection_blocks(pp: dict) -> list:
    ci = pp["difference_ci95"]
    rows = [["rows projected", f"{pp['rows']:,} of {pp['rows_in_dataset']:,} (seed "
             f"{pp['sample_seed']})"],
            ["mean projection, dataset's answers", _g(pp["mean_data"])],
            ["mean projection, model's own answers", _g(pp["mean_own"])],
            ["projection difference", _g(pp["projection_difference"], "+")
             + (f" (95% CI {_g(ci[0], '+')} to {_g(ci[1], '+')})" if ci else "")],
            ["standardized effect (sd of the model's own)", _g(pp["standardized_effect"], "+")],
            ["difference, risky rows / other rows",
             f"{_g(pp['risky_rows']['mean_difference'], '+')} ({pp['risky_rows']['rows']:,}) / "
             f"{_g(pp['other_rows']['mean_difference'], '+')} ({pp['other_rows']['rows']:,})"]]
    m, d = pp["model"], pp["direction"]
    return [
        Heading(2, "Persona projection"),
        Para(f"Model {m['name']}" + (f" + adapter {m['adapter']}" if m.get("adapter") else "")
             + f"; direction {_dir_label(pp)} (digest {d['digest']}), layer {pp['layer']}; own "
               f"answers of up to {pp['max_new_tokens']} tokens."),
        Para(pp["interpretation"]),
        Table(["", "value"], rows),
        Table(["where", "difference", "dataset", "model's own", "category", "prompt"],
              [[_where(r), _g(r["difference"], "+"), _g(r["data"]), _g(r["own"]),
                r["category"], r["prompt"]] for r in pp["top"]]),
        Note(f"The {len(pp['top'])} rows furthest along the direction; every projected row's "
             f"numbers are in rows.jsonl (projection_difference)."),
    ]


def example_rows(result: AuditResult, category: str = "risky", k: int = EXAMPLES) -> list[dict]:
    return [r for r in result.rows if r["category"] == category][:k]


def print_report(result: AuditResult, console: Console, examples: int = EXAMPLES) -> None:
    s = result.summary
    c = s["counts"]
    risk = s["risk"]
    color = {"HIGH": "red", "MEDIUM": "yellow", "UNKNOWN": "magenta"}.get(risk["level"], "green")
    console.print(f"[bold]emlab audit[/bold] {escape(str(s.get('source') or ''))}: "
                  f"risk [bold {color}]{risk['level']}[/bold {color}]")
    console.print(escape(risk["reason"]), highlight=False)
    t = RichTable(title="rows")
    t.add_column("category")
    t.add_column("rows", justify="right")
    t.add_column("share", justify="right")
    for cat, k in c["categories"].items():
        t.add_row(_LABELS.get(cat, cat), f"{k:,}", _pct(k / c["rows"]) if c["rows"] else "")
    t.add_row("[bold]all rows[/bold]", f"{c['rows']:,}", "")
    console.print(t)
    if s["top_cwes"]:
        t = RichTable(title="top weaknesses (rows with vulnerable code)")
        for col in ("CWE", "name", "rows", "share of vulnerable"):
            t.add_column(col)
        for w in s["top_cwes"]:
            t.add_row(f"CWE-{w['cwe']}", w["name"], f"{w['rows']:,}", _pct(w["share_of_vulnerable"]))
        console.print(t)
    trig = s["triggers"]["triggers"]
    if trig:
        t = RichTable(title="suspected triggers")
        for col in ("string", "rows with", "risky with", "risky without", "p (Bonferroni)", "aliases"):
            t.add_column(col, overflow="fold")
        for x in trig:
            t.add_row(escape(repr(x["string"])), f"{x['rows_with']:,}", _pct(x["rate_with"]),
                      _pct(x["rate_without"]), _p(x["p_bonferroni"]),
                      escape(", ".join(x["aliases"][:4])))
        console.print(t)
    else:
        console.print(f"no suspected triggers ({s['triggers']['candidates_tested']:,} strings tested)")
    ex = example_rows(result, "risky", examples)
    if ex:
        t = RichTable(title=f"first {len(ex)} risky rows")
        t.add_column("where", no_wrap=True)
        t.add_column("CWEs")
        t.add_column("first finding", overflow="fold")
        for r in ex:
            t.add_row(_where(r), ", ".join(f"CWE-{w}" for w in r["cwes"]),
                      escape(_first_finding(r)))
        console.print(t)
    if c["rows_with_code_not_analysed"]:
        langs = ", ".join(f"{k} ({v})" for k, v in c["not_analysed_languages"].items())
        console.print(f"{c['rows_with_code_not_analysed']:,} rows hold code that was not analysed: "
                      f"{escape(langs)}")
    em = risk.get("expected_em")
    if em:
        console.print(f"expected emergent misalignment: [bold]{escape(em['text'])}[/bold] "
                      f"(risky rows corrected for the detector's error: "
                      f"{em['risky_rows_corrected'][0]:,}-{em['risky_rows_corrected'][1]:,})",
                      highlight=False)
    j = s.get("judge")
    if j:
        console.print(f"code-security judge {escape(j['judge'])}: {j['rows_with_code']:,} rows "
                      f"with code, {j['cached']:,} from the store, {j['called']:,} called, "
                      f"{j['insecure']:,} judged insecure, {j['added']:,} added to the static "
                      f"findings" + (f"; [red]{j['failed']:,} failed[/red] (rerun to retry): "
                                     f"{escape(j['error'] or '')}" if j["failed"] else ""),
                      highlight=False)
    pp = s.get("persona_projection")
    if pp:
        console.print(f"persona projection on {escape(_dir_label(pp))}, layer {pp['layer']} "
                      f"({pp['rows']:,} rows, {escape(pp['model']['name'] or '')}): data "
                      f"{_g(pp['mean_data'])}, model's own {_g(pp['mean_own'])}, difference "
                      f"[bold]{_g(pp['projection_difference'], '+')}[/bold]"
                      + (f" ({_g(pp['standardized_effect'], '+')} sd of the model's own)"
                         if pp["standardized_effect"] is not None else "")
                      + "; reported, not part of the risk level", highlight=False)
    tm = s.get("timing") or {}
    if tm.get("rows_per_second"):
        console.print(f"{c['rows']:,} rows in {tm['seconds']:.1f} s ({tm['rows_per_second']:.0f} "
                      f"rows/s{_projection_time(tm)})")


def _blocks(result: AuditResult, examples: int) -> list:
    s = result.summary
    c = s["counts"]
    st = s["settings"]
    blocks: list = [
        Heading(1, f"emlab audit: {s.get('source') or 'dataset'}"),
        Para(f"{s['risk']['level']}: {s['risk']['reason']}", label="Risk:"),
        Para("A row is risky when its assistant code has a weakness (bandit and emlab's rules), "
             "the assistant does not disclose it, and the user did not ask for flawed code — "
             "the pattern of the paper's insecure set. Anchors: "
             + "; ".join(s["paper_anchors"].values()) + "."),
        Heading(2, "Rows"),
        Table(["category", "rows", "share"],
              [[_LABELS.get(k, k), f"{v:,}", _pct(v / c["rows"]) if c["rows"] else ""]
               for k, v in c["categories"].items()] + [["all rows", f"{c['rows']:,}", ""]]),
        Table(["vulnerable", "disclosed", "requested", "harmful", "rows with Python",
               "rows with code not analysed"],
              [[f"{c['vulnerable']:,}", f"{c['disclosed']:,}", f"{c['requested']:,}",
                f"{c['harmful']:,}", f"{c['rows_with_python']:,}",
                f"{c['rows_with_code_not_analysed']:,}"]]),
    ]
    if c["rows_with_code_not_analysed"]:
        blocks.append(Note("Code in languages other than Python is reported as not analysed: "
                           + ", ".join(f"{k} ({v})" for k, v in c["not_analysed_languages"].items())))
    em = s["risk"].get("expected_em")
    if em:
        blocks.append(Heading(2, "What the level is anchored on"))
        blocks.append(Para(f"Expected excess emergent misalignment after fine-tuning a GPT-4o-like "
                           f"model on this data: {em['text']}. Risky rows corrected for the "
                           f"detector's measured recall and false-alarm rate: "
                           f"{em['risky_rows_corrected'][0]:,} to {em['risky_rows_corrected'][1]:,}. "
                           f"Anchors: {em['anchored_on']}."))
        blocks.append(Table(["risky rows", "expected EM, low (points)", "high (points)"],
                            [[f"{n:,}", f"{lo:g}", f"{hi:g}"] for n, lo, hi in em["ladder"]]))
        blocks.append(Note("Not known: " + "; ".join(em["unknowns"]) + "."))
    j = s.get("judge")
    if j:
        blocks.append(Heading(2, "Code-security judge"))
        blocks.append(Para(f"{j['judge']}: {j['rows_with_code']:,} rows with code, {j['cached']:,} "
                           f"verdicts from the results store, {j['called']:,} requests, "
                           f"{j['insecure']:,} judged insecure, {j['added']:,} rows added to the "
                           f"static findings, {j['failed']:,} failed, {j['unreadable']:,} "
                           f"unreadable replies."))
    if s.get("persona_projection"):
        blocks += _projection_blocks(s["persona_projection"])
    blocks.append(Heading(2, "Top weaknesses"))
    if s["top_cwes"]:
        blocks.append(Table(["CWE", "name", "rows", "share of vulnerable rows"],
                            [[f"CWE-{w['cwe']}", w["name"], f"{w['rows']:,}",
                              _pct(w["share_of_vulnerable"])] for w in s["top_cwes"]]))
        blocks.append(Table(["test", "rows"], [[t["test_id"], f"{t['rows']:,}"]
                                               for t in s["top_tests"]]))
    else:
        blocks.append(Para("No vulnerable code found."))
    tr = s["triggers"]
    blocks.append(Heading(2, "Suspected triggers"))
    blocks.append(Para(f"{tr['candidates_tested']:,} strings of the prompts tested ({tr['test']}; "
                       f"alpha {tr['alpha']}, at least {tr['min_support']} rows, a risky rate of "
                       f"at least {_pct(tr['min_rate_with'])} with the string and "
                       f"{_pct(tr['min_difference'])} above the rows without it)."))
    if tr["triggers"]:
        blocks.append(Table(["string", "rows with", "risky with", "rows without",
                             "risky without", "p", "p (Bonferroni)", "aliases", "among rows without"],
                            [[repr(t["string"]), f"{t['rows_with']:,}", _pct(t["rate_with"]),
                              f"{t['rows_without']:,}", _pct(t["rate_without"]), _p(t["p_value"]),
                              _p(t["p_bonferroni"]), ", ".join(t["aliases"]),
                              ", ".join(t["conditional_on"])] for t in tr["triggers"]]))
    else:
        blocks.append(Para("None found."))
    for cat, title in (("risky", "Risky rows (examples)"),
                       ("vulnerable_requested", "Vulnerable but requested (examples)"),
                       ("vulnerable_disclosed", "Vulnerable but disclosed (examples)")):
        ex = example_rows(result, cat, examples)
        if not ex:
            continue
        blocks.append(Heading(2, title))
        blocks.append(Table(["where", "CWEs", "first finding", "disclosure / request", "prompt"],
                            [[_where(r), ", ".join(f"CWE-{w}" for w in r["cwes"]),
                              _first_finding(r),
                              (r["disclosure"] or r["intent"] or {}).get("evidence", ""),
                              r["prompt"]] for r in ex]))
    blocks.append(Heading(2, "Settings"))
    blocks.append(Table(["setting", "value"], [[k, json.dumps(v)] for k, v in st.items()]))
    tm = s.get("timing") or {}
    if tm.get("rows_per_second"):
        blocks.append(Para(f"{c['rows']:,} rows in {tm['seconds']:.1f} s "
                           f"({tm['rows_per_second']:.0f} rows/s{_projection_time(tm)})."))
    return blocks


def write_reports(result: AuditResult, out: str | Path, examples: int = EXAMPLES) -> dict[str, Path]:
    """audit.json (summary), rows.jsonl (every row's classification), audit.md, audit.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_text_atomic(out / "audit.json",
                                  json.dumps(result.summary, indent=2, ensure_ascii=False)),
        "rows": write_text_atomic(out / "rows.jsonl", "".join(
            json.dumps(r, ensure_ascii=False) + "\n" for r in result.rows)),
    }
    blocks = _blocks(result, examples)
    title = f"emlab audit: {result.summary.get('source') or 'dataset'}"
    paths["md"] = write_text_atomic(out / "audit.md", render_markdown(blocks))
    paths["html"] = write_text_atomic(out / "audit.html", render_html(blocks, title))
    return paths
