"""The skeleton every command shares: errors and exit codes, opening a store, the common
options, and writing a result (``--json`` on stdout, ``--csv PATH``, the text table).

Exit codes: 0 done; 2 invalid usage or input (an option, a selection of runs, a file, a store
that lacks what was asked), with one line that names the flag; 1 a failure while working; 130
interrupted. Never a traceback (``MANYRUNS_DEBUG=1`` shows it).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Callable, Optional

import typer

from ..data import DatasetNotFoundError
from ..errors import InputError, ManyrunsError, OptionError
from ..recipe import RecipeError
from ..store import StoreError
from ..streaming import json_safe

DEBUG_ENV = "MANYRUNS_DEBUG"

# ------------------------------------------------------------------------- common options

RUNS_HELP = "Runs to use: ok (every ok run), committed, N (the first N ok runs), or run indices such as 0-99,200,300-."
JSON_HELP = "Print the summary as JSON (with the run indices used, as runs)."
CSV_HELP = "Write the result's table to this CSV file."
MEMORY_HELP = "Memory budget in GiB."
DATA_DIR_HELP = "Data root for the images (default: $MANYRUNS_DATA, then the one recorded in the store)."


def runs_option(default: str = "ok"):
    return typer.Option(default, "--runs", help=RUNS_HELP)


def json_option():
    return typer.Option(False, "--json", help=JSON_HELP)


def csv_option(help: str = CSV_HELP):
    return typer.Option(None, "--csv", help=help)


def memory_option(default: float, help: str = MEMORY_HELP):
    return typer.Option(default, "--memory-gib", help=help)


def data_dir_option(help: str = DATA_DIR_HELP):
    return typer.Option(None, "--data-dir", help=help)


def deprecated_option(old: str, new: str):
    """A hidden option kept for one release under its old name (see :func:`deprecated`)."""
    return typer.Option(None, old, hidden=True, help=f"Deprecated: use {new}.")


def deprecated(old: str, new: str, value, current, convert: Callable = lambda v: v, default=None):
    """``current`` unless the deprecated flag ``old`` was given (then its value, converted),
    with a one-line note on stderr; both given (``current`` not its ``default``) is refused."""
    if value is None:
        return current
    if current != default:
        raise InputError(f"give {new} or its old name {old}, not both")
    typer.echo(f"note: {old} is deprecated and will be removed; use {new}", err=True)
    return convert(value)


# -------------------------------------------------------------------------------- errors


def fail(message: str, code: int) -> None:
    """Print a one-line error and exit with ``code`` (2: bad input; 1: a failure while working)."""
    typer.echo("error: " + " ".join(str(message).split()), err=True)
    raise typer.Exit(code)


def flag_of(param: str, flags: dict[str, str]) -> str:
    return flags.get(param, "--" + param.replace("_", "-"))


def handle_errors(fn=None, *, flags: dict[str, str] | None = None):
    """Turn the API's errors into one-line messages and exit codes. ``flags``: this command's
    flag for a library parameter where it is not ``--<param-with-dashes>``."""
    flags = flags or {}

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (typer.Exit, BrokenPipeError):  # a closed pipe (`... | head`) is the caller's choice
                raise
            except KeyboardInterrupt:
                typer.echo("interrupted", err=True)
                raise typer.Exit(130)
            except OptionError as exc:
                _debug()
                fail(exc.worded(names=lambda p: flag_of(p, flags)), 2)
            except (InputError, RecipeError, StoreError, DatasetNotFoundError) as exc:
                _debug()
                fail(str(exc), 2)
            except ManyrunsError as exc:  # a failure while working that says what happened
                _debug()
                fail(str(exc), 1)
            except Exception as exc:  # noqa: BLE001 - a failure while working: one line, exit 1
                _debug()
                fail(f"{type(exc).__name__}: {exc}", 1)

        return wrapper

    return decorate(fn) if fn is not None else decorate


def _debug() -> None:
    if os.environ.get(DEBUG_ENV):
        import traceback

        traceback.print_exc()


# ------------------------------------------------------------------------------- output


def check_outputs(paths: dict[str, Optional[Path]]) -> None:
    """Refuse, before any work, output paths that cannot be written (``paths``: flag -> path):
    an existing directory, or a folder that cannot be made or written to."""
    for flag, path in paths.items():
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise InputError(f"{flag} {path}: is a directory; give a file name")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{flag} {path}: cannot make its folder ({exc.strerror})") from None
        if not os.access(path.parent, os.W_OK):
            raise InputError(f"{flag} {path}: its folder is not writable")


def open_population(store: str):
    """The population at ``store`` (every command opens stores this way)."""
    from ..population import open as open_store

    return open_store(store)


def print_json(obj) -> None:
    """Print ``obj`` as JSON, with ``null`` for non-finite floats (NaN is not JSON)."""
    typer.echo(json.dumps(json_safe(obj), indent=2, default=float))


def write_csv(table, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return str(path)


def emit(result, pop, *, as_json: bool, csv: Optional[Path], text: Callable[[dict], list[str]], files: dict | None = None, save: bool = True) -> dict:
    """The end of every analysis command: save the result in the store, write ``--csv``, then
    print the summary as JSON or as the text lines ``text(summary)`` gives. ``files``: other
    outputs written (name -> path), listed in both forms."""
    summary = result.summary()
    written = dict(files or {})
    if csv is not None:  # the files first: a file that cannot be written leaves the store as it was
        written["csv"] = write_csv(result.table(), csv)
    if save:
        summary["stored"] = result.save(pop)
    summary["files"] = written
    if as_json:
        print_json(summary)
    else:
        for line in text(summary):
            typer.echo(line)
        for name, path in written.items():
            typer.echo(f"  {name}: {path}")
        if save:
            typer.echo(f"  kept in {pop.path}/{summary['stored']}")
    return summary


def number(x: float | None, fmt: str = ".4f") -> str:
    """``x`` formatted, or 'n/a' where the summary has no value (too few runs)."""
    return "n/a" if x is None else format(x, fmt)


def runs_line(summary: dict) -> str:
    """'from 24 runs (0-23)' for a summary that holds ``runs``."""
    from ..selection import format_runs

    return f"from {summary['run_count']} runs ({format_runs(summary['runs'], limit=4)})"


def int_list(text: Optional[str], flag: str) -> Optional[tuple[int, ...]]:
    """'3,6,9' -> (3, 6, 9); a one-line error naming ``flag`` otherwise."""
    if text is None:
        return None
    try:
        values = tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        fail(f"{flag} must be integers separated by commas (e.g. 10,20,50), got {text!r}", 2)
    if not values:
        fail(f"{flag} needs at least one integer, got {text!r}", 2)
    return values
