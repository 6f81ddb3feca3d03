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

from dataclasses import dataclass, field

import numpy as np

from ..population import Population
from ..store import METRIC_COLUMNS, SUMMARY_COLUMNS

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


@dataclass
class LevelSums:
    """Sums over the runs of one corruption level. Blocks of runs add; two sums :meth:`merge`.

    Shapes: ``E1 = E + 1`` metric rows, ``M = 4`` metric columns, ``S = 6`` summary columns.
    """

    epochs: int
    runs: int = 0
    count: np.ndarray = field(default=None)  # (E1, M) finite values per row and column
    total: np.ndarray = field(default=None)  # (E1, M) float64
    total_sq: np.ndarray = field(default=None)  # (E1, M) float64
    final: np.ndarray = field(default=None)  # (S,) float64 sums of the summary columns
    final_sq: np.ndarray = field(default=None)  # (S,)
    final_count: np.ndarray = field(default=None)  # (S,)
    fit_runs: np.ndarray = field(default=None)  # (2,) runs that reached each threshold
    fit_total: np.ndarray = field(default=None)  # (2,) sum of their epochs to fit
    fit_total_sq: np.ndarray = field(default=None)  # (2,)
    fit_max: np.ndarray = field(default=None)  # (2,) latest epoch to fit among them

    def __post_init__(self) -> None:
        rows, m, s, k = self.epochs + 1, len(METRIC_COLUMNS), len(SUMMARY_COLUMNS), len(FIT_THRESHOLDS)
        defaults = {
            "count": np.zeros((rows, m), np.int64),
            "total": np.zeros((rows, m)),
            "total_sq": np.zeros((rows, m)),
            "final": np.zeros(s),
            "final_sq": np.zeros(s),
            "final_count": np.zeros(s, np.int64),
            "fit_runs": np.zeros(k, np.int64),
            "fit_total": np.zeros(k),
            "fit_total_sq": np.zeros(k),
            "fit_max": np.full(k, -np.inf),
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def add(self, metrics: np.ndarray, summary: np.ndarray) -> None:
        """Add runs: ``metrics (b, E+1, 4)``, ``summary (b, 6)``."""
        m = np.asarray(metrics, dtype=np.float64)
        finite = np.isfinite(m)
        self.runs += m.shape[0]
        self.count += finite.sum(0)
        self.total += np.where(finite, m, 0).sum(0)
        self.total_sq += np.where(finite, m * m, 0).sum(0)
        s = np.asarray(summary, dtype=np.float64)
        ok = np.isfinite(s)
        self.final += np.where(ok, s, 0).sum(0)
        self.final_sq += np.where(ok, s * s, 0).sum(0)
        self.final_count += ok.sum(0)
        for k, threshold in enumerate(FIT_THRESHOLDS):
            first = epochs_to_fit(np.asarray(metrics)[:, :, _TRAIN_ACC], threshold)
            done = first[np.isfinite(first)]
            self.fit_runs[k] += done.size
            self.fit_total[k] += done.sum()
            self.fit_total_sq[k] += (done * done).sum()
            if done.size:
                self.fit_max[k] = max(self.fit_max[k], done.max())

    def merge(self, other: "LevelSums") -> "LevelSums":
        if other.epochs != self.epochs:
            raise ValueError(f"cannot merge sums over {self.epochs} and {other.epochs} epochs")
        out = LevelSums(self.epochs, self.runs + other.runs)
        for name in ("count", "total", "total_sq", "final", "final_sq", "final_count", "fit_runs", "fit_total", "fit_total_sq"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        out.fit_max = np.maximum(self.fit_max, other.fit_max)
        return out


def _mean_std(total: np.ndarray, total_sq: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation (ddof 1) from sums; NaN where undefined."""
    count = np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
        var = np.where(count > 1, (total_sq - count * mean * mean) / (count - 1), np.nan)
    return mean, np.sqrt(np.maximum(var, 0))


def _number(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


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
        j = METRIC_COLUMNS.index(column)
        s = self.sums
        return _mean_std(s.total[:, j], s.total_sq[:, j], s.count[:, j])

    def final(self, column: str) -> tuple[float | None, float | None]:
        """Mean and std over runs of a summary column (``train_acc``, ``test_acc``, ...)."""
        j = SUMMARY_COLUMNS.index(column)
        s = self.sums
        mean, std = _mean_std(s.final[j], s.final_sq[j], s.final_count[j])
        return _number(mean), _number(std)

    def fit(self, k: int) -> dict:
        """Epochs to reach ``FIT_THRESHOLDS[k]``: mean over runs (None unless every run got there)."""
        s = self.sums
        n = int(s.fit_runs[k])
        mean, std = _mean_std(s.fit_total[k], s.fit_total_sq[k], n)
        every = n == s.runs and n > 0
        return {
            "epochs": _number(mean) if every else None,
            "std": _number(std) if every else None,
            "runs": n,
            "max": _number(s.fit_max[k]) if n else None,
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
                out["curves"][f"{name}_mean"] = [_number(v) for v in mean]
                out["curves"][f"{name}_std"] = [_number(v) for v in std]
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


def fit_curves(pop: Population, runs="ok", block_size: int = 256) -> list[FitCurves]:
    """Fit curves for every corruption level of ``pop`` (levels without runs are left out).

    ``runs``: 'ok' (default: committed, not diverged), 'committed', or run indices. Runs with
    different swept hyperparameters at the same level are pooled.
    """
    if "metrics" not in pop.arrays:
        raise ValueError(f"{pop.path}: this store records no per-epoch metrics ([record] metrics = true)")
    keys, level_of = level_keys(pop)
    epochs = pop.array("metrics").shape[1] - 1
    sums = [LevelSums(epochs) for _ in keys]
    metric_blocks = pop.blocks("metrics", runs, block_size)
    summary_blocks = pop.blocks("summary", runs, block_size)
    for (idx, metrics), (_, summary) in zip(metric_blocks, summary_blocks):
        levels = level_of[idx]
        for level in np.unique(levels):
            sel = levels == level
            sums[level].add(metrics[sel], summary[sel])
    if not any(s.runs for s in sums):
        raise ValueError(f"{pop.path}: no runs to summarize (train the population first: `manyruns train {pop.path}`)")
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
    return out


def save_fit_curves(pop: Population, levels: list[FitCurves], params: dict | None = None) -> None:
    """Keep the results in the store under ``analysis/fit_curves``: the per-level table as an
    attribute, and ``curve_mean``, ``curve_std`` ``(L, E+1, 4)`` and ``curve_count (L, E+1, 4)``."""
    group = pop.store.analysis_group("fit_curves", params or {})
    group.attrs["levels"] = [level.to_dict(curves=False) for level in levels]
    group.attrs["columns"] = list(METRIC_COLUMNS)
    means, stds = [], []
    for level in levels:
        pairs = [level.curve(c) for c in METRIC_COLUMNS]
        means.append(np.stack([m for m, _ in pairs], 1))
        stds.append(np.stack([s for _, s in pairs], 1))
    group.create_array("curve_mean", data=np.asarray(means, dtype=np.float32))
    group.create_array("curve_std", data=np.asarray(stds, dtype=np.float32))
    group.create_array("curve_count", data=np.asarray([level.sums.count for level in levels], dtype=np.int64))
