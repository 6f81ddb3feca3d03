"""Influence of training examples on test examples, streamed over blocks of runs.

    influence(i -> j) = mean of v_r(j) over runs that trained on train example i
                        - mean of v_r(j) over runs that held i out

with ``v_r(j)`` run ``r``'s value on test example ``j`` (see :mod:`.values`). Over the run axis
this is a matrix product: ``A = V^T M`` (``V (R, T)`` test values, ``M (R, N)`` train mask)
gives the "in" sums; the "out" sums are the per-test totals minus ``A``, so one product per
block of runs suffices (:mod:`.influence_products`).

The ``(T, N)`` matrix is never needed in memory: train examples are processed in column blocks
sized to ``memory_gib`` (one pass over the runs per column block), and of each block only the
top influencers of every test example and the pairs above the thresholds are kept
(:mod:`.influence_finish`). The first pass also accumulates the memorization of the same runs,
which the pair condition needs. The dense matrix is written (to an ``.npy`` file, or to the
store when the result is saved) only when asked.

Split halves (:mod:`.influence_halves`): the products of the two halves of the runs are kept
apart, so the pairs and top influencers of each half come at no extra multiplication; this
doubles the accumulator memory per column and adds about a third to the finishing step
(``split_half=False`` skips it).
"""

from __future__ import annotations

import os
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import OptionError, check_choice, check_number
from ...population import Population
from ...streaming import TopK, column_counts, json_float
from ..contract import Options, Result, options_of
from .influence_finish import LABEL_COLUMNS, Finisher, PairCollector, influence_se, pairs_table
from .influence_halves import PairStability, SplitHalfPairs, sampled_half_estimates, subsample_finite, top1_agreement
from .influence_products import HalfProducts, exact_binary_precision
from .memorization import MembershipHalves, MemorizationOptions, MemorizationResult
from .source import HeldoutSource
from .stability import Stability, spearman
from .values import VALUES

PRECISIONS = ("auto", "int8", "bfloat16", "float32")


@dataclass(frozen=True, kw_only=True)
class InfluenceOptions(Options):
    """How to estimate influence.

    ``top``: influencers kept per test example. Pairs: influence >= ``infl_threshold``,
    memorization >= ``mem_threshold`` (None: any), and (``same_label``) the train example's
    label equals the test example's; at most ``max_pairs`` are kept (the strongest).
    ``block_size``: runs per matrix product (the inner dimension; larger is faster; a block
    holds ``block_size x N`` mask and value bytes). ``memory_gib``: memory for the accumulators
    of one column block of train examples (more columns per pass means fewer passes over the
    runs). ``precision``: 'auto' (for 0/1 values the faster of int8 and float32 on this CPU,
    :func:`~.influence_products.exact_binary_precision`, both exact; float32 otherwise), 'int8',
    'bfloat16' or 'float32'. ``dense``: None, 'store' (``analysis/influence/matrix (T, N) float32``,
    written by ``save``) or a path ending in ``.npy``. ``split_half``: also the pairs and top
    influencers of each half of the runs (:class:`PairStability`). ``stability_rows``: test
    rows sampled (with ``seed``) for the split-half Spearman of the estimates;
    ``topk_stability_rows``: test examples (sampled with ``seed`` among those whose value
    varies) whose top influencers the halves compare.
    """

    value: str = "correct"
    top: int = 10
    infl_threshold: float = 0.15
    mem_threshold: float | None = 0.25
    same_label: bool = True
    block_size: int = 2048
    memory_gib: float = 1.0
    precision: str = "auto"
    dense: str | None = None
    stability_rows: int = 256
    seed: int = 0
    max_pairs: int = 5_000_000
    split_half: bool = True
    topk_stability_rows: int = 2000

    def validate(self) -> None:
        check_choice("value", self.value, VALUES)
        check_number("top", self.top, 1, integer=True)
        check_number("infl_threshold", self.infl_threshold)
        if self.mem_threshold is not None:
            check_number("mem_threshold", self.mem_threshold)
        check_choice("same_label", self.same_label, (True, False))
        check_number("block_size", self.block_size, 1, integer=True)
        check_number("memory_gib", self.memory_gib, 0, low_open=True)
        check_choice("precision", self.precision, PRECISIONS)
        if self.precision in ("int8", "bfloat16") and self.value != "correct":
            raise OptionError("precision", f"{{param}} {self.precision} would round value {self.value!r}, which is not 0/1: use float32 (or auto)")
        if self.dense is not None:
            object.__setattr__(self, "dense", str(self.dense))
            if self.dense != "store" and Path(self.dense).suffix != ".npy":
                raise OptionError("dense", f"must be 'store' or a path ending in .npy, got {self.dense!r}")
        check_number("stability_rows", self.stability_rows, 1, integer=True)
        check_number("seed", self.seed, 0, integer=True)
        check_number("max_pairs", self.max_pairs, 1, integer=True)
        check_choice("split_half", self.split_half, (True, False))
        check_number("topk_stability_rows", self.topk_stability_rows, 1, integer=True)


@dataclass(kw_only=True)
class InfluenceResult(Result):
    """Top influencers of every test example and the high-influence pairs.

    ``top_index (T, k)`` train indices (-1: fewer than ``k`` estimable), ``top_value (T, k)``,
    ``top_se``, ``top_n_in``, ``top_n_out``; ``pairs``: a table with columns train_index,
    test_index, infl, mem, label (the test example's), se, n_in, n_out, and without the label
    condition also train_label and test_label. ``memorization``: the memorization of the train
    examples, from the same runs. ``stability``: split-half Spearman of the influence estimates
    on a sample of test rows, and ``top1_agreement`` on those rows; ``pair_stability``:
    split-half agreement of the pairs and the top influencers (both None without split halves).
    ``varying (T,) bool``: test examples whose value differs between runs (the others have
    influence 0 on every training example). ``details``: what the computation chose and found
    (precision, column_width, passes, pairs_found, pairs_truncated, varying_test_rows, ...).
    """

    name = "influence"
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
    varying: np.ndarray
    pair_stability: PairStability | None = None
    details: dict = field(default_factory=dict)
    dense_path: str | None = None  # the .npy file holding the dense matrix, if one was asked for

    @property
    def value(self) -> str:
        return self.options.value

    def table(self) -> pd.DataFrame:
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

    def _summary(self, top: int = 10) -> dict:
        best = self.top_value[:, 0] if self.top_value.shape[1] else np.zeros(0)
        finite = np.isfinite(best) & self.varying
        pairs = self.pairs.sort_values("infl", ascending=False).head(top)
        integers = {"train_index", "test_index", "label", "n_in", "n_out", *LABEL_COLUMNS}
        o = self.options
        return {
            "value": self.value,
            "test_examples": int(self.top_index.shape[0]),
            "train_examples": int(self.memorization.estimate.size),
            "never_held_out": self.memorization.never_held_out,
            "never_included": self.memorization.never_included,
            "k": int(self.top_index.shape[1]),
            "max_influence_median": json_float(np.median(best[finite])) if finite.any() else None,
            "varying_test_examples": int(self.varying.sum()),
            "pairs": int(len(self.pairs)),
            "pairs_found": int(self.details.get("pairs_found", len(self.pairs))),
            "pairs_truncated": bool(self.details.get("pairs_truncated", False)),
            "max_pairs": o.max_pairs,
            "thresholds": {"infl_threshold": o.infl_threshold, "mem_threshold": o.mem_threshold, "same_label": o.same_label},
            "details": self.details,
            "stability": {**self.stability.to_dict(), "top1_agreement": json_float(self.top1_agreement)} if self.stability is not None else None,
            "pair_stability": self.pair_stability.to_dict() if self.pair_stability is not None else None,
            "memorization_stability": self.memorization.stability.to_dict(),
            "dense": o.dense,
            "top_pairs": [
                {k: (int(v) if k in integers else json_float(v)) for k, v in row.items()}
                for row in pairs.to_dict("records")
            ],
        }

    def arrays(self) -> dict[str, np.ndarray]:
        out = {key: getattr(self, key) for key in ("top_index", "top_value", "top_se", "top_n_in", "top_n_out")}
        out.update({f"pairs/{col}": self.pairs[col].to_numpy() for col in self.pairs.columns})
        return out

    def save(self, pop: Population) -> str:
        """Write the top-k arrays and the pairs to ``analysis/influence``, and with
        ``dense='store'`` the dense matrix as ``matrix (T, N) float32`` (NaN where undefined)."""
        where = super().save(pop)
        if self.options.dense == "store" and self.dense_path is not None:
            source = np.load(self.dense_path, mmap_mode="r")
            T, N = source.shape
            matrix = pop.store.group[where].create_array(
                "matrix", shape=(T, N), chunks=(min(T, 1024), min(N, 2048)), dtype="float32", fill_value=np.nan
            )
            for r0 in range(0, T, 1024):
                matrix[r0 : r0 + 1024] = np.asarray(source[r0 : r0 + 1024])
        return where


def influence(pop: Population, options: InfluenceOptions | None = None, **fields) -> InfluenceResult:
    """Influence estimates of ``pop`` (see the module docstring); memory independent of the
    number of runs."""
    options = options_of(InfluenceOptions, options, fields)
    source = HeldoutSource(pop, options.value, options.runs)
    if options.dense is None:
        return influence_from_source(source, options)
    source.check_held_out()  # before any file is made
    source.require("train")
    source.require("test")
    if options.dense == "store":  # kept in a temporary file ($TMPDIR) until the result is saved
        handle, path = tempfile.mkstemp(prefix="manyruns-influence-", suffix=".npy")
        os.close(handle)
    else:
        path = options.dense
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        writer = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(source.n_test, source.n_train))
        result = influence_from_source(source, options, writer)
        writer.flush()
        del writer
    except BaseException:
        _remove(path)
        raise
    result.dense_path = path
    if options.dense == "store":
        weakref.finalize(result, _remove, path)
    return result


def _remove(path: str) -> None:
    Path(path).unlink(missing_ok=True)


def influence_from_source(source, options: InfluenceOptions | None = None, dense_out=None, profile: dict | None = None) -> InfluenceResult:
    """:func:`influence` from any source of held-out blocks (see
    :func:`~manyruns.analysis.heldout.memorization_from_source`; the source also needs
    ``n_test`` and ``y_test``). ``dense_out``: None or a ``(T, N)`` array-like to write the
    influence matrix into (NaN where undefined). ``profile``: a dict to which the seconds spent
    reading blocks ('read'), on membership sums ('sums'), in the matrix products ('product') and
    turning sums into influence, top-k and pairs ('finish') are added."""
    options = options or InfluenceOptions(value=source.value)
    clock = _Clock(profile)
    source.check_held_out()
    binary = source.binary
    precision = options.precision if options.precision != "auto" else exact_binary_precision() if binary else "float32"
    source.require("test")
    source.require("train")
    N, T = source.n_train, source.n_test
    R = int(source.runs.size)
    split_half = options.split_half

    halves = MembershipHalves(source)
    rng = np.random.default_rng(options.seed)
    sample = np.sort(rng.choice(T, size=min(options.stability_rows, T), replace=False)) if split_half else np.zeros(0, dtype=np.int64)
    squares = not binary
    per_column = 4 * T * (2 if squares else 1) * (2 if split_half else 1)
    width = int(max(1, min(N, int(options.memory_gib * 2**30) // per_column)))
    details = {"precision": precision, "column_width": width, "passes": -(-N // width), "stability_rows": int(sample.size)}
    y_test = source.y_test

    # per-test totals over all runs and over the first half (from the first pass)
    test_sum = np.zeros(T)
    test_sq = np.zeros(T)
    test_sum_a = np.zeros(T)
    runs_a, runs_b = halves.sums.sizes
    mem: MemorizationResult | None = None
    finisher: Finisher | None = None
    topk = TopK(T, min(options.top, N), 2)  # aux: in-sums and in-sums of squares
    pairs = PairCollector(options.max_pairs)
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
        for block in clock.iterate("read", source.blocks(options.block_size, train=first_pass, test=True)):
            clock.start()
            in_a = halves.in_first(block.runs)
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
                if dense_out is None and options.infl_threshold > 0:  # constant rows cannot reach the threshold
                    varying = (test_sum > 0) & (test_sum < R)
            mem = halves.result(source, MemorizationOptions(value=options.value, runs=options.runs, block_size=options.block_size))
            half_pairs = None
            if split_half:
                compared = np.flatnonzero((test_sum > 0) & (test_sum < R) if binary else varying)
                if compared.size > options.topk_stability_rows:
                    compared = np.sort(np.random.default_rng([options.seed, 1]).choice(compared, options.topk_stability_rows, replace=False))
                details["topk_stability_rows"] = int(compared.size)
                half_pairs = SplitHalfPairs(
                    options, k=topk.k, runs=(runs_a, runs_b), memorization=halves.half_estimates(), labels=mem.label, y_test=y_test,
                    totals=(test_sum_a, test_sum - test_sum_a), topk_rows=compared,
                )
            finisher = Finisher(
                topk=topk, pairs=pairs, y_test=y_test, test_sum=test_sum, runs=R, varying=varying, memorization=mem.estimate,
                labels=mem.label, infl_threshold=options.infl_threshold, mem_threshold=options.mem_threshold,
                same_label=options.same_label, dense_out=dense_out, half_pairs=half_pairs,
            )
        # the membership counts of these columns, complete since the first pass
        n_in = halves.total.n_in[c0:c1]
        n_in_a = halves.first.n_in[c0:c1]
        clock.start()
        if split_half:
            sampled_half_estimates(
                products, rows, sample, varying, (n_in_a, n_in - n_in_a), (test_sum_a, test_sum - test_sum_a), (runs_a, runs_b),
                (est_a[:, c0:c1], est_b[:, c0:c1]),
            )
            finisher.half_pairs.start_columns(c0, (n_in_a, n_in - n_in_a))
        finisher.finish(products, rows, c0, n_in)
        del products
        clock.stop("finish")
    details["varying_test_rows"] = int(varying.sum())

    # standard errors of the kept entries, from their sums
    top_value = topk.value.numpy().copy()
    top_index = topk.index.numpy().copy()
    valid = np.isfinite(top_value) & (top_index >= 0)
    top_index[~valid] = -1
    top_value[~valid] = np.nan
    aux = topk.aux.numpy().astype(np.float64)
    tn_in = np.where(valid, mem.n_in[np.where(valid, top_index, 0)], 0.0)
    tn_out = np.where(valid, R - tn_in, 0.0)
    top_se = influence_se(aux[..., 0], aux[..., 1], tn_in, test_sum[:, None], test_sq[:, None], tn_out, binary)
    top_se[~valid] = np.nan

    details["pairs_found"] = pairs.found
    details["pairs_truncated"] = pairs.found > len(pairs)
    table = pairs_table(pairs.finish(), mem, y_test, test_sum=test_sum, test_sq=test_sq, R=R, binary=binary, same_label=options.same_label)
    stability = agreement = pair_stability = None
    if split_half:
        rho, count = spearman(*subsample_finite(est_a, est_b, 200_000, rng))
        stability = Stability(rho, (runs_a, runs_b), count)
        agreement = top1_agreement(est_a, est_b)
        pair_stability = finisher.half_pairs.result()
    return InfluenceResult(
        runs=np.asarray(source.runs),
        options=options,
        top_index=top_index,
        top_value=top_value,
        top_se=top_se,
        top_n_in=tn_in,
        top_n_out=tn_out,
        pairs=table,
        memorization=mem,
        stability=stability,
        top1_agreement=agreement,
        test_label=y_test,
        varying=varying,
        pair_stability=pair_stability,
        details=details,
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
