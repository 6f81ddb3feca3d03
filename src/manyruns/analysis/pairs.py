"""Pairs of examples the kernel finds alike: near-duplicates, failure modes, and a comparison
with neighbours in one run's penultimate-feature space.

* :func:`rank_pairs`: query examples ranked by the kernel value of their most similar train
  example (a table: rank, query index, train index, kernel, both labels); with
  ``different_labels`` only the pairs whose labels differ (candidate failure modes).
* :func:`neighbour_grid`: for a range of ranks, each query image beside its nearest train images.
* :func:`feature_neighbours` and :func:`kernel_vs_features_grid`: random queries with their
  nearest train examples by the kernel and by Euclidean distance between penultimate-layer
  features of one run (``features/{train,test}``, kept by ``[record] features = n``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import Dataset
from ..population import Population
from ..report.grids import Cell, image_grid
from ..store import StoreError
from .kernel import Neighbours

PAIR_COLUMNS = ("rank", "test_index", "train_index", "kernel", "test_label", "train_label")
SAME, DIFFERENT = "#2a9d2a", "#d62728"


def rank_pairs(nb: Neighbours, query_labels: np.ndarray, train_labels: np.ndarray, different_labels: bool = False, query_name: str = "test") -> pd.DataFrame:
    """One row per query, most similar first: ``rank`` (1-based, after filtering),
    ``<query_name>_index``, ``train_index`` (its nearest train example), ``kernel``, and both labels.

    ``different_labels``: keep only the queries whose nearest train example has another label.
    Equal kernel values keep the query order.
    """
    top_index = nb.indices[:, 0]
    top_value = nb.values[:, 0]
    order = np.argsort(-top_value.astype(np.float64), kind="stable")
    table = pd.DataFrame(
        {
            f"{query_name}_index": order.astype(np.int64),
            "train_index": top_index[order].astype(np.int64),
            "kernel": top_value[order].astype(np.float64),
            f"{query_name}_label": np.asarray(query_labels)[order].astype(np.int64),
            "train_label": np.asarray(train_labels)[top_index[order]].astype(np.int64),
        }
    )
    if different_labels:
        table = table[table[f"{query_name}_label"] != table["train_label"]]
    table.insert(0, "rank", np.arange(1, len(table) + 1, dtype=np.int64))
    return table.reset_index(drop=True)


def drop_mirrored(table: pd.DataFrame, query_name: str = "query") -> pd.DataFrame:
    """For queries from the train set itself: keep one of the pairs (a, b) and (b, a) (the
    better ranked) and renumber the ranks."""
    q, t = table[f"{query_name}_index"].to_numpy(), table["train_index"].to_numpy()
    key = np.minimum(q, t) * (max(q.max(initial=0), t.max(initial=0)) + 1) + np.maximum(q, t)
    _, first = np.unique(key, return_index=True)
    kept = table.iloc[np.sort(first)].drop(columns="rank").reset_index(drop=True)
    kept.insert(0, "rank", np.arange(1, len(kept) + 1, dtype=np.int64))
    return kept


def parse_ranks(text: str) -> tuple[int, int]:
    """``'601-648'`` -> ``(601, 648)`` (1-based, inclusive); ``'5'`` -> ``(5, 5)``."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not m:
        raise ValueError(f"ranks must look like FIRST-LAST (e.g. 601-648), got {text!r}")
    first, last = int(m.group(1)), int(m.group(2) or m.group(1))
    if first < 1 or last < first:
        raise ValueError(f"ranks must satisfy 1 <= FIRST <= LAST, got {text!r}")
    return first, last


def select_ranks(table: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """Rows with ``first <= rank <= last``; an error when the table does not reach ``first``."""
    if first > len(table):
        raise ValueError(f"rank {first} asked for, but there are only {len(table)} ranked pairs")
    return table[(table["rank"] >= first) & (table["rank"] <= last)]


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


def feature_run(pop: Population) -> int:
    """The first ok run that recorded penultimate-layer features."""
    if not pop.store.has("features/test"):
        raise StoreError(f"{pop.path}: this store records no penultimate features; set `[record] features = n` in the recipe")
    keep = pop.recipe.record.features
    ok = [int(r) for r in pop.run_indices("ok") if r < keep]
    if not ok:
        raise StoreError(f"{pop.path}: none of the first {keep} runs (those that keep features) is committed and ok")
    return ok[0]


def feature_neighbours(train_features: np.ndarray, query_features: np.ndarray, k: int, exclude: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:
    """Indices ``(q, k) int64`` of the train rows nearest (Euclidean) to each query row.

    ``train_features (N, F)``, ``query_features (q, F)``; ``exclude (q,)``: a train index per
    query to leave out (the query itself when queries are train examples), or None.
    """
    t = torch.from_numpy(np.asarray(train_features, dtype=np.float32))
    t_sq = (t * t).sum(1)
    out = []
    for start in range(0, len(query_features), chunk):
        q = torch.from_numpy(np.asarray(query_features[start : start + chunk], dtype=np.float32))
        dist = t_sq[None, :] - 2 * q @ t.T + (q * q).sum(1, keepdim=True)  # squared distances (q, N)
        if exclude is not None:
            rows = torch.arange(q.shape[0])
            dist[rows, torch.as_tensor(exclude[start : start + chunk])] = float("inf")
        out.append(dist.topk(k, dim=1, largest=False).indices)
    return torch.cat(out).numpy().astype(np.int64)


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
    run = feature_run(pop) if run is None else run
    train_f = np.asarray(pop.array("features/train")[run], dtype=np.float32)
    test_f = np.asarray(pop.array("features/test")[run], dtype=np.float32)
    if not np.isfinite(train_f).all() or not np.isfinite(test_f).all():
        raise StoreError(f"{pop.path}: run {run} has no recorded features (only the first {pop.recipe.record.features} runs keep them)")
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(dataset.n_test, size=min(count, dataset.n_test), replace=False))
    by_features = feature_neighbours(train_f, test_f[queries], neighbours)
    y_train, y_test, classes = dataset.y_train, dataset.y_test, dataset.classes
    rows = [[Cell(dataset.x_test[q], _caption("test ", int(q), int(y_test[q]), classes)) for q in queries]]
    labels = ["test"]
    for j in range(neighbours):
        rows.append([_neighbour_cell(dataset, int(nb.indices[q, j]), int(y_test[q]), f"{nb.values[q, j]:.3f} ") for q in queries])
        labels.append(f"kernel #{j + 1}")
    for j in range(neighbours):
        rows.append([_neighbour_cell(dataset, int(by_features[i, j]), int(y_test[q]), "") for i, q in enumerate(queries)])
        labels.append(f"features #{j + 1}\n(run {run})")
    out = image_grid(rows, path, f"random test examples: nearest train examples by the kernel ({nb.params.get('runs', '?')} runs) and by penultimate features (run {run})", labels)
    chosen = {
        "queries": queries.tolist(),
        "kernel": nb.indices[queries, :neighbours].tolist(),
        "features": by_features.tolist(),
        "feature_run": run,
    }
    return out, chosen


def _neighbour_cell(dataset: Dataset, t: int, query_label: int, prefix: str) -> Cell:
    label = int(dataset.y_train[t])
    return Cell(dataset.x_train[t], prefix + _caption("train ", t, label, dataset.classes), SAME if label == query_label else DIFFERENT)


def label_agreement(nb: Neighbours, query_labels: np.ndarray, train_labels: np.ndarray, neighbours: int = 1) -> float:
    """Share of the first ``neighbours`` neighbours whose label equals their query's."""
    return float(np.mean(np.asarray(train_labels)[nb.indices[:, :neighbours]] == np.asarray(query_labels)[:, None]))
