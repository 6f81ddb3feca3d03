"""Ensemble and kernel commands: import multirun-logits, ensemble, kernel, knn, pairs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import app, import_app
from .common import check_outputs, csv_option, data_dir_option, deprecated, deprecated_option, emit, fail, handle_errors, int_list, json_option, memory_option, open_population, print_json, runs_line, runs_option

PRECISION_HELP = "Operands of the kernel's matrix products: float32, or bfloat16 (faster, about 3 significant digits)."
MEMORY_HELP = "Memory budget in GiB for the kernel accumulator and the blocks of runs."
DEVICE_HELP = "cpu, cuda or cuda:N."
BLOCK_HELP = "Runs read at a time (default: from the memory budget)."


def _kernel_options(no_log_softmax: bool, classes: Optional[str], precision: str, device: str, memory_gib: float, block_size: Optional[int]) -> dict:
    return {
        "log_softmax": not no_log_softmax, "classes": int_list(classes, "--classes"), "precision": precision, "device": device,
        "memory_gib": memory_gib, "block_runs": block_size,
    }


def _note_run_counts(runs: str) -> None:
    """``knn --runs 10,20,50`` counted runs before ``--sizes`` took that role: say so for a release."""
    parts = runs.split(",")
    if len(parts) > 1 and all(p.strip().isdigit() for p in parts) and [int(p) for p in parts] == sorted(int(p) for p in parts):
        typer.echo(f"note: --runs {runs} selects exactly these runs; for the accuracy with the first n runs, use --sizes {runs}", err=True)



@import_app.command("multirun-logits")
@handle_errors
def import_multirun_logits(
    paths: List[str] = typer.Argument(..., help="One or more log.pt files, then the store (created, or appended to): a folder or a URL."),
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
    store: str = typer.Argument(..., help="Population store: a folder or a URL (s3://, gs://, az://, file://)."),
    runs: str = runs_option(),
    split: str = typer.Option("test", help="test or train."),
    sizes: Optional[str] = typer.Option(None, help="Ensemble sizes n (the first n selected runs), e.g. 1,10,100 (default 1, 2, 4, ..., all)."),
    block_size: int = typer.Option(256, "--block-size", help="Runs read at a time."),
    plot: Optional[Path] = typer.Option(None, help="PNG of accuracy against ensemble size (default: STORE/reports/ensemble-<split>.png)."),
    csv: Optional[Path] = csv_option("CSV: runs,logit_accuracy,prob_accuracy (one row per ensemble size)."),
    as_json: bool = json_option(),
):
    """Single-run accuracy (mean and std) and ensemble accuracy against the number of runs n = 1, 2, 4, ..., R."""
    from ..analysis.ensemble import EnsembleOptions, ensemble_curve
    from ..report.ensemble import ensemble_table, plot_ensemble

    options = EnsembleOptions(runs=runs, split=split, sizes=int_list(sizes, "--sizes"), block_size=block_size)
    check_outputs({"--plot": plot, "--csv": csv})
    pop = open_population(store)
    curve = ensemble_curve(pop, options)
    figure = plot_ensemble(curve, plot or pop.report_dir / f"ensemble-{split}.png", f"{pop.recipe.name}: ensemble {split} accuracy")
    emit(curve, pop, as_json=as_json, csv=csv, text=lambda s: ensemble_table(curve).splitlines(), files={"plot": str(figure)})


@app.command()
@handle_errors(flags={"block_runs": "--block-size"})
def kernel(
    store: str = typer.Argument(..., help="Population store with logits on train and test examples."),
    runs: str = runs_option(),
    k: int = typer.Option(50, "--k", help="Neighbours to keep per query."),
    queries: str = typer.Option("test", help="test, or train (duplicates inside the training set; an example is never its own neighbour)."),
    no_log_softmax: bool = typer.Option(False, "--no-log-softmax", help="Correlate raw logits instead of log-softmax outputs."),
    classes: Optional[str] = typer.Option(None, help="Average over these classes only, e.g. 3 (the per-class kernel) or 0,1."),
    precision: str = typer.Option("float32", help=PRECISION_HELP),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    memory_gib: float = memory_option(4.0, MEMORY_HELP),
    block_size: Optional[int] = typer.Option(None, "--block-size", help=BLOCK_HELP),
    npz: Optional[Path] = typer.Option(None, "--npz", help="Also write indices (Nq, k) int64 and values (Nq, k) float32 to this .npz."),
    csv: Optional[Path] = csv_option("CSV: <queries>_index,rank,train_index,kernel (one row per query and neighbour)."),
    as_json: bool = json_option(),
    out: Optional[Path] = deprecated_option("--out", "--npz"),
    memory_gb: Optional[float] = deprecated_option("--memory-gb", "--memory-gib"),
):
    """Top-k train neighbours of every query example by the ensemble correlation kernel."""
    import time

    import numpy as np

    from ..analysis.neighbours import NeighbourOptions, neighbours

    npz = deprecated("--out", "--npz", out, npz)
    memory_gib = deprecated("--memory-gb", "--memory-gib", memory_gb, memory_gib, default=4.0)
    options = NeighbourOptions(runs=runs, k=k, queries=queries, **_kernel_options(no_log_softmax, classes, precision, device, memory_gib, block_size))
    check_outputs({"--npz": npz, "--csv": csv})
    pop = open_population(store)
    t0 = time.perf_counter()
    nb = neighbours(pop, options)
    seconds = time.perf_counter() - t0
    files = {}
    if npz is not None:
        npz.parent.mkdir(parents=True, exist_ok=True)
        with open(npz, "wb") as f:  # a file object: numpy would otherwise append .npz to other names
            np.savez(f, indices=nb.indices.astype(np.int64), values=nb.values.astype(np.float32))
        files["npz"] = str(npz)

    def text(s: dict) -> list[str]:
        return [
            f"kernel {runs_line(s)} ({'log-softmax' if not no_log_softmax else 'raw logits'}"
            + (f", classes {classes}" if classes else "")
            + f"): top-{k} train neighbours of {s['queries_count']} {queries} examples in {seconds:.1f} s",
            f"  nearest-neighbour kernel value: mean {s['top1_mean']:.3f}, max {s['top1_max']:.3f}, min {s['top1_min']:.3f}",
        ]

    emit(nb, pop, as_json=as_json, csv=csv, text=text, files=files)


@app.command()
@handle_errors(flags={"block_runs": "--block-size"})
def knn(
    store: str = typer.Argument(..., help="Population store with logits on train and test examples."),
    runs: str = runs_option(),
    k: int = typer.Option(3, "--k", help="Neighbours that vote."),
    power: float = typer.Option(0.0, help="0: majority vote (ties go to the nearest neighbour); p > 0: votes weighted by kernel^p (the best published variant: --k 20 --power 4)."),
    sizes: Optional[str] = typer.Option(None, help="Also the accuracy with the first n selected runs, for each n in a list such as 10,20,50,100."),
    no_log_softmax: bool = typer.Option(False, "--no-log-softmax", help="Correlate raw logits instead of log-softmax outputs."),
    classes: Optional[str] = typer.Option(None, help="Average over these classes only (per-class kernels)."),
    precision: str = typer.Option("float32", help=PRECISION_HELP),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    memory_gib: float = memory_option(4.0, MEMORY_HELP),
    block_size: Optional[int] = typer.Option(None, "--block-size", help=BLOCK_HELP),
    csv: Optional[Path] = csv_option("CSV: runs,accuracy,ensemble_accuracy (one row per number of runs)."),
    as_json: bool = json_option(),
    memory_gb: Optional[float] = deprecated_option("--memory-gb", "--memory-gib"),
):
    """Test accuracy of k-NN prediction over the train set with the kernel, next to the ensemble's."""
    from ..analysis.knn import KnnOptions, knn_evaluate

    memory_gib = deprecated("--memory-gb", "--memory-gib", memory_gb, memory_gib, default=4.0)
    _note_run_counts(runs)
    options = KnnOptions(runs=runs, k=k, power=power, sizes=int_list(sizes, "--sizes"), **_kernel_options(no_log_softmax, classes, precision, device, memory_gib, block_size))
    check_outputs({"--csv": csv})
    pop = open_population(store)
    result = knn_evaluate(pop, options)

    def text(s: dict) -> list[str]:
        vote = "majority vote" if power == 0 else f"votes weighted by kernel^{power:g}"
        lines = [
            f"k-NN with the kernel (k={k}, {vote}) {runs_line(s)}: test accuracy {100 * s['accuracy']:.2f}% "
            f"(ensemble of the same runs: {100 * s['ensemble_accuracy']:.2f}%)"
        ]
        if s.get("by_runs"):
            lines.append(f"{'runs':>8}  {'k-NN':>7}  {'ensemble':>8}")
            lines += [f"{row['runs']:>8}  {100 * row['accuracy']:>6.2f}%  {100 * row['ensemble_accuracy']:>7.2f}%" for row in s["by_runs"]]
        return lines

    emit(result, pop, as_json=as_json, csv=csv, text=text)


@app.command()
@handle_errors(flags={"features": "--features-grid", "block_runs": "--block-size"})
def pairs(
    store: str = typer.Argument(..., help="Population store with logits on train and test examples."),
    runs: str = runs_option(),
    ranks: Optional[str] = typer.Option(None, help="Ranks to report and draw, FIRST-LAST (default 1-48, or 1-8 with --different-labels)."),
    different_labels: bool = typer.Option(False, "--different-labels", help="Keep the pairs whose labels differ (failure modes)."),
    neighbours: int = typer.Option(1, help="Nearest train images drawn beside each test image."),
    grid: Optional[Path] = typer.Option(None, help="PNG of the test images of the chosen ranks beside their nearest train images."),
    csv: Optional[Path] = csv_option("CSV of every ranked pair: rank, test_index, train_index, kernel, test_label, train_label."),
    features_grid: Optional[Path] = typer.Option(None, "--features-grid", help="PNG of random test images with their nearest train images by the kernel and by one run's penultimate features."),
    random: int = typer.Option(10, help="Random test images in --features-grid."),
    feature_run: Optional[int] = typer.Option(None, "--feature-run", help="Run whose features --features-grid uses (default: the first that kept them)."),
    seed: int = typer.Option(0, help="Seed of the random test images."),
    no_log_softmax: bool = typer.Option(False, "--no-log-softmax", help="Correlate raw logits instead of log-softmax outputs."),
    precision: str = typer.Option("float32", help=PRECISION_HELP),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    memory_gib: float = memory_option(4.0, MEMORY_HELP),
    block_size: Optional[int] = typer.Option(None, "--block-size", help=BLOCK_HELP),
    data_dir: Optional[Path] = data_dir_option(),
    as_json: bool = json_option(),
    memory_gb: Optional[float] = deprecated_option("--memory-gb", "--memory-gib"),
):
    """Test examples ranked by the kernel value of their most similar train example: near-duplicates and failure modes."""
    from ..analysis.pairs import PairsOptions, pairs as compute
    from ..report.pairs import features_grid as draw_features, neighbour_grid

    memory_gib = deprecated("--memory-gb", "--memory-gib", memory_gb, memory_gib, default=4.0)
    options = PairsOptions(
        runs=runs, ranks=ranks, different_labels=different_labels, neighbours=neighbours, features=features_grid is not None, random=random, seed=seed,
        feature_run=feature_run, **_kernel_options(no_log_softmax, None, precision, device, memory_gib, block_size),
    )
    check_outputs({"--grid": grid, "--csv": csv, "--features-grid": features_grid})
    pop = open_population(store)
    result = compute(pop, options)
    files = {}
    dataset = pop.dataset(data_dir) if (grid or features_grid) else None
    if grid is not None:
        what = "pairs with different labels" if different_labels else "pairs"
        first, last = result.summary()["ranks"]
        files["grid"] = str(neighbour_grid(
            result.chosen, result.neighbours, dataset.x_test, dataset.x_train, dataset.y_train, dataset.classes, grid, neighbours,
            f"{pop.recipe.name}: test images by the kernel value of their nearest train image ({what}, ranks {first}-{last}, {result.run_count} runs)",
        ))
    if features_grid is not None:
        files["features_grid"] = str(draw_features(result.features, dataset, result.neighbours, features_grid))

    def text(s: dict) -> list[str]:
        first, last = s["ranks"]
        head = f"{s['ranked']} ranked test examples" + (" whose nearest train example has another label" if different_labels else "")
        lines = [f"{head} {runs_line(s)}; ranks {first}-{min(last, s['ranked'])}:", result.chosen.head(20).to_string(index=False)]
        if len(result.chosen) > 20:
            lines.append(f"... {len(result.chosen) - 20} more")
        return lines

    emit(result, pop, as_json=as_json, csv=csv, text=text, files=files)
