"""Where held-out statistics read their runs: masks, labels and per-run values, block by block.

:class:`HeldoutSource` reads a store: ``mask/train`` (which examples each run trained on),
``labels/train`` (the labels it trained with) and per-run values (:mod:`.values`), from
``correct/{train,test}`` where the store holds correctness only (imported releases) or from
``logits/{train,test}``. Analyses take any object with the same attributes (``*_from_source``),
so that tests and benchmarks can feed blocks held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ...errors import NotApplicableError, check_choice
from ...population import Population
from ...selection import RunSelection
from ...streaming import run_blocks
from .values import VALUES, values_from_logits


class NoHeldoutRunsError(NotApplicableError):
    """No selected run held any training example out: held-out statistics are undefined."""


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

    ``value``: one of :data:`VALUES`. ``runs``: a selection (:meth:`Population.select`). Reads ``correct/{train,test}`` where the store has them (imported releases)
    and ``value == 'correct'``; otherwise derives the values from ``logits/{train,test}``.
    """

    def __init__(self, pop: Population, value: str = "correct", runs: RunSelection = "ok"):
        check_choice("value", value, VALUES)
        self.pop = pop
        self.value = value
        self.binary = value == "correct"
        self.runs = pop.select(runs)
        arrays = set(pop.arrays)
        if "mask/train" not in arrays:
            raise NotApplicableError(f"{pop.path}: this store records no mask/train, so it cannot say which runs held examples out")
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
            raise NotApplicableError(
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
        pop = self.pop
        for block in run_blocks(self.runs if runs is None else runs, block_size):
            out = HeldoutBlock(block, pop.read("mask/train", block).astype(bool, copy=False))
            if train:
                labels = pop.read("labels/train", block)
                out.labels = labels
                out.train = self._values(block, "train", labels)
            if test:
                out.test = self._values(block, "test", self.y_test)
            yield out

    def _values(self, block: np.ndarray, split: str, labels: np.ndarray) -> np.ndarray:
        name = self._from[split]
        if name.startswith("correct/"):
            return self.pop.read(name, block).astype(bool, copy=False)
        # logits are the large arrays: read a few runs at a time
        parts = []
        for sub, runs in enumerate(run_blocks(block, 32)):
            logits = self.pop.read(name, runs)
            own = labels[32 * sub : 32 * sub + runs.size] if labels.ndim == 2 else labels
            parts.append(values_from_logits(logits, own, self.value))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]
