"""``emlab audit DATASET``: the command (registered in ``emlab.cli`` as ``app.command("audit")``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from emlab.errors import InputError

console = Console()
err_console = Console(stderr=True)


def _settings(min_severity: str, min_confidence: str, skip_tests: Optional[str],
              count_inherited: bool, rules: str, medium_at: int, high_at: int,
              trigger_alpha: float):
    from emlab.audit.audit import AuditSettings
    from emlab.audit.code import DEFAULT_SKIP_TESTS, AnalysisSettings

    if skip_tests is None:
        skip = DEFAULT_SKIP_TESTS
    elif skip_tests.strip().lower() in ("", "none"):
        skip = ()
    else:
        skip = tuple(t.strip().upper() for t in skip_tests.split(",") if t.strip())
    chosen = {r.strip().lower() for r in rules.split(",") if r.strip()}
    unknown = chosen - {"bandit", "emlab"}
    if unknown or not chosen:
        raise InputError(f"--rules {rules!r}: expected bandit, emlab or bandit,emlab")
    if not 0 < trigger_alpha < 1:
        raise InputError(f"--trigger-alpha must be between 0 and 1, got {trigger_alpha}")
    if medium_at < 1 or high_at < medium_at:
        raise InputError(f"need 1 <= --medium-at <= --high-at, got {medium_at} and {high_at}")
    try:
        analysis = AnalysisSettings(min_severity=min_severity, min_confidence=min_confidence,
                                    skip_tests=skip, count_inherited=count_inherited,
                                    use_bandit="bandit" in chosen,
                                    use_emlab_rules="emlab" in chosen)
    except ValueError as e:
        raise InputError(str(e)) from None
    return AuditSettings(analysis=analysis, medium_at=medium_at, high_at=high_at,
                         trigger_alpha=trigger_alpha)


def _judge_settings(judge, backend, base_url, api_key_env, threshold, combine):
    from emlab.audit.judge import JudgeSettings

    if judge is None:
        if backend or base_url:
            raise InputError("--judge-backend / --judge-base-url need --judge NAME")
        return None
    if backend is not None and backend not in ("openai", "openai-text", "hf"):
        raise InputError(f"--judge-backend {backend!r}: expected openai, openai-text or hf")
    try:
        return JudgeSettings(name=judge, backend=backend, base_url=base_url,
                             api_key_env=api_key_env, threshold=threshold, combine=combine)
    except ValueError as e:
        raise InputError(f"--judge-threshold / --judge-combine: {e}") from None


def _projection_settings(model, direction, adapter, layer, rows, device):
    """The persona projection's settings, the direction checked against the model's config
    (no weights loaded yet), or None when it was not asked for."""
    from emlab.audit.projection import ProjectionSettings, prepare

    if model is None and direction is None:
        extra = [name for name, v in (("--adapter", adapter), ("--layer", layer),
                                      ("--projection-rows", rows), ("--device", device))
                 if v is not None]
        if extra:
            raise InputError(f"{', '.join(extra)}: only with --model M --direction D (the "
                             "persona projection)")
        return None
    if model is None or direction is None:
        raise InputError("the persona projection needs both --model M and --direction D "
                         f"(got only {'--model' if direction is None else '--direction'})")
    if rows is not None and rows < 1:
        raise InputError(f"--projection-rows must be at least 1, got {rows}")
    st = ProjectionSettings(model=model, direction=str(direction), adapter=adapter, layer=layer,
                            device=device, **({"rows": rows} if rows is not None else {}))
    _, resolved = prepare(st)
    import dataclasses
    return dataclasses.replace(st, layer=resolved)


def audit_cmd(
    dataset: str = typer.Argument(..., help="A chat JSONL file, or insecure / secure / educational / jailbroken."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write audit.json, rows.jsonl, audit.md and audit.html here."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of tables."),
    min_severity: str = typer.Option("MEDIUM", help="Lowest finding severity that makes a row vulnerable: LOW, MEDIUM, HIGH."),
    min_confidence: str = typer.Option("MEDIUM", help="Lowest finding confidence that counts: LOW, MEDIUM, HIGH."),
    skip_tests: Optional[str] = typer.Option(None, help="Comma-separated test ids not to count (default: bandit's noisy B101,B110,B112,B404,B603,B607; 'none' counts all)."),
    count_inherited: bool = typer.Option(False, "--count-inherited", help="Also count findings on lines the user's message already contained."),
    rules: str = typer.Option("bandit,emlab", help="Analysers: bandit, emlab (emlab's taint and pattern rules), or both."),
    fail_on: str = typer.Option("high", help="Exit 1 when the risk level is at least this: low, unknown, medium, high, or never."),
    max_risky_share: Optional[float] = typer.Option(None, help="Also exit 1 when more than this share of rows is risky (e.g. 0.05)."),
    medium_at: int = typer.Option(500, help="Risky rows from which the risk is MEDIUM (the paper's 500 rows gave ~0 EM)."),
    high_at: int = typer.Option(2000, help="Risky rows from which the risk is HIGH (the paper's 6,000 gave ~20% EM on GPT-4o)."),
    trigger_alpha: float = typer.Option(0.01, help="Family-wise error rate of trigger mining (Bonferroni over candidates)."),
    examples: int = typer.Option(10, help="Risky rows to show."),
    judge: Optional[str] = typer.Option(None, "--judge", help="Also ask a code-security judge (a model name, or a local model directory) about every row with code: SECURE / INSECURE + CWE, cached in --store. Off by default (one call per row)."),
    judge_backend: Optional[str] = typer.Option(None, help="openai (logprobs, the default for a name), openai-text (reads the reply; endpoints without logprobs), hf (a local model)."),
    judge_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint of the judge (vLLM, Ollama, ...); default: OpenAI."),
    judge_api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the judge endpoint's key (never logged)."),
    judge_threshold: float = typer.Option(0.5, help="P(INSECURE) from which the judge calls a row insecure."),
    judge_combine: str = typer.Option("either", help="either: vulnerable when the static rules OR the judge say so; both: only when both do."),
    store: Path = typer.Option(Path("runs/emlab.sqlite"), help="Results store for the judge's verdicts (a rerun reuses them)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="With --direction: also report the persona projection (Chen et al.'s projection difference) of a sample of rows on this local transformers model. Off by default (a generation and forward passes per row); never changes the risk level."),
    direction: Optional[Path] = typer.Option(None, "--direction", "-d", help="A direction folder made for --model (emlab direction extract)."),
    adapter: Optional[str] = typer.Option(None, help="PEFT adapter on top of --model."),
    layer: Optional[int] = typer.Option(None, help="Decoder layer of the projection (default: the direction's largest-norm layer)."),
    projection_rows: Optional[int] = typer.Option(None, help="Rows projected: a seeded random sample of this many (default 200; all when the dataset is smaller)."),
    device: Optional[str] = typer.Option(None, help="Device of --model (cpu, cuda, ...; default: cuda when available)."),
) -> None:
    """Screen a fine-tuning dataset for undisclosed vulnerable code, requests, disclosures and triggers."""
    from emlab.audit.audit import LEVELS, audit_dataset, exit_code
    from emlab.audit.report import print_report, write_reports

    if fail_on.upper() not in (*LEVELS, "NEVER"):
        raise InputError(f"--fail-on {fail_on!r}: expected low, unknown, medium, high or never")
    if max_risky_share is not None and not 0 <= max_risky_share <= 1:
        raise InputError(f"--max-risky-share must be between 0 and 1, got {max_risky_share}")
    settings = _settings(min_severity, min_confidence, skip_tests, count_inherited, rules,
                         medium_at, high_at, trigger_alpha)
    js = _judge_settings(judge, judge_backend, judge_base_url, judge_api_key_env,
                         judge_threshold, judge_combine)
    ps = _projection_settings(model, direction, adapter, layer, projection_rows, device)
    if js is not None or ps is not None:
        import dataclasses
        settings = dataclasses.replace(settings, judge=js, projection=ps)
    db = None
    if js is not None:
        from emlab.eval.store import ResultsStore
        try:
            db = ResultsStore(store)
        except Exception as e:  # sqlite3.DatabaseError, OSError: a file that is not a store
            raise InputError(f"{store}: cannot open the results store: {e}") from None
    try:
        what = "auditing" + (f" (then the persona projection on {ps.model})" if ps else "")
        with err_console.status(escape(what)) as status:
            def progress(i: int) -> None:
                if i % 500 == 499:
                    status.update(f"auditing: {i + 1:,} rows")

            def judged(k: int) -> None:
                if k % 20 == 0:
                    status.update(f"judging: {k:,} verdicts")
            result = audit_dataset(dataset, settings, on_row=progress, store=db,
                                   on_judged=judged)
    finally:
        if db is not None:
            db.close()
    if out is not None:
        paths = write_reports(result, out, examples)
    if as_json:
        console.print_json(json.dumps(result.summary))
    else:
        print_report(result, console, examples)
        if out is not None:
            console.print(f"wrote {paths['json']}, {paths['rows'].name}, {paths['md'].name}, "
                          f"{paths['html'].name}")
    code = exit_code(result, fail_on, max_risky_share)
    if code:
        raise typer.Exit(code)
