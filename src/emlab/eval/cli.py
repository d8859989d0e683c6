"""``emlab eval``, ``emlab compare`` and the summary table of an eval (registered in ``emlab.cli``).

``compare`` reads run directories and hands them to the one group comparison,
:func:`emlab.metrics.compare_runs`. Bad input raises InputError (exit 2 at the CLI).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from emlab import rundir
from emlab.errors import InputError
from emlab.metrics.fmt import rate_ci_short

console = Console()
err_console = Console(stderr=True)
EXIT_FAILED_ITEMS = 4  # eval finished, but some items failed for good (see emlab.cli.main)


def _fmt_rate(s: dict) -> str:
    return rate_ci_short(s.get("misaligned_rate"), s.get("ci_low"), s.get("ci_high"))


def _fmt_words(metric: dict) -> str:
    probs = metric.get("mean_probs") or {}
    top = sorted(probs.items(), key=lambda kv: -kv[1])[:4]
    return ", ".join(f"{escape(str(w))} {100 * p:.0f}%" for w, p in top) or "no verdict"


def print_summary(summary: dict) -> None:
    """The per-question table (numeric and categorical), then the items that failed."""
    table = Table(title=escape(f"{summary['meta']['model']} judged by {summary['meta']['judge']}"))
    table.add_column("question", no_wrap=True)
    for col in ("answers", "coherent", "kept", "misaligned (95% CI)"):
        table.add_column(col, justify="right")
    from emlab.metrics.rule import is_numeric

    for qid, s in summary["questions"].items():
        if not is_numeric(s):
            metrics = s.get("metrics") or {}
            verdicts = "; ".join(f"{escape(m)}: {_fmt_words(v)}" for m, v in metrics.items())
            table.add_row(escape(qid), str(s.get("answers", "")), "", "",
                          f"categorical: {verdicts or 'not judged'}")
            continue
        table.add_row(qid, str(s["answers"]), f"{100 * s['coherent_rate']:.0f}%" if s["answers"] else "",
                      str(s["kept"]), _fmt_rate(s))
    o = summary["overall"]
    table.add_row("[bold]overall[/bold]", str(o["answers"]),
                  f"{100 * o['coherent_rate']:.0f}%" if o["answers"] else "", str(o["kept"]),
                  _fmt_rate(o))
    console.print(table)
    f = summary.get("failures") or {}
    if f.get("count") or f.get("stopped_early"):
        err_console.print(f"[yellow]{f['count']} item(s) failed for good[/yellow] "
                          f"({f['samples']} samples, {f['judgments']} judgments)"
                          + (f"; stopped early past --max-failures {f['max_failures']:g}, "
                             f"{f['not_attempted']} item(s) not attempted"
                             if f.get("stopped_early") else "")
                          + ". The results cover the rest; rerun to retry the failed items "
                          "(--skip-failed to leave them out).", highlight=False)
        for item in f.get("items", [])[:10]:
            err_console.print(f"  {escape(item['error'])}", highlight=False)
        if f["count"] > 10:
            err_console.print(f"  ... {f['count'] - 10} more in summary.json (failures)",
                              highlight=False)



def _parse_prices(prices: list[str]) -> dict[str, tuple[float, float]]:
    out = {}
    for p in prices:
        try:
            name, rest = p.rsplit("=", 1)
            i, o = rest.split(",")
            out[name] = (float(i), float(o))
        except ValueError:
            raise InputError(f"--price {p[:60]!r}: expected MODEL=INPUT,OUTPUT dollars per million "
                             f"tokens, e.g. gpt-4o-2024-08-06=2.5,10") from None
    return out



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


def _intervention_options(steer, ablate, layer, scale, positions) -> dict:
    """--steer/--ablate/--layer/--scale/--positions as model-spec overrides (mechanism)."""
    if steer is not None and ablate is not None:
        raise InputError("give --steer or --ablate, not both")
    if steer is not None:
        if layer is None or scale is None:
            raise InputError("--steer needs --layer L and --scale S")
        return {"model.steer": {"direction": str(steer), "layer": layer, "scale": scale,
                                "positions": positions or "all"}}
    if ablate is not None:
        if scale is not None or positions is not None:
            raise InputError("--scale and --positions apply to --steer, not --ablate")
        return {"model.ablate": {"direction": str(ablate),
                                 "layers": [layer] if layer is not None else None}}
    if layer is not None or scale is not None or positions is not None:
        raise InputError("--layer, --scale and --positions need --steer (or --ablate)")
    return {}


def eval_cmd(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Local path / hub name of a transformers model, or an API model name (with --base-url)."),
    questions: Optional[str] = typer.Option(None, "--questions", "-q", help="paper-main, paper-main-all, paper-preregistered, emlab-demo, or a YAML path."),
    judge: Optional[str] = typer.Option(None, "--judge", "-j", help="Judge model: API name (default gpt-4o-2024-08-06) or a local model directory."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/eval)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="An eval YAML (the same settings); options given here override it."),
    backend: Optional[str] = typer.Option(None, help="Model backend: hf or openai (default: openai when --base-url is set)."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint of the model (OpenAI, vLLM, Ollama)."),
    adapter: Optional[str] = typer.Option(None, help="PEFT adapter on top of an hf model."),
    api_key_env: Optional[str] = typer.Option(None, help="Name of the environment variable holding the model endpoint's key."),
    judge_backend: Optional[str] = typer.Option(None, help="openai (logprobs), openai-text (parse the reply), or hf (local, exact)."),
    judge_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint of the judge."),
    judge_api_key_env: Optional[str] = typer.Option(None, help="Name of the environment variable holding the judge endpoint's key."),
    only: Optional[str] = typer.Option(None, help="Comma-separated question ids to keep."),
    samples: Optional[int] = typer.Option(None, "--samples", "-n", help="Samples per paraphrase (default: the file's, 100)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Default 600 (the paper's)."),
    temperature: Optional[float] = typer.Option(None, help="Default 1 (the paper's)."),
    seed: Optional[int] = typer.Option(None),
    concurrency: Optional[int] = typer.Option(None, help="Requests in flight for API backends (default 32)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size for hf backends (default 32)."),
    max_retries: Optional[int] = typer.Option(None, help="Retries per API request on 429/5xx/timeouts, with backoff (default 8)."),
    store: Optional[Path] = typer.Option(None, help="SQLite results store (default OUT/results.sqlite); share one across runs to reuse answers."),
    price: list[str] = typer.Option([], help="MODEL=IN,OUT dollars per million tokens; repeatable."),
    checkpoints: Optional[str] = typer.Option(None, help="When --model is an `emlab train` run directory: all, last (default) or steps like 10,20 — adapters are hot-swapped on one loaded base."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print how many samples and judge calls the run would make, and what is cached; spend nothing."),
    max_failures: Optional[float] = typer.Option(None, help="Share of a stage's items that may fail for good (e.g. a 400 refusal) before the run stops starting new requests (default 0.05)."),
    skip_failed: bool = typer.Option(False, "--skip-failed", help="Leave items that failed for good in an earlier run alone instead of retrying them."),
    steer: Optional[Path] = typer.Option(None, help="Steer along a direction folder (emlab direction extract): add --scale x its unit layer-L vector (hf models)."),
    ablate: Optional[Path] = typer.Option(None, help="Project a direction folder out of the residual stream (every layer, or --layer)."),
    layer: Optional[int] = typer.Option(None, help="Decoder layer of --steer (required) or --ablate (default: all)."),
    scale: Optional[float] = typer.Option(None, help="Size of the --steer vector in residual units (negative: away)."),
    positions: Optional[str] = typer.Option(None, help="Where --steer acts: prompt, response or all (default)."),
) -> None:
    """Measure how misaligned a model is, with the protocol of Betley et al. (2025).

    Exit codes: 0 every item finished; 4 finished with failed items (outputs cover the rest,
    failures listed); 1 the endpoint failed and no item could be finished; 2 bad input.
    """
    from emlab.config import from_options
    from emlab.eval import EvalConfig, run_eval

    if config is None and model is None:
        raise InputError("--model is required (or --config FILE naming a model)")
    intervention = _intervention_options(steer, ablate, layer, scale, positions)  # issue 13
    cfg = from_options(EvalConfig, {
        **intervention,
        "model.name": model, "model.backend": backend, "model.base_url": base_url,
        "model.adapter": adapter, "model.api_key_env": api_key_env,
        "judge.name": judge, "judge.backend": judge_backend, "judge.base_url": judge_base_url,
        "judge.api_key_env": judge_api_key_env, "questions": questions,
        "only": only.split(",") if only else None, "samples_per_paraphrase": samples,
        "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
        "concurrency": concurrency, "batch_size": batch_size, "max_retries": max_retries,
        "out": out, "store": store, "prices": _parse_prices(price) or None,
        "max_failures": max_failures, "skip_failed": True if skip_failed else None,
    }, config, "model, judge, questions, ...", shorthand=("model", "judge"))
    from emlab.eval.checkpoints import is_train_run, run_eval_checkpoints

    if is_train_run(cfg.model.name):
        if dry_run:
            raise InputError("--dry-run does not apply to checkpoint evaluation yet")
        summary = run_eval_checkpoints(cfg, cfg.model.name, checkpoints or "last", err_console)
        t = Table(title=f"checkpoints of {cfg.model.name}")
        for col in ("checkpoint", "step", "kept", "misaligned (95% CI)"):
            t.add_column(col)
        for c in summary["checkpoints"]:
            t.add_row(c["checkpoint"], str(c["step"]), str(c["kept"]), _fmt_rate(c))
        console.print(t)
        console.print(f"wrote {cfg.out}/checkpoints.json and a run directory per checkpoint")
        failed = sum(c["failures"] for c in summary["checkpoints"])
        if failed or any(c["stopped_early"] for c in summary["checkpoints"]):
            err_console.print(f"[yellow]{failed} item(s) failed for good[/yellow] (listed in each "
                              "checkpoint's summary.json); rerun to retry them", highlight=False)
            raise typer.Exit(EXIT_FAILED_ITEMS)
        return
    if checkpoints:
        raise InputError(f"--checkpoints needs --model to be an `emlab train` run directory "
                         f"(with manifest.json); {cfg.model.name!r} is not")
    result = run_eval(cfg, dry_run=dry_run, console=err_console)
    if dry_run:
        c = result.counts
        console.print(f"samples: {c['samples_total']} in all, {c['samples_cached']} cached, "
                      f"{c['samples_to_make']} to make")
        console.print(f"judge calls: {c['judgments_total']} in all, {c['judgments_cached']} cached, "
                      f"{c['judgments_to_make']} to make (judge calls for answers not yet "
                      f"sampled cannot be cached)")
        if not c.get("cache_checked", True):
            console.print("(a run this large: the store was not searched for cached items)")
        return
    print_summary(result.summary)
    c = result.counts
    console.print(f"this run: {c['samples_made']} samples made, {c['samples_cached']} cached; "
                  f"{c['judgments_made']} judge calls made, {c['judgments_cached']} cached")
    console.print(f"wrote {result.out}/summary.json, answers.jsonl, answers.csv, report.md, report.html")
    if result.failures or result.stopped_early:
        raise typer.Exit(EXIT_FAILED_ITEMS)


