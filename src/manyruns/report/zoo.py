"""Figures for accuracy prediction from weights: predicted against true accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from .figures import pyplot, save


def prediction_scatter(y_true: np.ndarray, y_pred: np.ndarray, path: str | Path, title: str = "", note: str = "", color: np.ndarray | None = None, color_label: str = "") -> Path:
    """Scatter of predicted ``y_pred (n,)`` against true ``y_true (n,)`` accuracy with the
    diagonal, written as a PNG at ``path``. ``color (n,)``: optional values to colour points by
    (e.g. the checkpoint epoch)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    lo = float(min(np.min(y_true, initial=0.0), np.min(y_pred, initial=0.0)))
    ax.plot([lo, 1.0], [lo, 1.0], color="0.6", lw=1, ls="--", zorder=1)
    if color is not None and len(np.unique(color)) > 1:
        points = ax.scatter(y_true, y_pred, s=6, alpha=0.6, c=color, cmap="viridis", zorder=2, linewidths=0)
        fig.colorbar(points, ax=ax, label=color_label)
    else:
        ax.scatter(y_true, y_pred, s=6, alpha=0.6, color="C0", zorder=2, linewidths=0)
    ax.set_xlabel("true test accuracy")
    ax.set_ylabel("predicted test accuracy")
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(lo, 1.0)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=10)
    if note:
        ax.text(0.03, 0.97, note, transform=ax.transAxes, va="top", fontsize=9)
    return save(fig, path, dpi=130)
