"""Memorization of every training example, streamed over blocks of runs.

    memorization(i) = mean of v_r(i) over runs with i in S_r  -  mean over runs with i not in S_r

with ``v_r(i)`` a per-run value (:mod:`.values`) and ``S_r`` the subset run ``r`` trained on.
One pass over the runs accumulates, per example, the membership sums (:mod:`.sums`) over all
runs and over the first of two halves of the runs, so the split-half stability
(:mod:`.stability`) costs no second pass. Memory ``O(N)`` whatever the number of runs; sums
are float64 (exact counts for 0/1 values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...errors import check_choice, check_number
from ...population import Population
from ...streaming import HalfSums, json_float
from ..contract import Options, Result, describe_values, options_of
from .source import HeldoutSource, NoHeldoutRunsError
from .stability import Stability, spearman
from .sums import LabelConsensus, MembershipSums
from .values import VALUES

QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


@dataclass(frozen=True, kw_only=True)
class MemorizationOptions(Options):
    """``value``: the per-run value (:data:`VALUES`); ``block_size``: runs read at a time."""

    value: str = "correct"
    block_size: int = 128

    def validate(self) -> None:
        check_choice("value", self.value, VALUES)
        check_number("block_size", self.block_size, 1, integer=True)


@dataclass(kw_only=True)
class MemorizationResult(Result):
    """Memorization of every training example; all arrays ``(N,)``.

    ``estimate``: mean value over runs that trained on the example minus the mean over runs that
    held it out (NaN where either side has no run); ``se``: its standard error (Welch);
    ``mean_in``, ``mean_out``, ``n_in``, ``n_out``; ``label``: the label the runs trained with
    (-1 where runs disagree); ``dataset_label``: the dataset's own label; ``stability``: the
    split-half stability of the estimates.
    """

    name = "memorization"
    estimate: np.ndarray
    se: np.ndarray
    mean_in: np.ndarray
    mean_out: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray
    label: np.ndarray
    dataset_label: np.ndarray
    stability: Stability

    @property
    def value(self) -> str:
        return self.options.value

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
                "n_in": np.asarray(self.n_in).astype(np.int64),
                "n_out": np.asarray(self.n_out).astype(np.int64),
                "mean_in": self.mean_in,
                "mean_out": self.mean_out,
                "dataset_label": self.dataset_label,
            }
        )

    def _summary(self, top: int = 10) -> dict:
        est = self.estimate
        ok = np.isfinite(est)
        order = np.flatnonzero(ok)[np.argsort(-est[ok], kind="stable")][:top]
        return {
            "value": self.value,
            "examples": int(est.size),
            "estimated": int(ok.sum()),
            "never_held_out": self.never_held_out,
            "never_included": self.never_included,
            **describe_values(est, QUANTILES),
            "at_least_0.25": int(np.count_nonzero(est[ok] >= 0.25)),
            "at_least_0.5": int(np.count_nonzero(est[ok] >= 0.5)),
            "median_se": json_float(np.nanmedian(self.se)) if np.isfinite(self.se).any() else None,
            "stability": self.stability.to_dict(),
            "top": [{"index": int(i), "label": int(self.label[i]), "mem": float(est[i]), "se": json_float(self.se[i])} for i in order],
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: getattr(self, key) for key in ("estimate", "se", "mean_in", "mean_out", "n_in", "n_out", "label")}


def memorization(pop: Population, options: MemorizationOptions | None = None, **fields) -> MemorizationResult:
    """Memorization of every training example of ``pop`` (see the module docstring).

    Raises :class:`NoHeldoutRunsError` when no selected run held any example out."""
    options = options_of(MemorizationOptions, options, fields)
    return memorization_from_source(HeldoutSource(pop, options.value, options.runs), options)


def memorization_from_source(source, options: MemorizationOptions | None = None) -> MemorizationResult:
    """Memorization from any source of held-out blocks: an object with ``runs``, ``value``,
    ``binary``, ``n_train``, ``where``, ``cells()``, ``check_held_out()``,
    ``dataset_labels()`` and ``blocks(block_size, train, test)`` like :class:`HeldoutSource`
    (which reads a store; other sources can hold blocks in memory or compute them)."""
    options = options or MemorizationOptions(value=source.value)
    source.check_held_out()
    sums = MembershipHalves(source)
    for block in source.blocks(options.block_size, train=True):
        sums.add(block)
    return sums.result(source, options)


class MembershipHalves:
    """Membership sums over all runs and over the first half (:class:`~manyruns.streaming.HalfSums`),
    and the label consensus: what memorization accumulates, and influence in its first pass."""

    def __init__(self, source):
        self.sums = HalfSums(source.runs, source.cells(), lambda: MembershipSums.zeros(source.n_train))
        self.consensus = LabelConsensus(source.n_train)

    @property
    def total(self) -> MembershipSums:
        return self.sums.total

    @property
    def first(self) -> MembershipSums:
        return self.sums.first

    def in_first(self, runs: np.ndarray) -> np.ndarray:
        return self.sums.in_first(runs)

    def add(self, block) -> None:
        self.sums.add(block.runs, block.mask, block.train)
        self.consensus.add(block.labels)

    def half_estimates(self) -> tuple[np.ndarray, np.ndarray]:
        """``(N,)`` memorization from the first half of the runs and from the second."""
        return self.sums.first.difference()[0], self.sums.second.difference()[0]

    def result(self, source, options: MemorizationOptions) -> MemorizationResult:
        total = self.total
        if not np.any(total.n_out > 0):
            raise NoHeldoutRunsError(f"{source.where}: no selected run held any training example out; memorization is undefined")
        est, se, mean_in, mean_out = total.difference()
        rho, n = spearman(*self.half_estimates())
        return MemorizationResult(
            runs=np.asarray(source.runs),
            options=options,
            estimate=est,
            se=se,
            mean_in=mean_in,
            mean_out=mean_out,
            n_in=total.n_in,
            n_out=total.n_out,
            label=self.consensus.labels(),
            dataset_label=source.dataset_labels(),
            stability=Stability(rho, self.sums.sizes, n),
        )
