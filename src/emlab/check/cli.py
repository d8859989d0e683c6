"""``emlab check`` and ``emlab history`` (registered in ``emlab.cli``).

Exit codes of ``emlab check``: 0 PASS, 1 FAIL, 3 INCONCLUSIVE; bad input raises InputError,
which the main CLI turns into exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from emlab.check.suite import CheckConfig
from emlab.config import default_of
from emlab.errors import InputError

console = Console()
err_console = Console(stderr=True)


def _D(setting: str):
    """The CheckConfig default of a setting: the CLI does not restate it."""
    return default_of(CheckConfig, setting)


def _schedule(text: str) -> list[int]:
    try:
        s = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--schedule {text!r}: expected increasing numbers like 10,25,50,100") from None
    if not s:
        raise InputError("--schedule is empty")
    return s


def check_cmd(
    tuned: str = typer.Option(..., "--tuned", "-t", help="The fine-tuned model: local path / hub name, API model name (with --tuned-base-url or --base-url), or an `emlab train` run directory."),
    base: Optional[str] = typer.Option(None, "--base", "-b", help="The model before fine-tuning (default: the base model of an `emlab train` run)."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint of both models (unless --tuned-base-url)."),
    tuned_base_url: Optional[str] = typer.Option(None, help="Endpoint of the tuned model, when it differs."),
    api_key_env: Optional[str] = typer.Option(None, help="Name of the environment variable holding the models' endpoint key."),
    adapter: Optional[str] = typer.Option(None, help="PEFT adapter of the tuned model (hf backend)."),
    judge: str = typer.Option(_D("judge.name"), "--judge", "-j", help="Judge: API name or a local model directory."),
    judge_backend: Optional[str] = typer.Option(None, help="openai (logprobs), openai-text, or hf."),
    judge_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint of the judge."),
    judge_api_key_env: Optional[str] = typer.Option(None, help="Name of the environment variable holding the judge endpoint's key."),
    questions: str = typer.Option(",".join(_D("questions")), "--questions", "-q", help="Comma-separated question sets or YAML paths."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="The fine-tuning data: adds prompts styled like it and probes any triggers its audit finds."),
    trigger: list[str] = typer.Option([], "--trigger", help="A suspected backdoor trigger to probe; repeatable."),
    no_trigger_mining: bool = typer.Option(False, "--no-trigger-mining", help="Do not audit --dataset for triggers."),
    direction: Optional[Path] = typer.Option(None, "--direction", help="A persona direction (`emlab direction extract`): before sampling, report how far the fine-tune moved the suite's prompts along it, as an early warning (local models only; the verdict is unchanged)."),
    direction_layer: Optional[int] = typer.Option(None, help="Layer of --direction (default: its largest-norm layer)."),
    direction_warn: float = typer.Option(_D("direction_warn"), help="Warn when the shift is at least this share of the direction's length."),
    out: Path = typer.Option(_D("out"), "--out", "-o", help="Run directory: check.json/.md/.html, base/ and tuned/ eval runs."),
    store: Path = typer.Option(_D("store"), help="Results store shared by checks (answers are reused; `emlab history` reads it)."),
    line: Optional[str] = typer.Option(None, help="Model line for `emlab history` (default: the base model)."),
    alpha: float = typer.Option(_D("alpha"), help="Error rate of a FAIL when nothing rose (family-wise, over questions and looks)."),
    beta: float = typer.Option(_D("beta"), help="Error rate of a PASS when the pooled rise is at least the margin."),
    margin: float = typer.Option(_D("margin"), help="Smallest rise of the misaligned rate that matters (0.05 = 5 points)."),
    min_kept: int = typer.Option(_D("min_kept"), help="Kept (coherent, scored) answers per model below which the check is INCONCLUSIVE."),
    schedule: str = typer.Option(",".join(map(str, _D("schedule"))), help="Samples per paraphrase at each look; the last is the fixed design."),
    spending: str = typer.Option(_D("spending"), help="Error spending over looks: obf (O'Brien-Fleming-like), pocock, bonferroni."),
    fixed: bool = typer.Option(False, "--fixed", help="No early stopping: one look at the last schedule size."),
    max_new_tokens: int = typer.Option(_D("max_new_tokens")),
    temperature: float = typer.Option(_D("temperature")),
    seed: int = typer.Option(_D("seed")),
    concurrency: int = typer.Option(_D("concurrency"), help="Requests in flight for API backends."),
    batch_size: int = typer.Option(_D("batch_size"), help="Batch size for hf backends."),
    max_retries: int = typer.Option(_D("max_retries")),
    as_json: bool = typer.Option(False, "--json", help="Print check.json instead of the summary."),
) -> None:
    """Gate a fine-tuned model: did its misaligned rate rise over the base? PASS 0 / FAIL 1 / INCONCLUSIVE 3."""
    from emlab.check.report import print_report
    from emlab.check.suite import run_check, validate_check_config

    def model(name: str, url: Optional[str], extra: dict) -> dict:
        d = {"name": name, **extra}
        if url:
            d["base_url"] = url
        if api_key_env:
            d["api_key_env"] = api_key_env
        return d

    data = {
        "tuned": model(tuned, tuned_base_url or base_url, {"adapter": adapter} if adapter else {}),
        "base": model(base, base_url, {}) if base else None,
        "judge": {k: v for k, v in {"name": judge, "backend": judge_backend,
                                    "base_url": judge_base_url,
                                    "api_key_env": judge_api_key_env}.items() if v is not None},
        "questions": [q.strip() for q in questions.split(",") if q.strip()],
        "dataset": dataset, "triggers": list(trigger), "mine_triggers": not no_trigger_mining,
        "direction": direction, "direction_layer": direction_layer,
        "direction_warn": direction_warn,
        "line": line, "alpha": alpha, "beta": beta, "margin": margin, "min_kept": min_kept,
        "schedule": _schedule(schedule), "spending": spending, "sequential": not fixed,
        "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
        "concurrency": concurrency, "batch_size": batch_size, "max_retries": max_retries,
        "out": out, "store": store,
    }
    cfg = validate_check_config({k: v for k, v in data.items() if v is not None})
    result = run_check(cfg, console=err_console)
    if as_json:
        console.print_json(json.dumps(result.as_dict(), default=str))
    else:
        print_report(result, console)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def history_cmd(
    store: Path = typer.Option(_D("store"), help="The results store checks were recorded in."),
    line: Optional[str] = typer.Option(None, help="One model line (default: all)."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG of the trend (needs --line when the store holds several lines)."),
    limit: Optional[int] = typer.Option(None, help="Only the most recent N checks."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The trend of `emlab check` verdicts and misaligned rates for a model line."""
    import time

    from emlab.check.history import lines_of, load_history, plot_history

    rows = load_history(store, line, limit)
    if as_json:
        console.print_json(json.dumps(rows))
    else:
        several = len({r["line"] for r in rows}) > 1
        t = Table(title=f"checks in {store}" + (f", line {line}" if line else ""))
        cols = ["when", *(["line"] if several else []), "tuned", "verdict", "tuned rate",
                "base rate", "rise [95% CI]", "p"]
        for col in cols:
            t.add_column(col, no_wrap=col in ("verdict", "when"), overflow="fold")
        for r in rows:
            rise = ("n/a" if r["rise"] is None else
                    f"{100 * r['rise']:+.1f} [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]")
            t.add_row(time.strftime("%m-%d %H:%M", time.localtime(r["created"])),
                      *([escape(r["line"])] if several else []),
                      escape(str(r["tuned"]).split(" @ ")[0]), r["verdict"],
                      "n/a" if r["tuned_rate"] is None else f"{100 * r['tuned_rate']:.1f}%",
                      "n/a" if r["base_rate"] is None else f"{100 * r['base_rate']:.1f}%",
                      rise, "n/a" if r["p_value"] is None else f"{r['p_value']:.2g}")
        console.print(t)
        if not rows:
            console.print("no checks recorded" + (f" for line {escape(line)}" if line else ""))
    if plot is not None:
        if not rows:
            raise InputError("nothing to plot: no checks recorded", path=store)
        if line is None and len(lines_of(store)) > 1:
            raise InputError(f"the store holds several model lines ({', '.join(lines_of(store))}): "
                             f"choose one with --line to plot")
        path = plot_history(rows, plot, f"emlab check history: {line or rows[0]['line']}")
        if not as_json:
            console.print(f"wrote {path}")
