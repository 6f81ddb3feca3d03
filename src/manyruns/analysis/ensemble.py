"""Ensemble accuracy: average the outputs of many runs, streaming over blocks of runs.

For runs ``r = 1..n`` with logits ``z_r (N, C)`` on ``split``, the mean-logit ensemble predicts
``argmax_c sum_r z_r(., c)`` and the mean-probability ensemble ``argmax_c sum_r softmax(z_r)_c``.
:func:`ensemble_curve` gives both for the first ``n`` runs of a selection, for every ``n`` of a
list of sizes (1, 2, 4, ..., R' by default), in one pass: memory ``O(N x C)``, sums in float64.
Its figure and text table are in :mod:`manyruns.report.ensemble`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import NotApplicableError, OptionError, check_choice, check_number
from ..population import Population
from ..selection import RunSelection
from ..streaming import doubling_sizes
from .contract import Options, Result, check_counts, options_of

SPLITS = ("test", "train")


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def ensemble_accuracy(pop: Population, split: str = "test", runs: RunSelection = "ok", labels: np.ndarray | None = None) -> dict:
    """Accuracy of the mean-logit and mean-probability ensembles of all the selected runs on
    ``split`` (the last point of :func:`ensemble_curve`), and their number.

    ``labels``: ``(N,)``; defaults to the dataset's own labels for ``split``.
    """
    selected = pop.select(runs)
    curve = ensemble_curve(pop, EnsembleOptions(split=split, runs=selected, sizes=(selected.size,)), labels=labels)
    return {"run_count": curve.run_count, "logit_accuracy": curve.logit_accuracy[-1], "prob_accuracy": curve.prob_accuracy[-1]}


# ------------------------------------------------------------------ accuracy against ensemble size


@dataclass(frozen=True, kw_only=True)
class EnsembleOptions(Options):
    """``split``: test or train; ``sizes``: ensemble sizes ``n`` (the first ``n`` selected
    runs; default 1, 2, 4, ..., R'); ``block_size``: runs read at a time."""

    split: str = "test"
    sizes: tuple[int, ...] | None = None
    block_size: int = 256

    def validate(self) -> None:
        check_choice("split", self.split, SPLITS)
        check_number("block_size", self.block_size, 1, integer=True)
        object.__setattr__(self, "sizes", check_counts("sizes", self.sizes, 1))


@dataclass(kw_only=True)
class EnsembleCurve(Result):
    """Single-run accuracies and the accuracy of the ensemble of the first ``n`` runs.

    ``runs (R',)`` and ``run_accuracy (R',)``: every chosen run in order; ``sizes``: the
    ensemble sizes ``n``; ``logit_accuracy`` / ``prob_accuracy``: accuracy of the argmax of the
    mean logits / mean probabilities of the first ``n`` runs, one per size.
    """

    name = "ensemble"
    run_accuracy: np.ndarray
    sizes: list[int]
    logit_accuracy: list[float]
    prob_accuracy: list[float]

    @property
    def split(self) -> str:
        return self.options.split

    @property
    def store_name(self) -> str:
        return f"ensemble-{self.split}"

    @property
    def mean_accuracy(self) -> float:
        return float(self.run_accuracy.mean())

    @property
    def std_accuracy(self) -> float:
        """Standard deviation over runs (Bessel-corrected; 0 for a single run)."""
        return float(self.run_accuracy.std(ddof=1)) if self.run_accuracy.size > 1 else 0.0

    def table(self) -> pd.DataFrame:
        """One row per ensemble size: runs, logit_accuracy, prob_accuracy."""
        return pd.DataFrame({"runs": self.sizes, "logit_accuracy": self.logit_accuracy, "prob_accuracy": self.prob_accuracy})

    def _summary(self) -> dict:
        return {
            "split": self.split,
            "mean_accuracy": self.mean_accuracy,
            "std_accuracy": self.std_accuracy,
            "ensemble_accuracy": self.logit_accuracy[-1],
            "ensemble_prob_accuracy": self.prob_accuracy[-1],
            "by_runs": [
                {"runs": n, "logit_accuracy": a, "prob_accuracy": p}
                for n, a, p in zip(self.sizes, self.logit_accuracy, self.prob_accuracy)
            ],
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "run_accuracy": np.asarray(self.run_accuracy, dtype=np.float64),
            "sizes": np.asarray(self.sizes, dtype=np.int64),
            "logit_accuracy": np.asarray(self.logit_accuracy, dtype=np.float64),
            "prob_accuracy": np.asarray(self.prob_accuracy, dtype=np.float64),
        }


def ensemble_curve(pop: Population, options: EnsembleOptions | None = None, labels: np.ndarray | None = None, **fields) -> EnsembleCurve:
    """One streaming pass over the selected runs (in the order selected): each run's accuracy, and the
    mean-logit and mean-probability ensemble accuracy of the first ``n`` runs for each ``n`` in
    the sizes. ``labels (N,)``: what accuracy is measured against (default: the dataset's)."""
    options = options_of(EnsembleOptions, options, fields)
    split = options.split
    if labels is None:
        labels = pop.targets(split)
    if not pop.store.has(f"logits/{split}"):
        raise NotApplicableError(f"{pop.path}: this store records no logits/{split} to ensemble")
    indices = pop.select(options.runs)
    sizes = list(options.sizes or doubling_sizes(indices.size))
    if sizes[-1] > indices.size:
        raise OptionError("sizes", f"must lie in 1..{indices.size} (the runs selected), got {sizes}")
    logit_sum = prob_sum = None
    count = 0
    run_acc: list[np.ndarray] = []
    logit_acc, prob_acc = [], []
    pending = list(sizes)
    for _, block in pop.blocks(f"logits/{split}", indices, options.block_size):
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
    return EnsembleCurve(
        runs=indices, options=options, run_accuracy=np.concatenate(run_acc), sizes=sizes, logit_accuracy=logit_acc, prob_accuracy=prob_acc
    )


__all__ = ["EnsembleCurve", "EnsembleOptions", "ensemble_accuracy", "ensemble_curve", "log_softmax"]
