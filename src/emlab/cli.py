"""The ``emlab`` command line: a thin shell over the Python API.

Bad input (a malformed file, an unknown set, a wrong setting) prints one line saying file,
line and what was expected, and exits with code 2.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from emlab.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="emlab: reproduce, detect and prevent emergent misalignment.")
# Each command lives beside its package; this module only registers them.
from emlab.questions.cli import questions_app  # noqa: E402
from emlab.data.cli import data_app  # noqa: E402
from emlab.train.cli import dynamics_app, train_cmd, train_openai_cmd  # noqa: E402
from emlab.audit.cli import audit_cmd  # noqa: E402
from emlab.check.cli import check_cmd, history_cmd  # noqa: E402
from emlab.sweep.cli import sweep_cmd  # noqa: E402
from emlab.report.cli import report_cmd  # noqa: E402
from emlab.inspect.cli import inspect_import_cmd  # noqa: E402
from emlab.eval.cli import EXIT_FAILED_ITEMS, compare_cmd, eval_cmd  # noqa: E402,F401
from emlab.toyworld.cli import demo_cmd, reproduce_cmd  # noqa: E402
from emlab.models.cli import models_app  # noqa: E402
from emlab.mechanism.cli import direction_app  # noqa: E402

app.command("reproduce")(reproduce_cmd)
app.command("eval")(eval_cmd)
app.command("compare")(compare_cmd)
app.add_typer(questions_app, name="questions")
app.add_typer(data_app, name="data")
app.command("train")(train_cmd)
app.command("train-openai")(train_openai_cmd)
app.add_typer(dynamics_app, name="dynamics")
app.command("audit")(audit_cmd)
app.command("check")(check_cmd)
app.command("history")(history_cmd)
app.command("sweep")(sweep_cmd)
app.command("report")(report_cmd)
app.command("inspect-import")(inspect_import_cmd)
app.add_typer(models_app, name="models")
app.command("demo")(demo_cmd)
app.add_typer(direction_app, name="direction")
err_console = Console(stderr=True)


def main() -> None:
    """Run the CLI. Exit codes: 0 success; 1 an endpoint failed and nothing usable came back
    (everything finished is in the store: rerun to resume), and ``check``'s FAIL; 2 bad input
    or usage (a clear one-line message, no traceback); 3 ``check`` INCONCLUSIVE; 4 ``eval``
    finished with items that failed for good (outputs cover the rest, failures listed);
    130 interrupted (Ctrl-C; rerun to resume)."""
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
    except KeyboardInterrupt:
        err_console.print("interrupted. Everything finished so far is in the results store: run "
                          "the same command again to resume.", highlight=False)
        sys.exit(130)
    except (MemoryError, RecursionError) as e:
        err_console.print(f"[red]error:[/red] the input is too large or too deeply nested to "
                          f"process ({type(e).__name__})", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
