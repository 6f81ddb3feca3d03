"""Consistency scores (C-scores) and the learning-speed proxy, streamed over blocks of runs.

For each subset ratio ``rho`` of the population, the held-out value of training example ``i`` is
the mean of ``v_r(i)`` over the runs of that ratio that did not train on ``i`` (see
:mod:`.heldout` for the values); the C-score is the mean of those per-ratio values over the
ratios. Runs of ratio 1.0 hold nothing out and are left out. An example with no held-out run at
some ratio has a NaN value there (``n_out = 0``) and a NaN C-score.

Standard error: the ratios use disjoint runs, so ``se = sqrt(sum_rho s_rho^2 / n_rho) / L`` with
``s_rho^2`` the sample variance of the held-out values at ratio ``rho`` and ``L`` the number of
ratios.

The learning-speed proxy needs per-epoch true-class probabilities (``record.true_prob``): the
mean, over runs and epochs, of the probability a run gave example ``i``'s label while training
on ``i`` (the stored value is NaN where a run did not train on the example).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..population import Population
from .heldout import (
    HeldoutSource,
    LabelConsensus,
    NoHeldoutRunsError,
    Stability,
    _json_float,
    mean_and_variance,
    spearman,
    split_halves,
)


def ratio_name(ratio: float) -> str:
    """Column-friendly name of a subset ratio: 0.1 -> '0.1'."""
    return f"{ratio:g}"


@dataclass
class CScoreResult:
    """C-scores of the training examples.

    ``ratios (L,)``; ``per_ratio (L, N)`` held-out means and ``n_out (L, N)`` their run counts;
    ``cscore (N,)`` and ``se (N,)``; ``label``/``dataset_label (N,)``; ``learning_speed (N,)``
    (None without per-epoch probabilities) and its Spearman correlation with the C-score.
    """

    value: str
    runs: int
    ratios: np.ndarray
    per_ratio: np.ndarray
    n_out: np.ndarray
    cscore: np.ndarray
    se: np.ndarray
    label: np.ndarray
    dataset_label: np.ndarray
    stability: Stability
    learning_speed: np.ndarray | None = None
    learning_speed_spearman: float | None = None
    excluded_full_runs: int = 0
    params: dict = field(default_factory=dict)

    @property
    def incomplete(self) -> int:
        """Examples with no held-out run at some ratio (NaN C-score)."""
        return int(np.count_nonzero((self.n_out == 0).any(0)))

    def table(self) -> pd.DataFrame:
        """Columns index, label, cscore, se, one column per ratio, n_out per ratio
        [, learning_speed], dataset_label."""
        cols: dict[str, np.ndarray] = {
            "index": np.arange(self.cscore.size),
            "label": self.label,
            "cscore": self.cscore,
            "se": self.se,
        }
        for ratio, values in zip(self.ratios, self.per_ratio):
            cols[ratio_name(ratio)] = values
        for ratio, counts in zip(self.ratios, self.n_out):
            cols[f"n_out_{ratio_name(ratio)}"] = counts.astype(np.int64)
        if self.learning_speed is not None:
            cols["learning_speed"] = self.learning_speed
        cols["dataset_label"] = self.dataset_label
        return pd.DataFrame(cols)

    def summary(self, top: int = 10) -> dict:
        c = self.cscore
        ok = np.isfinite(c)
        low = np.flatnonzero(ok)[np.argsort(c[ok], kind="stable")][:top]
        return {
            "statistic": "cscore",
            "value": self.value,
            "runs": self.runs,
            "runs_at_full_set_left_out": self.excluded_full_runs,
            "ratios": [float(r) for r in self.ratios],
            "runs_per_ratio": self.params.get("runs_per_ratio"),
            "examples": int(c.size),
            "estimated": int(ok.sum()),
            "missing_a_ratio": self.incomplete,
            "mean": _json_float(float(c[ok].mean())) if ok.any() else None,
            "per_ratio_mean": {ratio_name(r): _json_float(float(np.nanmean(v))) if np.isfinite(v).any() else None for r, v in zip(self.ratios, self.per_ratio)},
            "median_se": _json_float(float(np.nanmedian(self.se))) if np.isfinite(self.se).any() else None,
            "learning_speed_spearman": _json_float(self.learning_speed_spearman) if self.learning_speed_spearman is not None else None,
            "stability": self.stability.to_dict(),
            "lowest": [{"index": int(i), "label": int(self.label[i]), "cscore": float(c[i])} for i in low],
        }

    def save(self, pop: Population, name: str = "cscore") -> None:
        group = pop.store.analysis_group(name, {**self.params, "value": self.value, "runs": self.runs})
        for key in ("ratios", "per_ratio", "n_out", "cscore", "se", "label"):
            group.create_array(key, data=np.asarray(getattr(self, key)))
        if self.learning_speed is not None:
            group.create_array("learning_speed", data=self.learning_speed)
        group.attrs["summary"] = self.summary()


class HeldoutByRatio:
    """Per-ratio held-out sums: ``n``, ``s``, ``q`` each ``(L, N) float64``."""

    def __init__(self, ratios: np.ndarray, n: int):
        self.ratios = ratios
        self.n = np.zeros((ratios.size, n))
        self.s = np.zeros((ratios.size, n))
        self.q = np.zeros((ratios.size, n))

    def add(self, level: np.ndarray, mask: np.ndarray, values: np.ndarray) -> None:
        """``level (b,)``: ratio position of each run; ``mask``, ``values (b, N)``."""
        out = ~mask
        for lv in np.unique(level):
            rows = level == lv
            o = out[rows]
            if values.dtype == bool:
                hits = np.count_nonzero(o & values[rows], axis=0)
                self.s[lv] += hits
                self.q[lv] += hits
            else:
                v = np.where(o, values[rows].astype(np.float32, copy=False), np.float32(0))
                self.s[lv] += v.sum(0, dtype=np.float64)
                self.q[lv] += np.square(v).sum(0, dtype=np.float64)
            self.n[lv] += np.count_nonzero(o, axis=0)

    def estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-ratio means ``(L, N)``, C-score ``(N,)`` and its standard error ``(N,)``."""
        mean, var = mean_and_variance(self.s, self.q, self.n)
        L = self.ratios.size
        with np.errstate(invalid="ignore", divide="ignore"):
            score = mean.mean(0)  # NaN where any ratio has no held-out run
            se = np.sqrt((var / self.n).sum(0)) / L
        return mean, score, se


def cscore(pop: Population, value: str = "correct", runs="ok", block_size: int = 128, learning_speed: bool | None = None) -> CScoreResult:
    """C-scores of ``pop``'s training examples over its subset ratios (see the module docstring).

    ``learning_speed``: compute the learning-speed proxy (default: when the store has
    ``trueprob/train``).
    """
    source = HeldoutSource(pop, value, runs)
    source.check_held_out()
    ratio_of_run = source.subset_ratios()
    partial = ratio_of_run < 1.0
    excluded = int(np.count_nonzero(~partial))
    chosen = source.runs[partial]
    ratios = np.unique(ratio_of_run[partial])
    level_of = {int(r): int(np.searchsorted(ratios, q)) for r, q in zip(source.runs, ratio_of_run)}
    half = split_halves(source.cells()[partial], chosen)
    half_of = {int(r): int(h) for r, h in zip(chosen, half)}

    total = HeldoutByRatio(ratios, source.n_train)
    first = HeldoutByRatio(ratios, source.n_train)
    consensus = LabelConsensus(source.n_train)
    for block in source.blocks(block_size, train=True, runs=chosen):
        level = np.array([level_of[int(r)] for r in block.runs])
        in_first = np.array([half_of[int(r)] == 0 for r in block.runs])
        total.add(level, block.mask, block.train)
        if in_first.any():
            first.add(level[in_first], block.mask[in_first], block.train[in_first])
        consensus.add(block.labels)

    if not np.any(total.n > 0):
        raise NoHeldoutRunsError(f"{pop.path}: no selected run held any training example out; C-scores are undefined")
    per_ratio, score, se = total.estimate()
    second = HeldoutByRatio(ratios, source.n_train)
    second.n, second.s, second.q = total.n - first.n, total.s - first.s, total.q - first.q
    rho, count = spearman(first.estimate()[1], second.estimate()[1])
    stability = Stability(rho, (int(np.sum(half == 0)), int(np.sum(half == 1))), count)

    speed = speed_rho = None
    if learning_speed is None:
        learning_speed = "trueprob/train" in pop.arrays
    if learning_speed:
        speed, _ = learning_speed_proxy(pop, source.runs, block_size=max(1, block_size // 4))
        speed_rho, _ = spearman(speed, score)

    counts = {ratio_name(r): int(np.count_nonzero(ratio_of_run[partial] == r)) for r in ratios}
    return CScoreResult(
        value=source.value,
        runs=int(chosen.size),
        ratios=ratios,
        per_ratio=per_ratio,
        n_out=total.n,
        cscore=score,
        se=se,
        label=consensus.labels(),
        dataset_label=pop.targets("train"),
        stability=stability,
        learning_speed=speed,
        learning_speed_spearman=speed_rho,
        excluded_full_runs=excluded,
        params={"block_size": block_size, "runs_per_ratio": counts},
    )


def learning_speed_proxy(pop: Population, runs="ok", block_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Mean over runs and epochs of the stored per-epoch true-class probability of each
    training example while it was trained on: ``(N,)`` float64 (NaN where never trained on),
    and the number of (run, epoch) values averaged ``(N,)``."""
    if "trueprob/train" not in pop.arrays:
        raise ValueError(f"{pop.path}: the learning-speed proxy needs per-epoch true-class probabilities; record them with record.true_prob = true")
    total = count = None
    for _, block in pop.blocks("trueprob/train", runs, block_size):  # (b, E, N) float16
        x = block.astype(np.float32).reshape(-1, block.shape[-1])
        seen = np.isfinite(x)
        if total is None:
            total = np.zeros(x.shape[1])
            count = np.zeros(x.shape[1])
        total += np.where(seen, x, 0).sum(0, dtype=np.float64)
        count += seen.sum(0)
    if total is None:
        raise ValueError(f"{pop.path}: no runs to compute the learning-speed proxy from")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan), count
