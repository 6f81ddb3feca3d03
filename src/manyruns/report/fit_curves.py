"""Randomization-test figures and tables: fit curves per corruption level, and the final errors
and epochs to fit against the level."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis.randomization import FitCurves
from .figures import pyplot, save

PANELS = (
    ("train_acc", "train accuracy (labels seen)", 100.0),
    ("train_loss", "train loss", 1.0),
    ("test_acc", "test accuracy", 100.0),
    ("test_loss", "test loss", 1.0),
)


def plot_fit_curves(levels: list[FitCurves], path: str | Path, title: str = "") -> Path:
    """A 2 x 2 figure (train accuracy and loss, test accuracy and loss against epochs), one
    line per corruption level: the mean over its runs, with a band of one standard deviation."""
    plt = pyplot()
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
    return save(fig, path, dpi=120)


def levels_plot_path(curves_path: str | Path) -> Path:
    """Where the per-level figure goes: next to the curves, ``<stem>-levels.png``."""
    curves_path = Path(curves_path)
    return curves_path.with_name(f"{curves_path.stem}-levels.png")


def level_positions(levels: list[FitCurves]) -> tuple[np.ndarray, list[str], str]:
    """x positions ``(L,)``, tick labels and axis label: the label-noise p when it tells the
    levels apart, else one slot per level named by its corruption."""
    noise = [level.label_noise for level in levels]
    if None not in noise and len(set(noise)) == len(levels):
        return np.asarray(noise, dtype=np.float64), [f"{p:g}" for p in noise], "label noise p"
    return np.arange(len(levels), dtype=np.float64), [level.corruption for level in levels], "corruption"


def _column(rows: list[dict], key: str, scale: float = 1.0, offset: float | None = None) -> np.ndarray:
    """``(L,)`` float64 of ``rows[i][key]`` (NaN for None), as ``scale * value`` or ``scale * (offset - value)``."""
    values = np.array([np.nan if d[key] is None else d[key] for d in rows], dtype=np.float64)
    return scale * (values if offset is None else offset - values)


def _error_panel(ax, x: np.ndarray, rows: list[dict]) -> None:
    """Final train and test error (%) against the level, bars of one std over runs."""
    for name, key, color in (("train error (labels seen)", "train_accuracy", "tab:blue"), ("test error", "test_accuracy", "tab:red")):
        mean, std = _column(rows, key, 100.0, 1.0), _column(rows, f"{key}_std", 100.0)
        ax.errorbar(x, mean, yerr=np.nan_to_num(std), color=color, marker="o", capsize=3, label=name)
    ax.set_ylabel("final error (%)")


def _fit_panel(ax, x: np.ndarray, rows: list[dict], epochs: int) -> None:
    """Epochs to 99% and 100% train accuracy against the level, bars of one std over runs; a
    level where not every run fitted is a hollow marker at ``epochs``, annotated 'k/R runs'
    (above it for 99%, below for 100%)."""
    series = (("99%", "epochs_to_fit", "runs_fit", "tab:green", 7), ("100%", "epochs_to_fit_100", "runs_fit_100", "tab:purple", -13))
    for threshold, key, runs_key, color, text_offset in series:
        mean, std = _column(rows, key), _column(rows, f"{key}_std")
        ax.errorbar(x, mean, yerr=np.nan_to_num(std), color=color, marker="o", capsize=3, label=f"to {threshold} train accuracy")
        missed = np.flatnonzero(np.isnan(mean))
        if missed.size:
            ax.scatter(x[missed], np.full(missed.size, epochs), marker="o", facecolors="none", edgecolors=color, s=60, label=f"not every run reached {threshold} in {epochs} epochs")
            for i in missed:
                ax.annotate(f"{rows[i][runs_key]}/{rows[i]['runs']} runs", (x[i], epochs), textcoords="offset points", xytext=(0, text_offset), ha="center", fontsize=7, color=color)
    ax.set_ylim(0, 1.15 * epochs + 1)
    ax.set_ylabel("epochs to fit")


def plot_fit_levels(levels: list[FitCurves], path: str | Path, title: str = "") -> Path:
    """Against corruption level (the published Fig. 1b/1c), two panels: final train and test
    error, and epochs to fit (99% and 100% train accuracy); means over each level's runs with
    bars of one standard deviation, levels that never fit marked at the last epoch."""
    plt = pyplot()
    x, ticks, xlabel = level_positions(levels)
    rows = [level.to_dict(curves=False) for level in levels]
    fig, (err_ax, fit_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    _error_panel(err_ax, x, rows)
    _fit_panel(fit_ax, x, rows, max(level.sums.epochs for level in levels))
    numeric = xlabel == "label noise p"
    for ax in (err_ax, fit_ax):
        ax.set_xticks(x, ticks, rotation=0 if numeric else 30, ha="center" if numeric else "right")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "per corruption level: mean over runs, bars = 1 std")
    return save(fig, path, dpi=120)


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
