"""Randomization tests: how fast and how far networks fit corrupted data, per corruption level.

A randomization-test population varies the corruption across runs: label noise ``p`` (the
training labels each run saw, fixed for its whole training) and/or an input randomization.
For each level this module gives, from the stored per-epoch metrics ``(R, E+1, 4)``:

* train and test accuracy and loss against epochs (mean and spread over runs);
* final train accuracy (on the labels the run saw), test accuracy and test error (on the true
  test labels), from the runs' summaries;
* epochs to fit: the first epoch whose train accuracy reaches 99%, and 100%.

It streams over blocks of runs and keeps sums per level, so memory does not grow with the
number of runs and partial results from different blocks add up. Train accuracy is what the
recipe recorded: with ``[record] train_metrics = "eval"`` a pass over the run's subset at the
end of each epoch; with ``"running"``, the average over the epoch's batches (which lags).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import NotApplicableError, check_number
from ..population import Population
from ..store import METRIC_COLUMNS, SUMMARY_COLUMNS
from ..streaming import Moments, json_float, mean_and_variance, run_blocks
from .contract import Options, Result, options_of

FIT_THRESHOLDS = (0.99, 1.0)
"""Train accuracies that count as fitted: 99% and 100%."""

INPUT_LABELS = {
    "shuffled-pixels": "pixels:shuffled",
    "permuted-pixels": "pixels:permuted",
    "random-pixels": "pixels:random",
    "gaussian": "pixels:gaussian",
}

_TRAIN_ACC = METRIC_COLUMNS.index("train_acc")


def corruption_label(label_noise: float | None, inputs: str = "none", subset: float | None = None) -> str:
    """A level's name: ``labels:0.6``, ``labels:1.0``, ``pixels:shuffled``, ``labels:0.2+pixels:random``, or
    ``none``. ``label_noise`` None: the recipe has no label noise; ``subset``: shown when the
    recipe varies the subset ratio."""
    parts = []
    if subset is not None:
        parts.append(f"subset:{subset:g}")
    if label_noise is not None:
        parts.append(f"labels:{float(label_noise)!r}")
    if inputs != "none":
        parts.append(INPUT_LABELS.get(inputs, f"pixels:{inputs}"))
    return "+".join(parts) or "none"


def epochs_to_fit(train_acc: np.ndarray, threshold: float) -> np.ndarray:
    """First epoch (row index of ``metrics``) whose train accuracy is at least ``threshold``.

    ``train_acc (R, E+1)`` fractions (NaN where not recorded) -> ``(R,)`` float64, NaN where
    never reached. The comparison is made in the stored precision (float32), so 100% means
    every example of the subset.
    """
    acc = np.asarray(train_acc)
    reached = acc >= acc.dtype.type(threshold) if acc.dtype.kind == "f" else acc >= threshold
    first = reached.argmax(axis=1).astype(np.float64)
    first[~reached.any(axis=1)] = np.nan
    return first


class LevelSums:
    """Sums over the runs of one corruption level: moments (:class:`~manyruns.streaming.Moments`)
    of the per-epoch metrics ``(E+1, 4)``, of the final summary columns ``(6,)`` and of the
    epochs to fit each threshold ``(2,)`` (over the runs that got there), and the latest epoch
    to fit. Blocks of runs add; two sums :meth:`merge`. Non-finite values are not counted."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.runs = 0
        self.metrics = Moments.zeros((epochs + 1, len(METRIC_COLUMNS)))
        self.final_moments = Moments.zeros(len(SUMMARY_COLUMNS))
        self.fit = Moments.zeros(len(FIT_THRESHOLDS))
        self.fit_max = np.full(len(FIT_THRESHOLDS), -np.inf)

    def add(self, metrics: np.ndarray, summary: np.ndarray) -> None:
        """Add runs: ``metrics (b, E+1, 4)``, ``summary (b, 6)``."""
        self.runs += metrics.shape[0]
        self.metrics.add(metrics)
        self.final_moments.add(summary)
        first = np.stack([epochs_to_fit(np.asarray(metrics)[:, :, _TRAIN_ACC], t) for t in FIT_THRESHOLDS], 1)  # (b, 2)
        self.fit.add(first)
        self.fit_max = np.fmax(self.fit_max, np.nanmax(first, axis=0, initial=-np.inf))

    def merge(self, other: "LevelSums") -> "LevelSums":
        if other.epochs != self.epochs:
            raise ValueError(f"cannot merge sums over {self.epochs} and {other.epochs} epochs")
        out = LevelSums(self.epochs)
        out.runs = self.runs + other.runs
        out.metrics, out.final_moments, out.fit = self.metrics + other.metrics, self.final_moments + other.final_moments, self.fit + other.fit
        out.fit_max = np.maximum(self.fit_max, other.fit_max)
        return out

    # the sums by name: per-epoch metrics, final summary columns, epochs to fit
    count = property(lambda self: self.metrics.count)
    total = property(lambda self: self.metrics.total)
    total_sq = property(lambda self: self.metrics.total_sq)
    final = property(lambda self: self.final_moments.total)
    final_sq = property(lambda self: self.final_moments.total_sq)
    final_count = property(lambda self: self.final_moments.count)
    fit_runs = property(lambda self: self.fit.count)
    fit_total = property(lambda self: self.fit.total)
    fit_total_sq = property(lambda self: self.fit.total_sq)


def _mean_std(moments: Moments, index) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation (ddof 1) of ``moments[index]``; NaN where undefined."""
    mean, var = mean_and_variance(moments.total[index], moments.total_sq[index], moments.count[index])
    return mean, np.sqrt(var)


@dataclass
class FitCurves:
    """Results for one corruption level (accuracies as fractions, epochs as metric rows)."""

    corruption: str
    label_noise: float | None
    inputs: str
    subset: float
    sums: LevelSums
    diverged: int = 0
    train_metrics: str = "eval"

    @property
    def runs(self) -> int:
        return self.sums.runs

    def curve(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread (std over runs) of a metric column against epochs, ``(E+1,)`` each."""
        return _mean_std(self.sums.metrics, (slice(None), METRIC_COLUMNS.index(column)))

    def final(self, column: str) -> tuple[float | None, float | None]:
        """Mean and std over runs of a summary column (``train_acc``, ``test_acc``, ...)."""
        mean, std = _mean_std(self.sums.final_moments, SUMMARY_COLUMNS.index(column))
        return json_float(mean), json_float(std)

    def fit(self, k: int) -> dict:
        """Epochs to reach ``FIT_THRESHOLDS[k]``: mean over runs (None unless every run got there)."""
        s = self.sums
        n = int(s.fit_runs[k])
        mean, std = _mean_std(s.fit, k)
        every = n == s.runs and n > 0
        return {
            "epochs": json_float(mean) if every else None,
            "std": json_float(std) if every else None,
            "runs": n,
            "max": json_float(s.fit_max[k]) if n else None,
        }

    def to_dict(self, curves: bool = True) -> dict:
        train, train_std = self.final("train_acc")
        test, test_std = self.final("test_acc")
        fit99, fit100 = self.fit(0), self.fit(1)
        out = {
            "corruption": self.corruption,
            "label_noise": self.label_noise,
            "inputs": self.inputs,
            "subset": self.subset,
            "runs": self.runs,
            "diverged": self.diverged,
            "epochs": self.sums.epochs,
            "train_accuracy": train,
            "train_accuracy_std": train_std,
            "test_accuracy": test,
            "test_accuracy_std": test_std,
            "test_error": None if test is None else 1.0 - test,
            "train_loss": self.final("train_loss")[0],
            "test_loss": self.final("test_loss")[0],
            "epochs_to_fit": fit99["epochs"],
            "epochs_to_fit_std": fit99["std"],
            "runs_fit": fit99["runs"],
            "epochs_to_fit_100": fit100["epochs"],
            "epochs_to_fit_100_std": fit100["std"],
            "runs_fit_100": fit100["runs"],
            "train_metrics": self.train_metrics,
        }
        if curves:
            out["curves"] = {"epoch": list(range(self.sums.epochs + 1))}
            for column in METRIC_COLUMNS:
                mean, std = self.curve(column)
                name = column.replace("_acc", "_accuracy")
                out["curves"][f"{name}_mean"] = [json_float(v) for v in mean]
                out["curves"][f"{name}_std"] = [json_float(v) for v in std]
        return out


def level_keys(pop: Population) -> tuple[list[tuple[float, float, str]], np.ndarray]:
    """The corruption levels of ``pop`` (``(subset, label_noise, inputs)``, in plan order) and the
    level index of every run, ``(R,) int``."""
    table = pop.runs
    keys: list[tuple[float, float, str]] = []
    index = np.empty(len(table), dtype=np.int64)
    order = np.argsort(table["cell"].to_numpy(), kind="stable")
    lookup: dict[tuple[float, float, str], int] = {}
    for r in order:
        key = (float(table["subset"].iat[r]), float(table["label_noise"].iat[r]), str(table["inputs"].iat[r]))
        if key not in lookup:
            lookup[key] = len(keys)
            keys.append(key)
        index[r] = lookup[key]
    return keys, index


@dataclass(frozen=True, kw_only=True)
class FitCurvesOptions(Options):
    """``block_size``: runs read at a time."""

    block_size: int = 256

    def validate(self) -> None:
        check_number("block_size", self.block_size, 1, integer=True)


@dataclass(kw_only=True)
class FitCurvesResult(Result):
    """The fit curves of every corruption level with runs (``levels``, in plan order; the
    result iterates over them). Runs with different swept hyperparameters at one level are
    pooled."""

    name = "fit_curves"
    levels: list[FitCurves]

    def __iter__(self):
        return iter(self.levels)

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, i: int) -> FitCurves:
        return self.levels[i]

    def table(self) -> pd.DataFrame:
        """One row per corruption level: final accuracies, errors and epochs to fit."""
        return pd.DataFrame([level.to_dict(curves=False) for level in self.levels])

    def _summary(self, curves: bool = True) -> dict:
        return {"levels": [level.to_dict(curves=curves) for level in self.levels]}

    def arrays(self) -> dict[str, np.ndarray]:
        """``curve_mean``, ``curve_std`` ``(L, E+1, 4)`` and ``curve_count (L, E+1, 4)``."""
        means, stds = [], []
        for level in self.levels:
            pairs = [level.curve(c) for c in METRIC_COLUMNS]
            means.append(np.stack([m for m, _ in pairs], 1))
            stds.append(np.stack([s for _, s in pairs], 1))
        return {
            "curve_mean": np.asarray(means, dtype=np.float32),
            "curve_std": np.asarray(stds, dtype=np.float32),
            "curve_count": np.asarray([level.sums.count for level in self.levels], dtype=np.int64),
        }

    def save(self, pop: Population) -> str:
        """Also keeps the per-level table (``levels``) and the metric ``columns`` as attributes."""
        where = super().save(pop)
        group = pop.store.group[where]
        group.attrs.update({"levels": [level.to_dict(curves=False) for level in self.levels], "columns": list(METRIC_COLUMNS)})
        return where


def fit_curves(pop: Population, options: FitCurvesOptions | None = None, **fields) -> FitCurvesResult:
    """Fit curves for every corruption level of ``pop`` (levels without runs are left out)."""
    options = options_of(FitCurvesOptions, options, fields)
    if "metrics" not in pop.arrays:
        raise NotApplicableError(f"{pop.path}: this store records no per-epoch metrics ([record] metrics = true)")
    keys, level_of = level_keys(pop)
    epochs = pop.array("metrics").shape[1] - 1
    sums = [LevelSums(epochs) for _ in keys]
    runs = pop.select(options.runs)
    for idx in run_blocks(runs, options.block_size):
        metrics, summary = pop.read("metrics", idx), pop.read("summary", idx)
        levels = level_of[idx]
        for level in np.unique(levels):
            sel = levels == level
            sums[level].add(metrics[sel], summary[sel])
    recipe = pop.recipe
    has_noise = recipe.population.label_noise is not None
    varies_subset = len(recipe.population.subset_levels) > 1
    status = pop.runs["status"].to_numpy()
    out = []
    for level, ((subset, noise, inputs), s) in enumerate(zip(keys, sums)):
        if s.runs == 0:
            continue
        out.append(
            FitCurves(
                corruption=corruption_label(noise if has_noise else None, inputs, subset if varies_subset else None),
                label_noise=noise if has_noise else None,
                inputs=inputs,
                subset=subset,
                sums=s,
                diverged=int(np.sum((level_of == level) & (status == "diverged"))),
                train_metrics=recipe.record.train_metrics,
            )
        )
    return FitCurvesResult(runs=runs, options=options, levels=out)
