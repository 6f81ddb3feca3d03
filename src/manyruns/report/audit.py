"""The audit's image grid: the top examples of each issue type.

Rows of ``per_row`` images: label issues (given label -> suggested label, label quality),
near-duplicate pairs inside the training set (side by side, kernel value), train/test leaks
(test image beside its nearest training image) and outliers (outlier score).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .grids import Cell, image_grid


def audit_grid(result, x_train: np.ndarray, x_test: np.ndarray | None, classes: list[str], path: str | Path, per_row: int = 12, rows_per_type: int = 2) -> Path:
    """Draw the top examples of each issue type of an :class:`~manyruns.analysis.audit.AuditResult`."""
    n = per_row * rows_per_type
    rows: list[list[Cell]] = []
    labels: list[str] = []

    def add(cells: list[Cell], name: str) -> None:
        for start in range(0, len(cells), per_row):
            rows.append(cells[start : start + per_row])
            labels.append(name if start == 0 else "")

    issues = result.top_label_issues(n)
    add([Cell(x_train[i], f"{i}: {classes[result.labels[i]]}->{classes[result.suggested_label[i]]}\nq={result.label_quality[i]:.2f}", "tab:red") for i in issues], "label issues")
    pairs = result.near_duplicate_pairs().head(n // 2)
    cells = []
    for a, b, k in pairs[["a", "b", "kernel"]].itertuples(index=False):
        color = "tab:red" if result.labels[int(a)] != result.labels[int(b)] else "tab:blue"
        cells += [Cell(x_train[int(a)], f"{int(a)} {classes[result.labels[int(a)]]}\nK={k:.3f}", color), Cell(x_train[int(b)], f"{int(b)} {classes[result.labels[int(b)]]}", color)]
    add(cells, "near-duplicates")
    if result.test_kernel is not None and x_test is not None:
        leak = result.is_leak
        order = [t for t in np.argsort(-result.test_kernel, kind="stable")[: 4 * n] if leak[t]][: n // 2]
        cells = []
        for t in order:
            j = int(result.test_nearest_train[t])
            color = "tab:red" if result.labels[j] != result.test_labels[t] else "tab:orange"
            cells += [Cell(x_test[t], f"test {t} {classes[result.test_labels[t]]}\nK={result.test_kernel[t]:.3f}", color), Cell(x_train[j], f"train {j} {classes[result.labels[j]]}", color)]
        add(cells, "leaks")
    if result.outlier_score is not None:
        top = np.argsort(-result.outlier_score, kind="stable")[: min(n, int(result.is_outlier.sum()))]
        add([Cell(x_train[i], f"{i}: {classes[result.labels[i]]}\n{result.outlier_score[i]:.3f}", "tab:purple") for i in top], "outliers")
    if not rows:
        rows, labels = [[]], ["no issues"]
    return image_grid(rows, path, title="audit: top examples of each issue type", row_labels=labels)
