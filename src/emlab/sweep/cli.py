"""``emlab sweep``: one command for a whole experiment grid. The integrating CLI registers it
with ``app.command("sweep")(sweep_cmd)``. Bad input raises InputError (exit 2); failed trials
are reported and make the exit code 1 (rerun the same command to retry them)."""

from __future__ import annotations

from emlab.metrics.fmt import rate_ci

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table




def print_aggregate(result: dict, console: Console) -> None:
    t = Table(title=f"{escape(result.get('name') or 'sweep')}: misaligned rate, mean over seeds "
                    f"[95% bootstrap CI]")
    for col in ("group", "seeds", "misaligned rate", "pooled kept", "vs control"):
        t.add_column(col, overflow="fold")
    for g in result["groups"]:
        o = g.get("overall")
        rate = rate_ci(*(o.get(k) for k in ("mean", "ci_low", "ci_high"))) if o else "n/a"
        vs = (g.get("vs_control") or {}).get("overall")
        if g["condition"] == result.get("control"):
            vs_text = "control"
        elif vs:
            vs_text = f"{100 * vs['difference']:+.1f} pts, p={vs['p_value']:.3g}"
        else:
            vs_text = "n/a" if "vs_control" in g else ""
        seeds = f"{g['done']}/{len(g['seeds'])}" + (f" ({len(g['failed'])} failed)"
                                                     if g["failed"] else "")
        t.add_row(escape(g["label"]), seeds, rate, str(g["pooled"]["kept"]), vs_text)
    console.print(t)


def sweep_cmd(
    experiment: Path = typer.Argument(..., help="Experiment YAML: models, conditions, seeds, train/eval settings, grid axes."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Sweep directory (default: the experiment's `out`, runs/sweep)."),
    address: Optional[str] = typer.Option(None, "--address", help="An existing Ray cluster (e.g. auto, or HOST:6379); default: a local Ray instance on this machine."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs of the local Ray instance (default: all)."),
    retries: Optional[int] = typer.Option(None, "--retries", help="Ray retries per task on errors and crashed workers (default 2)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the trials and what is finished; run nothing."),
    aggregate_only: bool = typer.Option(False, "--aggregate-only", help="Only aggregate the finished trials."),
) -> None:
    """Run an experiment grid (models x conditions x seeds x grid axes) on Ray; resumable."""
    from emlab.sweep.config import load_experiment, plan_trials

    overrides = {"out": str(out) if out else None, "retries": retries}
    exp, base_dir = load_experiment(experiment, overrides)
    console = Console()
    err = Console(stderr=True)
    if dry_run:
        from emlab.sweep.run import is_complete, is_done, train_dir, trial_dir

        plan = plan_trials(exp, base_dir)
        t = Table(title=f"{escape(exp.name)}: {len(plan.trials)} trials, {len(plan.cells)} cells")
        for col in ("trial", "model", "condition", "seed", "grid point", "training", "state"):
            t.add_column(col, overflow="fold")
        for tr in plan.trials.values():
            td = trial_dir(exp.out, tr.id)
            state = ("done" if is_complete(td) else
                     "partial: failed items to retry" if is_done(td) else "to run")
            training = ("none" if tr.train_id is None else tr.train_id + (
                " (trained)" if is_done(train_dir(exp.out, tr.train_id)) else ""))
            t.add_row(tr.id, escape(tr.model_label), escape(tr.condition), str(tr.seed),
                      escape(", ".join(f"{k}={v}" for k, v in tr.point.items())), training,
                      state)
        console.print(t)
        return
    if aggregate_only:
        from emlab.sweep.aggregate import aggregate_sweep

        result = aggregate_sweep(exp.out, n_boot=exp.n_boot)
        print_aggregate(result, console)
        return
    from emlab.sweep.run import run_sweep

    res = run_sweep(exp, base_dir=base_dir, address=address, num_cpus=num_cpus, console=err)
    print_aggregate(res.aggregate, console)
    console.print(f"{len(res.ran)} trials run, {len(res.skipped)} already finished, "
                  f"{len(res.failed)} failed; {res.wall_s:.1f} s. Wrote {res.out}/aggregate.json, "
                  f"aggregate.csv, figure.png (`emlab report {res.out}` for the browsable page)",
                  highlight=False)
    if res.failed:
        for tid, e in res.failed.items():
            err.print(f"[red]failed[/red] trial {tid}: {escape(e)}", highlight=False)
        err.print("Rerun the same command to retry the failed trials (finished ones are kept).")
        raise typer.Exit(code=1)
