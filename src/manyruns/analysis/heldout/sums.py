"""Per-example sums over runs, split by membership, and the difference of means they give.

For training example ``i``, runs that trained on it (``i in S_r``) and runs that held it out::

    mean_in(i)  = mean of v_r(i) over runs with i in S_r       (n_in runs)
    mean_out(i) = mean of v_r(i) over runs with i not in S_r   (n_out runs)

Standard errors are those of a difference of two independent means with the sample variances
of each side (Welch): ``se = sqrt(s_in^2 / n_in + s_out^2 / n_out)`` where ``s^2`` divides by
``n - 1``; for 0/1 values ``s^2 = n p (1 - p) / (n - 1)``. Where a side has no run the mean is
NaN. Sums are float64 (0/1 values: exact integer counts), so blocks add in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...streaming import Moments, mean_and_variance


@dataclass
class MembershipSums:
    """Per-example moments over the runs that trained on the example (``inside``) and over all
    runs (``every``), ``(N,)`` each. The held-out side is the difference, so one masked sum per
    block suffices. Sums add: blocks may be accumulated separately and combined with ``+``."""

    inside: Moments
    every: Moments

    @classmethod
    def zeros(cls, n: int) -> "MembershipSums":
        return cls(Moments.zeros(n), Moments.zeros(n))

    def add(self, mask: np.ndarray, values: np.ndarray) -> None:
        """Add ``mask (b, N) bool`` and ``values (b, N)`` (bool or float) of a block of runs."""
        self.inside.add(values, where=mask)
        self.every.add(values)

    def __add__(self, other: "MembershipSums") -> "MembershipSums":
        return MembershipSums(self.inside + other.inside, self.every + other.every)

    def __sub__(self, other: "MembershipSums") -> "MembershipSums":
        return MembershipSums(self.inside - other.inside, self.every - other.every)

    @property
    def outside(self) -> Moments:
        return self.every - self.inside

    # the sums by name, as the estimators and the store use them
    n_in = property(lambda self: self.inside.count)
    s_in = property(lambda self: self.inside.total)
    q_in = property(lambda self: self.inside.total_sq)
    n_all = property(lambda self: self.every.count)
    s_all = property(lambda self: self.every.total)
    q_all = property(lambda self: self.every.total_sq)
    n_out = property(lambda self: self.every.count - self.inside.count)

    def difference(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``mean_in - mean_out``, its standard error (Welch), ``mean_in`` and ``mean_out``."""
        return difference_of_means(self.inside, self.outside)


def difference_of_means(inside: Moments, outside: Moments) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``mean_in - mean_out``, its standard error (Welch), ``mean_in`` and ``mean_out``."""
    mean_in, var_in = mean_and_variance(inside.total, inside.total_sq, inside.count)
    mean_out, var_out = mean_and_variance(outside.total, outside.total_sq, outside.count)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(var_in / inside.count + var_out / outside.count)
    return mean_in - mean_out, se, mean_in, mean_out


class LabelConsensus:
    """Tracks, per training example, whether every run trained it with the same label."""

    def __init__(self, n: int):
        self.low = np.full(n, np.iinfo(np.int16).max, dtype=np.int16)
        self.high = np.full(n, np.iinfo(np.int16).min, dtype=np.int16)

    def add(self, labels: np.ndarray) -> None:
        np.minimum(self.low, labels.min(0), out=self.low)
        np.maximum(self.high, labels.max(0), out=self.high)

    def labels(self) -> np.ndarray:
        """``(N,) int64``: the label all runs trained with, or -1 where runs disagree (run-scope
        label noise) or no run was read."""
        return np.where(self.low == self.high, self.low, -1).astype(np.int64)
