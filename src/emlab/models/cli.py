"""``emlab models``: import GGUF files, list the named models (registered in ``emlab.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from emlab.errors import InputError

models_app = typer.Typer(no_args_is_help=True,
                         help="Models from GGUF files and named models (imported once, cached).")
console = Console()
err_console = Console(stderr=True)


@models_app.command("import")
def import_cmd(
    source: str = typer.Argument(..., help="A .gguf file, or a named model (see `emlab models list`)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory to write the model into (default: the user cache, keyed by sha256)."),
) -> None:
    """Write a GGUF model as a plain transformers model (fp32 safetensors + tokenizer)."""
    from emlab.models import NAMED_MODELS, cached_import, import_gguf, is_gguf, named_model_file

    if source in NAMED_MODELS:
        gguf = named_model_file(source)
    elif is_gguf(source):
        gguf = Path(source)
    else:
        raise InputError(f"expected a .gguf file or a named model ({', '.join(NAMED_MODELS)})",
                         path=source)
    d = import_gguf(gguf, out, console=err_console) if out else cached_import(gguf, console=err_console)
    console.print(str(d), highlight=False, soft_wrap=True)


@models_app.command("path")
def path_cmd(
    model: str = typer.Argument(..., help="A named model, a .gguf file or a model directory."),
) -> None:
    """Print the local directory a model resolves to (importing it first if needed)."""
    from emlab.models import resolve_model

    console.print(resolve_model(model, console=err_console), highlight=False, soft_wrap=True)


@models_app.command("list")
def list_cmd() -> None:
    """The named models, whether their package is installed, and the imports in the cache."""
    from emlab.models import NAMED_MODELS, models_cache, named_model_file, read_import_manifest

    t = Table(title="named models")
    for col in ("name", "what", "installed"):
        t.add_column(col, overflow="fold")
    for m in NAMED_MODELS.values():
        try:
            named_model_file(m.name)
            where = "yes"
        except InputError:
            where = f"no: {m.install_hint()}"
        t.add_row(m.name, m.description, where)
    console.print(t)
    cache = models_cache()
    imports = sorted(d for d in cache.iterdir() if read_import_manifest(d)) if cache.is_dir() else []
    for d in imports:
        man = read_import_manifest(d)
        console.print(f"cached: {d}  (sha256 {man['sha256'][:12]}..., {man.get('parameters', 0):,} "
                      f"parameters, from {man.get('source')})", highlight=False, soft_wrap=True)
    if not imports:
        console.print(f"no imports cached in {cache}", highlight=False)
