"""The report command: a browsable static site of a population."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Optional

import typer

from . import app
from .common import data_dir_option, handle_errors, open_population, print_json


@app.command()
@handle_errors
def report(
    store: str = typer.Argument(..., help="Population store: a folder or a URL (s3://, gs://, az://, file://)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder of the site (default STORE/reports/site); an earlier report there is replaced, any other content refused."),
    open_page: bool = typer.Option(False, "--open", help="Open the page in the default browser."),
    data_dir: Optional[Path] = data_dir_option(),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object: path, bytes, sections, notes."),
):
    """Write a static site of the population: overview, one section per saved analysis, galleries and a panel per example."""
    from ..report.site import check_out, write_report

    if out is not None:
        check_out(out)  # before the store is read
    result = write_report(open_population(store), out, data_dir)
    index = result.path / "index.html"
    if as_json:
        print_json({"path": str(index), "bytes": result.bytes, "sections": result.sections, "notes": result.notes})
    else:
        for note in result.notes:
            typer.echo(f"note: {note}", err=True)
        typer.echo(f"report: {index} ({result.bytes / 2**20:.1f} MiB; sections: {', '.join(result.sections)})")
    if open_page:
        webbrowser.open(index.resolve().as_uri())
