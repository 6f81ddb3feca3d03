"""Influence of training examples on test examples, streamed over blocks of runs.

    influence(i -> j) = mean of v_r(j) over runs that trained on train example i
                        - mean of v_r(j) over runs that held i out

with ``v_r(j)`` run ``r``'s value on test example ``j`` (see :mod:`.heldout`). Over the run axis
this is a matrix product: ``A = V^T M`` (``V (R, T)`` test values, ``M (R, N)`` train mask)
gives the "in" sums; the "out" sums are the per-test totals minus ``A``, so one product per
block of runs suffices.

The ``(T, N)`` matrix is never needed in memory: train examples are processed in column blocks
sized to ``max_block_bytes`` (one pass over the runs per column block), and of each block only
the top influencers of every test example and the pairs above the thresholds are kept. The
dense matrix is written (to an ``.npy`` file or to the store) only when asked.

Split halves: the products of the two halves of the runs (the halves of the memorization's
split-half stability) are accumulated apart, the sums over all runs being their sum, so no
multiplication is added; each half is finished beside the whole, with its own pairs (every test
example, but only the train examples whose memorization in that half can form a pair) and its
own top-k (on a sample of the test examples that vary), whose agreement is
:class:`PairStability`. This doubles the accumulators per column (so the passes for a given
memory) and adds about a third to the finishing step; ``split_half=False`` skips it.

Precision: masks and 0/1 correctness are exact in small integer and floating-point formats.
The default for 0/1 values is int8 products with int32 accumulation (exact for any number of
runs). The 'bfloat16' option multiplies slices of at most 256 runs, whose integer results
bfloat16 holds exactly, and adds them into float32. bfloat16 products return bfloat16 on CPU,
so a longer product would round counts above 256; the slicing and the additions make that
option slower than int8 here (see docs/benchmarks.md). Non-binary values (``trueprob``,
``margin``) use float32 products, plus a second product of squared values for their standard
errors.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..population import Population
from .heldout import (
    HalfSplitSums,
    HeldoutSource,
    MemorizationResult,
    Stability,
    _json_float,
    column_counts,
    mean_and_variance,
    spearman,
)

EXACT_BF16_RUNS = 256  # integers up to 2^8 are exact in bfloat16
FINISH_TILE_ELEMENTS = 1 << 18  # influence is computed this many entries at a time (1 MiB of float32)
DENSE_ROWS = 1024  # rows of the dense matrix written at a time
PRECISIONS = ("auto", "int8", "bfloat16", "float32")


# ------------------------------------------------------------------------------- the product


class MaskedProduct:
    """Accumulates ``sums (T, W) += values^T @ mask`` over blocks of runs.

    ``values (b, T)``: per-run values on the rows (test examples); ``mask (b, W) bool``: which
    of the ``W`` columns (train examples) each run trained on. With ``squares`` a second
    accumulator holds the products of the squared values (for standard errors of non-binary
    values). ``precision``:

    * 'int8' (0/1 values only): int8 products with int32 accumulation, exact for any number of
      runs below 2^31;
    * 'bfloat16' (0/1 values only): bfloat16 products over slices of at most 256 runs, whose
      integer results bfloat16 holds exactly, added into float32 (exact below 2^24 runs);
    * 'float32': float32 products (any values).

    ``row_tile`` x ``col_tile``: the output tile of one product call (and of the temporary
    buffer it is written to before being added). ``storage``: optional flat tensors (int32 or
    float32 as the precision needs; one per accumulator) to hold the accumulators, so that
    successive column blocks reuse memory that is already mapped.
    """

    def __init__(
        self, rows: int, cols: int, precision: str = "int8", squares: bool = False, row_tile: int = 512, col_tile: int = 2048,
        storage: tuple[torch.Tensor, ...] | None = None,
    ):
        if precision not in ("int8", "bfloat16", "float32"):
            raise ValueError(f"precision must be 'int8', 'bfloat16' or 'float32', got {precision!r}")
        if squares and precision != "float32":
            raise ValueError("sums of squares are for non-binary values, which need precision 'float32'")
        self.precision = precision
        dtype = torch.int32 if precision == "int8" else torch.float32
        if storage is None:
            storage = tuple(torch.empty(rows * cols, dtype=dtype) for _ in range(2 if squares else 1))
        self._acc = storage[0][: rows * cols].view(rows, cols)
        if precision != "int8":  # the int8 path's first block writes the accumulator directly
            self._acc.zero_()
        self.square_sums = storage[1][: rows * cols].view(rows, cols).zero_() if squares else None
        self.row_tile = row_tile
        self.col_tile = col_tile
        self._buffer: torch.Tensor | None = None
        self._empty = True
        self._finished = False

    @staticmethod
    def storage_for(rows: int, cols: int, precision: str, squares: bool = False) -> tuple[torch.Tensor, ...]:
        """Flat tensors for the accumulators of products of up to ``rows x cols``."""
        dtype = torch.int32 if precision == "int8" else torch.float32
        return tuple(torch.empty(rows * cols, dtype=dtype) for _ in range(2 if squares else 1))

    @property
    def raw(self) -> torch.Tensor:
        """``(T, W)``: the accumulated sums as accumulated (int32 for 'int8', else float32)."""
        if self._empty and self.precision == "int8":
            self._acc.zero_()  # no block was added
            self._empty = False
        return self._acc

    @property
    def sums(self) -> torch.Tensor:
        """``(T, W) float32``: the accumulated sums (no more blocks can be added after reading)."""
        self.raw
        if self.precision == "int8" and not self._finished:
            # convert in place, one row tile at a time, into the same memory viewed as float32
            as_float = self._acc.view(torch.float32)
            for r0 in range(0, self._acc.shape[0], self.row_tile):
                as_float[r0 : r0 + self.row_tile] = self._acc[r0 : r0 + self.row_tile].to(torch.float32)
            self._acc = as_float
        self._finished = True
        return self._acc

    def add(self, values: np.ndarray, mask: np.ndarray) -> None:
        if self._finished:
            raise RuntimeError("sums were read already; start a new MaskedProduct")
        if values.shape[0] == 0:
            return
        if self.precision != "float32" and values.dtype != bool:
            raise ValueError(f"{self.precision} products are exact only for 0/1 values; use precision 'float32'")
        if self.precision == "int8":
            self._add_int8(values, mask)
        elif self.precision == "bfloat16":
            self._add_bf16(values, mask)
        else:
            v = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
            m = torch.from_numpy(np.ascontiguousarray(mask)).to(torch.float32)
            self._acc.addmm_(v.T, m)
            if self.square_sums is not None:
                self.square_sums.addmm_(v.square().T, m)

    def _add_int8(self, values: np.ndarray, mask: np.ndarray) -> None:
        # numpy bools are bytes holding 0 or 1: viewed as int8 without a copy
        vt = torch.from_numpy(np.ascontiguousarray(values.T).view(np.int8))  # (T, b)
        m = torch.from_numpy(np.ascontiguousarray(mask).view(np.int8))  # (b, W)
        rows, cols = self._acc.shape
        rt, ct = min(self.row_tile, rows), min(self.col_tile, cols)
        if self._empty:  # the first block writes the accumulator directly
            for r0 in range(0, rows, rt):
                torch._int_mm(vt[r0 : r0 + rt], m, out=self._acc[r0 : r0 + rt])
            self._empty = False
            return
        if self._buffer is None or self._buffer.numel() != rt * ct:
            self._buffer = torch.empty(rt * ct, dtype=torch.int32)
        # later blocks: products of cache-sized tiles, each added to the accumulator at once
        for r0 in range(0, rows, rt):
            r1 = min(r0 + rt, rows)
            for c0 in range(0, cols, ct):
                c1 = min(c0 + ct, cols)
                out = self._buffer[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
                torch._int_mm(vt[r0:r1], m[:, c0:c1], out=out)
                self._acc[r0:r1, c0:c1].add_(out)

    def _add_bf16(self, values: np.ndarray, mask: np.ndarray) -> None:
        vt = torch.from_numpy(np.ascontiguousarray(values.T)).to(torch.bfloat16)  # (T, b)
        m = torch.from_numpy(np.ascontiguousarray(mask)).to(torch.bfloat16)  # (b, W)
        b = m.shape[0]
        rows, cols = self._acc.shape
        rt, ct = min(self.row_tile, rows), min(self.col_tile, cols)
        if self._buffer is None or self._buffer.shape != (rt, ct):
            self._buffer = torch.empty(rt, ct, dtype=torch.bfloat16)
            self._wide = torch.empty(rt, ct, dtype=torch.float32)
        # Each output tile stays in cache while the partial products of all 256-run slices of
        # this block are added to it.
        for r0 in range(0, rows, rt):
            r1 = min(r0 + rt, rows)
            for c0 in range(0, cols, ct):
                c1 = min(c0 + ct, cols)
                tile = self._acc[r0:r1, c0:c1]
                out = self._buffer[: r1 - r0, : c1 - c0]
                wide = self._wide[: r1 - r0, : c1 - c0]
                for k0 in range(0, b, EXACT_BF16_RUNS):
                    k1 = min(k0 + EXACT_BF16_RUNS, b)
                    torch.mm(vt[r0:r1, k0:k1], m[k0:k1, c0:c1], out=out)
                    tile.add_(wide.copy_(out))


class HalfProducts:
    """Masked products of the two halves of the runs (``split``), or one product of all runs.

    ``parts``: one :class:`MaskedProduct` per half (``rows x cols``); the sums over all runs are
    the sum of the parts. Keeping the halves apart doubles the accumulators' memory and adds no
    multiplications. ``storage``: from :meth:`storage_for`, reused across column blocks.
    """

    def __init__(self, rows: int, cols: int, precision: str, squares: bool, split: bool, storage: list[tuple[torch.Tensor, ...]]):
        self.parts = [MaskedProduct(rows, cols, precision, squares, storage=s) for s in storage[: 2 if split else 1]]

    @staticmethod
    def storage_for(rows: int, cols: int, precision: str, squares: bool, split: bool) -> list[tuple[torch.Tensor, ...]]:
        return [MaskedProduct.storage_for(rows, cols, precision, squares) for _ in range(2 if split else 1)]

    def add(self, values: np.ndarray, mask: np.ndarray, in_a: np.ndarray) -> None:
        """Add ``values (b, rows)`` and ``mask (b, cols)`` of a block of runs; ``in_a (b,) bool``:
        the runs of the first half."""
        if len(self.parts) == 1 or in_a.all():
            self.parts[0].add(values, mask)
        elif not in_a.any():
            self.parts[1].add(values, mask)
        else:
            self.parts[0].add(values[in_a], mask[in_a])
            self.parts[1].add(values[~in_a], mask[~in_a])


# ------------------------------------------------------------------------------- top-k


class TopK:
    """The ``k`` largest entries of each row seen so far, with an auxiliary value per entry.

    ``value (T, k) float32`` (-inf where fewer than ``k`` candidates), ``index (T, k) int64``
    (-1 there), ``aux (T, k, a) float32``.
    """

    def __init__(self, rows: int, k: int, aux: int):
        self.k = k
        self.value = torch.full((rows, k), float("-inf"))
        self.index = torch.full((rows, k), -1, dtype=torch.int64)
        self.aux = torch.zeros(rows, k, aux)

    def merge(self, rows, value: torch.Tensor, index: torch.Tensor, aux: torch.Tensor) -> None:
        """Merge candidates ``value (t, c)``, ``index (t, c)``, ``aux (t, c, a)`` into ``rows``
        (a slice or ``(t,)`` row indices)."""
        v = torch.cat([self.value[rows], value], 1)
        i = torch.cat([self.index[rows], index], 1)
        a = torch.cat([self.aux[rows], aux], 1)
        # ties broken towards the lower train index, so results do not depend on block sizes
        order = torch.argsort(i.masked_fill(i < 0, torch.iinfo(torch.int64).max), dim=1, stable=True)
        v, i, a = v.gather(1, order), i.gather(1, order), a.gather(1, order.unsqueeze(-1).expand_as(a))
        best = torch.sort(v, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.value[rows] = v.gather(1, best)
        self.index[rows] = i.gather(1, best)
        self.aux[rows] = a.gather(1, best.unsqueeze(-1).expand(-1, -1, a.shape[-1]))


def topk_by_value_then_index(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of each row of ``x (t, W)``, ties going to the lower column, so
    that the choice does not depend on how columns are split into blocks. Returns values and
    column indices ``(t, k)``."""
    if k >= x.shape[1]:
        return x.clone(), torch.arange(x.shape[1]).expand(x.shape[0], -1)
    # one more than asked: a tie at the boundary shows as equal k-th and (k+1)-th values
    value, where = torch.topk(x, k + 1, dim=1, sorted=True)
    tied_rows = torch.nonzero(value[:, k - 1] == value[:, k]).view(-1)
    value, where = value[:, :k].clone(), where[:, :k].clone()
    if tied_rows.numel():
        # everything above the k-th value, then the lowest columns at it: rank by a key that
        # is +inf above, minus the column at the k-th value, -inf below
        sub = x[tied_rows]
        bound = value[tied_rows, k - 1 :]
        key = torch.where(sub == bound, -torch.arange(x.shape[1], dtype=x.dtype), float("-inf"))
        key.masked_fill_(sub > bound, float("inf"))
        cols = torch.topk(key, k, dim=1).indices
        where[tied_rows] = cols
        value[tied_rows] = sub.gather(1, cols)
    return value, where


# ------------------------------------------------------------------------------- result


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
            "pair_agreement": _json_float(self.agreement),
            "a_found_by_b": _json_float(self.both / a) if a else None,
            "b_found_by_a": _json_float(self.both / b) if b else None,
            "pairs_truncated": self.truncated,
            "k": self.k,
            "topk_spearman": _json_float(self.topk_spearman),
            "topk_entries": self.topk_entries,
            "topk_test_examples": int(self.topk_rows.size),
        }


PAIR_COLUMNS = ("train_index", "test_index", "infl", "mem", "label", "se", "n_in", "n_out")
LABEL_COLUMNS = ("train_label", "test_label")


@dataclass
class InfluenceResult:
    """Top influencers of every test example and the high-influence pairs.

    ``top_index (T, k)`` train indices (-1: fewer than ``k`` estimable), ``top_value (T, k)``,
    ``top_se``, ``top_n_in``, ``top_n_out``; ``pairs``: a table with columns train_index,
    test_index, infl, mem, label (the test example's), se, n_in, n_out, and without the label
    condition also train_label and test_label (influence >= ``infl_threshold``, memorization of
    the train example >= ``mem_threshold``, same label unless ``any_label``).
    ``memorization``: the memorization of the train examples, from the same runs.
    ``stability``: split-half Spearman of the influence estimates on a sample of test rows, and
    ``top1_agreement`` on those rows; ``pair_stability``: split-half agreement of the pairs and
    the top influencers (both None when computed without split halves).
    ``varying (T,) bool``: test examples whose value differs between runs (the others have
    influence 0 on every training example).
    """

    value: str
    runs: int
    top_index: np.ndarray
    top_value: np.ndarray
    top_se: np.ndarray
    top_n_in: np.ndarray
    top_n_out: np.ndarray
    pairs: pd.DataFrame
    memorization: MemorizationResult
    stability: Stability | None
    top1_agreement: float | None
    test_label: np.ndarray
    varying: np.ndarray | None = None
    pair_stability: PairStability | None = None
    params: dict = field(default_factory=dict)
    dense: str | None = None

    def top_table(self) -> pd.DataFrame:
        """One row per (test example, rank): test_index, rank, train_index, infl, se, n_in, n_out."""
        T, k = self.top_index.shape
        keep = self.top_index.reshape(-1) >= 0
        return pd.DataFrame(
            {
                "test_index": np.repeat(np.arange(T), k)[keep],
                "rank": np.tile(np.arange(1, k + 1), T)[keep],
                "train_index": self.top_index.reshape(-1)[keep],
                "infl": self.top_value.reshape(-1)[keep],
                "se": self.top_se.reshape(-1)[keep],
                "n_in": self.top_n_in.reshape(-1)[keep].astype(np.int64),
                "n_out": self.top_n_out.reshape(-1)[keep].astype(np.int64),
            }
        )

    def summary(self, top: int = 10) -> dict:
        best = self.top_value[:, 0] if self.top_value.shape[1] else np.zeros(0)
        finite = np.isfinite(best)
        if self.varying is not None:
            finite &= self.varying
        pairs = self.pairs.sort_values("infl", ascending=False).head(top)
        integers = {"train_index", "test_index", "label", "n_in", "n_out", *LABEL_COLUMNS}
        return {
            "statistic": "influence",
            "value": self.value,
            "runs": self.runs,
            "test_examples": int(self.top_index.shape[0]),
            "train_examples": int(self.memorization.estimate.size),
            "never_held_out": self.memorization.never_held_out,
            "never_included": self.memorization.never_included,
            "k": int(self.top_index.shape[1]),
            "max_influence_median": _json_float(float(np.median(best[finite]))) if finite.any() else None,
            "varying_test_examples": int(self.varying.sum()) if self.varying is not None else None,
            "pairs": int(len(self.pairs)),
            "pairs_found": int(self.params.get("pairs_found", len(self.pairs))),
            "pairs_truncated": bool(self.params.get("pairs_truncated", False)),
            "max_pairs": self.params.get("max_pairs"),
            "thresholds": {k: self.params.get(k) for k in ("infl_threshold", "mem_threshold", "same_label")},
            "stability": {**self.stability.to_dict(), "top1_agreement": _json_float(self.top1_agreement)} if self.stability is not None else None,
            "pair_stability": self.pair_stability.to_dict() if self.pair_stability is not None else None,
            "memorization_stability": self.memorization.stability.to_dict(),
            "dense": self.dense,
            "top_pairs": [
                {k: (int(v) if k in integers else _json_float(float(v))) for k, v in row.items()}
                for row in pairs.to_dict("records")
            ],
        }

    def save(self, pop: Population, name: str = "influence") -> None:
        """Write the top-k arrays and the pairs to ``analysis/<name>`` (keeping a dense matrix
        written there by :func:`influence`)."""
        params = {**self.params, "value": self.value, "runs": self.runs}
        path = f"analysis/{name}"
        if self.dense == "store" and path in pop.store.group:
            group = pop.store.group[path]
            group.attrs["params"] = params
        else:
            group = pop.store.analysis_group(name, params)
        for key in ("top_index", "top_value", "top_se", "top_n_in", "top_n_out"):
            group.create_array(key, data=np.asarray(getattr(self, key)), overwrite=True)
        for col in self.pairs.columns:
            group.create_array(f"pairs/{col}", data=self.pairs[col].to_numpy(), overwrite=True)
        group.attrs["summary"] = self.summary()


# ------------------------------------------------------------------------------- estimator


def influence(
    pop: Population,
    value: str = "correct",
    runs="ok",
    top: int = 10,
    infl_threshold: float = 0.15,
    mem_threshold: float = 0.25,
    same_label: bool = True,
    block_size: int = 2048,
    max_block_bytes: int = 1 << 30,
    precision: str = "auto",
    dense: str | os.PathLike | None = None,
    stability_rows: int = 256,
    seed: int = 0,
    max_pairs: int = 5_000_000,
    split_half: bool = True,
    topk_stability_rows: int = 2000,
) -> InfluenceResult:
    """Influence estimates of ``pop`` (see the module docstring); memory independent of the
    number of runs.

    ``top``: influencers kept per test example. Pairs: influence >= ``infl_threshold``,
    memorization >= ``mem_threshold`` (None: any), and (``same_label``) the train example's
    label equals the test example's. ``block_size``: runs per matrix product (the inner
    dimension; larger is faster; a block holds ``block_size x N`` mask and value bytes).
    ``max_block_bytes``: memory for the accumulators of one column block of train examples
    (more columns per pass means fewer passes over the runs). ``precision``: 'auto' (int8 for
    0/1 values, float32 otherwise), 'int8', 'bfloat16' or 'float32'. ``dense``: None, 'store'
    (``analysis/influence/matrix (T, N) float32``) or a path ending in ``.npy``.
    ``stability_rows``: test rows sampled (with ``seed``) for the split-half Spearman (those
    whose value varies between runs are compared). ``max_pairs``: pairs kept at most (the
    strongest; at least 1). ``split_half``: also compute the pairs and top influencers of each
    half of the runs (:class:`PairStability`; twice the accumulators, no extra products).
    ``topk_stability_rows``: test examples (sampled with ``seed`` among those whose value
    varies; all of them when fewer) whose top influencers each half keeps for that comparison.
    """
    source = HeldoutSource(pop, value, runs)
    writer = None
    if dense is not None:
        T, N = source.n_test, source.n_train
        writer = _open_dense(pop, dense, T, N)
    result = influence_from_source(
        source, top, infl_threshold, mem_threshold, same_label, block_size, max_block_bytes, precision, writer, stability_rows, seed,
        max_pairs=max_pairs, split_half=split_half, topk_stability_rows=topk_stability_rows,
    )
    if isinstance(writer, np.memmap):
        writer.flush()
    result.dense = None if dense is None else str(dense)
    return result


def influence_from_source(
    source,
    top: int = 10,
    infl_threshold: float = 0.15,
    mem_threshold: float | None = 0.25,
    same_label: bool = True,
    block_size: int = 2048,
    max_block_bytes: int = 1 << 30,
    precision: str = "auto",
    dense_out=None,
    stability_rows: int = 256,
    seed: int = 0,
    profile: dict | None = None,
    max_pairs: int = 5_000_000,
    split_half: bool = True,
    topk_stability_rows: int = 2000,
) -> InfluenceResult:
    """:func:`influence` from any source of held-out blocks (see
    :func:`~manyruns.analysis.heldout.memorization_from_source`; the source also needs
    ``n_test`` and ``y_test``). ``dense_out``: None or a ``(T, N)`` array-like to write the
    influence matrix into (NaN where undefined). ``profile``: a dict to which the seconds spent
    reading blocks ('read'), on membership sums ('sums'), in the matrix products ('product') and
    turning sums into influence, top-k and pairs ('finish') are added. ``max_pairs``: at most this
    many pairs are kept (the strongest; ``params['pairs_found']`` counts them all), which bounds
    memory when few runs make many pairs pass the thresholds by chance. ``split_half``: keep the
    products of the two halves of the runs apart and finish each half too (the split-half
    stability and :class:`PairStability`); this doubles the accumulator memory per column (so
    the passes for a given ``max_block_bytes``) and adds about a third to the finishing step,
    with no extra multiplications. ``topk_stability_rows``: see :func:`influence`."""
    clock = _Clock(profile)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    if max_pairs < 1:
        raise ValueError(f"max_pairs (the most pairs kept) must be at least 1, got {max_pairs}")
    if topk_stability_rows < 1:
        raise ValueError(f"topk_stability_rows (test examples whose top influencers the halves compare) must be at least 1, got {topk_stability_rows}")
    source.check_held_out()
    binary = source.binary
    if precision == "auto":
        precision = "int8" if binary else "float32"
    if precision != "float32" and not binary:
        raise ValueError(f"value {source.value!r} is not 0/1; {precision} products would round it: use precision 'float32'")
    source.require("test")
    source.require("train")
    N, T = source.n_train, source.n_test
    R = int(source.runs.size)

    halves = HalfSplitSums(source)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(T, size=min(stability_rows, T), replace=False)) if split_half else np.zeros(0, dtype=np.int64)
    squares = not binary
    per_column = 4 * T * (2 if squares else 1) * (2 if split_half else 1)
    width = int(max(1, min(N, max_block_bytes // per_column)))
    params = {
        "top": top, "infl_threshold": infl_threshold, "mem_threshold": mem_threshold, "same_label": same_label,
        "block_size": block_size, "precision": precision, "column_width": width, "passes": -(-N // width),
        "stability_rows": int(sample.size), "seed": seed, "max_pairs": max_pairs, "split_half": split_half,
    }
    y_test = source.y_test

    # per-test totals over all runs and over the first half (from the first pass)
    test_sum = np.zeros(T)
    test_sq = np.zeros(T)
    test_sum_a = np.zeros(T)
    runs_a = int(np.sum(halves.half == 0))
    mem: MemorizationResult | None = None
    half_pairs: SplitHalfPairs | None = None
    topk = TopK(T, min(top, N), 2)  # aux: in-sums and in-sums of squares
    pairs = PairCollector(max_pairs)
    est_a = np.full((sample.size, N), np.nan, dtype=np.float32)
    est_b = np.full((sample.size, N), np.nan, dtype=np.float32)
    all_rows = np.arange(T)
    varying = np.ones(T, dtype=bool)  # test examples whose value differs between runs (known after the first pass)
    storage = HalfProducts.storage_for(T, width, precision, squares, split_half)

    for c0 in range(0, N, width):
        c1 = min(c0 + width, N)
        first_pass = c0 == 0
        # Later passes multiply only the rows that vary: a test example every run gets right (or
        # every run gets wrong) has influence exactly 0 on every training example.
        rows = all_rows if first_pass else np.flatnonzero(varying)
        products = HalfProducts(rows.size, c1 - c0, precision, squares, split_half, storage)
        for block in clock.iterate("read", source.blocks(block_size, train=first_pass, test=True)):
            clock.start()
            in_a = halves.in_first_half(block.runs)
            if first_pass:
                halves.add(block)
                if binary:
                    test_sum += column_counts(block.test)
                    test_sum_a += column_counts(block.test[in_a])
                else:
                    tv = block.test.astype(np.float64)
                    test_sum += tv.sum(0)
                    test_sq += np.square(tv).sum(0)
                    test_sum_a += tv[in_a].sum(0)
            clock.stop("sums")
            products.add(block.test if rows.size == T else block.test[:, rows], block.mask[:, c0:c1], in_a)
            clock.stop("product")
        if first_pass:
            if binary:
                test_sq = test_sum
                if dense_out is None and infl_threshold > 0:  # constant rows cannot reach the threshold
                    varying = (test_sum > 0) & (test_sum < R)
            mem = halves.result(source, {"block_size": block_size})
            if split_half:
                compared = np.flatnonzero((test_sum > 0) & (test_sum < R) if binary else varying)
                if compared.size > topk_stability_rows:
                    compared = np.sort(np.random.default_rng([seed, 1]).choice(compared, topk_stability_rows, replace=False))
                params["topk_stability_rows"] = int(compared.size)
                half_pairs = SplitHalfPairs(
                    N, topk.k, (runs_a, R - runs_a), halves.half_estimates(), mem.label, y_test, (test_sum_a, test_sum - test_sum_a),
                    infl_threshold, mem_threshold, same_label, max_pairs, compared,
                )
        # the membership counts of these columns, complete since the first pass
        n_in = halves.total.n_in[c0:c1]
        n_in_a = halves.first.n_in[c0:c1]
        n_out = R - n_in
        clock.start()
        if split_half:
            _sampled_half_estimates(
                products, rows, sample, varying, (n_in_a, n_in - n_in_a), (test_sum_a, test_sum - test_sum_a), (runs_a, R - runs_a),
                (est_a[:, c0:c1], est_b[:, c0:c1]),
            )
            half_pairs.start_columns(c0, (n_in_a, n_in - n_in_a))
        _finish_columns(
            products, rows, varying, n_in, n_out, test_sum, R, c0, topk, pairs, mem.estimate[c0:c1], mem.label[c0:c1], y_test,
            infl_threshold, mem_threshold, same_label, dense_out, half_pairs,
        )
        del products
        clock.stop("finish")
    params["varying_test_rows"] = int(varying.sum())

    # standard errors of the kept entries, from their sums
    top_value = topk.value.numpy().copy()
    top_index = topk.index.numpy().copy()
    valid = np.isfinite(top_value) & (top_index >= 0)
    top_index[~valid] = -1
    top_value[~valid] = np.nan
    aux = topk.aux.numpy().astype(np.float64)
    tn_in = np.where(valid, mem.n_in[np.where(valid, top_index, 0)], 0.0)
    tn_out = np.where(valid, R - tn_in, 0.0)
    top_se = _influence_se(aux[..., 0], aux[..., 1], tn_in, test_sum[:, None], test_sq[:, None], tn_out, binary)
    top_se[~valid] = np.nan

    params["pairs_found"] = pairs.found
    params["pairs_truncated"] = pairs.found > len(pairs)
    pairs = _pairs_table(pairs.finish(), mem, y_test, test_sum, test_sq, R, binary, same_label)
    stability = agreement = pair_stability = None
    if split_half:
        rho, count = spearman(*_subsample_finite(est_a, est_b, 200_000, rng))
        stability = Stability(rho, (runs_a, R - runs_a), count)
        agreement = _top1_agreement(est_a, est_b)
        pair_stability = half_pairs.result()
    return InfluenceResult(
        value=source.value,
        runs=R,
        top_index=top_index,
        top_value=top_value,
        top_se=top_se,
        top_n_in=tn_in,
        top_n_out=tn_out,
        pairs=pairs,
        memorization=mem,
        stability=stability,
        top1_agreement=agreement,
        test_label=y_test,
        varying=varying,
        pair_stability=pair_stability,
        params=params,
    )


class _Clock:
    """Adds elapsed seconds to the entries of a profile dict (does nothing without one)."""

    def __init__(self, profile: dict | None):
        self.profile = profile
        self.t = time.perf_counter()

    def start(self) -> None:
        self.t = time.perf_counter()

    def stop(self, key: str) -> None:
        if self.profile is not None:
            now = time.perf_counter()
            self.profile[key] = self.profile.get(key, 0.0) + now - self.t
            self.t = now

    def iterate(self, key: str, iterable):
        iterator = iter(iterable)
        while True:
            self.start()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self.stop(key)
            yield item


def _influence_from_sums(s_in: torch.Tensor, n_in: np.ndarray, total: np.ndarray, runs: int) -> np.ndarray:
    """``(t, W) float32`` influence from in-sums ``(t, W) float32``, in-counts ``(W,)`` and row
    totals ``(t, 1)``; NaN where a column has no run in or out."""
    n_out = runs - n_in
    invalid = torch.from_numpy((n_in == 0) | (n_out == 0))
    n_in_t = torch.from_numpy(np.where(n_in > 0, n_in, 1.0).astype(np.float32))
    n_out_t = torch.from_numpy(np.where(n_out > 0, n_out, 1.0).astype(np.float32))
    est = s_in / n_in_t - (torch.from_numpy(np.asarray(total, dtype=np.float32)) - s_in) / n_out_t
    return est.masked_fill_(invalid, float("nan")).numpy()


def _sampled_half_estimates(products: HalfProducts, rows, sample, varying, n_in, totals, runs, out) -> None:
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


def _influence_se(s_in, q_in, n_in, s_all, q_all, n_out, binary: bool) -> np.ndarray:
    s_out = s_all - s_in
    q_out = q_all - q_in
    if binary:
        q_in, q_out = s_in, s_out
    _, var_in = mean_and_variance(s_in, q_in, n_in)
    _, var_out = mean_and_variance(s_out, q_out, n_out)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(var_in / n_in + var_out / n_out)


class PairCollector:
    """Pairs above the thresholds, in parts; beyond ``limit`` only the strongest are kept."""

    def __init__(self, limit: int):
        self.limit = limit
        self.parts: list[dict[str, np.ndarray]] = []
        self.kept = 0
        self.found = 0

    def add(self, part: dict[str, np.ndarray]) -> None:
        size = part["infl"].size
        self.parts.append(part)
        self.kept += size
        self.found += size
        if self.kept > 2 * self.limit:
            self._shrink()

    def _shrink(self) -> None:
        joined = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        keep = np.argpartition(-joined["infl"], self.limit - 1)[: self.limit]
        self.parts = [{k: v[keep] for k, v in joined.items()}]
        self.kept = self.limit

    def finish(self) -> list[dict[str, np.ndarray]]:
        if self.kept > self.limit:
            self._shrink()
        return self.parts

    def __len__(self) -> int:
        return min(self.kept, self.limit)


@dataclass
class _Columns:
    """One column block's counts as the finishing step uses them: ``in_counts``, ``out_counts``
    ``(W,) float32`` (1 where undefined), ``invalid (W,) bool`` (no run in or none out),
    ``candidates``: positions of the columns that may form pairs, and their ``labels``."""

    in_counts: torch.Tensor
    out_counts: torch.Tensor
    invalid: torch.Tensor
    any_invalid: bool
    candidates: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, n_in: np.ndarray, n_out: np.ndarray, mem: np.ndarray, labels: np.ndarray, mem_threshold: float | None) -> "_Columns":
        """From counts ``n_in``, ``n_out``, memorization and train labels ``(W,)``."""
        valid = (n_in > 0) & (n_out > 0)
        keep = valid if mem_threshold is None else valid & (mem >= mem_threshold)
        candidates = np.flatnonzero(keep)
        return cls(
            torch.from_numpy(np.where(valid, n_in, 1).astype(np.float32)),
            torch.from_numpy(np.where(valid, n_out, 1).astype(np.float32)),
            torch.from_numpy(~valid),
            not valid.all(),
            torch.from_numpy(candidates),
            torch.from_numpy(labels[candidates].astype(np.int64)),
        )

    def candidates_only(self) -> "_Columns":
        """These counts restricted to the candidate columns (all valid, all candidates)."""
        C = self.candidates.numel()
        return _Columns(
            self.in_counts[self.candidates], self.out_counts[self.candidates], torch.zeros(C, dtype=torch.bool), False,
            torch.arange(C), self.labels,
        )


def _influence_tile(sums: torch.Tensor, totals: torch.Tensor, cols: _Columns, out: torch.Tensor | None = None, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """``out (t, W) float32`` = ``sums / n_in - (totals - sums) / n_out``, -inf in undefined
    columns; ``sums (t, W)`` (int32 or float32), ``totals (t, 1)``, ``scratch (t, W) float32``
    (both allocated when not given).

    Divisions and differences are rounded correctly whatever the vector width, so every entry
    is the same whichever column block and tile it falls in."""
    if out is None:
        out = torch.empty(sums.shape)
    if scratch is None:
        scratch = torch.empty(sums.shape)
    torch.div(sums, cols.in_counts, out=out)
    torch.sub(totals, sums, out=scratch)
    out.sub_(scratch.div_(cols.out_counts))
    if cols.any_invalid:
        out.masked_fill_(cols.invalid, float("-inf"))
    return out


def _pairs_above(infl: torch.Tensor, test_ids: torch.Tensor, cols: _Columns, y_test: torch.Tensor, threshold: float, same_label: bool):
    """The entries of ``infl (t, W)`` in candidate columns at or above ``threshold`` (and, with
    ``same_label``, whose train label is the test example's): ``(sub (t, C), rows, positions
    in the candidates)``."""
    sub = infl.index_select(1, cols.candidates)
    return (sub, *_hits_above(sub, test_ids, cols.labels, y_test, threshold, same_label))


def _hits_above(sub: torch.Tensor, test_ids: torch.Tensor, labels: torch.Tensor, y_test: torch.Tensor, threshold: float, same_label: bool):
    """``(rows, columns)`` of the entries of ``sub (t, C)`` at or above ``threshold`` (and, with
    ``same_label``, whose column's train label ``labels (C,)`` is the test example's)."""
    hit_rows, hit_cols = torch.nonzero(sub >= threshold, as_tuple=True)
    if same_label and hit_rows.numel():
        same = labels[hit_cols] == y_test[test_ids[hit_rows]]
        hit_rows, hit_cols = hit_rows[same], hit_cols[same]
    return hit_rows, hit_cols


class SplitHalfPairs:
    """The top ``k`` influencers and the pairs above the thresholds from each half of the runs,
    accumulated tile by tile beside the full estimates (see :class:`PairStability`).

    ``runs``: runs per half; ``memorization``: each half's ``(N,)`` memorization; ``labels (N,)``
    the train labels and ``y_test (T,)``; ``totals``: each half's ``(T,)`` per-test sums of
    values; ``topk_rows``: the sorted test examples whose top-k the halves compare. Each half's
    top-k keeps the other half's influence at the same entry.

    Pairs need a half's influence only in its candidate columns (memorization at the threshold)
    and the top-k only on ``topk_rows``, so a tile costs a fraction of the full one's finishing.
    """

    def __init__(self, N, k, runs, memorization, labels, y_test, totals, infl_threshold, mem_threshold, same_label, max_pairs, topk_rows):
        T = y_test.size
        self.N = N
        self.k = k
        self.runs = runs
        self.memorization = memorization
        self.labels = labels
        self.y_test = torch.from_numpy(np.asarray(y_test, dtype=np.int64))
        self.totals = [torch.from_numpy(np.asarray(t, dtype=np.float32)) for t in totals]
        self.infl_threshold = infl_threshold
        self.mem_threshold = mem_threshold
        self.same_label = same_label
        self.topk = [TopK(T, k, 1), TopK(T, k, 1)]
        self.pairs = [PairCollector(max_pairs), PairCollector(max_pairs)]
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
            value, where = topk_by_value_then_index(infl[h], k)
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


def _finish_columns(
    products, rows, varying, n_in, n_out, test_sum, R, c0, topk, pairs, mem, labels_train, y_test,
    infl_threshold, mem_threshold, same_label, dense_out, half_pairs=None,
):
    """Turn one column block's sums into influence, a few rows at a time (so that the
    temporaries stay in cache): merge the top-k, collect the pairs, write the dense matrix, and
    finish each half (``half_pairs``, when the products keep the halves apart).

    ``rows``: the test examples of the products' rows. Test examples that do not vary
    (``~varying``; all vary when the dense matrix is written) have influence 0 wherever it is
    defined and go to the top-k directly.
    """
    W = n_in.size
    T = y_test.size
    cols = _Columns.of(n_in, n_out, mem, labels_train, mem_threshold)
    column_ids = torch.arange(c0, c0 + W)
    k = min(topk.k, W)

    constant = np.flatnonzero(~varying)
    first_valid = torch.from_numpy(np.flatnonzero(~cols.invalid.numpy())[:k])
    if constant.size and first_valid.numel():
        kk = first_valid.numel()
        counts = torch.from_numpy(n_in.astype(np.float32))[first_valid]
        for r0 in range(0, constant.size, 4096):
            ids = constant[r0 : r0 + 4096]
            all_right = torch.from_numpy((test_sum[ids] == R).astype(np.float32))[:, None]
            s_in = all_right * counts[None, :]
            topk.merge(torch.from_numpy(ids), torch.zeros(ids.size, kk), column_ids[first_valid].expand(ids.size, -1), torch.stack([s_in, s_in], -1))

    totals = torch.from_numpy(test_sum.astype(np.float32))
    y = torch.from_numpy(np.asarray(y_test, dtype=np.int64))
    work = np.flatnonzero(varying[rows])  # positions in the product of the rows to turn into influence
    whole = work.size == T  # every row, in order (always so when writing the dense matrix)
    rt = max(1, min(max(work.size, 1), FINISH_TILE_ELEMENTS // max(W, 1)))
    group = max(rt, DENSE_ROWS // rt * rt) if dense_out is not None else max(work.size, 1)
    staging = torch.empty(min(group, max(work.size, 1)), W) if dense_out is not None else torch.empty(rt, W)
    other = torch.empty(rt, W)
    sums_parts = [part.raw for part in products.parts]  # int32 or float32: the arithmetic below promotes to float32
    squares_parts = [part.square_sums for part in products.parts] if products.parts[0].square_sums is not None else None
    for g0 in range(0, work.size, group):
        g1 = min(g0 + group, work.size)
        for p0 in range(g0, g1, rt):
            p1 = min(p0 + rt, g1)
            t = p1 - p0
            if whole:
                test_ids = torch.arange(p0, p1)
                part_sums = [x[p0:p1] for x in sums_parts]
                part_squares = [x[p0:p1] for x in squares_parts or ()]
            else:
                positions = torch.from_numpy(work[p0:p1])
                test_ids = torch.from_numpy(rows[work[p0:p1]])
                part_sums = [x.index_select(0, positions) for x in sums_parts]
                part_squares = [x.index_select(0, positions) for x in squares_parts or ()]
            sums = _added(part_sums)
            squares = _added(part_squares) if part_squares else sums
            infl = staging[p0 - g0 : p1 - g0] if dense_out is not None else staging[:t]
            _influence_tile(sums, totals[test_ids, None], cols, infl, other[:t])
            value, where = topk_by_value_then_index(infl, k)
            aux = torch.stack([sums.gather(1, where).float(), squares.gather(1, where).float()], -1)
            topk.merge(test_ids, value, column_ids[where], aux)
            if cols.candidates.numel():
                sub, hit_rows, hit_cols = _pairs_above(infl, test_ids, cols, y, infl_threshold, same_label)
                if hit_rows.numel():
                    where_cols = cols.candidates[hit_cols]
                    pairs.add(
                        {
                            "test_index": test_ids[hit_rows].numpy(),
                            "train_index": (where_cols + c0).numpy(),
                            "infl": sub[hit_rows, hit_cols].numpy(),
                            "s_in": sums[hit_rows, where_cols].float().numpy(),
                            "q_in": squares[hit_rows, where_cols].float().numpy(),
                        }
                    )
            if half_pairs is not None:
                half_pairs.add_tile(test_ids, *part_sums)
        if dense_out is not None:
            block = staging[: g1 - g0]
            if cols.any_invalid:
                block.masked_fill_(cols.invalid, float("nan"))
            dense_out[g0:g1, c0 : c0 + W] = block.numpy()


def _added(parts: list[torch.Tensor]) -> torch.Tensor:
    """The sum of the halves' tiles (the one tile when the halves are not kept apart)."""
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def _pairs_table(parts, mem: MemorizationResult, y_test, test_sum, test_sq, R: int, binary: bool, same_label: bool = True) -> pd.DataFrame:
    cols = PAIR_COLUMNS + (() if same_label else LABEL_COLUMNS)
    if not parts:
        return pd.DataFrame({c: np.zeros(0, dtype=np.float64 if c in ("infl", "mem", "se") else np.int64) for c in cols})
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    train, test = joined["train_index"].astype(np.int64), joined["test_index"].astype(np.int64)
    n_in = mem.n_in[train]
    n_out = R - n_in
    se = _influence_se(joined["s_in"].astype(np.float64), joined["q_in"].astype(np.float64), n_in, test_sum[test], test_sq[test], n_out, binary)
    table = pd.DataFrame(
        {
            "train_index": train,
            "test_index": test,
            "infl": joined["infl"].astype(np.float64),
            "mem": mem.estimate[train],
            "label": y_test[test].astype(np.int64),
            "se": se,
            "n_in": n_in.astype(np.int64),
            "n_out": n_out.astype(np.int64),
        }
    )
    if not same_label:
        table["train_label"] = mem.label[train].astype(np.int64)
        table["test_label"] = y_test[test].astype(np.int64)
    return table.sort_values(["test_index", "infl", "train_index"], ascending=[True, False, True], kind="stable").reset_index(drop=True)


def _subsample_finite(a: np.ndarray, b: np.ndarray, limit: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` entries finite in both ``a`` and ``b`` (a random sample beyond that)."""
    ok = np.flatnonzero(np.isfinite(a).ravel() & np.isfinite(b).ravel())
    if ok.size > limit:
        ok = np.sort(rng.choice(ok, size=limit, replace=False))
    return a.ravel()[ok], b.ravel()[ok]


def _top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of sampled test rows whose most influential train example is the same in both halves."""
    if a.size == 0:
        return float("nan")
    fa = np.where(np.isfinite(a), a, -np.inf)
    fb = np.where(np.isfinite(b), b, -np.inf)
    ok = np.isfinite(fa).any(1) & np.isfinite(fb).any(1)
    if not ok.any():
        return float("nan")
    return float(np.mean(fa[ok].argmax(1) == fb[ok].argmax(1)))


def _open_dense(pop: Population, dense, T: int, N: int):
    if str(dense) == "store":
        group = pop.store.analysis_group("influence", {"dense": "store"})
        return group.create_array("matrix", shape=(T, N), chunks=(min(T, 1024), min(N, 2048)), dtype="float32", fill_value=np.nan)
    path = Path(dense)
    if path.suffix != ".npy":
        raise ValueError(f"dense must be 'store' or a path ending in .npy, got {str(dense)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(T, N))
