"""Aggregate a sweep the way the paper reports it.

Per group (model, condition, grid point): the mean misaligned rate over seeds with a
percentile-bootstrap 95% CI (each seed's model counts once, as in the paper's error bars),
overall and per question; the answers pooled over seeds with a Wilson CI; and, against the
control condition at the same model and grid point, Fisher's one-sided exact test of a rise
with a Newcombe CI of the difference (pooled over seeds), overall and per question.

Writes ``SWEEP/aggregate.json``, ``SWEEP/aggregate.csv`` (one row per group and question, plus
an ``ALL`` row) and ``SWEEP/figure.png`` (the paper's main figure: questions across, one
colour per condition, 95% CIs).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from emlab.fileio import write_bytes_atomic, write_text_atomic
from emlab.metrics.groups import across_runs, pool, rise
from emlab.rundir import ERROR, is_done, load_sweep_plan, read_json, read_summary, trial_dir
from emlab.metrics.rule import is_numeric
from emlab.sweep.config import Cell, group_label

ALL = "ALL"


def load_trial_summaries(out: Path) -> tuple[dict[str, Any], dict[str, dict], dict[str, str]]:
    """(plan, {trial id: summary} of finished trials, {trial id: error} of failed ones)."""
    plan = load_sweep_plan(out)
    summaries: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for t in plan["trials"]:
        d = trial_dir(out, t["id"])
        if is_done(d):
            s = read_summary(d / "eval")
            if s is not None:
                summaries[t["id"]] = s
                continue
        err = read_json(d / ERROR)
        if isinstance(err, dict):
            errors[t["id"]] = err.get("error", "failed")
    return plan, summaries, errors


def _pooled(summaries: list[dict], qid: str | None) -> dict[str, Any]:
    return pool((s["overall"] if qid is None else s["questions"].get(qid)) for s in summaries)


def aggregate_sweep(out: str | Path, n_boot: int = 10000, write: bool = True) -> dict[str, Any]:
    out = Path(out)
    plan, summaries, errors = load_trial_summaries(out)
    exp = plan["experiment"]
    control = exp.get("control")
    cells = [Cell(**c) for c in plan["cells"]]
    trials = {t["id"]: t for t in plan["trials"]}

    # groups in plan order; a group's trials in seed order
    groups: dict[str, dict[str, Any]] = {}
    for c in cells:
        g = groups.setdefault(c.group, {"label": c.group, "model": c.model_label,
                                        "condition": c.condition, "point": c.point,
                                        "seeds": [], "trials": []})
        g["seeds"].append(c.seed)
        g["trials"].append(c.trial_id)
    qids: list[str] = []
    for s in summaries.values():
        for qid, q in s["questions"].items():
            if is_numeric(q) and qid not in qids:
                qids.append(qid)

    for g in groups.values():
        done = [summaries[t] for t in g["trials"] if t in summaries]
        g["done"] = len(done)
        g["failed"] = {t: errors[t] for t in g["trials"] if t in errors}
        g["pending"] = [t for t in g["trials"] if t not in summaries and t not in errors]
        g["seeds_done"] = [seed for seed, t in zip(g["seeds"], g["trials"]) if t in summaries]
        if done:
            ar = across_runs(done, n_boot=n_boot)
            g["overall"] = ar["overall"]["misaligned_rate"]
            g["overall_question_mean"] = ar["overall"]["misaligned_rate_question_mean"]
            g["questions"] = {q: {**ar["questions"].get(q, {}), "pooled": _pooled(done, q)}
                              for q in qids}
        else:
            g["overall"] = g["overall_question_mean"] = None
            g["questions"] = {}
        g["pooled"] = _pooled(done, None)
        g["_done"] = done

    if control is not None:
        for g in groups.values():
            if g["condition"] == control:
                continue
            ref = groups.get(group_label(g["model"], control, g["point"]))
            if ref is None or not ref["_done"] or not g["_done"]:
                g["vs_control"] = None
                continue
            g["vs_control"] = {
                "control": ref["label"],
                "overall": rise(ref["pooled"], g["pooled"]),
                "questions": {q: rise(_pooled(ref["_done"], q), _pooled(g["_done"], q))
                              for q in qids},
            }
    for g in groups.values():
        g.pop("_done")

    result = {
        "name": exp.get("name"), "control": control, "questions": qids,
        "trials": {"total": len(trials), "done": len(summaries), "failed": errors,
                   "pending": [t for t in trials if t not in summaries and t not in errors]},
        "groups": list(groups.values()),
        "method": {"across_seeds": f"mean over seeds with a percentile-bootstrap 95% CI "
                                   f"({n_boot} resamples)",
                   "pooled": "answers pooled over seeds, Wilson 95% CI",
                   "vs_control": "Fisher exact one-sided (condition > control), pooled over "
                                 "seeds; Newcombe hybrid score CI of the difference"},
    }
    if write:
        write_text_atomic(out / "aggregate.json", json.dumps(result, indent=2, ensure_ascii=False))
        write_text_atomic(out / "aggregate.csv", aggregate_csv(result))
        write_bytes_atomic(out / "figure.png", sweep_figure_png(result))
    return result


def aggregate_csv(result: dict[str, Any]) -> str:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(["group", "model", "condition", "point", "question", "seeds_done",
                "mean_misaligned_rate", "ci_low", "ci_high", "pooled_kept",
                "pooled_misaligned", "p_vs_control"])

    def cell(x: Any) -> Any:
        return "" if x is None else x

    for g in result["groups"]:
        point = json.dumps(g["point"], ensure_ascii=False) if g["point"] else ""
        vs = g.get("vs_control") or {}
        rows = [(ALL, g["overall"], g["pooled"], (vs.get("overall") or {}))]
        for q in result["questions"]:
            qg = g["questions"].get(q) or {}
            rows.append((q, qg, qg.get("pooled") or {}, (vs.get("questions") or {}).get(q) or {}))
        for q, stats, pooled, test in rows:
            stats = stats or {}
            w.writerow([g["label"], g["model"], g["condition"], point, q, g["done"],
                        cell(stats.get("mean")), cell(stats.get("ci_low")),
                        cell(stats.get("ci_high")), cell(pooled.get("kept")),
                        cell(pooled.get("misaligned")), cell(test.get("p_value"))])
    return buf.getvalue()


def figure_series(result: dict[str, Any]) -> list[tuple[str, dict[str, tuple]]]:
    """[(group label, {question: (mean, ci_low, ci_high)})] with an ``ALL`` column first."""
    series = []
    for g in result["groups"]:
        if not g["done"]:
            continue
        values: dict[str, tuple] = {}
        if g["overall"] and g["overall"].get("mean") is not None:
            o = g["overall"]
            values[ALL] = (o["mean"], o["ci_low"], o["ci_high"])
        for q, qg in g["questions"].items():
            if qg and qg.get("mean") is not None:
                values[q] = (qg["mean"], qg["ci_low"], qg["ci_high"])
        series.append((g["label"], values))
    return series


def sweep_figure_png(result: dict[str, Any]) -> bytes:
    from emlab.report.chart import group_ci_png

    return group_ci_png(figure_series(result), [ALL, *result["questions"]],
                            title=f"{result.get('name') or 'sweep'}: misaligned answers "
                                  f"(mean over seeds, 95% bootstrap CI)")
