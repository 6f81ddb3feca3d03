"""Core commands: plan, train, status, demo."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .. import api
from ..storage import open_location
from . import app
from .common import fail, handle_errors, open_population, print_json

@app.command()
@handle_errors
def plan(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    store: str = typer.Argument(..., help="The population store to create (or grow): a folder, or a URL such as s3://bucket/populations/name."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root (default: $MANYRUNS_DATA)."),
):
    """Create a store for a recipe (or grow it when only population.runs increased)."""
    existed = open_location(store).exists("zarr.json")
    before = open_population(store).num_runs if existed else 0
    pop = api.plan(recipe, store, data_dir)
    if not existed:
        typer.echo(f"planned {pop.num_runs} runs of {pop.recipe.name!r} in {store}")
    elif pop.num_runs > before:
        typer.echo(f"grew {store} from {before} to {pop.num_runs} runs")
    else:
        typer.echo(f"{store} already holds this recipe ({pop.num_runs} runs); nothing changed")


@app.command()
@handle_errors
def train(
    store: str = typer.Argument(..., help="Population store: a folder or a URL (s3://, gs://, az://, file://)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: one per core, or per GPU)."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    max_runs: Optional[int] = typer.Option(None, "--max-runs", help="Train at most this many runs now."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root (default: $MANYRUNS_DATA, then the one used by plan)."),
    executor: str = typer.Option("local", help="local (process pool), serial (in-process) or ray (a Ray cluster: see --address)."),
    strategy: str = typer.Option("auto", help="Population form: auto, stacked (MLP), loop, vmap, or grouped (fast-cnn)."),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="Runs per group (default depends on the form)."),
    log_epochs: bool = typer.Option(False, "--log-epochs", help="Print train/test accuracy and loss after every epoch of every run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    address: Optional[str] = typer.Option(None, "--address", help="With --executor ray: the cluster, auto (the one this machine belongs to) or HOST:PORT (default: a Ray instance started for this command)."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", help="With --executor ray: GPUs per worker, which then trains on cuda (0.25: four workers share a GPU)."),
):
    """Train every run that is not committed yet (resumable; Ctrl-C keeps committed runs)."""
    try:
        report = api.train(
            store, workers, device, max_runs, data_dir, executor, strategy, group_size, not quiet, log_epochs,
            address=address, gpus_per_worker=gpus_per_worker,
        )
    except KeyboardInterrupt:
        left = api.status(store)
        typer.echo(f"interrupted: {left['committed']} of {left['planned']} runs committed; `manyruns train {store}` resumes", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        # The worker processes are gone; leave without the interpreter's exit-time joins of the
        # pool's threads and pipes, which can wait on a dead worker. Committed runs are on disk.
        os._exit(130)
    done = report.trained + report.diverged
    line = f"trained {done} runs ({report.diverged} diverged, {len(report.failed)} failed) in {report.seconds:.1f} s"
    if done:
        line += f", {report.runs_per_hour:,.0f} runs/h"
    line += f"; {report.remaining} not committed"
    if report.skipped_claimed:
        line += f" ({report.skipped_claimed} being trained by another process)"
    typer.echo(line)
    if report.stopped:
        fail(f"{report.stopped}; `manyruns train {store}` retries them", 1)
    if report.failed:
        first = next(iter(report.failed.items()))
        fail(f"{len(report.failed)} runs failed (run {first[0]}: {first[1]}); `manyruns train {store}` retries them", 1)


@app.command()
@handle_errors
def status(
    store: str = typer.Argument(..., help="Population store: a folder or a URL (s3://, gs://, az://, file://)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object."),
):
    """Runs planned, committed, failed and the accuracy so far."""
    info = api.status(store)
    if as_json:
        print_json(info)
        return
    typer.echo(f"{info['path']}: {info['name']} on {info['dataset']}")
    typer.echo(
        f"  runs: {info['planned']} planned, {info['committed']} committed ({info['ok']} ok, {info['diverged']} diverged), "
        f"{info['failed']} failed, {info['pending']} not committed, {info['running']} being trained"
    )
    for col, label in (("test_acc", "test accuracy"), ("train_acc", "train accuracy"), ("heldout_acc", "held-out accuracy")):
        mean, std = info[f"mean_{col}"], info[f"std_{col}"]
        if mean is not None:
            typer.echo(f"  {label}: {100 * mean:.2f}%" + (f" +- {100 * std:.2f}" if std is not None else "") + " (mean +- std over ok runs)")
    for r, err in list(info["failures"].items())[:5]:
        typer.echo(f"  run {r} failed: {err}")


@app.command()
@handle_errors
def demo(
    out: Path = typer.Option(Path("manyruns-demo"), "--out", help="Store directory for the demo population."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: one per core)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Plan and train the demo population on the bundled digits data and summarize it."""
    from ..demo import run_demo

    summary = run_demo(out, workers, progress=not as_json)
    if as_json:
        print_json(summary)
        return
    typer.echo(f"\nmanyruns demo: {summary['runs']} runs of an MLP on digits (50% random subsets) in {out}")
    typer.echo(f"  single-run test accuracy: {100 * summary['mean_accuracy']:.2f}% +- {100 * summary['std_accuracy']:.2f} (mean +- std)")
    typer.echo(f"  ensemble test accuracy:   {100 * summary['ensemble_accuracy']:.2f}% (averaged logits of all runs)")
    typer.echo(f"  3-NN test accuracy:       {100 * summary['knn_accuracy']:.2f}% (correlation kernel across runs)")
    mem = summary["memorization"]
    top = ", ".join(f"#{t['index']} (label {t['label']}, {t['mem']:.2f})" for t in mem["top"])
    typer.echo(f"  memorization: median {mem['quantiles']['50%']:.3f}, {mem['at_least_0.5']} training images at 0.5 or more; most memorized: {top}")
    typer.echo(f"  wall time: {summary['seconds']:.1f} s")
    typer.echo(f"  report: {summary['report']}")
    typer.echo(f"  report: {summary['report']}")
    typer.echo(f"next: `manyruns status {out}`, or in Python `manyruns.open({str(out)!r}).runs`")


@app.command()
@handle_errors
def verify(
    store: str = typer.Argument(..., help="Population store: a folder or a URL."),
    repair: bool = typer.Option(False, "--repair", help="Uncommit the damaged runs (the next train redoes them)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object."),
):
    """Read back every chunk of every committed run; report damaged runs (exit 1), or with --repair uncommit them."""
    from ..verify import verify as check

    report = check(store, repair=repair)
    if as_json:
        print_json(report.to_dict())
    else:
        for line in report.lines():
            typer.echo(line)
    if not report.sound and not report.repaired:
        raise typer.Exit(1)
    if report.damaged_shared:
        raise typer.Exit(1)
