"""How stable an estimate is for the runs at hand: split-half rank correlation.

The runs are split into two halves (:func:`manyruns.streaming.split_halves`: alternating within
each condition); each half gives its own estimate, and the Spearman correlation between them
says how reproducible the ranking of examples is. The Spearman-Brown formula
``2 rho / (1 + rho)`` predicts the correlation between two independent populations of the full
size, and how many runs a target reliability would need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...streaming import json_float


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks ``0..n-1`` of ``x (n,)``, ties sharing their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    return (first + (counts - 1) / 2.0)[inverse.reshape(-1)]


def spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Spearman rank correlation over the entries finite in both, and their number (NaN when
    fewer than 3 entries or either side is constant)."""
    a, b = np.ravel(a), np.ravel(b)
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 3:
        return float("nan"), n
    ra, rb = average_ranks(a[ok]), average_ranks(b[ok])
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt(np.dot(ra, ra) * np.dot(rb, rb))
    return (float(np.dot(ra, rb) / denom) if denom > 0 else float("nan")), n


@dataclass
class Stability:
    """How stable an estimate is for the runs at hand.

    ``spearman``: rank correlation between the estimates from two disjoint halves of the runs
    (``runs`` each), over ``examples`` entries finite in both. ``reliability``: the
    Spearman-Brown prediction of the correlation between two independent populations of the
    full size, ``2 rho / (1 + rho)``.
    """

    spearman: float
    runs: tuple[int, int]
    examples: int

    @property
    def reliability(self) -> float:
        rho = self.spearman
        return float(2 * rho / (1 + rho)) if math.isfinite(rho) and rho > -1 else float("nan")

    def runs_for(self, target: float = 0.9) -> float | None:
        """Runs needed (Spearman-Brown) for a full-population reliability of ``target``."""
        rho = self.reliability
        total = sum(self.runs)
        if not math.isfinite(rho) or rho <= 0:
            return None
        if rho >= target:
            return float(total)
        return float(math.ceil(total * target * (1 - rho) / (rho * (1 - target))))

    def to_dict(self) -> dict:
        return {
            "split_half_spearman": json_float(self.spearman),
            "half_runs": list(self.runs),
            "examples": self.examples,
            "reliability_all_runs": json_float(self.reliability),
            "runs_for_reliability_0.9": self.runs_for(0.9),
        }
