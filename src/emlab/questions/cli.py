"""``emlab questions``: look inside a question set (registered in ``emlab.cli``)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

questions_app = typer.Typer(no_args_is_help=True, help="Inspect question sets.")


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
    Console().print(t)
