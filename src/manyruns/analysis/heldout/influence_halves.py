"""Split-half agreement of influence: the pairs and the top influencers of each half of the runs.

The runs are split into the halves of the memorization's split-half stability; the products of
the two halves are accumulated apart (:class:`~.influence_products.HalfProducts`), the sums over
all runs being their sum, so no multiplication is added. Each half is finished beside the
whole, with its own pairs (every test example, but only the train examples whose memorization
in that half can form a pair) and its own top-k (on a sample of the test examples that vary),
whose agreement is :class:`PairStability`. This doubles the accumulators per column (so the
passes for a given memory) and adds about a third to the finishing step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...streaming import TopK, json_float, topk
from .influence_finish import PairCollector, _Columns, _hits_above, _influence_tile
from .influence_products import HalfProducts
from .stability import spearman


@dataclass
class PairStability:
    """Split-half agreement of what influence is used for: the high-influence pairs and the top
    influencers.

    The runs are split into the halves of the memorization's split-half stability; each half
    gives its own memorization, influence, pairs above the thresholds and top ``k`` influencers
    per test example. ``pairs``: the pairs found with each half ``(a, b)``; ``both``: those found
    with both; :attr:`agreement`: the share of the pairs found with one half that are also found
    with the other, ``2 both / (a + b)``. ``truncated``: a half found more than ``max_pairs``
    pairs (the agreement is then that of the strongest kept). ``topk_spearman``: Spearman
    correlation between the two halves' influence over the union of their top-``k`` entries,
    over ``topk_rows``: test examples whose value varies between runs (all of them, or a
    sample; ``topk_entries`` entries, those defined in both halves).
    """

    runs: tuple[int, int]
    pairs: tuple[int, int]
    both: int
    truncated: bool
    k: int
    topk_spearman: float
    topk_entries: int
    topk_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)

    @property
    def agreement(self) -> float:
        """``2 both / (a + b)``; NaN when neither half finds a pair."""
        found = sum(self.pairs)
        return 2 * self.both / found if found else float("nan")

    def to_dict(self) -> dict:
        a, b = self.pairs
        return {
            "half_runs": list(self.runs),
            "pairs_a": a,
            "pairs_b": b,
            "pairs_both": self.both,
            "pair_agreement": json_float(self.agreement),
            "a_found_by_b": json_float(self.both / a) if a else None,
            "b_found_by_a": json_float(self.both / b) if b else None,
            "pairs_truncated": self.truncated,
            "k": self.k,
            "topk_spearman": json_float(self.topk_spearman),
            "topk_entries": self.topk_entries,
            "topk_test_examples": int(self.topk_rows.size),
        }


class SplitHalfPairs:
    """The top ``k`` influencers and the pairs above the thresholds from each half of the runs,
    accumulated tile by tile beside the full estimates (see :class:`PairStability`).

    ``options``: the influence options (thresholds, label condition, pair limit); ``k``: top
    entries kept per test example; ``runs``: runs per half; ``memorization``: each half's
    ``(N,)`` memorization; ``labels (N,)`` the train labels and ``y_test (T,)``; ``totals``:
    each half's ``(T,)`` per-test sums of values; ``topk_rows``: the sorted test examples whose
    top-k the halves compare. Each half's top-k keeps the other half's influence at the same
    entry.

    Pairs need a half's influence only in its candidate columns (memorization at the threshold)
    and the top-k only on ``topk_rows``, so a tile costs a fraction of the full one's finishing.
    """

    def __init__(self, options, *, k: int, runs: tuple[int, int], memorization, labels, y_test, totals, topk_rows):
        T = y_test.size
        self.N = labels.size
        self.k = k
        self.runs = runs
        self.memorization = memorization
        self.labels = labels
        self.y_test = torch.from_numpy(np.asarray(y_test, dtype=np.int64))
        self.totals = [torch.from_numpy(np.asarray(t, dtype=np.float32)) for t in totals]
        self.infl_threshold = options.infl_threshold
        self.mem_threshold = options.mem_threshold
        self.same_label = options.same_label
        self.topk = [TopK(T, k, 1), TopK(T, k, 1)]
        self.pairs = [PairCollector(options.max_pairs), PairCollector(options.max_pairs)]
        self.topk_rows = np.asarray(topk_rows, dtype=np.int64)
        self.compared = torch.zeros(T, dtype=torch.bool)
        self.compared[torch.from_numpy(self.topk_rows)] = True

    def start_columns(self, c0: int, n_in: tuple[np.ndarray, np.ndarray]) -> None:
        """Begin the column block at ``c0`` with each half's in-counts ``(W,)``."""
        W = n_in[0].size
        self.c0 = c0
        self.column_ids = torch.arange(c0, c0 + W)
        self.columns = [
            _Columns.of(counts, runs - counts, mem[c0 : c0 + W], self.labels[c0 : c0 + W], self.mem_threshold)
            for counts, runs, mem in zip(n_in, self.runs, self.memorization)
        ]
        self.candidate_columns = [cols.candidates_only() for cols in self.columns]

    def add_tile(self, test_ids: torch.Tensor, sums_a: torch.Tensor, sums_b: torch.Tensor) -> None:
        """Each half's in-sums ``(t, W)`` of the test examples ``test_ids (t,)``."""
        halves = (sums_a, sums_b)
        for h, sums in enumerate(halves):
            cols, sub_cols = self.columns[h], self.candidate_columns[h]
            if cols.candidates.numel():
                sub = _influence_tile(sums.index_select(1, cols.candidates), self.totals[h][test_ids, None], sub_cols)
                rows, hits = _hits_above(sub, test_ids, cols.labels, self.y_test, self.infl_threshold, self.same_label)
                if rows.numel():
                    key = test_ids[rows] * self.N + cols.candidates[hits] + self.c0
                    self.pairs[h].add({"key": key.numpy(), "infl": sub[rows, hits].numpy()})
        at = torch.nonzero(self.compared[test_ids]).view(-1)
        if not at.numel():
            return
        ids = test_ids[at]
        infl = [_influence_tile(sums.index_select(0, at), self.totals[h][ids, None], self.columns[h]) for h, sums in enumerate(halves)]
        k = min(self.k, sums_a.shape[1])
        for h in (0, 1):
            value, where = topk(infl[h], k, ordered=False)
            other = infl[1 - h].gather(1, where)
            self.topk[h].merge(ids, value, self.column_ids[where], other.unsqueeze(-1))

    def result(self) -> PairStability:
        """The agreement of the halves."""
        keys = [_pair_keys(collector) for collector in self.pairs]
        both = int(np.intersect1d(keys[0], keys[1], assume_unique=True).size)
        rho, entries = spearman(*self._topk_union())
        truncated = any(c.found > c.limit for c in self.pairs)
        return PairStability(self.runs, (int(keys[0].size), int(keys[1].size)), both, truncated, self.k, rho, entries, self.topk_rows)

    def _topk_union(self) -> tuple[np.ndarray, np.ndarray]:
        """Both halves' influence ``(E,)`` at the union of their top-k entries in the compared
        rows (NaN where a half has none)."""
        keys, values_a, values_b = [], [], []
        rows = self.compared.numpy()
        for h, top in enumerate(self.topk):
            index, value, other = top.index.numpy(), top.value.numpy(), top.aux[..., 0].numpy()
            kept = (index >= 0) & np.isfinite(value) & rows[:, None]
            keys.append(np.nonzero(kept)[0] * self.N + index[kept])
            values_a.append((value if h == 0 else other)[kept])
            values_b.append((other if h == 0 else value)[kept])
        _, first = np.unique(np.concatenate(keys), return_index=True)
        a, b = (np.concatenate(v)[first].astype(np.float64) for v in (values_a, values_b))
        return np.where(np.isfinite(a), a, np.nan), np.where(np.isfinite(b), b, np.nan)


def _pair_keys(collector: PairCollector) -> np.ndarray:
    """The sorted ``test * N + train`` keys of the pairs a collector kept."""
    parts = collector.finish()
    return np.unique(np.concatenate([p["key"] for p in parts])) if parts else np.zeros(0, dtype=np.int64)


def _influence_from_sums(s_in: torch.Tensor, n_in: np.ndarray, total: np.ndarray, runs: int) -> np.ndarray:
    """``(t, W) float32`` influence from in-sums ``(t, W) float32``, in-counts ``(W,)`` and row
    totals ``(t, 1)``; NaN where a column has no run in or out."""
    n_out = runs - n_in
    invalid = torch.from_numpy((n_in == 0) | (n_out == 0))
    n_in_t = torch.from_numpy(np.where(n_in > 0, n_in, 1.0).astype(np.float32))
    n_out_t = torch.from_numpy(np.where(n_out > 0, n_out, 1.0).astype(np.float32))
    est = s_in / n_in_t - (torch.from_numpy(np.asarray(total, dtype=np.float32)) - s_in) / n_out_t
    return est.masked_fill_(invalid, float("nan")).numpy()


def sampled_half_estimates(products: HalfProducts, rows, sample, varying, n_in, totals, runs, out) -> None:
    """Write each half's influence on the sampled test rows ``sample`` that vary into ``out``
    (two ``(S, W)`` views); ``rows``: the test examples of the products' rows; ``n_in``,
    ``totals`` (``(W,)`` and ``(T,)``) and ``runs``: per half."""
    if rows.size == 0 or sample.size == 0:
        return
    loc = np.searchsorted(rows, sample)
    present = (loc < rows.size) & (rows[np.minimum(loc, rows.size - 1)] == sample) & varying[sample]
    if not present.any():
        return
    at = torch.from_numpy(loc[present])
    for part, counts, total, r, target in zip(products.parts, n_in, totals, runs, out):
        s_in = part.raw[at].to(torch.float32)
        target[present] = _influence_from_sums(s_in, counts, total[sample][present, None], r)


def subsample_finite(a: np.ndarray, b: np.ndarray, limit: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` entries finite in both ``a`` and ``b`` (a random sample beyond that)."""
    ok = np.flatnonzero(np.isfinite(a).ravel() & np.isfinite(b).ravel())
    if ok.size > limit:
        ok = np.sort(rng.choice(ok, size=limit, replace=False))
    return a.ravel()[ok], b.ravel()[ok]


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of sampled test rows whose most influential train example is the same in both halves."""
    if a.size == 0:
        return float("nan")
    fa = np.where(np.isfinite(a), a, -np.inf)
    fb = np.where(np.isfinite(b), b, -np.inf)
    ok = np.isfinite(fa).any(1) & np.isfinite(fb).any(1)
    if not ok.any():
        return float("nan")
    return float(np.mean(fa[ok].argmax(1) == fb[ok].argmax(1)))
