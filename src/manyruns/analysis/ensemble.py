"""Ensemble accuracy: average the outputs of many runs, streaming over blocks of runs."""

from __future__ import annotations

import numpy as np

from ..population import Population


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
