"""The learning-speed proxy: how early in training a run fits an example.

For training example ``i``, the mean over runs that trained on ``i`` and over epochs of the
probability the run gave ``i``'s label at the end of each epoch (``trueprob/train (R, E, N)``,
recorded with ``record.true_prob``; NaN where a run did not train on the example). It comes
with the number of (run, epoch) values averaged, the number of runs, and a standard error over
runs: ``s / sqrt(runs)`` with ``s`` the sample standard deviation (dividing by ``runs - 1``) of
the per-run means ``m_r`` (each run's mean over its epochs; NaN below 2 runs). Streamed over
blocks of runs; sums are float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import NotApplicableError
from ...population import Population
from ...selection import RunSelection
from ...streaming import Moments, json_float


@dataclass
class LearningSpeed:
    """The learning-speed proxy of every training example; all arrays ``(N,)``: ``mean``,
    ``se``, ``count`` (run, epoch) values averaged and ``runs`` that trained on the example."""

    mean: np.ndarray
    se: np.ndarray
    count: np.ndarray
    runs: np.ndarray

    def summary(self) -> dict:
        ok = np.isfinite(self.mean)
        return {
            "mean": json_float(self.mean[ok].mean()) if ok.any() else None,
            "median_se": json_float(np.nanmedian(self.se)) if np.isfinite(self.se).any() else None,
            "median_count": float(np.median(self.count)) if self.count.size else None,
            "median_runs": float(np.median(self.runs)) if self.runs.size else None,
            "never_trained_on": int(np.count_nonzero(self.count == 0)),
        }


def learning_speed_proxy(pop: Population, runs: RunSelection = "ok", block_size: int = 32) -> LearningSpeed:
    """The learning-speed proxy of ``pop``'s training examples (see the module docstring),
    read ``block_size`` runs at a time."""
    if "trueprob/train" not in pop.arrays:
        raise NotApplicableError(_no_true_prob(pop))
    values = per_run = None
    for _, block in pop.blocks("trueprob/train", runs, block_size):  # (b, E, N) float16
        x = block.astype(np.float64)
        b, E, N = x.shape
        if values is None:
            values, per_run = Moments.zeros(N), Moments.zeros(N)
        values.add(x.reshape(b * E, N))
        seen = np.isfinite(x)
        count = seen.sum(1)  # (b, N)
        trained = count > 0
        per_run.add(np.where(seen, x, 0).sum(1) / np.maximum(count, 1), where=trained)
    with np.errstate(invalid="ignore", divide="ignore"):
        return LearningSpeed(values.mean(), per_run.sem(), values.count, per_run.count)


def _no_true_prob(pop: Population) -> str:
    source = (pop.store.meta.get("source") or {}).get("format")
    if source:
        return (
            f"{pop.path}: this store holds no per-epoch true-class probabilities, which the learning-speed proxy needs: "
            f"it was imported ({source}), and imported releases carry none"
        )
    return f"{pop.path}: the learning-speed proxy needs per-epoch true-class probabilities; record them with record.true_prob = true"
