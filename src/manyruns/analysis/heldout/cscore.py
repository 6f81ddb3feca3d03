"""Consistency scores (C-scores) and the learning-speed proxy, streamed over blocks of runs.

For each subset ratio ``rho`` of the population, the held-out value of training example ``i`` is
the mean of ``v_r(i)`` over the runs of that ratio that did not train on ``i`` (see
:mod:`.values`); the C-score is the mean of those per-ratio values over the
ratios. Runs of ratio 1.0 hold nothing out and are left out. An example with no held-out run at
some ratio has a NaN value there (``n_out = 0``) and a NaN C-score.

Standard error: the ratios use disjoint runs, so ``se = sqrt(sum_rho s_rho^2 / n_rho) / L`` with
``s_rho^2`` the sample variance of the held-out values at ratio ``rho`` and ``L`` the number of
ratios.

Where the store records per-epoch true-class probabilities, the result also holds the
learning-speed proxy (:mod:`.learning_speed`), computed from every selected run (those trained
on the full set included), and its Spearman correlation with the C-score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...errors import NotApplicableError, check_choice, check_number
from ...population import Population
from ...streaming import HalfSums, Moments, json_float
from ..contract import Options, Result, options_of
from .learning_speed import LearningSpeed, _no_true_prob, learning_speed_proxy
from .source import HeldoutSource, NoHeldoutRunsError
from .stability import Stability, spearman
from .sums import LabelConsensus
from .values import VALUES


def ratio_name(ratio: float) -> str:
    """Column-friendly name of a subset ratio: 0.1 -> '0.1'."""
    return f"{ratio:g}"


@dataclass(frozen=True, kw_only=True)
class CScoreOptions(Options):
    """``value``: the per-run value (:data:`VALUES`); ``block_size``: runs read at a time;
    ``learning_speed``: compute the learning-speed proxy (None: when the store has
    ``trueprob/train``)."""

    value: str = "correct"
    block_size: int = 128
    learning_speed: bool | None = None

    def validate(self) -> None:
        check_choice("value", self.value, VALUES)
        check_number("block_size", self.block_size, 1, integer=True)
        check_choice("learning_speed", self.learning_speed, (None, True, False))


@dataclass(kw_only=True)
class CScoreResult(Result):
    """C-scores of the training examples.

    ``ratios (L,)``; ``per_ratio (L, N)`` held-out means and ``n_out (L, N)`` their run counts;
    ``cscore (N,)`` and ``se (N,)``; ``label``/``dataset_label (N,)``; ``speed``: the
    learning-speed proxy with its counts and standard errors (:class:`LearningSpeed`, None
    without per-epoch probabilities), ``learning_speed (N,)`` its values, and its Spearman
    correlation with the C-score. ``runs``: the selected runs, all read; ``ratio_runs``: those
    the C-scores used (``runs_per_ratio`` of them at each ratio); selected runs trained on the
    full set hold nothing out (``excluded_full_runs``) and enter only the learning-speed proxy.
    """

    name = "cscore"
    ratios: np.ndarray
    per_ratio: np.ndarray
    n_out: np.ndarray
    cscore: np.ndarray
    se: np.ndarray
    label: np.ndarray
    dataset_label: np.ndarray
    stability: Stability
    runs_per_ratio: dict
    ratio_runs: np.ndarray
    speed: LearningSpeed | None = None
    learning_speed_spearman: float | None = None
    excluded_full_runs: int = 0

    @property
    def value(self) -> str:
        return self.options.value

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

    def _summary(self, top: int = 10) -> dict:
        c = self.cscore
        ok = np.isfinite(c)
        low = np.flatnonzero(ok)[np.argsort(c[ok], kind="stable")][:top]
        return {
            "value": self.value,
            "runs_at_full_set_left_out": self.excluded_full_runs,
            "ratio_run_count": int(self.ratio_runs.size),
            "ratios": [float(r) for r in self.ratios],
            "runs_per_ratio": self.runs_per_ratio,
            "examples": int(c.size),
            "estimated": int(ok.sum()),
            "missing_a_ratio": self.incomplete,
            "mean": json_float(c[ok].mean()) if ok.any() else None,
            "per_ratio_mean": {ratio_name(r): json_float(np.nanmean(v)) if np.isfinite(v).any() else None for r, v in zip(self.ratios, self.per_ratio)},
            "median_se": json_float(np.nanmedian(self.se)) if np.isfinite(self.se).any() else None,
            "learning_speed_spearman": json_float(self.learning_speed_spearman) if self.learning_speed_spearman is not None else None,
            "learning_speed": self.speed.summary() if self.speed is not None else None,
            "stability": self.stability.to_dict(),
            "lowest": [{"index": int(i), "label": int(self.label[i]), "cscore": float(c[i])} for i in low],
        }

    def arrays(self) -> dict[str, np.ndarray]:
        out = {key: getattr(self, key) for key in ("ratios", "per_ratio", "n_out", "cscore", "se", "label", "ratio_runs")}
        if self.speed is not None:
            out["learning_speed"] = self.speed.mean
            out.update({f"learning_speed_{key}": getattr(self.speed, key) for key in ("se", "count", "runs")})
        return out


class HeldoutByRatio:
    """Per-ratio moments of the held-out values: one :class:`~manyruns.streaming.Moments` of
    ``(N,)`` per ratio."""

    def __init__(self, ratios: np.ndarray, n: int, levels: list[Moments] | None = None):
        self.ratios = ratios
        self.levels = levels if levels is not None else [Moments.zeros(n) for _ in ratios]

    def add(self, level: np.ndarray, mask: np.ndarray, values: np.ndarray) -> None:
        """``level (b,)``: ratio position of each run; ``mask``, ``values (b, N)``."""
        out = ~mask
        for lv in np.unique(level):
            rows = level == lv
            self.levels[lv].add(values[rows], where=out[rows])

    def __sub__(self, other: "HeldoutByRatio") -> "HeldoutByRatio":
        return HeldoutByRatio(self.ratios, 0, [a - b for a, b in zip(self.levels, other.levels)])

    @property
    def n(self) -> np.ndarray:
        """``(L, N)``: held-out runs per ratio and example."""
        return np.stack([m.count for m in self.levels]).astype(np.float64)

    def estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-ratio means ``(L, N)``, C-score ``(N,)`` and its standard error ``(N,)``."""
        mean = np.stack([m.mean() for m in self.levels])
        var = np.stack([m.variance() for m in self.levels])
        L = self.ratios.size
        with np.errstate(invalid="ignore", divide="ignore"):
            score = mean.mean(0)  # NaN where any ratio has no held-out run
            se = np.sqrt((var / self.n).sum(0)) / L
        return mean, score, se


def cscore(pop: Population, options: CScoreOptions | None = None, **fields) -> CScoreResult:
    """C-scores of ``pop``'s training examples over its subset ratios (see the module docstring)."""
    options = options_of(CScoreOptions, options, fields)
    source = HeldoutSource(pop, options.value, options.runs)
    source.check_held_out()
    want_speed = options.learning_speed if options.learning_speed is not None else "trueprob/train" in pop.arrays
    if want_speed and "trueprob/train" not in pop.arrays:
        raise NotApplicableError(_no_true_prob(pop))  # before the pass over the runs
    ratio_of_run = source.subset_ratios()
    partial = ratio_of_run < 1.0
    chosen = source.runs[partial]
    ratios = np.unique(ratio_of_run[partial])
    level_of = {int(r): int(np.searchsorted(ratios, q)) for r, q in zip(source.runs, ratio_of_run)}

    sums = HalfSums(chosen, source.cells()[partial], lambda: HeldoutByRatio(ratios, source.n_train))
    consensus = LabelConsensus(source.n_train)
    for block in source.blocks(options.block_size, train=True, runs=chosen):
        level = np.array([level_of[int(r)] for r in block.runs])
        sums.add(block.runs, level, block.mask, block.train)
        consensus.add(block.labels)

    total = sums.total
    if not np.any(total.n > 0):
        raise NoHeldoutRunsError(f"{pop.path}: no selected run held any training example out; C-scores are undefined")
    per_ratio, score, se = total.estimate()
    rho, count = spearman(sums.first.estimate()[1], sums.second.estimate()[1])

    speed = speed_rho = None
    if want_speed:
        speed = learning_speed_proxy(pop, source.runs, block_size=max(1, options.block_size // 4))
        speed_rho, _ = spearman(speed.mean, score)

    return CScoreResult(
        runs=source.runs,
        ratio_runs=chosen,
        options=options,
        ratios=ratios,
        per_ratio=per_ratio,
        n_out=total.n,
        cscore=score,
        se=se,
        label=consensus.labels(),
        dataset_label=pop.targets("train"),
        stability=Stability(rho, sums.sizes, count),
        runs_per_ratio={ratio_name(r): int(np.count_nonzero(ratio_of_run[partial] == r)) for r in ratios},
        speed=speed,
        learning_speed_spearman=speed_rho,
        excluded_full_runs=int(np.count_nonzero(~partial)),
    )
