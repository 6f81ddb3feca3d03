"""Image grids of kernel pairs: near-duplicates, failure modes, and the kernel's neighbours next
to one run's penultimate-feature neighbours (:mod:`manyruns.analysis.pairs`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.neighbours import Neighbours
from ..analysis.pairs import features_comparison
from ..data import Dataset
from ..population import Population
from .grids import Cell, image_grid

SAME, DIFFERENT = "#2a9d2a", "#d62728"


def _caption(prefix: str, index: int, label: int, classes: tuple[str, ...]) -> str:
    name = classes[label] if 0 <= label < len(classes) else str(label)
    return f"{prefix}{index}\n{name[:12]}"


def neighbour_grid(
    rows: pd.DataFrame,
    nb: Neighbours,
    query_images: np.ndarray,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    classes: tuple[str, ...],
    path: str | Path,
    neighbours: int = 1,
    title: str | None = None,
    query_name: str = "test",
) -> Path:
    """Each query of ``rows`` (a :func:`rank_pairs` table) beside its ``neighbours`` nearest
    train images, framed green where the labels agree and red where they differ. With one
    neighbour, several pairs share a grid row.

    Images: ``(N, C, H, W) uint8``; ``nb`` is the neighbour table the ranks came from.
    """
    if neighbours > nb.k:
        raise ValueError(f"{neighbours} neighbours asked for, only {nb.k} were computed")
    per_row = max(1, 16 // (1 + neighbours)) if neighbours <= 3 else 1
    grid, current = [], []
    for row in rows.itertuples(index=False):
        q = int(getattr(row, f"{query_name}_index"))
        q_label = int(getattr(row, f"{query_name}_label"))
        current.append(Cell(query_images[q], f"#{row.rank} {_caption(query_name + ' ', q, q_label, classes)}"))
        for j in range(neighbours):
            t = int(nb.indices[q, j])
            label = int(train_labels[t])
            caption = f"{nb.values[q, j]:.3f} {_caption('train ', t, label, classes)}"
            current.append(Cell(train_images[t], caption, SAME if label == q_label else DIFFERENT))
        if len(current) >= per_row * (1 + neighbours):
            grid.append(current)
            current = []
    if current:
        grid.append(current)
    return image_grid(grid, path, title)


def kernel_vs_features_grid(
    pop: Population,
    dataset: Dataset,
    nb: Neighbours,
    path: str | Path,
    count: int = 10,
    neighbours: int = 2,
    seed: int = 0,
    run: int | None = None,
) -> tuple[Path, dict]:
    """``count`` random test images (first row), their ``neighbours`` nearest train images by
    the kernel (next rows), then by penultimate features of run ``run`` (default: the first
    run that kept them). Returns the figure path and the chosen indices."""
    chosen = features_comparison(pop, nb, count, neighbours, seed, run)
    return features_grid(chosen, dataset, nb, path), chosen


def features_grid(chosen: dict, dataset: Dataset, nb: Neighbours, path: str | Path) -> Path:
    """The grid of a :func:`~manyruns.analysis.pairs.features_comparison`: the random test
    images (first row), their nearest train images by the kernel (next rows), then by the
    penultimate features of one run."""
    queries = np.asarray(chosen["queries"])
    by_features = np.asarray(chosen["features"])
    neighbours = by_features.shape[1]
    run = chosen["feature_run"]
    y_test, classes = dataset.y_test, dataset.classes
    rows = [[Cell(dataset.x_test[q], _caption("test ", int(q), int(y_test[q]), classes)) for q in queries]]
    labels = ["test"]
    for j in range(neighbours):
        rows.append([_neighbour_cell(dataset, int(nb.indices[q, j]), int(y_test[q]), f"{nb.values[q, j]:.3f} ") for q in queries])
        labels.append(f"kernel #{j + 1}")
    for j in range(neighbours):
        rows.append([_neighbour_cell(dataset, int(by_features[i, j]), int(y_test[q]), "") for i, q in enumerate(queries)])
        labels.append(f"features #{j + 1}\n(run {run})")
    return image_grid(rows, path, f"random test examples: nearest train examples by the kernel ({nb.run_count} runs) and by penultimate features (run {run})", labels)


def _neighbour_cell(dataset: Dataset, t: int, query_label: int, prefix: str) -> Cell:
    label = int(dataset.y_train[t])
    return Cell(dataset.x_train[t], prefix + _caption("train ", t, label, dataset.classes), SAME if label == query_label else DIFFERENT)
