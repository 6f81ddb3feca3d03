"""Image grids: rows of labelled images (a query beside its neighbours, examples per class)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from .figures import pyplot, save


@dataclass
class Cell:
    """One image of a grid: ``image (C, H, W) uint8``, a caption, and an optional frame colour."""

    image: np.ndarray
    caption: str = ""
    color: str | None = None


def image_grid(rows: list[list[Cell]], path: str | Path, title: str | None = None, row_labels: list[str] | None = None, cell_inches: float = 1.1) -> Path:
    """Draw ``rows`` of cells (rows may differ in length) into a PNG at ``path``."""
    plt = pyplot()
    n_rows = max(1, len(rows))
    n_cols = max([len(r) for r in rows] + [1])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell_inches * n_cols + (1.2 if row_labels else 0), cell_inches * 1.25 * n_rows + (0.4 if title else 0)), squeeze=False)
    for i in range(n_rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= len(rows) or j >= len(rows[i]):
                ax.axis("off")
                continue
            cell = rows[i][j]
            img = np.asarray(cell.image)
            if img.ndim == 3 and img.shape[0] in (1, 3):
                img = img.transpose(1, 2, 0)
            if img.ndim == 3 and img.shape[2] == 1:
                img = img[:, :, 0]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(cell.caption, fontsize=6, pad=2)
            for spine in ax.spines.values():
                spine.set_edgecolor(cell.color or "none")
                spine.set_linewidth(2 if cell.color else 0)
        if row_labels and i < len(row_labels):
            axes[i][0].set_ylabel(row_labels[i], fontsize=6, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=8)
    return save(fig, path, dpi=130)
