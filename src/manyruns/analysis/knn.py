"""Predicting test labels from the labels of kernel neighbours in the training set.

Majority vote (``power = 0``) counts the labels of the ``k`` most similar train examples;
weighted vote (``power > 0``) gives each neighbour the weight ``max(K, 0) ** power`` (a
neighbour the runs find anti-correlated gets no say). Ties between classes go to the class of
the nearest neighbour among the tied ones; when every weight is zero, that is the nearest
neighbour's class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import OptionError, check_number
from ..population import Population
from .contract import Result, check_counts, options_of
from .ensemble import ensemble_accuracy
from .kernel import KernelOptions, Workspace
from .neighbours import NeighbourOptions, Neighbours, stored_or_computed


def knn_predict(nb: Neighbours, train_labels: np.ndarray, num_classes: int, k: int = 3, power: float = 0.0) -> np.ndarray:
    """Predicted class of every query, ``(Nq,) int64``, from its first ``k`` neighbours.

    ``train_labels``: ``(Nt,)`` labels of the train examples that ``nb.indices`` points into.
    """
    if k < 1 or k > nb.k:
        raise OptionError("k", f"must lie in 1..{nb.k} (the neighbours kept), got {k}")
    check_number("power", power, 0)
    labels = np.asarray(train_labels)[nb.indices[:, :k]]  # (Nq, k)
    if power == 0:
        weights = np.ones(labels.shape, dtype=np.float64)
    else:
        weights = np.maximum(nb.values[:, :k].astype(np.float64), 0.0) ** power
    rows = np.arange(labels.shape[0])
    votes = np.zeros((labels.shape[0], num_classes), dtype=np.float64)
    np.add.at(votes, (rows[:, None], labels), weights)
    best = votes.max(axis=1, keepdims=True)
    is_best = votes[rows[:, None], labels] == best  # (Nq, k): neighbour j's class is a winner
    first = is_best.argmax(axis=1)
    return labels[rows, first].astype(np.int64)


def knn_accuracy(nb: Neighbours, train_labels: np.ndarray, test_labels: np.ndarray, num_classes: int, k: int = 3, power: float = 0.0) -> float:
    """Fraction of queries whose k-NN prediction equals ``test_labels``."""
    return float(np.mean(knn_predict(nb, train_labels, num_classes, k, power) == np.asarray(test_labels)))


@dataclass(frozen=True, kw_only=True)
class KnnOptions(KernelOptions):
    """``k``: neighbours that vote; ``power``: 0 for a majority vote, ``p > 0`` for votes
    weighted by ``max(K, 0) ** p``; ``sizes``: also the accuracy with the first ``n`` of the
    selected runs, for each ``n``; and the kernel's options (:class:`~.kernel.KernelOptions`)."""

    k: int = 3
    power: float = 0.0
    sizes: tuple[int, ...] | None = None

    def validate(self) -> None:
        super().validate()
        check_number("k", self.k, 1, integer=True)
        check_number("power", self.power, 0)
        object.__setattr__(self, "sizes", check_counts("sizes", self.sizes, 2))  # the kernel standardizes across runs: 2 at least


@dataclass(kw_only=True)
class KnnResult(Result):
    """k-NN test accuracy with all the selected runs (``accuracy``, next to the mean-logit
    ensemble's ``ensemble_accuracy``) and, with sizes, with the first ``n`` of them
    (``by_runs``: one dict per size)."""

    name = "knn"
    accuracy: float
    ensemble_accuracy: float
    by_runs: list[dict]

    def table(self) -> pd.DataFrame:
        """One row per number of runs (the last: all selected runs): runs, accuracy, ensemble_accuracy."""
        rows = self.by_runs + [{"runs": self.run_count, "accuracy": self.accuracy, "ensemble_accuracy": self.ensemble_accuracy}]
        return pd.DataFrame(rows, columns=["runs", "accuracy", "ensemble_accuracy"]).drop_duplicates("runs", keep="last")

    def _summary(self) -> dict:
        out = {"k": self.options.k, "power": self.options.power, "accuracy": self.accuracy, "ensemble_accuracy": self.ensemble_accuracy}
        if self.by_runs:
            out["by_runs"] = list(self.by_runs)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """``run_counts``, ``accuracy``, ``ensemble_accuracy``: one entry per size, the last for all runs."""
        t = self.table()
        return {
            "run_counts": t["runs"].to_numpy(np.int64),
            "accuracy": t["accuracy"].to_numpy(np.float64),
            "ensemble_accuracy": t["ensemble_accuracy"].to_numpy(np.float64),
        }


def knn_evaluate(pop: Population, options: KnnOptions | None = None, workspace: Workspace | None = None, **fields) -> KnnResult:
    """k-NN test accuracy of the kernel of the selected runs, next to the ensemble (mean-logit)
    accuracy of the same runs; with sizes, also for the first ``n`` runs of them for each ``n``.
    Neighbours saved in the store are reused when they match (runs and kernel options)."""
    options = options_of(KnnOptions, options, fields)
    chosen = pop.select(options.runs)
    y_train, y_test = pop.targets("train"), pop.targets("test")
    C = pop.classes
    kernel = options.kernel_fields()

    def evaluate(indices: np.ndarray) -> tuple[float, float]:
        nb = stored_or_computed(pop, NeighbourOptions(k=options.k, queries="test", runs=indices, **kernel), workspace)
        return knn_accuracy(nb, y_train, y_test, C, options.k, options.power), ensemble_accuracy(pop, "test", indices)["logit_accuracy"]

    accuracy, ens = evaluate(chosen)
    by_runs = []
    for n in options.sizes or []:
        if not 2 <= n <= chosen.size:
            raise OptionError("sizes", f"{{param}} {n}: needs 2..{chosen.size} runs (the kernel standardizes across runs)")
        acc_n, ens_n = (accuracy, ens) if n == chosen.size else evaluate(chosen[:n])
        by_runs.append({"runs": int(n), "accuracy": acc_n, "ensemble_accuracy": ens_n})
    return KnnResult(runs=chosen, options=options, accuracy=accuracy, ensemble_accuracy=ens, by_runs=by_runs)


__all__ = ["KnnOptions", "KnnResult", "knn_accuracy", "knn_evaluate", "knn_predict"]
