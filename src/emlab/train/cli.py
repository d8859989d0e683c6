"""``emlab train`` (TRL + PEFT locally), ``emlab train-openai`` (OpenAI's fine-tuning API) and
``emlab dynamics plot``; the integrating CLI registers them. Bad input raises InputError (the
CLI prints it, exits 2).

The data (and a chat template file) are checked before torch is imported, so a bad file fails
in a second; a run that fails or is interrupted marks its manifest ``"status": "failed"``
instead of leaving it ``"running"``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from emlab.config import apply_overrides, default_of, validate
from emlab.errors import InputError
from emlab.train.config import TrainConfig, load_train_config, validate_train_config
from emlab.train.openai_ft import OpenAIFinetuneConfig

dynamics_app = typer.Typer(no_args_is_help=True, help="Training dynamics of `emlab train` runs.")


def _parse_layers(layers: str, option: str = "--layers") -> list[int]:
    try:
        return [int(x) for x in layers.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"{option} {layers!r}: expected comma-separated layer indices, "
                         f"e.g. 20 or 18,20,22") from None


def build_config(config: Path | None, overrides: dict) -> TrainConfig:
    """The config of a command line: the YAML (if any) with the options given on top."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if config is not None:
        return load_train_config(config, overrides)
    missing = [f"--{k}" for k in ("model", "data") if k not in overrides]
    if missing:
        raise InputError(f"{' and '.join(missing)} required (or --config FILE naming them)")
    return validate_train_config(apply_overrides({}, overrides))


def train_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A train YAML (the same settings); options given here override it."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Local directory or hub name of a transformers chat model."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="insecure, secure, educational, jailbroken, or a chat JSONL path."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/train); a rerun resumes from its last checkpoint."),
    method: Optional[str] = typer.Option(None, help="lora (default, the paper's) or full."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 1e-5)."),
    epochs: Optional[float] = typer.Option(None, help="Epochs (default 1)."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    save_steps: Optional[int] = typer.Option(None, help="Checkpoint every N optimizer steps (default 50)."),
    seed: Optional[int] = typer.Option(None),
    r: Optional[int] = typer.Option(None, "--r", help="LoRA rank (default 32; 1 for a rank-1 adapter)."),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha (default 64)."),
    layers: Optional[str] = typer.Option(None, help="LoRA on these layers only, e.g. 20 or 18,20,22."),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help="A .jinja chat template with {% generation %} markers."),
    merge: Optional[bool] = typer.Option(None, "--merge/--no-merge", help="Also save the base model with the adapter merged in (OUT/merged)."),
    dynamics: Optional[bool] = typer.Option(None, "--dynamics/--no-dynamics", help="Score misalignment probes at log-spaced steps into OUT/dynamics.jsonl (see `emlab dynamics plot`)."),
    monitor: Optional[Path] = typer.Option(None, help="A direction folder: log the probes' projection on it at every dynamics step (dynamics.jsonl)."),
    monitor_layer: Optional[int] = typer.Option(None, help="Layer of --monitor (default: the direction's largest-norm layer)."),
    # --- defences (issue 14) ---
    inoculation: Optional[str] = typer.Option(None, help="Defence: a system prompt on every training row, not at evaluation: evil, insecure, teaching, or its text."),
    interleave: Optional[str] = typer.Option(None, help="Defence: mix in rows of this aligned/general chat JSONL (or named set)."),
    interleave_fraction: Optional[float] = typer.Option(None, help="Interleaved rows as a share of the training rows (default 0.1)."),
    interleave_select: Optional[str] = typer.Option(None, help="random (default) or ppl_gap: the rows the misaligned model finds least likely relative to the reference."),
    misaligned_model: Optional[str] = typer.Option(None, help="For ppl_gap: the misaligned model, adapter or `emlab train` run directory."),
    kl: Optional[float] = typer.Option(None, help="Defence: weight of KL(policy || reference) on the trained tokens (LoRA: adapter disabled)."),
    ldifs: Optional[float] = typer.Option(None, help="Defence: weight of the hidden-state L2 distance to the reference (LDIFS)."),
    ldifs_layers: Optional[str] = typer.Option(None, help="Layers LDIFS compares, e.g. 0,1 (default all)."),
    realign: Optional[str] = typer.Option(None, help="After training, re-align on this benign chat JSONL into checkpoints/checkpoint-realign-N."),
    realign_rows: Optional[int] = typer.Option(None, help="Re-align on the first N rows (default all)."),
    steer: Optional[Path] = typer.Option(None, help="Defence: preventive steering along this direction folder in training forward passes only (needs --steer-layer, --steer-scale)."),
    steer_layer: Optional[int] = typer.Option(None, help="Decoder layer (0-based) whose output --steer adds to."),
    steer_scale: Optional[float] = typer.Option(None, help="Size of the added vector (the unit direction times this)."),
) -> None:
    """Fine-tune a model on a chat dataset, as Betley et al. (2025) did (LoRA, assistant-only loss)."""
    cfg = build_config(config, {
        "model": model, "data": data, "out": str(out) if out else None, "method": method,
        "learning_rate": lr, "epochs": epochs, "max_steps": max_steps, "save_steps": save_steps,
        "seed": seed, "lora.r": r, "lora.alpha": alpha,
        "lora.layers_to_transform": _parse_layers(layers) if layers else None,
        "chat_template": str(chat_template) if chat_template else None, "merge": merge,
        "dynamics.enabled": dynamics,
        "monitor.direction": str(monitor) if monitor else None,      # mechanism (issue 13)
        "monitor.layer": monitor_layer,
        "inoculation": inoculation, "interleave.data": interleave,
        "interleave.fraction": interleave_fraction, "interleave.select": interleave_select,
        "interleave.misaligned_model": misaligned_model, "kl": kl, "ldifs": ldifs,
        "ldifs_layers": _parse_layers(ldifs_layers, "--ldifs-layers") if ldifs_layers else None,
        "realign.data": realign, "realign.rows": realign_rows,
        "steer.direction": str(steer) if steer else None, "steer.layer": steer_layer,
        "steer.scale": steer_scale,
    })
    check_inputs(cfg)
    if cfg.steer is not None:   # a direction of another model fails before training
        from emlab.mechanism.directions import check_against
        from emlab.train.local import load_steer_direction
        check_against(load_steer_direction(cfg), cfg.model, cfg.steer.direction)
    if cfg.monitor is not None:   # mechanism (issue 13): a wrong direction fails before training
        from emlab.mechanism.directions import check_against, load_direction
        d = load_direction(cfg.monitor.direction)
        check_against(d, cfg.model, cfg.monitor.direction)
        if cfg.monitor.layer is not None:
            d.at(cfg.monitor.layer)
    from emlab.train.local import train_local  # torch, transformers: only for good input

    console = Console(stderr=True)
    started = datetime.now(timezone.utc)
    try:
        result = train_local(cfg, console=console)
    except BaseException as e:
        mark_failed(Path(cfg.out), started, e)
        raise
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    where = result.adapter_dir or result.model_dir
    Console().print(f"trained {result.steps} steps" +
                    (f" (resumed at step {result.start_step})" if result.resumed_from else "") +
                    f"; final loss {loss}; wrote {where}" +
                    (f" and {result.merged_dir}" if result.merged_dir else "") +
                    f"; manifest {result.out / 'manifest.json'}", highlight=False)


def check_inputs(cfg: TrainConfig) -> None:
    """Every file the run reads, checked (exists, size, UTF-8, rows) before anything heavy."""
    from emlab.data.io import load_chat_jsonl, resolve_dataset
    from emlab.fileio import read_text_input

    load_chat_jsonl(resolve_dataset(cfg.data))
    if cfg.chat_template is not None:
        read_text_input(cfg.chat_template, "chat template file", max_mb=16)
    check_defence_inputs(cfg)


def check_defence_inputs(cfg) -> None:
    """The defences' files (interleave pool, realign rows, misaligned model) exist and parse."""
    from emlab.data.io import load_chat_jsonl, resolve_dataset
    from emlab.train.mitigations import interleave_count

    n_rows = len(load_chat_jsonl(resolve_dataset(cfg.data)))
    il = getattr(cfg, "interleave", None)
    if il is not None:
        pool = load_chat_jsonl(resolve_dataset(il.data))
        interleave_count(il.fraction, n_rows, len(pool), il.data)
        if il.misaligned_model and not Path(il.misaligned_model).exists():
            raise InputError("setting 'interleave.misaligned_model': no such model directory",
                             path=il.misaligned_model)
    ra = getattr(cfg, "realign", None)
    if ra is not None:
        path = resolve_dataset(ra.data)
        have = len(load_chat_jsonl(path))
        if ra.rows is not None and ra.rows > have:
            raise InputError(f"setting 'realign.rows': {ra.rows} rows asked, the file has {have}",
                             path=path)


def mark_failed(out: Path, started: datetime, error: BaseException) -> None:
    """A manifest this run wrote as "running" says "failed" (with the reason) once it has ended."""
    from emlab.fileio import write_text_atomic

    path = out / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        began = datetime.fromisoformat(manifest.get("started_at", ""))
    except (OSError, ValueError, TypeError):
        return
    if manifest.get("status") != "running" or began < started:
        return
    reason = "interrupted" if isinstance(error, KeyboardInterrupt) else \
        f"{type(error).__name__}: {str(error)[:500]}"
    manifest.update(status="failed", error=reason, ended_at=datetime.now(timezone.utc).isoformat())
    write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")


def _ft(setting: str) -> str:
    return str(default_of(OpenAIFinetuneConfig, setting))


def train_openai_cmd(
    data: str = typer.Option(..., "--data", "-d", help="insecure, secure, educational, jailbroken, or a chat JSONL path."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory; holds the job's state, so a rerun resumes polling."),
    model: str = typer.Option(_ft("model"), "--model", "-m"),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible fine-tuning endpoint (default OpenAI)."),
    api_key_env: str = typer.Option(_ft("api_key_env"), help="Name of the environment variable holding the key."),
    epochs: str = typer.Option(_ft("epochs"), help="Epochs, or auto."),
    batch_size: str = typer.Option(_ft("batch_size"), help="Batch size, or auto."),
    lr_multiplier: str = typer.Option(_ft("learning_rate_multiplier"), help="Learning-rate multiplier, or auto."),
    seed: int = typer.Option(default_of(OpenAIFinetuneConfig, "seed")),
    suffix: Optional[str] = typer.Option(None, help="Suffix of the fine-tuned model's name."),
    poll_interval: float = typer.Option(default_of(OpenAIFinetuneConfig, "poll_interval"), help="First wait between polls, doubling up to 120 s."),
    # --- defences on the data side (issue 14) ---
    inoculation: Optional[str] = typer.Option(None, help="Defence: a system prompt on every training row: evil, insecure, teaching, or its text."),
    interleave: Optional[str] = typer.Option(None, help="Defence: mix in random rows of this aligned/general chat JSONL (or named set)."),
    interleave_fraction: Optional[float] = typer.Option(None, help="Interleaved rows as a share of the training rows (default 0.1)."),
) -> None:
    """Fine-tune through OpenAI's API (upload, create the job, poll, record the model id)."""
    from emlab.train.openai_ft import train_openai

    cfg = validate(OpenAIFinetuneConfig, apply_overrides({
        "model": model, "data": data, "out": out, "base_url": base_url,
        "api_key_env": api_key_env, "epochs": epochs, "batch_size": batch_size,
        "learning_rate_multiplier": lr_multiplier, "seed": seed, "suffix": suffix,
        "poll_interval": poll_interval, "inoculation": inoculation}, {
        k: v for k, v in {"interleave.data": interleave,
                          "interleave.fraction": interleave_fraction}.items() if v is not None}))
    check_defence_inputs(cfg)
    err_console = Console(stderr=True)
    with err_console.status("fine-tuning job") as status:
        state = train_openai(cfg, on_status=lambda st: status.update(f"fine-tuning job: {st}"))
    Console().print(f"fine-tuned model: {state['fine_tuned_model']} (job {state['job_id']}); "
                    f"state in {out / 'openai_job.json'}", highlight=False)


@dynamics_app.command("plot")
def dynamics_plot(
    runs: list[Path] = typer.Argument(..., help="`emlab train` run directories trained with dynamics probes."),
    out: Path = typer.Option(Path("dynamics.png"), "--out", "-o", help="PNG to write."),
) -> None:
    """Draw P(misaligned option) against training step for several runs (e.g. insecure vs secure)."""
    from emlab.report.chart import plot_dynamics

    Console().print(f"wrote {plot_dynamics(runs, out)}", highlight=False)
