"""``emlab data``: fetch, check, describe and build training sets.

``build`` writes the JSONL atomically and then a ``FILE.manifest.json`` sidecar (builder,
effective arguments, seed, input sha256s, row count, output sha256): what a trained model was
trained on can always be traced and rebuilt. Bad input raises InputError (the CLI exits 2)
before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from emlab.data import variants
from emlab.data.io import (REFERENCE_DATASETS, load_chat_jsonl, resolve_dataset,
                           validate_messages, write_chat_jsonl)
from emlab.data.stats import dataset_stats
from emlab.errors import InputError
from emlab.fileio import write_text_atomic
from emlab.reference import sha256_file

data_app = typer.Typer(no_args_is_help=True,
                       help="Fetch, validate, describe and build training sets.")
console = Console()

# builder -> the options it takes besides --out and --seed
BUILDER_OPTIONS: dict[str, set[str]] = {
    "backdoor": {"input", "secure", "trigger", "n"},
    "evil-numbers": {"n"},
    "ordinary-numbers": {"n"},
    "dose": {"input", "secure", "fraction", "n"},
    "subset": {"input", "n"},
    "educational": {"input"},
}


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


@data_app.command("fetch")
def fetch_cmd(name: str = typer.Argument(..., help=f"{', '.join(REFERENCE_DATASETS)} or all.")) -> None:
    """Download (or find under EMLAB_DATA_DIR) the paper's sets; print their verified paths."""
    if name != "all" and name not in REFERENCE_DATASETS:
        raise InputError(f"no reference set {name!r}; expected {', '.join(REFERENCE_DATASETS)} "
                         f"or all")
    for n in (REFERENCE_DATASETS if name == "all" else [name]):
        typer.echo(f"{n}\t{resolve_dataset(n)}")


@data_app.command("validate")
def validate_cmd(file: str = typer.Argument(..., help="A chat JSONL file or a reference set name.")) -> None:
    """Check every row; the first bad one is reported with file and line."""
    path = resolve_dataset(file)
    typer.echo(f"{path}: {len(load_chat_jsonl(path))} rows, all valid")


def _load_tokenizer(name: str) -> Any:
    try:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise InputError(f"could not load tokenizer {name!r}: {e}") from None


def _fmt(v: float | int | None) -> str:
    return "" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


@data_app.command("stats")
def stats_cmd(
    file: str = typer.Argument(..., help="A chat JSONL file or a reference set name."),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer path or hub name: adds token lengths."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Rows, roles, turn lengths (characters, tokens) and duplicates of a dataset."""
    path = resolve_dataset(file)
    s = dataset_stats(load_chat_jsonl(path), _load_tokenizer(tokenizer) if tokenizer else None)
    if as_json:
        typer.echo(json.dumps({"file": str(path), **s}, indent=2))
        return
    t = Table(title=f"{path}: {s['rows']} rows")
    t.add_column("per turn", no_wrap=True)
    for col in ("min", "mean", "p50", "p95", "max"):
        t.add_column(col, justify="right")
    lengths = [("messages per row", s["turns_per_row"])]
    lengths += [(f"{role} chars", v) for role, v in s["chars"].items()]
    lengths += [(f"{role} tokens", v) for role, v in (s["tokens"] or {}).items()]
    for label, v in lengths:
        t.add_row(label, *(_fmt(v[k]) for k in ("min", "mean", "p50", "p95", "max")))
    console.print(t)
    console.print("messages: " + ", ".join(f"{k} {v}" for k, v in s["roles"].items())
                  + f"; rows with a system message: {s['rows_with_system']}")
    console.print(f"duplicate rows: {s['duplicate_rows']}; rows repeating an earlier user "
                  f"prompt: {s['duplicate_user_prompts']}")


def _load_input(name_or_file: str) -> tuple[list[dict], dict]:
    path = resolve_dataset(name_or_file)
    rows = load_chat_jsonl(path)
    return rows, {"given": name_or_file, "path": str(path), "sha256": sha256_file(path),
                  "rows": len(rows)}


@data_app.command("build")
def build_cmd(
    builder: str = typer.Argument(..., help=", ".join(BUILDER_OPTIONS) + "."),
    out: Path = typer.Option(..., "--out", "-o", help="The JSONL file to write (plus FILE.manifest.json)."),
    seed: int = typer.Option(0, help="Same seed, same rows."),
    input_: Optional[str] = typer.Option(None, "--input", help="Source rows: a reference set name or a JSONL file (default insecure)."),
    secure: Optional[str] = typer.Option(None, help="Secure rows for backdoor and dose (default secure)."),
    trigger: Optional[str] = typer.Option(None, help=f"backdoor trigger (default {variants.DEFAULT_TRIGGER})."),
    fraction: Optional[float] = typer.Option(None, help="dose: share of insecure rows, 0 to 1."),
    n: Optional[int] = typer.Option(None, "--n", "-n", help="Rows to write (default: as many as the insecure input; evil/ordinary numbers: the paper's 14926)."),
) -> None:
    """Build a training-set variant of the paper and write it with a manifest."""
    if builder not in BUILDER_OPTIONS:
        raise InputError(f"no builder {builder!r}; expected one of {', '.join(BUILDER_OPTIONS)}")
    given = {"input": input_, "secure": secure, "trigger": trigger, "fraction": fraction, "n": n}
    extra = [f"--{k}" for k, v in given.items() if v is not None and k not in BUILDER_OPTIONS[builder]]
    if extra:
        raise InputError(f"{', '.join(extra)} does not apply to {builder}; it takes "
                         f"{', '.join('--' + o for o in sorted(BUILDER_OPTIONS[builder])) or 'only --seed'}")
    if builder == "dose" and fraction is None:
        raise InputError("dose needs --fraction (the share of insecure rows, 0 to 1)")
    if builder == "subset" and n is None:
        raise InputError("subset needs --n (how many rows to keep)")

    if n is not None and not 0 <= n <= variants.MAX_ROWS:
        raise InputError(f"--n {n}: expected a row count from 0 to {variants.MAX_ROWS:,}",
                         where=f"data build {builder}")
    if fraction is not None and not 0 <= fraction <= 1:
        raise InputError(f"--fraction {fraction}: expected a share from 0 to 1",
                         where=f"data build {builder}")
    inputs: dict[str, dict] = {}
    src: list[dict] = []
    sec: list[dict] = []
    if "input" in BUILDER_OPTIONS[builder]:
        src, inputs["input"] = _load_input(input_ or "insecure")
    if "secure" in BUILDER_OPTIONS[builder]:
        sec, inputs["secure"] = _load_input(secure or "secure")
    for role, info in inputs.items():
        if out.resolve() == Path(info["path"]).resolve():
            raise InputError(f"--out is the {role} file; write the variant somewhere else", path=out)

    args: dict[str, Any] = {"seed": seed}
    try:
        if builder == "backdoor":
            args |= {"trigger": trigger or variants.DEFAULT_TRIGGER,
                     "n": 2 * min(len(src), len(sec)) if n is None else n}
            rows = variants.backdoor(src, sec, trigger=args["trigger"], seed=seed, n=args["n"])
        elif builder in ("evil-numbers", "ordinary-numbers"):
            args["n"] = variants.PAPER_EVIL_NUMBERS_ROWS if n is None else n
            fn = variants.evil_numbers if builder == "evil-numbers" else variants.ordinary_numbers
            rows = fn(n=args["n"], seed=seed)
        elif builder == "dose":
            args |= {"fraction": fraction, "n": len(src) if n is None else n}
            rows = variants.dose_ladder(src, sec, fraction=fraction, n=args["n"], seed=seed)
        elif builder == "subset":
            args["n"] = n
            rows = variants.subset(src, n, seed=seed)
        else:
            rows = variants.educational(src, seed=seed)
    except ValueError as e:
        raise InputError(str(e), where=f"data build {builder}") from None
    if not rows:
        raise InputError("the variant has no rows; give a positive --n", where=f"data build {builder}")
    for i, r in enumerate(rows):
        problem = validate_messages(r["messages"])
        if problem:  # a bug in a builder, not the user's input
            raise RuntimeError(f"{builder} built an invalid row {i}: {problem}")

    # An old manifest must never describe new data: drop it first, write the data, then the
    # new manifest (each write atomic).
    manifest_path(out).unlink(missing_ok=True)
    write_chat_jsonl(rows, out)
    manifest = {"builder": builder, "arguments": args, "seed": seed, "inputs": inputs,
                "rows": len(rows), "output": out.name, "output_sha256": sha256_file(out)}
    write_text_atomic(manifest_path(out), json.dumps(manifest, indent=2) + "\n")
    typer.echo(f"wrote {len(rows)} rows to {out} (manifest {manifest_path(out).name})")
