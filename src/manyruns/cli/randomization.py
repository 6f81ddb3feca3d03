"""Randomization-test commands: fit-curves (per corruption level) and interpolate (min-norm kernel)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app, handle_errors, print_json


@app.command("fit-curves")
@handle_errors
def fit_curves_command(
    store: Path = typer.Argument(..., help="Population store of a randomization test (label noise or input randomization across runs)."),
    runs: str = typer.Option("ok", help="ok (committed, not diverged) or committed."),
    plot: Optional[Path] = typer.Option(None, help="PNG of the curves (default: STORE/reports/fit-curves.png); the errors and epochs to fit per level go next to it, as <stem>-levels.png."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per corruption level."),
):
    """Per corruption level: train/test curves, final accuracies and epochs to fit.

    Epochs to fit: the first epoch with 99% (and 100%) train accuracy on the labels the runs saw."""
    from ..analysis.randomization import fit_curves, save_fit_curves
    from ..population import open as open_population
    from ..report.fit_curves import fit_table, levels_plot_path, plot_fit_curves, plot_fit_levels

    if runs not in ("ok", "committed"):
        raise ValueError(f"--runs must be ok or committed, got {runs!r}")
    pop = open_population(store)
    levels = fit_curves(pop, runs)
    save_fit_curves(pop, levels, {"runs": runs})
    figure = plot_fit_curves(levels, plot or store / "reports" / "fit-curves.png", f"{pop.recipe.name}: fit curves (mean +- std over runs)")
    by_level = plot_fit_levels(levels, levels_plot_path(figure), f"{pop.recipe.name}: per corruption level (mean +- std over runs)")
    if as_json:
        print_json([level.to_dict() for level in levels])
        return
    recipe = pop.recipe
    typer.echo(f"{pop.recipe.name}: {len(levels)} corruption levels, {recipe.training.epochs} epochs, {recipe.data.dataset}")
    typer.echo(fit_table(levels))
    if recipe.record.train_metrics == "running":
        typer.echo('note: train accuracy is the running average over each epoch\'s batches; [record] train_metrics = "eval" measures it after the epoch')
    typer.echo(f"plot: {figure}")
    typer.echo(f"plot by level: {by_level}")


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
    block_size: int = typer.Option(4000, "--block-size", help="cg: points per preconditioner block."),
    matrix: str = typer.Option("auto", help="cg: packed (keep the matrix), on-the-fly (recompute per product) or auto (packed when it fits; otherwise on-the-fly, with a warning)."),
    memory_limit: Optional[float] = typer.Option(None, "--memory-limit", help="Memory budget in GB (default: what is available now)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object."),
):
    """Min-norm RBF kernel interpolation of the training set; test error, residual, time, memory.

    Solves K alpha = Y (one-hot Y) on the training set and predicts argmax K(test, train) alpha."""
    from ..analysis.interpolation import format_bytes, interpolate_dataset

    if kernel != "rbf":
        raise ValueError(f"--kernel: only rbf is supported, got {kernel!r}")
    result = interpolate_dataset(
        dataset,
        bandwidth,
        solver,
        subset,
        data_dir,
        precision=precision,
        tol=tol,
        max_iter=max_iter,
        preconditioner=preconditioner,
        block_size=block_size,
        matrix=matrix,
        memory_limit=None if memory_limit is None else int(memory_limit * 1e9),
        warn=lambda line: typer.echo(line, err=True),
    )
    if as_json:
        print_json(result.to_dict())
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
