"""Ensemble and kernel commands: import multirun-logits, ensemble, kernel, knn, pairs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import app, fail, handle_errors, import_app, print_json

RUNS_HELP = "Use the first N ok runs (default: every ok run)."
PRECISION_HELP = "Operands of the kernel's matrix products: float32, or bfloat16 (faster, about 3 significant digits)."
MEMORY_HELP = "Memory budget in GB for the kernel accumulator and the blocks of runs."


def _classes(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--classes must be class indices separated by commas, got {text!r}") from None


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise ValueError(f"--runs must be run counts separated by commas (e.g. 10,20,50,100), got {text!r}") from None
    if not sizes:
        raise ValueError("--runs needs at least one run count")
    return sizes


@import_app.command("multirun-logits")
@handle_errors
def import_multirun_logits(
    paths: List[Path] = typer.Argument(..., help="One or more log.pt files, then the store (created, or appended to)."),
    dataset: str = typer.Option("cifar10", help="Dataset the logits are over (labels and sizes come from it)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root (default: $MANYRUNS_DATA)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
):
    """Append the runs of published multirun-logits files (torch-saved dicts) to a store."""
    from ..formats.multirun import import_multirun_logits as do_import

    if len(paths) < 2:
        fail("give at least one log file and the store: manyruns import multirun-logits LOG.pt... STORE", 2)
    summary = do_import(paths[:-1], paths[-1], dataset, data_dir)
    if as_json:
        print_json(summary)
        return
    acc = summary["mean_test_acc"]
    typer.echo(
        f"imported {summary['runs_added']} runs from {summary['files']} file(s) into {summary['store']} "
        f"({summary['runs']} runs on {summary['dataset']} in all)" + (f"; mean test accuracy of the new runs {100 * acc:.2f}%" if acc is not None else "")
    )
    for name in summary["ignored_tta"]:
        typer.echo(f"note: {name} has logits_tta, but this store was created without them; they were not kept")


@app.command()
@handle_errors
def ensemble(
    store: Path = typer.Argument(..., help="Population store."),
    split: str = typer.Option("test", help="test or train."),
    runs: Optional[int] = typer.Option(None, help=RUNS_HELP),
    plot: Optional[Path] = typer.Option(None, help="PNG of accuracy against ensemble size (default: STORE/reports/ensemble-<split>.png)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object."),
):
    """Single-run accuracy (mean and std) and ensemble accuracy against the number of runs n = 1, 2, 4, ..., R."""
    from ..analysis.ensemble import ensemble_curve, ensemble_table, plot_ensemble, save_ensemble
    from ..analysis.kernel import select_runs
    from ..population import open as open_population

    pop = open_population(store)
    curve = ensemble_curve(pop, split, select_runs(pop, runs))
    save_ensemble(pop, curve, f"ensemble-{split}")
    figure = plot_ensemble(curve, plot or store / "reports" / f"ensemble-{split}.png", f"{pop.recipe.name}: ensemble {split} accuracy")
    if as_json:
        print_json({**curve.to_dict(), "plot": str(figure)})
        return
    typer.echo(ensemble_table(curve))
    typer.echo(f"plot: {figure}; kept in {store}/analysis/ensemble-{split}")


@app.command()
@handle_errors
def kernel(
    store: Path = typer.Argument(..., help="Population store with logits on train and test examples."),
    k: int = typer.Option(50, "--k", help="Neighbours to keep per query."),
    queries: str = typer.Option("test", help="test, or train (duplicates inside the training set; an example is never its own neighbour)."),
    no_log_softmax: bool = typer.Option(False, "--no-log-softmax", help="Correlate raw logits instead of log-softmax outputs."),
    classes: Optional[str] = typer.Option(None, help="Average over these classes only, e.g. 3 (the per-class kernel) or 0,1."),
    runs: Optional[int] = typer.Option(None, help=RUNS_HELP),
    out: Optional[Path] = typer.Option(None, help="Also write indices (Nq, k) int64 and values (Nq, k) float32 to this .npz."),
    precision: str = typer.Option("float32", help=PRECISION_HELP),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    memory_gb: float = typer.Option(4.0, "--memory-gb", help=MEMORY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
):
    """Top-k train neighbours of every query example by the ensemble correlation kernel."""
    import time

    import numpy as np

    from ..analysis.kernel import describe, neighbours, save_neighbours
    from ..population import open as open_population

    if queries not in ("test", "train"):
        fail(f"--queries must be test or train, got {queries!r}", 2)
    pop = open_population(store)
    t0 = time.perf_counter()
    nb = neighbours(pop, k, queries, runs, not no_log_softmax, _classes(classes), precision, device, memory_gb)
    seconds = time.perf_counter() - t0
    where = save_neighbours(pop, nb)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:  # a file object: numpy would otherwise append .npz to other names
            np.savez(f, indices=nb.indices.astype(np.int64), values=nb.values.astype(np.float32))
    info = {**describe(nb), "seconds": seconds, "stored": where, "out": None if out is None else str(out)}
    if as_json:
        print_json(info)
        return
    typer.echo(
        f"kernel of {nb.params['runs']} runs ({'log-softmax' if not no_log_softmax else 'raw logits'}"
        + (f", classes {classes}" if classes else "")
        + f"): top-{k} train neighbours of {info['queries_count']} {queries} examples in {seconds:.1f} s"
    )
    typer.echo(f"  nearest-neighbour kernel value: mean {info['top1_mean']:.3f}, max {info['top1_max']:.3f}, min {info['top1_min']:.3f}")
    typer.echo(f"  kept in {store}/{where}" + (f"; written to {out}" if out else ""))


@app.command()
@handle_errors
def knn(
    store: Path = typer.Argument(..., help="Population store with logits on train and test examples."),
    k: int = typer.Option(3, "--k", help="Neighbours that vote."),
    power: float = typer.Option(0.0, help="0: majority vote (ties go to the nearest neighbour); p > 0: votes weighted by kernel^p (the best published variant: --k 20 --power 4)."),
    runs: Optional[str] = typer.Option(None, help="Also the accuracy with the first n runs, for each n in a list such as 10,20,50,100."),
    no_log_softmax: bool = typer.Option(False, "--no-log-softmax", help="Correlate raw logits instead of log-softmax outputs."),
    classes: Optional[str] = typer.Option(None, help="Average over these classes only (per-class kernels)."),
    precision: str = typer.Option("float32", help=PRECISION_HELP),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    memory_gb: float = typer.Option(4.0, "--memory-gb", help=MEMORY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object."),
):
    """Test accuracy of k-NN prediction over the train set with the kernel, next to the ensemble's."""
    from ..analysis.knn import knn_evaluate, save_knn
    from ..population import open as open_population

    pop = open_population(store)
    result = knn_evaluate(
        pop, k, power, _sizes(runs) if runs else None, None, not no_log_softmax,
        classes=_classes(classes), precision=precision, device=device, memory_gb=memory_gb,
    )
    save_knn(pop, result)
    if as_json:
        print_json(result.to_dict())
        return
    vote = "majority vote" if power == 0 else f"votes weighted by kernel^{power:g}"
    typer.echo(f"k-NN with the kernel (k={k}, {vote}), {result.runs} runs: test accuracy {100 * result.accuracy:.2f}% "
               f"(ensemble of the same runs: {100 * result.ensemble_accuracy:.2f}%)")
    if result.by_runs:
        typer.echo(f"{'runs':>8}  {'k-NN':>7}  {'ensemble':>8}")
        for row in result.by_runs:
            typer.echo(f"{row['runs']:>8}  {100 * row['accuracy']:>6.2f}%  {100 * row['ensemble_accuracy']:>7.2f}%")


@app.command()
@handle_errors
def pairs(
    store: Path = typer.Argument(..., help="Population store with logits on train and test examples."),
    ranks: Optional[str] = typer.Option(None, help="Ranks to draw, FIRST-LAST (default 1-48, or 1-8 with --different-labels)."),
    different_labels: bool = typer.Option(False, "--different-labels", help="Keep the pairs whose labels differ (failure modes)."),
    neighbours: int = typer.Option(1, help="Nearest train images drawn beside each test image."),
    grid: Optional[Path] = typer.Option(None, help="PNG of the test images of the chosen ranks beside their nearest train images."),
    csv: Optional[Path] = typer.Option(None, help="CSV of every ranked pair: rank, test_index, train_index, kernel, test_label, train_label."),
    features_grid: Optional[Path] = typer.Option(None, "--features-grid", help="PNG of random test images with their nearest train images by the kernel and by one run's penultimate features."),
    random: int = typer.Option(10, help="Random test images in --features-grid."),
    feature_run: Optional[int] = typer.Option(None, "--feature-run", help="Run whose features --features-grid uses (default: the first that kept them)."),
    seed: int = typer.Option(0, help="Seed of the random test images."),
    runs: Optional[int] = typer.Option(None, help=RUNS_HELP),
    no_log_softmax: bool = typer.Option(False, "--no-log-softmax", help="Correlate raw logits instead of log-softmax outputs."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root for the images (default: $MANYRUNS_DATA, then the one recorded in the store)."),
    precision: str = typer.Option("float32", help=PRECISION_HELP),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    memory_gb: float = typer.Option(4.0, "--memory-gb", help=MEMORY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the chosen pairs as JSON."),
):
    """Test examples ranked by the kernel value of their most similar train example: near-duplicates and failure modes."""
    from ..analysis.kernel import stored_or_computed
    from ..analysis.pairs import kernel_vs_features_grid, neighbour_grid, parse_ranks, rank_pairs, select_ranks
    from ..population import open as open_population

    if neighbours < 1:
        fail("--neighbours must be at least 1", 2)
    first, last = parse_ranks(ranks or ("1-8" if different_labels else "1-48"))
    pop = open_population(store)
    nb = stored_or_computed(pop, max(neighbours, 2 if features_grid else 1), "test", runs, not no_log_softmax, precision=precision, device=device, memory_gb=memory_gb)
    table = rank_pairs(nb, pop.targets("test"), pop.targets("train"), different_labels)
    chosen = select_ranks(table, first, last)
    if csv is not None:
        csv.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(csv, index=False, float_format="%.6f")
    dataset = pop.dataset(data_dir) if (grid or features_grid) else None
    if grid is not None:
        what = "pairs with different labels" if different_labels else "pairs"
        neighbour_grid(
            chosen, nb, dataset.x_test, dataset.x_train, dataset.y_train, dataset.classes, grid, neighbours,
            f"{pop.recipe.name}: test images by the kernel value of their nearest train image ({what}, ranks {first}-{last}, {nb.params['runs']} runs)",
        )
    random_pairs = None
    if features_grid is not None:
        _, random_pairs = kernel_vs_features_grid(pop, dataset, nb, features_grid, random, 2, seed, feature_run)
    if as_json:
        print_json({"ranked": len(table), "pairs": chosen.to_dict(orient="records"), "grid": str(grid) if grid else None,
                    "csv": str(csv) if csv else None, "features_grid": random_pairs})
        return
    typer.echo(f"{len(table)} ranked test examples" + (" whose nearest train example has another label" if different_labels else "") + f"; ranks {first}-{min(last, len(table))}:")
    typer.echo(chosen.head(20).to_string(index=False))
    if len(chosen) > 20:
        typer.echo(f"... {len(chosen) - 20} more")
    for label, path in (("grid", grid), ("csv", csv), ("features grid", features_grid)):
        if path is not None:
            typer.echo(f"{label}: {path}")
