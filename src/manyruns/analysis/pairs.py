"""Pairs of examples the kernel finds alike: near-duplicates, failure modes, and a comparison
with neighbours in one run's penultimate-feature space.

* :func:`rank_pairs`: query examples ranked by the kernel value of their most similar train
  example (a table: rank, query index, train index, kernel, both labels); with
  ``different_labels`` only the pairs whose labels differ (candidate failure modes).
* :func:`pairs`: the analysis over a population: the ranked table, the ranks asked for and,
  optionally, random test examples with their nearest train examples by the kernel and by
  Euclidean distance between penultimate-layer features of one run (:func:`features_comparison`;
  ``features/{train,test}``, kept by ``[record] features = n``).

The image grids of these pairs are drawn by :mod:`manyruns.report.pairs`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import NotApplicableError, OptionError, check_number
from ..population import Population
from .contract import Result, options_of
from .kernel import KernelOptions, Workspace
from .neighbours import NeighbourOptions, Neighbours, stored_or_computed

PAIR_COLUMNS = ("rank", "test_index", "train_index", "kernel", "test_label", "train_label")


def rank_pairs(nb: Neighbours, query_labels: np.ndarray, train_labels: np.ndarray, different_labels: bool = False, query_name: str = "test") -> pd.DataFrame:
    """One row per query, most similar first: ``rank`` (1-based, after filtering),
    ``<query_name>_index``, ``train_index`` (its nearest train example), ``kernel``, and both labels.

    ``different_labels``: keep only the queries whose nearest train example has another label.
    Equal kernel values keep the query order.
    """
    top_index = nb.indices[:, 0]
    top_value = nb.values[:, 0]
    order = np.argsort(-top_value.astype(np.float64), kind="stable")
    table = pd.DataFrame(
        {
            f"{query_name}_index": order.astype(np.int64),
            "train_index": top_index[order].astype(np.int64),
            "kernel": top_value[order].astype(np.float64),
            f"{query_name}_label": np.asarray(query_labels)[order].astype(np.int64),
            "train_label": np.asarray(train_labels)[top_index[order]].astype(np.int64),
        }
    )
    if different_labels:
        table = table[table[f"{query_name}_label"] != table["train_label"]]
    table.insert(0, "rank", np.arange(1, len(table) + 1, dtype=np.int64))
    return table.reset_index(drop=True)


def drop_mirrored(table: pd.DataFrame, query_name: str = "query") -> pd.DataFrame:
    """For queries from the train set itself: keep one of the pairs (a, b) and (b, a) (the
    better ranked) and renumber the ranks."""
    q, t = table[f"{query_name}_index"].to_numpy(), table["train_index"].to_numpy()
    key = np.minimum(q, t) * (max(q.max(initial=0), t.max(initial=0)) + 1) + np.maximum(q, t)
    _, first = np.unique(key, return_index=True)
    kept = table.iloc[np.sort(first)].drop(columns="rank").reset_index(drop=True)
    kept.insert(0, "rank", np.arange(1, len(kept) + 1, dtype=np.int64))
    return kept


def parse_ranks(text: str) -> tuple[int, int]:
    """``'601-648'`` -> ``(601, 648)`` (1-based, inclusive); ``'5'`` -> ``(5, 5)``."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not m:
        raise OptionError("ranks", f"must look like FIRST-LAST (e.g. 601-648), got {text!r}")
    first, last = int(m.group(1)), int(m.group(2) or m.group(1))
    if first < 1 or last < first:
        raise OptionError("ranks", f"must satisfy 1 <= FIRST <= LAST, got {text!r}")
    return first, last


def select_ranks(table: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """Rows with ``first <= rank <= last``; an error when the table does not reach ``first``."""
    if first > len(table):
        raise OptionError("ranks", f"{{param}} {first}-{last}: there are only {len(table)} ranked pairs")
    return table[(table["rank"] >= first) & (table["rank"] <= last)]


@dataclass(frozen=True, kw_only=True)
class PairsOptions(KernelOptions):
    """``ranks``: the ranks to report, 'FIRST-LAST' (default 1-48, or 1-8 with
    ``different_labels``); ``different_labels``: keep the pairs whose labels differ;
    ``neighbours``: nearest train examples kept per test example; ``features``: also compare,
    on ``random`` test examples drawn with ``seed``, the kernel's nearest train examples with
    those by the penultimate features of run ``feature_run`` (default: the first that kept
    them); and the kernel's options (:class:`~.kernel.KernelOptions`)."""

    ranks: str | None = None
    different_labels: bool = False
    neighbours: int = 1
    features: bool = False
    random: int = 10
    seed: int = 0
    feature_run: int | None = None

    def validate(self) -> None:
        super().validate()
        parse_ranks(self.rank_text)
        check_number("neighbours", self.neighbours, 1, integer=True)
        check_number("random", self.random, 1, integer=True)
        check_number("seed", self.seed, 0, integer=True)
        if self.feature_run is not None:
            check_number("feature_run", self.feature_run, 0, integer=True)

    @property
    def rank_text(self) -> str:
        return self.ranks or ("1-8" if self.different_labels else "1-48")


@dataclass(kw_only=True)
class PairsResult(Result):
    """Test examples ranked by the kernel value of their nearest train example: ``ranked`` (every
    ranked pair, see :func:`rank_pairs`), ``chosen`` (the ranks asked for), ``neighbours`` (the
    kernel neighbours they came from) and, with ``features``, the comparison with one run's
    penultimate features (:func:`features_comparison`)."""

    name = "pairs"
    ranked: pd.DataFrame
    chosen: pd.DataFrame
    neighbours: Neighbours
    features: dict | None = None

    def table(self) -> pd.DataFrame:
        return self.ranked

    def _summary(self) -> dict:
        first, last = parse_ranks(self.options.rank_text)
        return {
            "ranked": int(len(self.ranked)),
            "different_labels": self.options.different_labels,
            "ranks": [first, last],
            "pairs": self.chosen.to_dict(orient="records"),
            "features": self.features,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"ranked/{col}": self.ranked[col].to_numpy() for col in self.ranked.columns}


def pairs(pop: Population, options: PairsOptions | None = None, workspace: Workspace | None = None, **fields) -> PairsResult:
    """Rank the test examples of ``pop`` by the kernel value of their nearest train example
    (neighbours saved in the store are reused when they match)."""
    options = options_of(PairsOptions, options, fields)
    k = max(options.neighbours, 2 if options.features else 1)
    nb = stored_or_computed(pop, NeighbourOptions(k=k, queries="test", runs=options.runs, **options.kernel_fields()), workspace)
    ranked = rank_pairs(nb, pop.targets("test"), pop.targets("train"), options.different_labels)
    chosen = select_ranks(ranked, *parse_ranks(options.rank_text))
    features = features_comparison(pop, nb, options.random, 2, options.seed, options.feature_run) if options.features else None
    return PairsResult(runs=nb.runs, options=options, ranked=ranked, chosen=chosen, neighbours=nb, features=features)


def feature_run(pop: Population, among: np.ndarray | None = None) -> int:
    """The first ok run that recorded penultimate-layer features (of ``among``, where given:
    the runs of an analysis)."""
    if not pop.store.has("features/test"):
        raise NotApplicableError(f"{pop.path}: this store records no penultimate features; set `[record] features = n` in the recipe")
    keep = pop.recipe.record.features
    ok = np.flatnonzero(pop.store.status_codes() == 1)
    candidates = [int(r) for r in (ok if among is None else np.intersect1d(ok, among)) if r < keep]
    if not candidates:
        where = "none of the first" if among is None else "none of the selected runs is among the first"
        raise NotApplicableError(f"{pop.path}: {where} {keep} runs (those that keep features) is committed and ok")
    return candidates[0]


def feature_neighbours(train_features: np.ndarray, query_features: np.ndarray, k: int, exclude: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:
    """Indices ``(q, k) int64`` of the train rows nearest (Euclidean) to each query row.

    ``train_features (N, F)``, ``query_features (q, F)``; ``exclude (q,)``: a train index per
    query to leave out (the query itself when queries are train examples), or None.
    """
    t = torch.from_numpy(np.asarray(train_features, dtype=np.float32))
    t_sq = (t * t).sum(1)
    out = []
    for start in range(0, len(query_features), chunk):
        q = torch.from_numpy(np.asarray(query_features[start : start + chunk], dtype=np.float32))
        dist = t_sq[None, :] - 2 * q @ t.T + (q * q).sum(1, keepdim=True)  # squared distances (q, N)
        if exclude is not None:
            rows = torch.arange(q.shape[0])
            dist[rows, torch.as_tensor(exclude[start : start + chunk])] = float("inf")
        out.append(dist.topk(k, dim=1, largest=False).indices)
    return torch.cat(out).numpy().astype(np.int64)


def features_comparison(pop: Population, nb: Neighbours, count: int = 10, neighbours: int = 2, seed: int = 0, run: int | None = None) -> dict:
    """``count`` random test examples (drawn with ``seed``), their ``neighbours`` nearest train
    examples by the kernel (``nb``) and by penultimate features of run ``run`` (default: the
    run of the neighbours' runs that kept them): ``{"queries", "kernel", "features", "feature_run"}``."""
    if run is None:
        run = feature_run(pop, nb.runs)
    elif not (0 <= run < pop.num_runs and pop.committed[run] and run < pop.recipe.record.features):
        raise OptionError("feature_run", f"{{param}} {run}: no recorded features (only committed runs among the first {pop.recipe.record.features} of {pop.path} keep them)")
    train_f = pop.read("features/train", [run])[0].astype(np.float32)
    test_f = pop.read("features/test", [run])[0].astype(np.float32)
    if not np.isfinite(train_f).all() or not np.isfinite(test_f).all():
        raise NotApplicableError(f"{pop.path}: run {run} has no recorded features (only the first {pop.recipe.record.features} runs keep them)")
    n_test = test_f.shape[0]
    queries = np.sort(np.random.default_rng(seed).choice(n_test, size=min(count, n_test), replace=False))
    by_features = feature_neighbours(train_f, test_f[queries], neighbours)
    return {
        "queries": queries.tolist(),
        "kernel": nb.indices[queries, :neighbours].tolist(),
        "features": by_features.tolist(),
        "feature_run": int(run),
    }


def label_agreement(nb: Neighbours, query_labels: np.ndarray, train_labels: np.ndarray, neighbours: int = 1) -> float:
    """Share of the first ``neighbours`` neighbours whose label equals their query's."""
    return float(np.mean(np.asarray(train_labels)[nb.indices[:, :neighbours]] == np.asarray(query_labels)[:, None]))
