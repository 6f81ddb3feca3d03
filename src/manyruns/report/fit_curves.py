"""Randomization-test figures and tables: fit curves per corruption level."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis.randomization import FitCurves

PANELS = (
    ("train_acc", "train accuracy (labels seen)", 100.0),
    ("train_loss", "train loss", 1.0),
    ("test_acc", "test accuracy", 100.0),
    ("test_loss", "test loss", 1.0),
)


def plot_fit_curves(levels: list[FitCurves], path: str | Path, title: str = "") -> Path:
    """A 2 x 2 figure (train accuracy and loss, test accuracy and loss against epochs), one
    line per corruption level: the mean over its runs, with a band of one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(levels), 1)))
    for (column, label, scale), ax in zip(PANELS, axes.ravel()):
        for level, color in zip(levels, colors):
            mean, std = level.curve(column)
            epochs = np.arange(mean.size)
            shown = np.isfinite(mean)
            ax.plot(epochs[shown], scale * mean[shown], color=color, lw=1.6, label=f"{level.corruption} ({level.runs})")
            band = shown & np.isfinite(std)
            if band.any():
                ax.fill_between(epochs[band], scale * (mean - std)[band], scale * (mean + std)[band], color=color, alpha=0.18, lw=0)
        ax.set_ylabel(label + (" (%)" if scale == 100.0 else ""))
        ax.grid(alpha=0.3)
        if column.endswith("loss"):
            ax.set_yscale("log")
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[0, 0].legend(fontsize=8, title="corruption (runs)", title_fontsize=8)
    fig.suptitle(title or "fit curves: mean over runs, band = 1 std")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _epochs(x: float | None, runs: int, total: int) -> str:
    if x is None:
        return "never" if runs == 0 else f"{runs}/{total} runs"
    return f"{x:.1f}"


def fit_table(levels: list[FitCurves]) -> str:
    """A plain-text table: one row per level with runs, final train and test accuracy (mean
    +- std, %), test error, and mean epochs to 99% and to 100% train accuracy ('k/R runs' when
    only k of the R runs got there)."""
    header = ["corruption", "runs", "train acc %", "test acc %", "test err %", "epochs to 99%", "epochs to 100%"]
    rows = []
    for level in levels:
        d = level.to_dict(curves=False)
        rows.append(
            [
                d["corruption"],
                str(d["runs"]) + (f" (+{d['diverged']} diverged)" if d["diverged"] else ""),
                _pct(d["train_accuracy"]) + ("" if d["train_accuracy_std"] is None else f" +- {100 * d['train_accuracy_std']:.2f}"),
                _pct(d["test_accuracy"]) + ("" if d["test_accuracy_std"] is None else f" +- {100 * d['test_accuracy_std']:.2f}"),
                _pct(d["test_error"]),
                _epochs(d["epochs_to_fit"], d["runs_fit"], d["runs"]),
                _epochs(d["epochs_to_fit_100"], d["runs_fit_100"], d["runs"]),
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
