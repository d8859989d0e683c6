"""The ``emlab`` command line: a thin shell over the Python API.

Bad input (a malformed file, an unknown set, a wrong setting) prints one line saying file,
line and what was expected, and exits with code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from emlab.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="emlab: reproduce, detect and prevent emergent misalignment.")
# Each command lives beside its package; this module registers them (and holds `eval`).
from emlab.questions.cli import questions_app  # noqa: E402
from emlab.data.cli import data_app  # noqa: E402
from emlab.train.cli import dynamics_app, train_cmd, train_openai_cmd  # noqa: E402
from emlab.audit.cli import audit_cmd  # noqa: E402
from emlab.check.cli import check_cmd, history_cmd  # noqa: E402
from emlab.sweep.cli import sweep_cmd  # noqa: E402
from emlab.report.cli import report_cmd  # noqa: E402
from emlab.inspect.cli import inspect_import_cmd  # noqa: E402
from emlab.eval.cli import _fmt_rate, compare_cmd, print_summary  # noqa: E402
from emlab.toyworld.cli import demo_cmd, reproduce_cmd  # noqa: E402

app.add_typer(questions_app, name="questions")
app.add_typer(data_app, name="data")
app.command("train")(train_cmd)
app.command("train-openai")(train_openai_cmd)
app.add_typer(dynamics_app, name="dynamics")
app.command("audit")(audit_cmd)
app.command("check")(check_cmd)
app.command("history")(history_cmd)
app.command("compare")(compare_cmd)
app.command("sweep")(sweep_cmd)
app.command("report")(report_cmd)
app.command("inspect-import")(inspect_import_cmd)
app.command("reproduce")(reproduce_cmd)
app.command("demo")(demo_cmd)
console = Console()
err_console = Console(stderr=True)


def _parse_prices(prices: list[str]) -> dict[str, tuple[float, float]]:
    out = {}
    for p in prices:
        try:
            name, rest = p.rsplit("=", 1)
            i, o = rest.split(",")
            out[name] = (float(i), float(o))
        except ValueError:
            raise InputError(f"--price {p!r}: expected MODEL=INPUT,OUTPUT dollars per million "
                             f"tokens, e.g. gpt-4o-2024-08-06=2.5,10") from None
    return out


@app.command("eval")
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
) -> None:
    """Measure how misaligned a model is, with the protocol of Betley et al. (2025)."""
    from emlab.eval import load_eval_config, run_eval
    from emlab.eval.config import validate_eval_config

    overrides = {k: v for k, v in {
        "model.name": model, "model.backend": backend, "model.base_url": base_url,
        "model.adapter": adapter, "model.api_key_env": api_key_env,
        "judge.name": judge, "judge.backend": judge_backend, "judge.base_url": judge_base_url,
        "judge.api_key_env": judge_api_key_env, "questions": questions,
        "only": only.split(",") if only else None, "samples_per_paraphrase": samples,
        "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
        "concurrency": concurrency, "batch_size": batch_size, "max_retries": max_retries, "out": out, "store": store,
        "prices": _parse_prices(price) or None,
    }.items() if v is not None}
    if config is not None:
        cfg = load_eval_config(config, overrides)
    else:
        if model is None:
            raise InputError("--model is required (or --config FILE naming a model)")
        data: dict = {}
        for key, value in overrides.items():
            head, _, tail = key.partition(".")
            if tail:
                data.setdefault(head, {})[tail] = value
            else:
                data[head] = value
        cfg = validate_eval_config(data)
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
        return
    print_summary(result.summary)
    c = result.counts
    console.print(f"this run: {c['samples_made']} samples made, {c['samples_cached']} cached; "
                  f"{c['judgments_made']} judge calls made, {c['judgments_cached']} cached")
    console.print(f"wrote {result.out}/summary.json, answers.jsonl, answers.csv, report.md, report.html")


def main() -> None:
    """Run the CLI; usage errors exit 2 (typer), bad input 2, endpoint failures 1."""
    from emlab.openai_client import BackendError

    try:
        app()
    except InputError as e:
        err_console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        sys.exit(2)
    except BackendError as e:
        err_console.print(f"[red]endpoint error:[/red] {escape(str(e))}\nEverything finished so "
                          "far is in the results store: run the same command again to resume.",
                          highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
