"""Finishing influence: from one column block's sums to top influencers, pairs and the dense matrix.

For a column block of train examples with in-counts ``n_in`` and out-counts ``n_out``::

    influence(i -> j) = A[j, i] / n_in(i) - (total(j) - A[j, i]) / n_out(i)

with ``A`` the in-sums of the product and ``total(j)`` the sum of test example ``j``'s values
over all runs (-inf where a column has no run in or none out). Of each block only the top
influencers of every test example (:class:`~manyruns.streaming.TopK`, ties to the lower train
index) and the pairs above the thresholds (:class:`PairCollector`) are kept; the dense matrix
is written only when asked. Standard errors come from the sums kept with each entry
(:func:`influence_se`, Welch as in :mod:`.sums`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ...streaming import TopK, mean_and_variance, topk

FINISH_TILE_ELEMENTS = 1 << 18  # influence is computed this many entries at a time (1 MiB of float32)
DENSE_ROWS = 1024  # rows of the dense matrix written at a time
PAIR_COLUMNS = ("train_index", "test_index", "infl", "mem", "label", "se", "n_in", "n_out")
LABEL_COLUMNS = ("train_label", "test_label")


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



@dataclass(kw_only=True)
class Finisher:
    """Turns each column block's sums into influence, a few rows at a time (so that the
    temporaries stay in cache): merges the top-k, collects the pairs, writes the dense matrix,
    and finishes each half (``half_pairs``, when the products keep the halves apart).

    Everything here is known after the first pass over the runs: ``y_test (T,)``, the per-test
    totals ``test_sum (T,)`` over ``runs`` runs, ``varying (T,) bool`` (test examples whose
    value differs between runs; the others have influence 0 wherever it is defined and go to
    the top-k directly), the train examples' ``memorization`` and ``labels (N,)``.
    """

    topk: TopK
    pairs: PairCollector
    y_test: np.ndarray
    test_sum: np.ndarray
    runs: int
    varying: np.ndarray
    memorization: np.ndarray
    labels: np.ndarray
    infl_threshold: float
    mem_threshold: float | None
    same_label: bool
    dense_out: object = None
    half_pairs: object = None

    def __post_init__(self) -> None:
        self._totals = torch.from_numpy(self.test_sum.astype(np.float32))
        self._y = torch.from_numpy(np.asarray(self.y_test, dtype=np.int64))

    def finish(self, products, rows: np.ndarray, c0: int, n_in: np.ndarray) -> None:
        """Finish the column block at ``c0`` (in-counts ``n_in (W,)``) of ``products`` (a
        :class:`~.influence_products.HalfProducts`), whose rows are the test examples ``rows``."""
        W = n_in.size
        T = self.y_test.size
        cols = _Columns.of(n_in, self.runs - n_in, self.memorization[c0 : c0 + W], self.labels[c0 : c0 + W], self.mem_threshold)
        column_ids = torch.arange(c0, c0 + W)
        best, pairs, dense_out, half_pairs = self.topk, self.pairs, self.dense_out, self.half_pairs
        k = min(best.k, W)

        constant = np.flatnonzero(~self.varying)
        first_valid = torch.from_numpy(np.flatnonzero(~cols.invalid.numpy())[:k])
        if constant.size and first_valid.numel():
            kk = first_valid.numel()
            counts = torch.from_numpy(n_in.astype(np.float32))[first_valid]
            for r0 in range(0, constant.size, 4096):
                ids = constant[r0 : r0 + 4096]
                all_right = torch.from_numpy((self.test_sum[ids] == self.runs).astype(np.float32))[:, None]
                s_in = all_right * counts[None, :]
                best.merge(torch.from_numpy(ids), torch.zeros(ids.size, kk), column_ids[first_valid].expand(ids.size, -1), torch.stack([s_in, s_in], -1))

        totals, y = self._totals, self._y
        work = np.flatnonzero(self.varying[rows])  # positions in the product of the rows to turn into influence
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
                value, where = topk(infl, k, ordered=False)
                aux = torch.stack([sums.gather(1, where).float(), squares.gather(1, where).float()], -1)
                best.merge(test_ids, value, column_ids[where], aux)
                if cols.candidates.numel():
                    sub, hit_rows, hit_cols = _pairs_above(infl, test_ids, cols, y, self.infl_threshold, self.same_label)
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


def pairs_table(parts, mem, y_test, test_sum, test_sq, R: int, binary: bool, same_label: bool = True) -> pd.DataFrame:
    """The collected pairs as a table (see :data:`PAIR_COLUMNS`), with standard errors from
    their sums; ``mem``: the memorization result of the same runs."""
    cols = PAIR_COLUMNS + (() if same_label else LABEL_COLUMNS)
    if not parts:
        return pd.DataFrame({c: np.zeros(0, dtype=np.float64 if c in ("infl", "mem", "se") else np.int64) for c in cols})
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    train, test = joined["train_index"].astype(np.int64), joined["test_index"].astype(np.int64)
    n_in = mem.n_in[train]
    n_out = R - n_in
    se = influence_se(joined["s_in"].astype(np.float64), joined["q_in"].astype(np.float64), n_in, test_sum[test], test_sq[test], n_out, binary)
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


def influence_se(s_in, q_in, n_in, s_all, q_all, n_out, binary: bool) -> np.ndarray:
    """Standard error (Welch) of influence entries from their in-sums ``s_in``, ``q_in`` and the
    test example's totals ``s_all``, ``q_all`` (0/1 values: squares equal the values)."""
    s_out = s_all - s_in
    q_out = q_all - q_in
    if binary:
        q_in, q_out = s_in, s_out
    _, var_in = mean_and_variance(s_in, q_in, n_in)
    _, var_out = mean_and_variance(s_out, q_out, n_out)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(var_in / n_in + var_out / n_out)
