"""Held-out subset statistics, the common part: per-run values, membership sums, memorization.

A population trained on random subsets says, for every run ``r`` and training example ``i``,
whether ``r`` trained on ``i`` (``mask/train``) and how ``r`` did on ``i``. The statistics here
compare runs that trained on an example with runs that held it out:

    memorization(i) = mean of v_r(i) over runs with i in S_r  -  mean over runs with i not in S_r

where ``v_r(i)`` is one of the per-run values of :data:`VALUES`:

* ``correct``: 1 when run ``r``'s argmax prediction on ``i`` equals the label ``r`` trained with
  (``labels/train``; for test examples the dataset's label), else 0;
* ``trueprob``: the softmax probability of that label;
* ``margin``: the logit of that label minus the largest other logit.

Stores made by importing a correctness release (:mod:`manyruns.formats.heldout`) hold
``correct/train (R, N) bool`` and ``correct/test (R, T) bool`` instead of logits; they support
``correct`` only. Everything is read block by block of runs and reduced to per-example sums
(float64), so memory does not grow with the number of runs and blocks can be added in any order.

Standard errors are those of a difference of two independent means with the sample variances
of each side (Welch): ``se = sqrt(s_in^2 / n_in + s_out^2 / n_out)`` where ``s^2`` divides by
``n - 1``; for 0/1 values ``s^2 = n p (1 - p) / (n - 1)``. An example held out by no run has
``n_out = 0`` and a NaN estimate (likewise ``n_in = 0``); the results count such examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd

from ..population import Population

VALUES = ("correct", "trueprob", "margin")


class NoHeldoutRunsError(ValueError):
    """No run held any training example out: held-out statistics are undefined."""


# ----------------------------------------------------------------------------- per-run values


def values_from_logits(logits: np.ndarray, labels: np.ndarray, value: str, chunk: int = 16) -> np.ndarray:
    """Per-run values from stored logits.

    ``logits (b, n, C)`` (float16 as stored), ``labels (b, n)`` or ``(n,)`` (the label each run is
    scored against). Returns ``(b, n)``: bool for ``correct``, float32 otherwise.
    """
    import torch

    if value not in VALUES:
        raise ValueError(f"value must be one of {', '.join(VALUES)}, got {value!r}")
    b, n, _ = logits.shape
    labels = np.broadcast_to(np.asarray(labels), (b, n))
    out = np.empty((b, n), dtype=bool if value == "correct" else np.float32)
    for start in range(0, b, chunk):  # float32 copies of a few runs at a time
        x = torch.from_numpy(np.ascontiguousarray(logits[start : start + chunk])).float()
        y = torch.from_numpy(np.array(labels[start : start + chunk], dtype=np.int64)).unsqueeze(-1)
        if value == "correct":
            v = x.argmax(-1) == y.squeeze(-1)
        elif value == "trueprob":
            v = x.softmax(-1).gather(-1, y).squeeze(-1)
        else:
            own = x.gather(-1, y).squeeze(-1)
            others = x.scatter(-1, y, float("-inf")).amax(-1)
            v = own - others
        out[start : start + chunk] = v.numpy()
    return out


@dataclass
class HeldoutBlock:
    """One block of runs: ``runs (b,)``, ``mask (b, N) bool`` (trained on), ``labels (b, N)``
    (the labels the runs trained with), ``train (b, N)`` and ``test (b, T)`` values (bool for
    ``correct``, float32 otherwise; None where not asked for)."""

    runs: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None = None
    train: np.ndarray | None = None
    test: np.ndarray | None = None


class HeldoutSource:
    """The per-run values of one population for held-out statistics.

    ``value``: one of :data:`VALUES`. ``runs``: 'ok' (default), 'committed', 'all' or explicit
    run indices. Reads ``correct/{train,test}`` where the store has them (imported releases)
    and ``value == 'correct'``; otherwise derives the values from ``logits/{train,test}``.
    """

    def __init__(self, pop: Population, value: str = "correct", runs="ok"):
        if value not in VALUES:
            raise ValueError(f"value must be one of {', '.join(VALUES)}, got {value!r}")
        self.pop = pop
        self.value = value
        self.binary = value == "correct"
        self.runs = pop._resolve_runs(runs)
        arrays = set(pop.arrays)
        if "mask/train" not in arrays:
            raise ValueError(f"{pop.path}: this store records no mask/train, so it cannot say which runs held examples out")
        self._from = {}
        for split in ("train", "test"):
            if self.binary and f"correct/{split}" in arrays:
                self._from[split] = f"correct/{split}"
            elif f"logits/{split}" in arrays:
                self._from[split] = f"logits/{split}"
            else:
                self._from[split] = None
        layout = pop.layout
        self.n_train = int(layout["n_train"])
        self.n_test = int(layout["n_test"])
        self._y_test: np.ndarray | None = None
        self._table = pop.runs
        self.where = str(pop.path)

    def require(self, split: str) -> None:
        if self._from[split] is None:
            has = "correctness only" if f"correct/{split}" in self.pop.arrays else "no logits"
            raise ValueError(
                f"{self.pop.path}: value {self.value!r} needs logits/{split}, and this store has {has}"
                + ("; use value 'correct'" if has == "correctness only" else " (see the recipe's record.logits)")
            )

    @property
    def y_test(self) -> np.ndarray:
        """``(T,)``: the test labels the test values are scored against."""
        if self._y_test is None:
            self._y_test = self.pop.targets("test")
        return self._y_test

    def dataset_labels(self) -> np.ndarray:
        """``(N,)``: the dataset's own training labels."""
        return self.pop.targets("train")

    def subset_ratios(self) -> np.ndarray:
        """``(len(runs),)``: the subset ratio of each selected run (from the plan)."""
        return np.asarray(self._table["subset"].to_numpy(dtype=np.float64)[self.runs])

    def cells(self) -> np.ndarray:
        """``(len(runs),)``: the condition (cell) of each selected run."""
        return np.asarray(self._table["cell"].to_numpy()[self.runs])

    def check_held_out(self) -> None:
        """Refuse a selection of runs that all trained on the full training set."""
        if self.runs.size == 0:
            raise NoHeldoutRunsError(f"{self.where}: no ok runs to estimate from (train some first: `manyruns train {self.pop.path}`)")
        if np.all(self.subset_ratios() >= 1.0):
            raise NoHeldoutRunsError(
                f"{self.where}: every run trained on the full training set (population.subset = 1.0), "
                "so no run held any example out; held-out statistics need runs trained on random subsets "
                "(e.g. population.subset = 0.7)"
            )

    def blocks(self, block_size: int = 128, train: bool = True, test: bool = False, runs: np.ndarray | None = None) -> Iterator[HeldoutBlock]:
        """Yield :class:`HeldoutBlock` s of at most ``block_size`` runs, in the order of ``runs``
        (default: the selected runs). ``train``/``test``: which values to read."""
        if train:
            self.require("train")
        if test:
            self.require("test")
        idx = self.runs if runs is None else np.asarray(runs, dtype=np.int64)
        pop = self.pop
        for start in range(0, idx.size, block_size):
            block = idx[start : start + block_size]
            (_, mask), = pop.blocks("mask/train", block, block.size)
            out = HeldoutBlock(block, mask.astype(bool, copy=False))
            if train:
                (_, labels), = pop.blocks("labels/train", block, block.size)
                out.labels = labels
                out.train = self._values(block, "train", labels)
            if test:
                out.test = self._values(block, "test", self.y_test)
            yield out

    def _values(self, block: np.ndarray, split: str, labels: np.ndarray) -> np.ndarray:
        name = self._from[split]
        if name.startswith("correct/"):
            (_, v), = self.pop.blocks(name, block, block.size)
            return v.astype(bool, copy=False)
        # logits are the large arrays: read a few runs at a time
        parts = []
        for sub in range(0, block.size, 32):
            runs = block[sub : sub + 32]
            (_, logits), = self.pop.blocks(name, runs, runs.size)
            own = labels[sub : sub + 32] if labels.ndim == 2 else labels
            parts.append(values_from_logits(logits, own, self.value))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


# ----------------------------------------------------------------------------- halves


def split_halves(cells: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """``(len(runs),) int8``: 0 or 1, the half each run belongs to for split-half stability.

    Within each cell (condition) runs alternate between the halves in order of run index, so
    both halves hold every condition in equal numbers and the split does not depend on the
    order in which runs are read.
    """
    runs = np.asarray(runs)
    half = np.zeros(runs.size, dtype=np.int8)
    for c in np.unique(cells):
        members = np.flatnonzero(cells == c)
        ordered = members[np.argsort(runs[members], kind="stable")]
        half[ordered[1::2]] = 1
    return half


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
            "split_half_spearman": _json_float(self.spearman),
            "half_runs": list(self.runs),
            "examples": self.examples,
            "reliability_all_runs": _json_float(self.reliability),
            "runs_for_reliability_0.9": self.runs_for(0.9),
        }


def _json_float(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


# ----------------------------------------------------------------------------- sums


def column_counts(x: np.ndarray) -> np.ndarray:
    """``(N,) int32``: the True entries of each column of ``x (b, N) bool`` (a uint8 reduction,
    about 3x faster than ``np.count_nonzero(x, axis=0)``; exact for ``b < 2**31``)."""
    return np.add.reduce(x.view(np.uint8), axis=0, dtype=np.int32)


@dataclass
class MembershipSums:
    """Per-example sums over runs, split by membership: ``(N,) float64`` each.

    ``n_in``: runs that trained on the example; ``s_in``, ``q_in``: sums of the values and of
    their squares over those runs; ``n_all``, ``s_all``, ``q_all``: the same over all runs. The
    held-out side is the difference (``n_out = n_all - n_in``), so one masked sum per block
    suffices. Sums add: blocks may be accumulated separately and combined with ``+``.
    """

    n_in: np.ndarray
    s_in: np.ndarray
    q_in: np.ndarray
    n_all: np.ndarray
    s_all: np.ndarray
    q_all: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> "MembershipSums":
        return cls(*(np.zeros(n, dtype=np.float64) for _ in range(6)))

    def add(self, mask: np.ndarray, values: np.ndarray) -> None:
        """Add ``mask (b, N) bool`` and ``values (b, N)`` (bool or float) of a block of runs."""
        if values.dtype == bool:
            hit_in = column_counts(mask & values)
            hits = column_counts(values)
            self.s_in += hit_in
            self.q_in += hit_in  # 0/1 values are their own squares
            self.s_all += hits
            self.q_all += hits
        else:
            v = values.astype(np.float32, copy=False)
            inside = np.where(mask, v, np.float32(0))
            self.s_in += inside.sum(0, dtype=np.float64)
            self.q_in += np.square(inside).sum(0, dtype=np.float64)
            self.s_all += v.sum(0, dtype=np.float64)
            self.q_all += np.square(v).sum(0, dtype=np.float64)
        self.n_in += column_counts(mask)
        self.n_all += mask.shape[0]

    def __add__(self, other: "MembershipSums") -> "MembershipSums":
        return MembershipSums(*(getattr(self, f) + getattr(other, f) for f in ("n_in", "s_in", "q_in", "n_all", "s_all", "q_all")))

    def __sub__(self, other: "MembershipSums") -> "MembershipSums":
        return MembershipSums(*(getattr(self, f) - getattr(other, f) for f in ("n_in", "s_in", "q_in", "n_all", "s_all", "q_all")))

    @property
    def n_out(self) -> np.ndarray:
        return self.n_all - self.n_in

    @property
    def s_out(self) -> np.ndarray:
        return self.s_all - self.s_in

    @property
    def q_out(self) -> np.ndarray:
        return self.q_all - self.q_in


def mean_and_variance(s: np.ndarray, q: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (NaN where ``n = 0``) and sample variance (divides by ``n - 1``; NaN where ``n < 2``)
    from sums ``s``, sums of squares ``q`` and counts ``n``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, s / n, np.nan)
        var = np.where(n > 1, (q - n * mean * mean) / (n - 1), np.nan)
    return mean, np.maximum(var, 0.0)


def difference_of_means(
    s_in: np.ndarray, q_in: np.ndarray, n_in: np.ndarray, s_out: np.ndarray, q_out: np.ndarray, n_out: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``mean_in - mean_out``, its standard error (Welch), ``mean_in`` and ``mean_out``."""
    mean_in, var_in = mean_and_variance(s_in, q_in, n_in)
    mean_out, var_out = mean_and_variance(s_out, q_out, n_out)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(var_in / n_in + var_out / n_out)
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


# ----------------------------------------------------------------------------- memorization


@dataclass
class MemorizationResult:
    """Memorization of every training example; all arrays ``(N,)``.

    ``estimate``: mean value over runs that trained on the example minus the mean over runs that
    held it out (NaN where either side has no run); ``se``: its standard error (Welch);
    ``mean_in``, ``mean_out``, ``n_in``, ``n_out``; ``label``: the label the runs trained with
    (-1 where runs disagree); ``dataset_label``: the dataset's own label.
    """

    value: str
    runs: int
    estimate: np.ndarray
    se: np.ndarray
    mean_in: np.ndarray
    mean_out: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray
    label: np.ndarray
    dataset_label: np.ndarray
    stability: Stability
    params: dict = field(default_factory=dict)

    @property
    def never_held_out(self) -> int:
        return int(np.count_nonzero(self.n_out == 0))

    @property
    def never_included(self) -> int:
        return int(np.count_nonzero(self.n_in == 0))

    def table(self) -> pd.DataFrame:
        """Columns index, label, mem, se, n_in, n_out, mean_in, mean_out, dataset_label."""
        return pd.DataFrame(
            {
                "index": np.arange(self.estimate.size),
                "label": self.label,
                "mem": self.estimate,
                "se": self.se,
                "n_in": self.n_in.astype(np.int64),
                "n_out": self.n_out.astype(np.int64),
                "mean_in": self.mean_in,
                "mean_out": self.mean_out,
                "dataset_label": self.dataset_label,
            }
        )

    def summary(self, top: int = 10) -> dict:
        est = self.estimate
        ok = np.isfinite(est)
        order = np.flatnonzero(ok)[np.argsort(-est[ok], kind="stable")][:top]
        q = np.quantile(est[ok], [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]) if ok.any() else [np.nan] * 7
        return {
            "statistic": "memorization",
            "value": self.value,
            "runs": self.runs,
            "examples": int(est.size),
            "estimated": int(ok.sum()),
            "never_held_out": self.never_held_out,
            "never_included": self.never_included,
            "mean": _json_float(float(est[ok].mean())) if ok.any() else None,
            "quantiles": {k: _json_float(float(v)) for k, v in zip(("1%", "10%", "25%", "50%", "75%", "90%", "99%"), q)},
            "at_least_0.25": int(np.count_nonzero(est[ok] >= 0.25)),
            "at_least_0.5": int(np.count_nonzero(est[ok] >= 0.5)),
            "median_se": _json_float(float(np.nanmedian(self.se))) if np.isfinite(self.se).any() else None,
            "stability": self.stability.to_dict(),
            "top": [{"index": int(i), "label": int(self.label[i]), "mem": float(est[i]), "se": _json_float(float(self.se[i]))} for i in order],
        }

    def save(self, pop: Population, name: str = "memorization") -> None:
        """Write the per-example arrays to ``analysis/<name>`` in the store."""
        group = pop.store.analysis_group(name, {**self.params, "value": self.value, "runs": self.runs})
        for key in ("estimate", "se", "mean_in", "mean_out", "n_in", "n_out", "label"):
            group.create_array(key, data=np.asarray(getattr(self, key)))
        group.attrs["summary"] = self.summary()


def memorization(pop: Population, value: str = "correct", runs="ok", block_size: int = 128) -> MemorizationResult:
    """Memorization of every training example of ``pop`` (see the module docstring).

    Streams over blocks of ``block_size`` runs. Raises :class:`NoHeldoutRunsError` when no
    selected run held any example out.
    """
    result = memorization_from_source(HeldoutSource(pop, value, runs), block_size)
    return result


def memorization_from_source(source, block_size: int = 128) -> MemorizationResult:
    """Memorization from any source of held-out blocks: an object with ``runs``, ``value``,
    ``binary``, ``n_train``, ``where``, ``cells()``, ``check_held_out()``,
    ``dataset_labels()`` and ``blocks(block_size, train, test)`` like :class:`HeldoutSource`
    (which reads a store; other sources can hold blocks in memory or compute them)."""
    source.check_held_out()
    sums = HalfSplitSums(source)
    for block in source.blocks(block_size, train=True):
        sums.add(block)
    return sums.result(source, {"block_size": block_size})


class HalfSplitSums:
    """Membership sums over all runs and over the first half, and the label consensus."""

    def __init__(self, source):
        self.half = split_halves(source.cells(), source.runs)
        self.position = {int(r): k for k, r in enumerate(source.runs)}
        self.total = MembershipSums.zeros(source.n_train)
        self.first = MembershipSums.zeros(source.n_train)
        self.consensus = LabelConsensus(source.n_train)

    def in_first_half(self, runs: np.ndarray) -> np.ndarray:
        """``(b,) bool``: which of ``runs`` belong to the first half."""
        return self.half[[self.position[int(r)] for r in runs]] == 0

    def add(self, block: HeldoutBlock) -> None:
        self.total.add(block.mask, block.train)
        first = self.in_first_half(block.runs)
        if first.all():
            self.first.add(block.mask, block.train)
        elif first.any():
            self.first.add(block.mask[first], block.train[first])
        self.consensus.add(block.labels)

    def half_estimates(self) -> tuple[np.ndarray, np.ndarray]:
        """``(N,)`` memorization from the first half of the runs and from the second."""
        halves = (self.first, self.total - self.first)
        est_a, est_b = (difference_of_means(h.s_in, h.q_in, h.n_in, h.s_out, h.q_out, h.n_out)[0] for h in halves)
        return est_a, est_b

    def result(self, source, params: dict) -> MemorizationResult:
        total = self.total
        if not np.any(total.n_out > 0):
            raise NoHeldoutRunsError(f"{source.where}: no selected run held any training example out; memorization is undefined")
        est, se, mean_in, mean_out = difference_of_means(total.s_in, total.q_in, total.n_in, total.s_out, total.q_out, total.n_out)
        rho, n = spearman(*self.half_estimates())
        stability = Stability(rho, (int(np.sum(self.half == 0)), int(np.sum(self.half == 1))), n)
        return MemorizationResult(
            value=source.value,
            runs=int(source.runs.size),
            estimate=est,
            se=se,
            mean_in=mean_in,
            mean_out=mean_out,
            n_in=total.n_in,
            n_out=total.n_out,
            label=self.consensus.labels(),
            dataset_label=source.dataset_labels(),
            stability=stability,
            params=params,
        )
