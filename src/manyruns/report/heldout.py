"""Image grids for held-out statistics: extremes of memorization and C-scores per class, and
test examples beside their most influential training examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .grids import Cell, image_grid


def extremes_per_class(scores: np.ndarray, labels: np.ndarray, classes: int, per_class: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each class ``c``: the indices of its ``per_class`` highest and lowest finite scores
    (highest first, then lowest first). ``scores``, ``labels (N,)``."""
    out = []
    for c in range(classes):
        members = np.flatnonzero((labels == c) & np.isfinite(scores))
        order = members[np.argsort(-scores[members], kind="stable")]
        out.append((order[:per_class], order[::-1][:per_class]))
    return out


def extremes_grid(
    scores: np.ndarray,
    labels: np.ndarray,
    images: np.ndarray,
    class_names: list[str],
    path: str | Path,
    name: str,
    per_class: int = 6,
    high_color: str = "tab:red",
    low_color: str = "tab:green",
) -> Path:
    """One row per class: the ``per_class`` highest scores (framed ``high_color``), then the
    lowest (framed ``low_color``). ``images (N, C, H, W) uint8``; captions give the score."""
    rows, labels_out = [], []
    for c, (high, low) in enumerate(extremes_per_class(scores, labels, len(class_names), per_class)):
        row = [Cell(images[i], f"#{i} {name} {scores[i]:.2f}", high_color) for i in high]
        row += [Cell(images[i], f"#{i} {name} {scores[i]:.2f}", low_color) for i in low]
        if row:
            rows.append(row)
            labels_out.append(class_names[c])
    color_name = lambda color: color.removeprefix("tab:")  # noqa: E731
    title = f"highest ({color_name(high_color)}) and lowest ({color_name(low_color)}) {name} per class"
    return image_grid(rows, path, title=title, row_labels=labels_out)


def influence_rows(
    top_index: np.ndarray,
    top_value: np.ndarray,
    test_labels: np.ndarray,
    train_labels: np.ndarray,
    rows: int = 10,
    influencers: int = 4,
    random_same_class: int = 4,
    test_rows: np.ndarray | None = None,
    seed: int = 0,
) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """What the influence grid shows: for each test example (default: the ``rows`` with the
    largest top influence), its index, the indices and values of its top ``influencers`` and
    ``random_same_class`` random training examples of its class that are not among them.
    ``top_index``/``top_value (T, k)``, ``test_labels (T,)``, ``train_labels (N,)``."""
    rng = np.random.default_rng(seed)
    if test_rows is None:
        best = np.where(np.isfinite(top_value[:, 0]), top_value[:, 0], -np.inf)
        test_rows = np.argsort(-best, kind="stable")[:rows]
    out = []
    for j in test_rows:
        shown = top_index[j][:influencers]
        values = top_value[j][:influencers][shown >= 0]
        shown = shown[shown >= 0]
        same = np.setdiff1d(np.flatnonzero(train_labels == test_labels[j]), shown)
        random = rng.choice(same, size=min(random_same_class, same.size), replace=False)
        out.append((int(j), shown, values, random))
    return out


def influence_grid(
    top_index: np.ndarray,
    top_value: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    class_names: list[str],
    path: str | Path,
    rows: int = 10,
    influencers: int = 4,
    random_same_class: int = 4,
    test_rows: np.ndarray | None = None,
    seed: int = 0,
) -> Path:
    """Test examples (default: those with the largest top influence) beside their most
    influential training examples (framed red) and random other training examples of the same
    class (no frame; see :func:`influence_rows`). ``top_index``/``top_value (T, k)``; images
    ``(n, C, H, W) uint8``."""
    grid = []
    for j, shown, values, random in influence_rows(top_index, top_value, test_labels, train_labels, rows, influencers, random_same_class, test_rows, seed):
        label = int(test_labels[j])
        row = [Cell(test_images[j], f"test #{j}\n{class_names[label]}", "tab:blue")]
        for i, v in zip(shown, values):
            row.append(Cell(train_images[i], f"#{i} {class_names[int(train_labels[i])]}\ninfl {v:.2f}", "tab:red"))
        for i in random:
            row.append(Cell(train_images[i], f"#{i}\nrandom {class_names[label]}"))
        grid.append(row)
    return image_grid(grid, path, title="test example (blue), its top influencers (red), random training examples of its class", cell_inches=1.3)
