"""Ensemble accuracy: average the outputs of many runs, streaming over blocks of runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..population import Population
from ..store import StoreError


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def ensemble_sums(pop: Population, split: str = "test", runs=None, block_size: int = 256) -> tuple[np.ndarray, np.ndarray, int]:
    """Sums over runs of logits and of probabilities: ``(N, C)`` float64 each, and the run count."""
    logit_sum = prob_sum = None
    count = 0
    for _, block in pop.blocks(f"logits/{split}", runs, block_size):
        x = block.astype(np.float32)  # (b, N, C)
        probs = np.exp(log_softmax(x))
        if logit_sum is None:
            logit_sum = np.zeros(x.shape[1:], dtype=np.float64)
            prob_sum = np.zeros(x.shape[1:], dtype=np.float64)
        logit_sum += x.sum(0, dtype=np.float64)
        prob_sum += probs.sum(0, dtype=np.float64)
        count += x.shape[0]
    if count == 0:
        raise ValueError(f"{pop.path}: no committed runs with logits/{split} to ensemble")
    return logit_sum, prob_sum, count


def ensemble_accuracy(pop: Population, split: str = "test", runs=None, labels: np.ndarray | None = None) -> dict:
    """Accuracy of the mean-logit and mean-probability ensembles of ``runs`` on ``split``.

    ``labels``: ``(N,)``; defaults to the dataset's own labels for ``split``.
    """
    logit_sum, prob_sum, count = ensemble_sums(pop, split, runs)
    if labels is None:
        labels = pop.targets(split)
    return {
        "runs": count,
        "logit_accuracy": float((logit_sum.argmax(1) == labels).mean()),
        "prob_accuracy": float((prob_sum.argmax(1) == labels).mean()),
    }


# ------------------------------------------------------------------ accuracy against ensemble size


def doubling_sizes(num_runs: int) -> list[int]:
    """``1, 2, 4, ...`` up to ``num_runs``, ending with ``num_runs`` itself."""
    sizes, n = [], 1
    while n < num_runs:
        sizes.append(n)
        n *= 2
    return sizes + [num_runs] if num_runs >= 1 else []


@dataclass
class EnsembleCurve:
    """Single-run accuracies and the accuracy of the ensemble of the first ``n`` runs.

    ``run_indices (R',)`` and ``run_accuracy (R',)``: every chosen run in order; ``sizes``: the
    ensemble sizes ``n``; ``logit_accuracy`` / ``prob_accuracy``: accuracy of the argmax of the
    mean logits / mean probabilities of the first ``n`` runs, one per size.
    """

    split: str
    run_indices: np.ndarray
    run_accuracy: np.ndarray
    sizes: list[int]
    logit_accuracy: list[float]
    prob_accuracy: list[float]

    @property
    def mean_accuracy(self) -> float:
        return float(self.run_accuracy.mean())

    @property
    def std_accuracy(self) -> float:
        """Standard deviation over runs (Bessel-corrected; 0 for a single run)."""
        return float(self.run_accuracy.std(ddof=1)) if self.run_accuracy.size > 1 else 0.0

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "runs": int(self.run_indices.size),
            "mean_accuracy": self.mean_accuracy,
            "std_accuracy": self.std_accuracy,
            "ensemble_accuracy": self.logit_accuracy[-1],
            "ensemble_prob_accuracy": self.prob_accuracy[-1],
            "by_runs": [
                {"runs": n, "logit_accuracy": a, "prob_accuracy": p}
                for n, a, p in zip(self.sizes, self.logit_accuracy, self.prob_accuracy)
            ],
        }


def ensemble_curve(
    pop: Population,
    split: str = "test",
    runs=None,
    sizes: list[int] | None = None,
    block_size: int = 256,
    labels: np.ndarray | None = None,
) -> EnsembleCurve:
    """One streaming pass over ``runs`` (default: every ok run, in index order): each run's
    accuracy, and the mean-logit and mean-probability ensemble accuracy of the first ``n`` runs
    for each ``n`` in ``sizes`` (default 1, 2, 4, ..., R'). Memory ``O(N x C)``."""
    if labels is None:
        labels = pop.targets(split)
    if not pop.store.has(f"logits/{split}"):
        raise StoreError(f"{pop.path}: this store records no logits/{split} to ensemble")
    indices = pop._resolve_runs(runs)
    if indices.size == 0:
        raise ValueError(f"{pop.path}: no committed runs with logits/{split} to ensemble")
    sizes = sorted(set(sizes or doubling_sizes(indices.size)))
    if sizes[0] < 1 or sizes[-1] > indices.size:
        raise ValueError(f"ensemble sizes must lie in 1..{indices.size}, got {sizes}")
    logit_sum = prob_sum = None
    count = 0
    run_acc: list[np.ndarray] = []
    logit_acc, prob_acc = [], []
    pending = list(sizes)
    for _, block in pop.blocks(f"logits/{split}", indices, block_size):
        x = block.astype(np.float32)  # (b, N, C)
        probs = np.exp(log_softmax(x))
        run_acc.append((x.argmax(-1) == labels).mean(axis=1))
        if logit_sum is None:
            logit_sum = np.zeros(x.shape[1:], dtype=np.float64)
            prob_sum = np.zeros(x.shape[1:], dtype=np.float64)
        while pending and pending[0] <= count + x.shape[0]:
            j = pending.pop(0) - count
            logits_n = logit_sum + x[:j].sum(0, dtype=np.float64)
            probs_n = prob_sum + probs[:j].sum(0, dtype=np.float64)
            logit_acc.append(float((logits_n.argmax(1) == labels).mean()))
            prob_acc.append(float((probs_n.argmax(1) == labels).mean()))
        logit_sum += x.sum(0, dtype=np.float64)
        prob_sum += probs.sum(0, dtype=np.float64)
        count += x.shape[0]
    return EnsembleCurve(split, indices, np.concatenate(run_acc), sizes, logit_acc, prob_acc)


def save_ensemble(pop: Population, curve: EnsembleCurve, name: str = "ensemble") -> str:
    """Keep ``curve`` under ``analysis/<name>``: ``run_indices``, ``run_accuracy``, ``sizes``,
    ``logit_accuracy``, ``prob_accuracy``."""
    group = pop.store.analysis_group(name, {"split": curve.split, "runs": int(curve.run_indices.size)})
    group.create_array("run_indices", data=np.asarray(curve.run_indices, dtype=np.int64))
    group.create_array("run_accuracy", data=np.asarray(curve.run_accuracy, dtype=np.float64))
    group.create_array("sizes", data=np.asarray(curve.sizes, dtype=np.int64))
    group.create_array("logit_accuracy", data=np.asarray(curve.logit_accuracy, dtype=np.float64))
    group.create_array("prob_accuracy", data=np.asarray(curve.prob_accuracy, dtype=np.float64))
    return f"analysis/{name}"


def ensemble_table(curve: EnsembleCurve) -> str:
    """A plain-text table: ensemble size against mean-logit and mean-probability accuracy."""
    lines = [
        f"single-run {curve.split} accuracy: {100 * curve.mean_accuracy:.2f}% +- {100 * curve.std_accuracy:.2f} "
        f"(mean +- std over {curve.run_indices.size} runs)",
        f"{'runs':>8}  {'mean logits':>11}  {'mean probs':>10}",
    ]
    for n, a, p in zip(curve.sizes, curve.logit_accuracy, curve.prob_accuracy):
        lines.append(f"{n:>8}  {100 * a:>10.2f}%  {100 * p:>9.2f}%")
    return "\n".join(lines)


def plot_ensemble(curve: EnsembleCurve, path, title: str | None = None):
    """Accuracy against ensemble size (log axis), with the single-run mean +- std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
