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
on ``i`` (the stored value is NaN where a run did not train on the example). It comes with the
number of (run, epoch) values averaged and a standard error over runs (see
:class:`LearningSpeed`).
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
    column_counts,
    mean_and_variance,
    spearman,
    split_halves,
)


def ratio_name(ratio: float) -> str:
    """Column-friendly name of a subset ratio: 0.1 -> '0.1'."""
    return f"{ratio:g}"


@dataclass
class LearningSpeed:
    """The learning-speed proxy of every training example; all arrays ``(N,)``.

    ``mean``: the mean over runs and epochs of the stored true-class probability while the run
    trained on the example (NaN where no run did); ``count``: the number of (run, epoch) values
    averaged; ``runs``: the runs that trained on the example; ``se``: the standard error over
    runs, ``s / sqrt(runs)`` with ``s`` the sample standard deviation (dividing by ``runs - 1``)
    of the per-run means ``m_r`` (each run's mean over its epochs; NaN below 2 runs).
    """

    mean: np.ndarray
    se: np.ndarray
    count: np.ndarray
    runs: np.ndarray

    def summary(self) -> dict:
        ok = np.isfinite(self.mean)
        return {
            "mean": _json_float(float(self.mean[ok].mean())) if ok.any() else None,
            "median_se": _json_float(float(np.nanmedian(self.se))) if np.isfinite(self.se).any() else None,
            "median_count": float(np.median(self.count)) if self.count.size else None,
            "median_runs": float(np.median(self.runs)) if self.runs.size else None,
            "never_trained_on": int(np.count_nonzero(self.count == 0)),
        }


@dataclass
class CScoreResult:
    """C-scores of the training examples.

    ``ratios (L,)``; ``per_ratio (L, N)`` held-out means and ``n_out (L, N)`` their run counts;
    ``cscore (N,)`` and ``se (N,)``; ``label``/``dataset_label (N,)``; ``speed``: the
    learning-speed proxy with its counts and standard errors (:class:`LearningSpeed`, None
    without per-epoch probabilities), ``learning_speed (N,)`` its values, and its Spearman
    correlation with the C-score.
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
    speed: LearningSpeed | None = None
    learning_speed_spearman: float | None = None
    excluded_full_runs: int = 0
    params: dict = field(default_factory=dict)

    @property
    def learning_speed(self) -> np.ndarray | None:
        """``(N,)``: the learning-speed proxy (None without per-epoch probabilities)."""
        return self.speed.mean if self.speed is not None else None

    @property
    def incomplete(self) -> int:
        """Examples with no held-out run at some ratio (NaN C-score)."""
        return int(np.count_nonzero((self.n_out == 0).any(0)))

    def table(self) -> pd.DataFrame:
        """Columns index, label, cscore, se, one column per ratio[, learning_speed], then
        n_out_<ratio> per ratio[, learning_speed_se, learning_speed_count, learning_speed_runs],
        dataset_label."""
        cols: dict[str, np.ndarray] = {
            "index": np.arange(self.cscore.size),
            "label": self.label,
            "cscore": self.cscore,
            "se": self.se,
        }
        for ratio, values in zip(self.ratios, self.per_ratio):
            cols[ratio_name(ratio)] = values
        speed = self.speed
        if speed is not None:
            cols["learning_speed"] = speed.mean
        for ratio, counts in zip(self.ratios, self.n_out):
            cols[f"n_out_{ratio_name(ratio)}"] = counts.astype(np.int64)
        if speed is not None:
            cols["learning_speed_se"] = speed.se
            cols["learning_speed_count"] = speed.count.astype(np.int64)
            cols["learning_speed_runs"] = speed.runs.astype(np.int64)
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
            "learning_speed": self.speed.summary() if self.speed is not None else None,
            "stability": self.stability.to_dict(),
            "lowest": [{"index": int(i), "label": int(self.label[i]), "cscore": float(c[i])} for i in low],
        }

    def save(self, pop: Population, name: str = "cscore") -> None:
        group = pop.store.analysis_group(name, {**self.params, "value": self.value, "runs": self.runs})
        for key in ("ratios", "per_ratio", "n_out", "cscore", "se", "label"):
            group.create_array(key, data=np.asarray(getattr(self, key)))
        if self.speed is not None:
            group.create_array("learning_speed", data=self.speed.mean)
            for key in ("se", "count", "runs"):
                group.create_array(f"learning_speed_{key}", data=getattr(self.speed, key))
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
                hits = column_counts(o & values[rows])
                self.s[lv] += hits
                self.q[lv] += hits
            else:
                v = np.where(o, values[rows].astype(np.float32, copy=False), np.float32(0))
                self.s[lv] += v.sum(0, dtype=np.float64)
                self.q[lv] += np.square(v).sum(0, dtype=np.float64)
            self.n[lv] += column_counts(o)

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
        speed = learning_speed_proxy(pop, source.runs, block_size=max(1, block_size // 4))
        speed_rho, _ = spearman(speed.mean, score)

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
        speed=speed,
        learning_speed_spearman=speed_rho,
        excluded_full_runs=excluded,
        params={"block_size": block_size, "runs_per_ratio": counts},
    )


def learning_speed_proxy(pop: Population, runs="ok", block_size: int = 32) -> LearningSpeed:
    """The learning-speed proxy of ``pop``'s training examples from the stored per-epoch
    true-class probabilities ``trueprob/train (R, E, N)`` (NaN where a run did not train on an
    example), read ``block_size`` runs at a time (see :class:`LearningSpeed`)."""
    if "trueprob/train" not in pop.arrays:
        raise ValueError(_no_true_prob(pop))
    sums = None
    for _, block in pop.blocks("trueprob/train", runs, block_size):  # (b, E, N) float16
        x = block.astype(np.float32)
        if sums is None:
            sums = np.zeros((5, x.shape[-1]))
        _add_learning_speed(sums, x)
    if sums is None:
        raise ValueError(f"{pop.path}: no runs to compute the learning-speed proxy from")
    total, count, runs_in, s, q = sums
    mean_of_runs, var = mean_and_variance(s, q, runs_in)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
        se = np.where(runs_in > 1, np.sqrt(var / runs_in), np.nan)
    return LearningSpeed(mean, se, count, runs_in)


def _add_learning_speed(sums: np.ndarray, x: np.ndarray) -> None:
    """Add a block ``x (b, E, N) float32`` to ``sums (5, N)``: the sum and number of the finite
    values, then the number of runs with any, and the sum and sum of squares of their per-run
    means over epochs."""
    seen = np.isfinite(x)
    per_run_count = seen.sum(1)  # (b, N)
    per_run_sum = np.where(seen, x, 0).sum(1, dtype=np.float64)
    trained = per_run_count > 0
    run_mean = np.where(trained, per_run_sum / np.maximum(per_run_count, 1), 0.0)
    sums[0] += per_run_sum.sum(0)
    sums[1] += per_run_count.sum(0)
    sums[2] += trained.sum(0)
    sums[3] += run_mean.sum(0)
    sums[4] += np.square(run_mean).sum(0)


def _no_true_prob(pop: Population) -> str:
    source = (pop.store.meta.get("source") or {}).get("format")
    if source:
        return (
            f"{pop.path}: this store holds no per-epoch true-class probabilities, which the learning-speed proxy needs: "
            f"it was imported ({source}), and imported releases carry none"
        )
    return f"{pop.path}: the learning-speed proxy needs per-epoch true-class probabilities; record them with record.true_prob = true"
