"""Reading a population: ``manyruns.open(path)``.

A :class:`Population` gives the recipe, a table of runs and the stored arrays, lazily: arrays
are read block by block of runs, never all at once unless asked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import zarr

from . import selection
from .recipe import Recipe
from .selection import RunSelection
from .store import METRIC_COLUMNS, STATUS_NAMES, SUMMARY_COLUMNS, Store
from .streaming import run_blocks


class Population:
    """All runs of one recipe and the store that holds them."""

    def __init__(self, store: Store):
        self.store = store

    @property
    def path(self) -> Path | str:
        """The store's local folder, or its URL."""
        return self.store.path

    @property
    def report_dir(self) -> Path:
        """Where commands put figures by default: ``STORE/reports`` for a local store,
        ``./reports/<name>`` for a store at a URL."""
        return self.store.location.report_dir()

    @property
    def recipe(self) -> Recipe:
        return self.store.recipe

    @property
    def recipe_text(self) -> str:
        return self.store.recipe_text

    @property
    def num_runs(self) -> int:
        return self.store.num_runs

    @property
    def fingerprint(self) -> dict:
        return dict(self.store.fingerprint)

    @property
    def layout(self) -> dict:
        """Shapes of the data and the flattened-weight layout (name, shape, start, end per tensor)."""
        return dict(self.store.meta["layout"])

    @property
    def arrays(self) -> list[str]:
        """Names of the per-run arrays this store records."""
        return list(self.store.meta["arrays"])

    @property
    def classes(self) -> int:
        return int(self.layout["num_classes"])

    def array(self, name: str) -> zarr.Array:
        """The zarr array ``name`` (lazy: nothing is read until indexed)."""
        return self.store.array(name)

    # -- runs ----------------------------------------------------------------------------

    @property
    def committed(self) -> np.ndarray:
        """``(R,) bool``: runs whose results exist."""
        return self.store.committed()

    def select(self, runs: RunSelection = "ok") -> np.ndarray:
        """The run indices ``runs`` selects, ``(n,) int64`` (see :mod:`manyruns.selection`):
        ``"ok"`` (default) every ok run, ``"committed"`` every committed run, ``N`` the first
        ``N`` ok runs, ``"0-99,200,300-"`` exactly those runs, a list of indices exactly those
        (in the order given). Raises :class:`~manyruns.errors.OptionError` on ``runs`` for
        runs the store does not have, uncommitted runs named explicitly, or an empty result."""
        spec = selection.parse(runs)
        committed = self.committed
        return selection.resolve(spec, self.num_runs, committed, lambda: self.store.status_codes(committed) == 1)

    @property
    def runs(self) -> pd.DataFrame:
        """One row per run: plan (seed, cell, subset, label_noise, inputs, sweep.*), status and
        final metrics (NaN until the run is committed)."""
        cols = self.store.meta["runs"]
        table = pd.DataFrame(cols)
        table.index.name = "run"
        committed = self.committed
        codes = self.store.status_codes(committed)
        status = np.array([STATUS_NAMES[int(c)] for c in codes], dtype=object)
        failed = self.store.failures()
        for r in failed:
            if codes[r] == 0:
                status[r] = "failed"
        table["status"] = status
        summary = self.store.summary(committed)
        for j, name in enumerate(SUMMARY_COLUMNS):
            table[name] = summary[:, j]
        return table

    # -- arrays, block by block ------------------------------------------------------------

    def blocks(self, name: str, runs: RunSelection = "ok", block_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(run_indices (b,), values (b, ...))`` for array ``name``, ``block_size`` runs
        at a time, for the runs :meth:`select` gives for ``runs``, in that order."""
        for block in run_blocks(self.select(runs), block_size):
            yield block, self.read(name, block)

    def read(self, name: str, runs: np.ndarray) -> np.ndarray:
        """Rows ``runs`` of array ``name``, ``(len(runs), ...)``: run indices as
        :meth:`select` gives them (they are not checked again)."""
        return self.store.read_rows(name, runs)

    def load(self, name: str, runs: RunSelection = "ok") -> np.ndarray:
        """Array ``name`` for ``runs`` as one numpy array (for small populations or few runs)."""
        parts = [v for _, v in self.blocks(name, runs)]
        if not parts:
            shape = self.array(name).shape[1:]
            return np.zeros((0, *shape), dtype=self.array(name).dtype)
        return np.concatenate(parts)

    def targets(self, split: str = "test") -> np.ndarray:
        """The dataset's own labels for ``split`` ('train' or 'test'), ``(N,) int64``."""
        return np.asarray(self.store.group[f"dataset/y_{split}"][:], dtype=np.int64)

    def metrics(self, runs: RunSelection = "ok") -> np.ndarray:
        """``(R', E, 4)``: per-epoch METRIC_COLUMNS of ``runs``."""
        return self.load("metrics", runs)

    metric_columns = METRIC_COLUMNS

    # -- dataset -----------------------------------------------------------------------------

    def dataset(self, data_dir: str | os.PathLike | None = None):
        """The dataset this population trained on, checked against the store's fingerprint."""
        from .data import store_dataset

        return store_dataset(self.store, data_dir)

    def preloaded(self, names: Iterable[str], runs: np.ndarray) -> Population:
        """A view of this population for an analysis that passes over the same runs several
        times: arrays ``names`` are read once for ``runs`` and kept in memory (the caller checks
        their size), and which runs are committed is read once. Other reads go to the store."""
        return _Preloaded(self.store, names, runs)

    def __repr__(self) -> str:
        return f"Population({str(self.path)!r}, runs={self.num_runs}, committed={int(self.committed.sum())})"


class _Preloaded(Population):
    """See :meth:`Population.preloaded`."""

    def __init__(self, store: Store, names: Iterable[str], runs: np.ndarray):
        super().__init__(store)
        runs = np.asarray(runs, dtype=np.int64)
        self._committed = store.committed()
        self._position = {int(r): i for i, r in enumerate(runs)}
        self._derived: list[str] = []
        self._runs: pd.DataFrame | None = None
        self._cache = {name: store.read_rows(name, runs) for name in names if name in self.arrays}

    @property
    def arrays(self) -> list[str]:
        stored = super().arrays
        return stored + [name for name in self._derived if name not in stored]

    def derive(self, name: str, rows: np.ndarray) -> None:
        """Serve ``rows (R, ...)``, one per preloaded run in their order, as array ``name`` of
        this view (never written to the store): a value computed once from the stored arrays
        that several analyses read, such as the runs' correctness (``correct/train``)."""
        if len(rows) != len(self._position):
            raise ValueError(f"derived array {name!r} has {len(rows)} rows for {len(self._position)} preloaded runs")
        self._cache[name] = rows
        self._derived.append(name)

    @property
    def committed(self) -> np.ndarray:
        return self._committed.copy()

    @property
    def runs(self) -> pd.DataFrame:
        """The runs table, read once (each held-out statistic asks for it)."""
        if self._runs is None:
            self._runs = super().runs
        return self._runs.copy()

    def read(self, name: str, runs: np.ndarray) -> np.ndarray:
        cached = self._cache.get(name)
        if cached is not None and all(int(r) in self._position for r in runs):
            return cached[[self._position[int(r)] for r in runs]]
        return super().read(name, runs)


def open(path: str | os.PathLike) -> Population:  # noqa: A001 - mirrors builtins.open on purpose
    """Open the population store at ``path``: a local folder or an object-store URL
    (``s3://bucket/prefix``, ``gs://...``, ``az://...``; credentials from the environment)."""
    return Population(Store.open(path))
