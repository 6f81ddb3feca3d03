"""The ``manyruns`` command line: a thin layer over the Python API.

Each module of this package registers the commands of one area on :data:`app`.
"""

from __future__ import annotations

import functools
import json
import sys

import typer

from ..data import DatasetMismatchError, DatasetNotFoundError
from ..recipe import RecipeError
from ..store import StoreError

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


def fail(message: str, code: int) -> None:
    """Print a one-line error and exit with ``code`` (2: bad input such as a recipe)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def handle_errors(fn):
    """Turn the API's expected errors into one-line messages and exit codes (2: bad input)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RecipeError as exc:
            fail(str(exc), 2)
        except (DatasetNotFoundError, DatasetMismatchError, StoreError, ValueError) as exc:
            fail(str(exc), 1)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)

    return wrapper


def print_json(obj) -> None:
    """Print ``obj`` as JSON, with ``null`` for non-finite floats (NaN is not JSON)."""
    from ..store import json_safe

    typer.echo(json.dumps(json_safe(obj), indent=2, default=float))


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
