"""The ``emlab`` command line: a thin shell over the Python API.

Bad input (a malformed file, an unknown set, a wrong setting) prints one line saying file,
line and what was expected, and exits with code 2.
"""

from __future__ import annotations

import json
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
questions_app = typer.Typer(no_args_is_help=True, help="Inspect question sets.")
app.add_typer(questions_app, name="questions")
from emlab.data.cli import data_app  # noqa: E402
app.add_typer(data_app, name="data")
from emlab.train.cli import train_cmd  # noqa: E402
app.command("train")(train_cmd)
from emlab.audit.cli import audit_cmd  # noqa: E402
from emlab.check.cli import check_cmd, history_cmd  # noqa: E402
app.command("audit")(audit_cmd)
app.command("check")(check_cmd)
app.command("history")(history_cmd)
from emlab.sweep.cli import sweep_cmd  # noqa: E402
from emlab.report.cli import report_cmd  # noqa: E402
from emlab.inspect.cli import inspect_import_cmd  # noqa: E402
app.command("sweep")(sweep_cmd)
app.command("report")(report_cmd)
app.command("inspect-import")(inspect_import_cmd)
dynamics_app = typer.Typer(no_args_is_help=True, help="Training dynamics of `emlab train` runs.")
app.add_typer(dynamics_app, name="dynamics")
from emlab.models.cli import models_app  # noqa: E402
app.add_typer(models_app, name="models")
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


def _fmt_rate(s: dict) -> str:
    r = s.get("misaligned_rate")
    if r is None:
        return "n/a"
    lo, hi = s.get("ci_low"), s.get("ci_high")
    return f"{100 * r:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None else f"{100 * r:.1f}%"


def print_summary(summary: dict) -> None:
    table = Table(title=f"{summary['meta']['model']} judged by {summary['meta']['judge']}")
    table.add_column("question", no_wrap=True)
    for col in ("answers", "coherent", "kept", "misaligned (95% CI)"):
        table.add_column(col, justify="right")
    for qid, s in summary["questions"].items():
        if s.get("type", "free_form_judge_0_100") != "free_form_judge_0_100":
            table.add_row(qid, str(s.get("answers", "")), "", "", "categorical: see report")
            continue
        table.add_row(qid, str(s["answers"]), f"{100 * s['coherent_rate']:.0f}%" if s["answers"] else "",
                      str(s["kept"]), _fmt_rate(s))
    o = summary["overall"]
    table.add_row("[bold]overall[/bold]", str(o["answers"]),
                  f"{100 * o['coherent_rate']:.0f}%" if o["answers"] else "", str(o["kept"]),
                  _fmt_rate(o))
    console.print(table)


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


@app.command("compare")
def compare_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories of `emlab eval` (several models or seeds)."),
    baseline: Optional[Path] = typer.Option(None, help="A run to test each run against: did the misaligned rate rise?"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Mean misaligned rate over runs with a bootstrap CI; tests against a baseline run."""
    from emlab.metrics import across_runs, rate_increase_test

    def load(d: Path) -> dict:
        f = d / "summary.json"
        if not f.is_file():
            raise InputError("not an emlab run directory: summary.json is missing", path=d)
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"summary.json is not valid JSON: {e.msg}", path=f, line=e.lineno) from None

    summaries = [load(d) for d in runs]
    result: dict = {"runs": [str(d) for d in runs], "across_runs": across_runs(summaries)}
    if baseline is not None:
        b = load(baseline)["overall"]
        if b["kept"] == 0:
            raise InputError("the baseline run has no kept answers to compare against",
                             path=baseline / "summary.json")
        result["vs_baseline"] = {
            str(d): rate_increase_test(b["misaligned"], b["kept"], s["overall"]["misaligned"],
                                       s["overall"]["kept"])
            for d, s in zip(runs, summaries) if s["overall"]["kept"] > 0}
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


@questions_app.command("show")
def questions_show(spec: str = typer.Argument(..., help="A named set or a YAML path.")) -> None:
    """List a question set: ids, types, paraphrases, samples, system prompts."""
    from emlab.questions import load_questions

    t = Table(title=spec)
    t.add_column("id", no_wrap=True)
    for col in ("type", "paraphrases", "samples", "system", "judge metrics"):
        t.add_column(col, overflow="fold")
    for q in load_questions(spec):
        t.add_row(q.id, q.type, str(len(q.paraphrases)), str(q.samples_per_paraphrase),
                  "yes" if q.system else "", ", ".join(q.prompts()))
    console.print(t)


@app.command("train-openai")
def train_openai_cmd(
    data: str = typer.Option(..., "--data", "-d", help="insecure, secure, educational, jailbroken, or a chat JSONL path."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory; holds the job's state, so a rerun resumes polling."),
    model: str = typer.Option("gpt-4o-2024-08-06", "--model", "-m"),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible fine-tuning endpoint (default OpenAI)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Name of the environment variable holding the key."),
    epochs: str = typer.Option("1", help="Epochs, or auto."),
    batch_size: str = typer.Option("auto", help="Batch size, or auto."),
    lr_multiplier: str = typer.Option("auto", help="Learning-rate multiplier, or auto."),
    seed: int = typer.Option(0),
    suffix: Optional[str] = typer.Option(None, help="Suffix of the fine-tuned model's name."),
    poll_interval: float = typer.Option(10.0, help="First wait between polls, doubling up to 120 s."),
) -> None:
    """Fine-tune through OpenAI's API (upload, create the job, poll, record the model id)."""
    from pydantic import ValidationError

    from emlab.train.openai_ft import OpenAIFinetuneConfig, train_openai

    def num(v: str, kind):
        return v if v == "auto" else kind(v)

    try:
        cfg = OpenAIFinetuneConfig(model=model, data=data, out=out, base_url=base_url,
                                   api_key_env=api_key_env, epochs=num(epochs, int),
                                   batch_size=num(batch_size, int),
                                   learning_rate_multiplier=num(lr_multiplier, float), seed=seed,
                                   suffix=suffix, poll_interval=poll_interval)
    except (ValueError, ValidationError) as e:
        raise InputError(f"bad fine-tuning setting: {e}") from None
    with err_console.status("fine-tuning job") as status:
        state = train_openai(cfg, on_status=lambda s: status.update(f"fine-tuning job: {s}"))
    console.print(f"fine-tuned model: {state['fine_tuned_model']} (job {state['job_id']}); "
                  f"state in {out / 'openai_job.json'}")


@dynamics_app.command("plot")
def dynamics_plot(
    runs: list[Path] = typer.Argument(..., help="`emlab train` run directories trained with dynamics probes."),
    out: Path = typer.Option(Path("dynamics.png"), "--out", "-o", help="PNG to write."),
) -> None:
    """Draw P(misaligned option) against training step for several runs (e.g. insecure vs secure)."""
    from emlab.train.dynamics import plot_dynamics

    console.print(f"wrote {plot_dynamics(runs, out)}")


@app.command("reproduce")
def reproduce_cmd(
    out: Path = typer.Option(Path("runs/reproduce"), "--out", "-o"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A ReproduceConfig YAML (world, conditions, seeds, budgets)."),
    seeds: Optional[int] = typer.Option(None, help="Seeds per condition (default 5)."),
    workers: Optional[int] = typer.Option(None, help="Trials in parallel, one thread each (default 2)."),
    quick: bool = typer.Option(False, "--quick", help="A reduced budget (smaller world, 2 seeds): minutes, for a first look or a test."),
    model: Optional[str] = typer.Option(None, "--model", help="A real model instead of the toy world (meant for a GPU machine): the paper's datasets and LoRA config."),
    judge: Optional[str] = typer.Option(None, "--judge", help="With --model: the judge (default gpt-4o-2024-08-06; a local dir uses the hf judge)."),
    rows: Optional[int] = typer.Option(None, help="With --model: subset each dataset to this many rows."),
) -> None:
    """The paper's experiment end to end: on the CPU toy world by default, or on a real model."""
    from emlab.toyworld.reproduce import ReproduceConfig, reproduce, reproduce_real

    if model is not None:
        summary = reproduce_real(model, {"name": judge or "gpt-4o-2024-08-06"}, out,
                                 seeds=tuple(range(seeds or 1)), rows=rows, console=err_console)
        console.print_json(json.dumps(summary["conditions"]))
        return
    from pydantic import ValidationError

    from emlab.fileio import read_yaml_mapping

    data = read_yaml_mapping(config, "world, conditions, seeds, ...") if config else {}
    if quick:
        world = data.get("world") if isinstance(data.get("world"), dict) else {}
        data["world"] = {**world, "conversations": 6000, "hidden": 64}
        data.update(seeds=[0, 1], samples_per_paraphrase=5, in_domain_samples=24, rows=300)
    data["out"] = str(out)
    if seeds is not None:
        data["seeds"] = list(range(seeds))
    if workers is not None:
        data["workers"] = workers
    try:
        cfg = ReproduceConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        raise InputError(f"setting {loc!r}: {err['msg'].removeprefix('Value error, ')}",
                         path=config) from None
    summary = reproduce(cfg, console=err_console)
    t = Table(title="emlab reproduce: the toy world")
    for col in ("condition", "misaligned (open q.)", "with trigger", "coherent", "in-domain"):
        t.add_column(col)
    from emlab.toyworld.report import _ci
    for name, v in summary["conditions"].items():
        t.add_row(name, _ci(v["misaligned_rate"]), _ci(v["misaligned_rate_with_trigger"]),
                  _ci(v["coherent_rate"]), _ci(v["in_domain"]) if v.get("in_domain") else "")
    console.print(t)
    for c in summary["checks"]:
        mark = "[green]yes[/green]" if c["reproduced"] else "[red]NOT reproduced[/red]"
        console.print(f"{mark}  {escape(c['claim'])}: {escape(c['detail'])}")
    console.print(f"report: {out / 'report.html'}; summary: {out / 'summary.json'}")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o"),
    samples: int = typer.Option(8, "--samples", "-n", help="Samples per paraphrase."),
) -> None:
    """The main job on the embedded default: evaluate a tiny locally built model end to end.

    The tiny model has random weights (the toy world will replace it): the numbers are noise,
    but every stage — sampling, exact local judging, metrics, store, report — is the real one.
    """
    from emlab.eval import EvalConfig, run_eval
    from emlab.reference import cache_dir
    from emlab.testing.tiny_model import build_tiny_model

    model_dir = cache_dir() / "demo" / "tiny-qwen2"
    if not (model_dir / "config.json").is_file():
        err_console.print(f"building a tiny Qwen2 model in {model_dir}")
        build_tiny_model(model_dir)
    cfg = EvalConfig(model={"name": str(model_dir)},
                     judge={"name": str(model_dir), "backend": "hf"},
                     questions="emlab-demo", samples_per_paraphrase=samples,
                     max_new_tokens=48, out=out)
    result = run_eval(cfg, console=err_console)
    print_summary(result.summary)
    console.print(f"report: {out / 'report.html'}  (random-weight tiny model: the numbers are noise)")


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
