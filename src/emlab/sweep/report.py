"""The browsable page of a sweep: the sweep gathers its trials and aggregate into the page's
data (:class:`emlab.report.page.PageData`); the page renders it without knowing the sweep.
"""

from __future__ import annotations

from pathlib import Path

from emlab import rundir
from emlab.report.page import PageData, TrainData, load_run, load_train
from emlab.sweep.aggregate import ALL, aggregate_sweep, figure_series
from emlab.sweep.config import group_label


def collect_sweep(d: str | Path) -> PageData:
    """Page data of a sweep directory: the aggregate (recomputed from the trials on disk, so
    an unfinished sweep shows what is done), every finished trial's run and each training run."""
    d = Path(d)
    plan = rundir.load_sweep_plan(d)
    n_boot = (plan.get("experiment") or {}).get("n_boot", 10000)
    agg = aggregate_sweep(d, n_boot=n_boot, write=False)
    data = PageData(kind="sweep", title=f"emlab sweep report: {agg.get('name') or d.name}",
                    source=d, aggregate=agg,
                    figure=(figure_series(agg), [ALL, *agg["questions"]]))
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
