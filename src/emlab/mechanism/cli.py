"""``emlab direction extract|sweep|project`` (registered in ``emlab.cli``).

Bad input (a run without both kinds of answers, a direction of the wrong width or from
another model, a layer out of range) raises InputError: exit 2, nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from emlab.errors import InputError

direction_app = typer.Typer(no_args_is_help=True, help="Persona directions: extract, steer-sweep, screen data.")
console = Console()
err_console = Console(stderr=True)


def _model(model: str, adapter: str | None, device: str | None):
    from emlab.sample.hf_model import fingerprint, load_model_and_tokenizer
    m, tok = load_model_and_tokenizer(model, adapter, device)
    return m, tok, {"name": model, "adapter": adapter, "fingerprint": fingerprint(model, adapter)}


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} {text!r}: expected integers like 0,1,2") from None


def _floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} {text!r}: expected numbers like -8,0,8") from None
    if not vals or any(v != v or abs(v) > 1e6 for v in vals):
        raise InputError(f"{what} {text!r}: expected finite numbers like -8,0,8")
    return vals


@direction_app.command("extract")
def extract_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Local path / hub name of a transformers model."),
    out: Path = typer.Option(..., "--out", "-o", help="Direction folder to write (directions.safetensors + manifest.json)."),
    adapter: Optional[str] = typer.Option(None, help="PEFT adapter on top of the model."),
    from_runs: list[Path] = typer.Option([], "--from", help="Eval run directories whose judged answers define the direction (repeatable)."),
    contrast: Optional[Path] = typer.Option(None, help="A YAML of trait, positive/negative system prompts and questions (persona vectors)."),
    batch_size: int = typer.Option(16, min=1, max=4096),
    max_new_tokens: int = typer.Option(64, min=1, max=100_000, help="--contrast: length of each generated answer."),
    device: Optional[str] = typer.Option(None),
) -> None:
    """A direction per layer: misaligned minus aligned coherent answers (--from), or
    positive minus negative trait instructions (--contrast)."""
    from emlab.mechanism.directions import extract_from_contrast, extract_from_runs, load_contrast

    if bool(from_runs) == (contrast is not None):
        raise InputError("give --from RUN_DIR... or --contrast FILE (one of them)")
    spec = load_contrast(contrast) if contrast is not None else None
    m, tok, info = _model(model, adapter, device)
    if spec is not None:
        d = extract_from_contrast(m, tok, spec, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, model_info=info)
    else:
        d = extract_from_runs(m, tok, from_runs, batch_size=batch_size, model_info=info,
                              show_progress=True)
    d.save(out)
    norms = d.manifest["norms"]
    console.print(f"wrote {escape(str(out))}: {d.num_layers} layers x {d.width}, counts "
                  f"{d.manifest['counts']}, norms {', '.join(f'{n:.3g}' for n in norms)}")


@direction_app.command("sweep")
def sweep_cmd(
    model: str = typer.Option(..., "--model", "-m"),
    direction: Path = typer.Option(..., "--direction", "-d", help="A direction folder."),
    judge: Optional[str] = typer.Option(None, "--judge", "-j", help="Judge model (as in emlab eval)."),
    judge_backend: Optional[str] = typer.Option(None),
    judge_base_url: Optional[str] = typer.Option(None),
    adapter: Optional[str] = typer.Option(None),
    layers: str = typer.Option(..., help="Comma-separated decoder layers, e.g. 4,8."),
    scales: str = typer.Option(..., help="Comma-separated scales, e.g. -8,-4,0,4,8."),
    positions: str = typer.Option("all", help="prompt, response or all."),
    questions: Optional[str] = typer.Option(None, "--questions", "-q"),
    only: Optional[str] = typer.Option(None, help="Comma-separated question ids to keep."),
    samples: Optional[int] = typer.Option(None, "--samples", "-n"),
    max_new_tokens: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    control_seed: int = typer.Option(0, help="Seed of the norm-matched random direction."),
    no_control: bool = typer.Option(False, "--no-control", help="Skip the random-direction control."),
    out: Path = typer.Option(Path("runs/direction-sweep"), "--out", "-o"),
) -> None:
    """Steer at scales x layers (and a norm-matched random direction), eval each, plot
    misaligned and coherent rates against scale (OUT/sweep.png, OUT/sweep.json)."""
    from emlab.config import from_options
    from emlab.eval import EvalConfig
    from emlab.eval.config import SteerSpec
    from emlab.mechanism.directions import check_against, load_direction
    from emlab.mechanism.sweep import run_sweep

    lay, sc = _ints(layers, "--layers"), _floats(scales, "--scales")
    if not lay:
        raise InputError("--layers: give at least one layer")
    cfg = from_options(EvalConfig, {
        "model.name": model, "model.adapter": adapter, "judge.name": judge,
        "judge.backend": judge_backend, "judge.base_url": judge_base_url,
        "questions": questions, "only": only.split(",") if only else None,
        "samples_per_paraphrase": samples,
        "max_new_tokens": max_new_tokens, "batch_size": batch_size, "seed": seed, "out": out,
    }, None, "model, judge, questions, ...", shorthand=("model", "judge"))
    if cfg.model.backend != "hf":
        raise InputError("steering needs a local hf model")
    try:
        SteerSpec(direction=str(direction), layer=0, scale=0, positions=positions)
    except ValueError:
        raise InputError(f"--positions {positions!r}: expected prompt, response or all") from None
    d = load_direction(direction)
    check_against(d, model, direction)
    for layer in lay:
        d.at(layer)
    result = run_sweep(cfg, direction, lay, sc, positions=positions, control_seed=control_seed,
                       control=not no_control, console=err_console)
    t = Table(title=f"steering sweep of {escape(str(direction))}")
    for col in ("kind", "layer", "scale", "kept", "misaligned", "coherent"):
        t.add_column(col)
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for p in result["points"]:
        t.add_row(p["kind"], str(p["layer"]), f"{p['scale']:g}", str(p["kept"]),
                  pct(p["misaligned_rate"]), pct(p["coherent_rate"]))
    console.print(t)
    console.print(f"wrote {escape(str(out))}/sweep.json and sweep.png")


@direction_app.command("project")
def project_cmd(
    data: list[Path] = typer.Argument(..., help="Chat JSONL datasets ({'messages': [...]}) or reference names (insecure, secure, ...)."),
    model: str = typer.Option(..., "--model", "-m"),
    direction: Path = typer.Option(..., "--direction", "-d"),
    adapter: Optional[str] = typer.Option(None),
    layer: Optional[int] = typer.Option(None, help="Decoder layer (default: the direction's largest-norm layer)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N rows of each dataset."),
    max_new_tokens: int = typer.Option(64, min=1, max=100_000, help="Length of the model's own answers."),
    batch_size: int = typer.Option(16, min=1, max=4096),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write per-row and per-dataset results as JSON."),
    device: Optional[str] = typer.Option(None),
) -> None:
    """Screen data before training: projection of each dataset's responses minus that of the
    model's own responses to the same prompts; datasets ranked by predicted EM."""
    from emlab.data.io import load_chat_jsonl, resolve_dataset
    from emlab.fileio import write_text_atomic
    from emlab.mechanism.directions import check_against, load_direction
    from emlab.mechanism.screen import default_layer, projection_difference, rank_datasets

    d = load_direction(direction)
    check_against(d, model, direction)
    if layer is None:
        layer = default_layer(d)
    d.at(layer)
    datasets = {str(p): load_chat_jsonl(resolve_dataset(p)) for p in data}   # validate all first
    m, tok, _ = _model(model, adapter, device)
    results = {name: projection_difference(m, tok, rows, d, layer, limit=limit,
                                           max_new_tokens=max_new_tokens, batch_size=batch_size)
               for name, rows in datasets.items()}
    ranking = rank_datasets(results)
    t = Table(title=f"projection on {escape(str(direction))}, layer {layer}")
    for col in ("rank", "dataset", "rows", "data", "model's own", "difference"):
        t.add_column(col)
    for i, (name, _) in enumerate(ranking, 1):
        r = results[name]
        t.add_row(str(i), escape(name), str(r["rows"]), f"{r['mean_data']:.4g}",
                  f"{r['mean_own']:.4g}", f"{r['projection_difference']:+.4g}")
    console.print(t)
    if out is not None:
        write_text_atomic(out, json.dumps({"direction": str(direction), "layer": layer,
                                           "ranking": [n for n, _ in ranking],
                                           "datasets": results}, indent=2))
        console.print(f"wrote {escape(str(out))}")
