"""Figures and text of ensemble accuracy against the number of runs (:mod:`manyruns.analysis.ensemble`)."""

from __future__ import annotations


from ..analysis.ensemble import EnsembleCurve
from .figures import pyplot, save


def ensemble_table(curve: EnsembleCurve) -> str:
    """A plain-text table: ensemble size against mean-logit and mean-probability accuracy."""
    lines = [
        f"single-run {curve.split} accuracy: {100 * curve.mean_accuracy:.2f}% +- {100 * curve.std_accuracy:.2f} "
        f"(mean +- std over {curve.run_count} runs)",
        f"{'runs':>8}  {'mean logits':>11}  {'mean probs':>10}",
    ]
    for n, a, p in zip(curve.sizes, curve.logit_accuracy, curve.prob_accuracy):
        lines.append(f"{n:>8}  {100 * a:>10.2f}%  {100 * p:>9.2f}%")
    return "\n".join(lines)


def plot_ensemble(curve: EnsembleCurve, path, title: str | None = None):
    """Accuracy against ensemble size (log axis), with the single-run mean +- std band."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(curve.sizes, [100 * a for a in curve.logit_accuracy], "o-", label="mean logits")
    ax.plot(curve.sizes, [100 * a for a in curve.prob_accuracy], "s--", label="mean probabilities")
    m, s = 100 * curve.mean_accuracy, 100 * curve.std_accuracy
    ax.axhspan(m - s, m + s, color="grey", alpha=0.2, label="single run (mean +- std)")
    ax.axhline(m, color="grey", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("runs in the ensemble")
    ax.set_ylabel(f"{curve.split} accuracy (%)")
    ax.set_title(title or "ensemble accuracy", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save(fig, path, dpi=130)
