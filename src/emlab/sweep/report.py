"""The browsable page of a sweep: the sweep gathers its trials and its aggregate into the
page's data (:class:`emlab.report.page.PageData`) — runs, training runs and the blocks of its
group tables and figure — and the page renders them without knowing what a sweep is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emlab import rundir
from emlab.metrics.fmt import rate_ci
from emlab.report.chart import group_ci_png
from emlab.report.page import PageData, TrainData, load_run, load_train, table
from emlab.report.render import Heading, Image, Para
from emlab.sweep.aggregate import ALL, aggregate_sweep, figure_series
from emlab.sweep.config import group_label


def _summary_blocks(agg: dict[str, Any]) -> list:
    rows = []
    for g in agg["groups"]:
        o = g.get("overall") or {}
        p = g["pooled"]
        vs = (g.get("vs_control") or {}).get("overall")
        vs_text = ("control" if g["condition"] == agg.get("control") else
                   f"{100 * vs['difference']:+.1f} pts [{100 * vs['ci_low']:+.1f}, "
                   f"{100 * vs['ci_high']:+.1f}], p={vs['p_value']:.3g}" if vs else "n/a")
        rows.append([g["label"], f"{g['done']}/{len(g['seeds'])}" + (
            f" ({len(g['failed'])} failed)" if g["failed"] else ""),
            rate_ci(o.get("mean"), o.get("ci_low"), o.get("ci_high")),
            p["kept"], rate_ci(p["misaligned_rate"], p["ci_low"], p["ci_high"]), vs_text])
    t = agg["trials"]
    blocks: list = [
        table(["group", "seeds done", "misaligned rate: mean over seeds [95% bootstrap CI]",
               "kept (pooled)", "pooled rate [Wilson 95% CI]",
               f"vs control ({agg.get('control') or 'none'}): rise [95% CI], Fisher p"], rows),
        Para(f"Trials: {t['total']} in all, {t['done']} finished, {len(t['failed'])} failed, "
             f"{len(t['pending'])} not run yet.", max_chars=None)]
    if t["failed"]:
        blocks += [Heading(3, "Failed trials"),
                   table(["trial", "error"], [[k, v] for k, v in t["failed"].items()])]
    return blocks


def _question_blocks(agg: dict[str, Any]) -> list:
    blocks: list = []
    series = figure_series(agg)
    if series:
        blocks.append(Image("Misaligned rate per question and condition, mean over seeds with "
                            "95% bootstrap CIs", "", group_ci_png(series, [ALL, *agg["questions"]])))
    groups = [g for g in agg["groups"] if g["done"]]
    rows = []
    for q in agg["questions"]:
        row = [q]
        for g in groups:
            qg = g["questions"].get(q) or {}
            test = ((g.get("vs_control") or {}).get("questions") or {}).get(q)
            row.append(rate_ci(qg.get("mean"), qg.get("ci_low"), qg.get("ci_high"))
                       + (f"; p={test['p_value']:.3g}" if test else ""))
        rows.append(row)
    if groups:
        blocks.append(table(["question", *[g["label"] for g in groups]], rows))
    return blocks


def collect_sweep(d: str | Path) -> PageData:
    """Page data of a sweep directory: the aggregate (recomputed from the trials on disk, so
    an unfinished sweep shows what is done), every finished trial's run and each training run."""
    d = Path(d)
    plan = rundir.load_sweep_plan(d)
    n_boot = (plan.get("experiment") or {}).get("n_boot", 10000)
    agg = aggregate_sweep(d, n_boot=n_boot, write=False)
    data = PageData(kind="sweep", title=f"emlab sweep report: {agg.get('name') or d.name}",
                    source=d, summary_blocks=_summary_blocks(agg),
                    question_blocks=_question_blocks(agg), collapse_runs=True,
                    dynamics_note=" and over the seeds of a group")
    trains_seen: dict[str, TrainData] = {}
    for t in plan["trials"]:
        group = group_label(t["model_label"], t["condition"], t.get("point") or {})
        label = f"{group} seed={t['seed']}"
        td = rundir.trial_dir(d, t["id"])
        if rundir.is_done(td) and rundir.is_eval_run(td / "eval"):
            data.runs.append(load_run(td / "eval", label, group))
        if t.get("train_id") and t["train_id"] not in trains_seen:
            tr = rundir.train_dir(d, t["train_id"])
            if (tr / rundir.MANIFEST).is_file():
                trains_seen[t["train_id"]] = load_train(tr, label, group)
    data.trains = list(trains_seen.values())
    return data
