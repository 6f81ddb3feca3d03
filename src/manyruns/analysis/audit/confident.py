"""Confident learning: label-quality scores, the confident joint and the prune-by-noise-rate filter.

Given out-of-sample class probabilities ``p (N, C)`` and the given labels ``y (N,)``:

* **self-confidence** ``p[i, y_i]``; **normalized margin** ``(p[i, y_i] - max_{k != y_i} p[i, k] + 1) / 2``
  (both in [0, 1]; low means the label is doubtful).
* **per-class thresholds** ``t_k = mean of p[i, k] over the examples given label k``.
* **confident joint** ``CJ (C, C)``: ``CJ[j, k]`` counts the examples given label ``j`` whose
  confident class is ``k``: the classes with ``p[i, k] >= t_k`` (less 1e-6), the most probable
  of them where there are several; examples confident in no class are not counted. The diagonal
  is raised to at least 1. **Calibrated**: each row rescaled to the number of examples given that
  label, the whole to ``N``, then rounded to integers keeping each row's total.
* **joint** ``Q = calibrated CJ / N``: the estimated distribution of (given label, true label);
  the **noise rate of class** ``j`` is ``1 - Q[j, j] / sum_k Q[j, k]`` (the fraction of examples
  given ``j`` whose true label differs), the overall rate ``1 - trace(Q)``.
* **prune by noise rate**: for every off-diagonal cell ``(j, k)`` of the calibrated joint
  (diagonals first raised to at least one per class, the other cells of the column lowered to
  match), flag the ``CJ[j, k]`` examples given label ``j`` with the largest ``p[i, k] - p[i, j]``;
  an example is flagged if any cell flags it, and never when its most probable class is its
  given label (the given label's probability gets a 1e-6 head start in that comparison).

These are the public definitions of confident learning (Northcutt et al., 2021) as the reference
implementation computes them by default (``find_label_issues`` with ``filter_by =
'prune_by_noise_rate'``), so the flags agree example for example; the tests check that against
that implementation. Everything is numpy on ``(N, C)`` float64, O(N C) memory; sorting the
candidates of each cell is O(N log N).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-6  # the tolerance of the threshold and argmax comparisons
TINY = 1e-100


def self_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(N,)``: the probability of each example's given label."""
    return probs[np.arange(len(labels)), labels]


def normalized_margin(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(N,)``: ``(p_label - max other p + 1) / 2``."""
    own = self_confidence(probs, labels)
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return (own - others.max(1) + 1) / 2


def thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(C,)``: the mean probability of class ``k`` over the examples given label ``k`` (2, which
    no probability reaches, for a class no example is given)."""
    C = probs.shape[1]
    out = np.full(C, 2.0)
    for k in range(C):
        given = labels == k
        if given.any():
            out[k] = probs[given, k].mean()
    return out


def round_keeping_sum(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to integers whose sum is the rounded sum of ``values``: the entries
    rounded furthest the other way move by one, as many as needed."""
    floats = np.asarray(values, dtype=float)
    ints = floats.round()
    target = np.sum(floats).round()
    total = np.sum(ints).round()
    while abs(total - target) > EPS:
        diff = np.round(target - total)
        step = -1 if diff < 0 else 1
        changes = min(int(abs(diff)), len(floats))
        for i in np.argsort(floats - ints)[::-step][:changes]:
            ints[i] += step
        total = np.sum(ints).round()
    return ints


def round_rows(matrix: np.ndarray) -> np.ndarray:
    return np.apply_along_axis(round_keeping_sum, 1, matrix).astype(int)


def confident_classes(probs: np.ndarray, thresholds_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N,)`` the confident class of each example (see the module) and ``(N,) bool`` whether it
    has one."""
    above = probs >= thresholds_ - EPS
    count = above.sum(1)
    guess = np.where(count > 1, probs.argmax(1), above.argmax(1))
    return guess, count > 0


def confident_joint(probs: np.ndarray, labels: np.ndarray, thresholds_: np.ndarray | None = None) -> np.ndarray:
    """``(C, C) int``: the (uncalibrated) confident joint, rows the given labels."""
    C = probs.shape[1]
    t = thresholds(probs, labels) if thresholds_ is None else thresholds_
    guess, confident = confident_classes(probs, t)
    cj = np.zeros((C, C), dtype=np.int64)
    np.add.at(cj, (labels[confident], guess[confident]), 1)
    np.fill_diagonal(cj, np.maximum(cj.diagonal(), 1))
    return cj


def calibrate(cj: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(C, C) int``: ``cj`` with each row scaled to its label's count and the total to ``N``."""
    counts = np.bincount(labels, minlength=cj.shape[0]).astype(float)
    scaled = (cj.T / np.clip(cj.sum(1), TINY, None) * counts).T
    scaled = scaled / np.clip(scaled.sum(), TINY, None) * counts.sum()
    return round_rows(scaled)


def _prune_counts(calibrated: np.ndarray, keep: int = 1) -> np.ndarray:
    """``(C, C) int``, indexed ``[true, given]``: how many examples to flag per cell, after raising
    each class's kept count to at least ``keep`` (the other cells of its column lowered evenly)."""
    m = calibrated.T.astype(float)
    diagonal = np.diagonal(m).copy()
    raised = np.maximum(diagonal, keep)
    per_column = np.maximum(np.count_nonzero(m, axis=0) - 1.0, 1.0)
    m = m - (raised - diagonal) / per_column
    m[m < 0] = 0
    np.fill_diagonal(m, raised)
    return round_rows(m)


def prune_by_noise_rate(probs: np.ndarray, labels: np.ndarray, calibrated: np.ndarray) -> np.ndarray:
    """``(N,) bool``: the examples flagged as label issues (see the module)."""
    counts = _prune_counts(calibrated)
    C = probs.shape[1]
    flagged = np.zeros(len(labels), dtype=bool)
    for given in range(C):
        rows = np.flatnonzero(labels == given)
        if rows.size <= 1:  # too few examples of the class to prune any
            continue
        mask = np.zeros(rows.size, dtype=bool)
        p = probs[rows]
        for true in range(C):
            n = counts[true, given]
            if true != given and n > 0:
                order = np.argsort(-(p[:, true] - p[:, given]))
                mask[order[:n]] = True
        flagged[rows] = mask
    boosted = probs.copy()
    boosted[np.arange(len(labels)), labels] += EPS
    flagged[boosted.argmax(1) == labels] = False
    return flagged


@dataclass
class ConfidentLearning:
    """The outputs of :func:`confident_learning` over the ``M`` examples it was given."""

    thresholds: np.ndarray  # (C,)
    confident_joint: np.ndarray  # (C, C) int, rows given labels, columns confident classes
    calibrated_joint: np.ndarray  # (C, C) int, summing to M
    is_label_issue: np.ndarray  # (M,) bool

    @property
    def joint(self) -> np.ndarray:
        """``(C, C)``: estimated P(given label, true label)."""
        return self.calibrated_joint / max(self.calibrated_joint.sum(), 1)

    @property
    def noise_rate_by_class(self) -> np.ndarray:
        """``(C,)``: estimated fraction of the examples given each label whose true label differs."""
        q = self.joint
        rows = q.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(rows > 0, 1 - np.diagonal(q) / rows, np.nan)

    @property
    def noise_rate(self) -> float:
        return float(1 - np.trace(self.joint))


def confident_learning(probs: np.ndarray, labels: np.ndarray) -> ConfidentLearning:
    """Confident learning on out-of-sample ``probs (M, C)`` and given ``labels (M,)``."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    t = thresholds(probs, labels)
    cj = confident_joint(probs, labels, t)
    calibrated = calibrate(cj, labels)
    return ConfidentLearning(t, cj, calibrated, prune_by_noise_rate(probs, labels, calibrated))
