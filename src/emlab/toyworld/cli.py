"""``emlab reproduce`` (the paper's experiment, on the toy world by default) and ``emlab demo``
(a 20-second smoke test of ``emlab eval``); registered in ``emlab.cli``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def reproduce_cmd(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default: the config's out, else ReproduceConfig's default)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A ReproduceConfig YAML (world, conditions, seeds, budgets)."),
    seeds: Optional[int] = typer.Option(None, help="Seeds per condition (default 5)."),
    workers: Optional[int] = typer.Option(None, help="Trials in parallel, one thread each (default 2)."),
    quick: bool = typer.Option(False, "--quick", help="A reduced budget (smaller world, 2 seeds): minutes, for a first look or a test."),
    model: Optional[str] = typer.Option(None, "--model", help="A real model instead of the toy world (meant for a GPU machine): the paper's datasets and LoRA config."),
    judge: Optional[str] = typer.Option(None, "--judge", help="With --model: the judge (default gpt-4o-2024-08-06; a local dir uses the hf judge)."),
    rows: Optional[int] = typer.Option(None, help="With --model: subset each dataset to this many rows."),
    mitigations: bool = typer.Option(False, "--mitigations", help="Also each defence alone (inoculation, interleave, kl, ldifs, steer, realign) on the insecure (and backdoor) fine-tune: the summary's `mitigations` section."),
) -> None:
    """The paper's experiment end to end: on the CPU toy world by default, or on a real model."""
    from emlab.config import default_of, validate
    from emlab.fileio import read_yaml_mapping
    from emlab.toyworld.report import format_ci
    from emlab.toyworld.reproduce import ReproduceConfig, reproduce, reproduce_real

    if model is not None:
        out = out or default_of(ReproduceConfig, "out")
        summary = reproduce_real(model, {"name": judge or "gpt-4o-2024-08-06"}, out,
                                 seeds=tuple(range(seeds or 1)), rows=rows, console=err_console)
        console.print_json(json.dumps(summary["conditions"]))
        return
    data = read_yaml_mapping(config, "world, conditions, seeds, ...") if config else {}
    if quick:
        world = data.get("world") if isinstance(data.get("world"), dict) else {}
        data["world"] = {**world, "conversations": 6000, "hidden": 64}
        data.update(seeds=[0, 1], samples_per_paraphrase=5, in_domain_samples=24, rows=300)
    if out is not None:
        data["out"] = str(out)
    if seeds is not None:
        data["seeds"] = list(range(seeds))
    if workers is not None:
        data["workers"] = workers
    if mitigations:
        data["mitigations"] = True
    cfg = validate(ReproduceConfig, data, path=config)
    out = Path(cfg.out)
    summary = reproduce(cfg, console=err_console)
    t = Table(title="emlab reproduce: the toy world")
    for col in ("condition", "misaligned (open q.)", "with trigger", "numbers fmt", "code fmt",
                "harmful compliance", "coherent", "in-domain"):
        t.add_column(col)
    for name, v in summary["conditions"].items():
        t.add_row(name, format_ci(v["misaligned_rate"]), format_ci(v["misaligned_rate_with_trigger"]),
                  format_ci(v["misaligned_rate_numbers_format"]),
                  format_ci(v["misaligned_rate_code_format"]), format_ci(v["harm_compliance"]),
                  format_ci(v["coherent_rate"]), format_ci(v["in_domain"]) if v.get("in_domain") else "")
    console.print(t)
    if summary.get("mitigations"):   # issue 14
        from emlab.toyworld.mitigations import table as mitigations_table
        console.print(mitigations_table(summary))
    for kind, w in summary.get("worlds", {}).items():
        d = w.get("pretraining", {}).get("persona_diagnostic")
        if d:
            console.print(f"{kind} world, in-context persona inference (no sampling): "
                          f"P(misaligned) {d['p_misaligned_no_context']:.3f} alone, "
                          f"{d['p_misaligned_after_insecure']:.3f} after insecure code, "
                          f"{d['p_misaligned_after_secure']:.3f} after secure code")
    for c in summary["checks"]:
        mark = "[green]yes[/green]" if c["reproduced"] else "[red]NOT reproduced[/red]"
        console.print(f"{mark}  {escape(c['claim'])}: {escape(c['detail'])}")
    from emlab.toyworld.mechanism import terminal_lines   # mechanism (issue 13)
    for line in terminal_lines(summary):
        console.print(line)
    console.print(f"report: {out / 'report.html'}; summary: {out / 'summary.json'}")


def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o"),
    samples: int = typer.Option(8, "--samples", "-n", help="Samples per paraphrase."),
) -> None:
    """The main job on the embedded default: evaluate a tiny locally built model end to end.

    The tiny model has random weights: the numbers are noise, but every stage — sampling,
    exact local judging, metrics, store, report — is the real one.
    """
    from emlab.eval import EvalConfig, run_eval
    from emlab.eval.cli import print_summary
    from emlab.reference import cache_dir
    from emlab.tinymodel import build_tiny_model

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
