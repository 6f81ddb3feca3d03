"""The ``manyruns`` command line: a thin layer over the Python API.

Each module of this package registers the commands of one area on :data:`app`; the skeleton
they share (errors and exit codes, common options, output) is in :mod:`.common`.
"""

from __future__ import annotations

import sys

import typer

from .common import fail, handle_errors, print_json

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train populations of neural networks and compute statistics over them.",
)
import_app = typer.Typer(no_args_is_help=True, help="Read populations published in other formats into a store.")
export_app = typer.Typer(no_args_is_help=True, help="Write a store in a published population format.")
app.add_typer(import_app, name="import")
app.add_typer(export_app, name="export")


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # e.g. `manyruns status --json | head`
        sys.exit(1)


from . import core  # noqa: E402,F401  (registers the commands)
from . import kernel  # noqa: E402,F401
from . import zoo  # noqa: E402,F401
from . import heldout  # noqa: E402,F401
from . import randomization  # noqa: E402,F401
from . import audit  # noqa: E402,F401
from . import report  # noqa: E402,F401
from . import attribution  # noqa: E402,F401

__all__ = ["app", "export_app", "fail", "handle_errors", "import_app", "main", "print_json"]
