"""Randomization-test commands: fit-curves (per corruption level) and interpolate (min-norm kernel)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from .common import check_outputs, csv_option, deprecated, deprecated_option, emit, flag_of, handle_errors, json_option, memory_option, open_population, print_json, runs_line, runs_option, write_csv


@app.command("fit-curves")
@handle_errors
def fit_curves_command(
    store: str = typer.Argument(..., help="Population store of a randomization test (label noise or input randomization across runs)."),
    runs: str = runs_option(),
    plot: Optional[Path] = typer.Option(None, help="PNG of the curves (default: STORE/reports/fit-curves.png); the errors and epochs to fit per level go next to it, as <stem>-levels.png."),
    csv: Optional[Path] = csv_option("CSV: one row per corruption level (final accuracies, errors, epochs to fit)."),
    block_size: int = typer.Option(256, "--block-size", help="Runs read at a time."),
    as_json: bool = json_option(),
):
    """Per corruption level: train/test curves, final accuracies and epochs to fit.

    Epochs to fit: the first epoch with 99% (and 100%) train accuracy on the labels the runs saw."""
    from ..analysis.randomization import FitCurvesOptions, fit_curves
    from ..report.fit_curves import fit_table, levels_plot_path, plot_fit_curves, plot_fit_levels

    options = FitCurvesOptions(runs=runs, block_size=block_size)
    check_outputs({"--plot": plot, "--csv": csv})
    pop = open_population(store)
    result = fit_curves(pop, options)
    figure = plot_fit_curves(result.levels, plot or pop.report_dir / "fit-curves.png", f"{pop.recipe.name}: fit curves (mean +- std over runs)")
    by_level = plot_fit_levels(result.levels, levels_plot_path(figure), f"{pop.recipe.name}: per corruption level (mean +- std over runs)")
    recipe = pop.recipe

    def text(s: dict) -> list[str]:
        lines = [f"{recipe.name}: {len(result)} corruption levels, {recipe.training.epochs} epochs, {recipe.data.dataset}, {runs_line(s)}", fit_table(result.levels)]
        if recipe.record.train_metrics == "running":
            lines.append('note: train accuracy is the running average over each epoch\'s batches; [record] train_metrics = "eval" measures it after the epoch')
        return lines

    emit(result, pop, as_json=as_json, csv=csv, text=text, files={"plot": str(figure), "plot_by_level": str(by_level)})


@app.command()
@handle_errors
def interpolate(
    dataset: str = typer.Option("mnist", help="Dataset (its own train/test split): digits, mnist, fashion-mnist, cifar10, ..."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root (default: $MANYRUNS_DATA)."),
    kernel: str = typer.Option("rbf", help="Kernel: rbf, exp(-bandwidth * squared distance) on pixels in [0, 1]."),
    bandwidth: float = typer.Option(0.02, help="RBF bandwidth (> 0)."),
    solver: str = typer.Option("exact", help="exact (Cholesky of one triangle, in block columns) or cg (preconditioned conjugate gradients)."),
    subset: Optional[int] = typer.Option(None, help="Use the first N training examples (all test examples)."),
    precision: str = typer.Option("float64", help="exact: float64, or float32 (half the memory; fails on ill-conditioned matrices)."),
    tol: float = typer.Option(1e-4, help="cg: stop at this relative residual."),
    max_iter: int = typer.Option(500, "--max-iter", help="cg: at most this many iterations."),
    preconditioner: str = typer.Option("block-jacobi", help="cg: block-jacobi (exact solves on k-means blocks) or none."),
    preconditioner_block: int = typer.Option(4000, "--preconditioner-block", help="cg: points per preconditioner block."),
    matrix: str = typer.Option("auto", help="cg: packed (keep the matrix), on-the-fly (recompute per product) or auto (packed when it fits; otherwise on-the-fly, with a warning)."),
    memory_gib: Optional[float] = memory_option(None, "Memory budget in GiB (default: what is available now)."),
    csv: Optional[Path] = csv_option("CSV: one row with the outcome (errors, residual, time, memory)."),
    as_json: bool = json_option(),
    memory_limit: Optional[float] = deprecated_option("--memory-limit", "--memory-gib (GiB; --memory-limit was decimal GB)"),
    block_size: Optional[int] = deprecated_option("--block-size", "--preconditioner-block"),
):
    """Min-norm RBF kernel interpolation of the training set; test error, residual, time, memory.

    Solves K alpha = Y (one-hot Y) on the training set and predicts argmax K(test, train) alpha.
    A dataset's analysis: it uses no population, so nothing is kept in a store."""
    from ..analysis.interpolation import InterpolationOptions, format_bytes, interpolate_dataset
    from ..errors import word

    memory_gib = deprecated("--memory-limit", "--memory-gib", memory_limit, memory_gib, lambda gb: gb * 1e9 / 2**30)
    preconditioner_block = deprecated("--block-size", "--preconditioner-block", block_size, preconditioner_block, default=4000)
    options = InterpolationOptions(
        bandwidth=bandwidth, kernel=kernel, solver=solver, subset=subset, precision=precision, tol=tol, max_iter=max_iter,
        preconditioner=preconditioner, preconditioner_block=preconditioner_block, matrix=matrix, memory_gib=memory_gib,
    )
    check_outputs({"--csv": csv})
    result = interpolate_dataset(dataset, options, data_dir, warn=lambda line: typer.echo(word(line, lambda p: flag_of(p, {})), err=True))
    summary = result.summary()
    summary["files"] = {"csv": write_csv(result.table(), csv)} if csv is not None else {}
    if as_json:
        print_json(summary)
        return
    r = result
    how = f"{r.solver} solver, {r.precision}, matrix {r.matrix_mode}"
    typer.echo(f"min-norm RBF interpolation on {r.dataset}: {r.n_train:,} train, {r.n_test:,} test, bandwidth {r.bandwidth:g} ({how})")
    typer.echo(f"  test error {100 * r.test_error:.2f}%, train error {100 * r.train_error:.2f}%, relative residual {r.residual:.2e}")
    if r.iterations is not None:
        state = "converged" if r.converged else "stopped at --max-iter"
        typer.echo(f"  CG: {r.iterations} iterations ({state}; residual seen by the recursion {r.recursive_residual:.2e})")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in r.timings.items())
    typer.echo(f"  {r.seconds:.1f} s ({phases}); peak memory {format_bytes(r.peak_memory_bytes)}")
    if csv is not None:
        typer.echo(f"  csv: {csv}")
