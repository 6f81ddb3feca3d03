"""Predicting test labels from the labels of kernel neighbours in the training set.

Majority vote (``power = 0``) counts the labels of the ``k`` most similar train examples;
weighted vote (``power > 0``) gives each neighbour the weight ``max(K, 0) ** power`` (a
neighbour the runs find anti-correlated gets no say). Ties between classes go to the class of
the nearest neighbour among the tied ones; when every weight is zero, that is the nearest
neighbour's class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..population import Population
from .ensemble import ensemble_accuracy
from .kernel import Neighbours, select_runs, stored_or_computed


def knn_predict(nb: Neighbours, train_labels: np.ndarray, num_classes: int, k: int = 3, power: float = 0.0) -> np.ndarray:
    """Predicted class of every query, ``(Nq,) int64``, from its first ``k`` neighbours.

    ``train_labels``: ``(Nt,)`` labels of the train examples that ``nb.indices`` points into.
    """
    if k < 1 or k > nb.k:
        raise ValueError(f"k must lie in 1..{nb.k} (the neighbours kept), got {k}")
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
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


@dataclass
class KnnResult:
    """k-NN test accuracy with all the chosen runs and, optionally, with the first ``n`` of them."""

    k: int
    power: float
    runs: int
    accuracy: float
    ensemble_accuracy: float
    by_runs: list[dict] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"k": self.k, "power": self.power, "runs": self.runs, "accuracy": self.accuracy, "ensemble_accuracy": self.ensemble_accuracy}
        if self.by_runs:
            out["by_runs"] = list(self.by_runs)
        return {**out, **{k: v for k, v in self.params.items() if k not in out}}


def knn_evaluate(
    pop: Population,
    k: int = 3,
    power: float = 0.0,
    sizes: list[int] | None = None,
    runs=None,
    log_softmax: bool = True,
    **kernel_options,
) -> KnnResult:
    """k-NN test accuracy of the kernel of ``runs`` (default every ok run), next to the ensemble
    (mean-logit) accuracy of the same runs; with ``sizes``, also for the first ``n`` runs of them
    for each ``n``. Neighbours stored under ``analysis/kernel-test`` are reused when they match."""
    chosen = select_runs(pop, runs)
    y_train, y_test = pop.targets("train"), pop.targets("test")
    C = pop.classes

    def evaluate(indices: np.ndarray) -> tuple[float, float]:
        nb = stored_or_computed(pop, k, "test", indices, log_softmax, **kernel_options)
        return knn_accuracy(nb, y_train, y_test, C, k, power), ensemble_accuracy(pop, "test", indices)["logit_accuracy"]

    accuracy, ens = evaluate(chosen)
    by_runs = []
    for n in sizes or []:
        if not 2 <= n <= chosen.size:
            raise ValueError(f"--runs {n}: needs 2..{chosen.size} runs (the kernel standardizes across runs)")
        acc_n, ens_n = (accuracy, ens) if n == chosen.size else evaluate(chosen[:n])
        by_runs.append({"runs": int(n), "accuracy": acc_n, "ensemble_accuracy": ens_n})
    params = {"log_softmax": log_softmax, **{key: v for key, v in kernel_options.items() if key in ("precision", "classes")}}
    return KnnResult(k, float(power), int(chosen.size), accuracy, ens, by_runs, params)


def save_knn(pop: Population, result: KnnResult, name: str = "knn") -> str:
    """Keep ``result`` under ``analysis/<name>``: arrays ``runs``, ``accuracy``, ``ensemble_accuracy``
    (one entry per size, the last for all runs); the parameters as attributes."""
    rows = result.by_runs + [{"runs": result.runs, "accuracy": result.accuracy, "ensemble_accuracy": result.ensemble_accuracy}]
    group = pop.store.analysis_group(name, {**result.params, "k": result.k, "power": result.power})
    for key, dtype in (("runs", np.int64), ("accuracy", np.float64), ("ensemble_accuracy", np.float64)):
        group.create_array(key, data=np.array([row[key] for row in rows], dtype=dtype))
    return f"analysis/{name}"
