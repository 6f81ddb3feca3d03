"""Kernel neighbours of a population: the ``k`` most similar train examples of every query.

The analysis over a store of the ensemble correlation kernel (:mod:`.kernel`: the formula,
the two streaming passes, the memory model and the precision): for every test example (or
every train example, never its own neighbour) the train examples with the largest kernel
values, most similar first (equal values: the lower train index first). Saved under
``analysis/kernel-<queries>[-raw][-class-<c>...]``; k-NN and pairs reuse saved neighbours
computed from the same runs with the same kernel options (:func:`stored_or_computed`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import check_choice, check_number
from ..population import Population
from ..store import StoreError
from .contract import Result, options_of
from .kernel import QUERY_SPLITS, KernelOptions, PopulationLogits, Workspace, kernel_topk


@dataclass(frozen=True, kw_only=True)
class NeighbourOptions(KernelOptions):
    """``k``: neighbours kept per query; ``queries``: test, or train (an example is never its
    own neighbour); and the kernel's options (:class:`~.kernel.KernelOptions`)."""

    k: int = 50
    queries: str = "test"

    def validate(self) -> None:
        super().validate()
        check_number("k", self.k, 1, integer=True)
        check_choice("queries", self.queries, QUERY_SPLITS)

    @classmethod
    def from_params(cls, params: dict) -> "NeighbourOptions":
        """The options recorded with saved neighbours (unknown entries ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in params.items() if k in names and k != "runs"}
        if values.get("classes") is not None:
            values["classes"] = tuple(values["classes"])
        return cls(**values)


def kernel_name(queries: str = "test", log_softmax: bool = True, classes=None) -> str:
    """Where neighbours computed with these options are saved:
    ``kernel-<queries>[-raw][-class-<c>...]`` (raw: without the log-softmax)."""
    name = f"kernel-{queries}" + ("" if log_softmax else "-raw")
    if classes is not None:
        name += "-class-" + "-".join(str(int(c)) for c in classes)
    return name


@dataclass(kw_only=True)
class Neighbours(Result):
    """The ``k`` most similar train examples of every query: ``indices (Nq, k) int64`` (train
    indices, most similar first) and ``values (Nq, k) float32`` (their kernel values), from the
    population's runs ``runs``."""

    name = "kernel"
    indices: np.ndarray
    values: np.ndarray
    runs: np.ndarray | None = None
    options: NeighbourOptions = field(default_factory=NeighbourOptions)

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    @property
    def store_name(self) -> str:
        o = self.options
        return kernel_name(o.queries, o.log_softmax, o.classes)

    def head(self, k: int) -> "Neighbours":
        """The first ``k`` neighbours of every query."""
        if k > self.k:
            raise ValueError(f"asked for {k} neighbours, only {self.k} were kept")
        return Neighbours(indices=self.indices[:, :k], values=self.values[:, :k], runs=self.runs, options=self.options.replace(k=k))

    def table(self) -> pd.DataFrame:
        """One row per (query, rank): query_index, rank, train_index, kernel."""
        Nq, k = self.indices.shape
        return pd.DataFrame(
            {
                f"{self.options.queries}_index": np.repeat(np.arange(Nq), k),
                "rank": np.tile(np.arange(1, k + 1), Nq),
                "train_index": self.indices.reshape(-1),
                "kernel": self.values.reshape(-1).astype(np.float64),
            }
        )

    def _summary(self) -> dict:
        top = self.values[:, 0]
        return {
            "k": self.k,
            "queries": self.options.queries,
            "queries_count": int(self.indices.shape[0]),
            "top1_mean": float(np.mean(top)),
            "top1_max": float(np.max(top)),
            "top1_min": float(np.min(top)),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {"indices": self.indices, "values": self.values}


def neighbours(pop: Population, options: NeighbourOptions | None = None, workspace: Workspace | None = None, **fields) -> Neighbours:
    """Top-``k`` kernel neighbours among the train examples for every query example of ``pop``.

    ``workspace``: buffers to reuse across calls (see :class:`~.kernel.Workspace`)."""
    options = options_of(NeighbourOptions, options, fields)
    source = PopulationLogits(pop, options.runs, ("train", "test") if options.queries == "test" else ("train",))
    top = kernel_topk(source, options.k, options.queries, options, workspace)
    return Neighbours(indices=top.indices, values=top.values, runs=source.runs, options=options)


def load_neighbours(pop: Population, name: str = "kernel-test") -> Neighbours:
    """Neighbours saved under ``analysis/<name>``."""
    path = f"analysis/{name}"
    if path not in pop.store.group:
        raise StoreError(f"{pop.path}: no {path}; compute it with `manyruns kernel {pop.path}`")
    group = pop.store.group[path]
    runs = np.asarray(group["runs"][:]) if "runs" in group else None
    options = NeighbourOptions.from_params(dict(group.attrs["params"]))
    return Neighbours(indices=np.asarray(group["indices"][:]), values=np.asarray(group["values"][:]), runs=runs, options=options)


def stored_or_computed(pop: Population, options: NeighbourOptions | None = None, workspace: Workspace | None = None, **fields) -> Neighbours:
    """Neighbours saved in the store when they were computed from the runs ``options.runs``
    selects, with the same kernel (log-softmax, classes, precision) and at least ``options.k``
    neighbours; otherwise computed (not saved)."""
    options = options_of(NeighbourOptions, options, fields)
    name = kernel_name(options.queries, options.log_softmax, options.classes)
    if f"analysis/{name}" in pop.store.group:
        try:
            stored = load_neighbours(pop, name)
        except (TypeError, ValueError):  # saved by another version: compute afresh
            stored = None
        if (
            stored is not None
            and stored.k >= options.k
            and stored.options.kernel_params() == options.kernel_params()
            and stored.runs is not None
            and np.array_equal(stored.runs, pop.select(options.runs))
        ):
            return stored.head(options.k)
    return neighbours(pop, options, workspace)


__all__ = ["NeighbourOptions", "Neighbours", "kernel_name", "load_neighbours", "neighbours", "stored_or_computed"]
