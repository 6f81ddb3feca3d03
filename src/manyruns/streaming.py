"""Streaming primitives shared by every population analysis.

Every analysis is a reduction over runs: it reads the runs in blocks and keeps sums. The
pieces that several analyses need live here, once, and the property tests
(``tests/test_streaming.py``) check that block size and run order do not change them.

* :func:`run_blocks`: consecutive blocks of a selection of runs.
* :class:`Moments`: elementwise count, sum and sum of squares about a shift, mergeable
  (``+``) and separable (``-``); :func:`mean_and_variance` turns sums into a mean and a
  sample variance (divides by ``n - 1``). Numpy or torch arrays alike.
* :func:`column_counts`: the True entries of each column of a boolean block.
* :func:`split_halves` and :class:`HalfSums`: two disjoint halves of the runs, for
  split-half stability; the sums over the second half are the total minus the first.
* :func:`topk` and :class:`TopK`: the ``k`` largest entries per row, with one tie rule:
  **larger values first, equal values by lower index first**. A row's top ``k`` is then a
  function of its values alone, whatever tiles the columns were taken in.
* :func:`json_safe`, :func:`json_float`: JSON-ready values (NaN and infinities become None).
* :func:`doubling_sizes`: 1, 2, 4, ... up to and including ``n``.

Precision: sums of squares are kept in float64 about a shift near the mean (the first
block's mean where the caller gives one), so variances do not lose digits to cancellation;
0/1 blocks are counted exactly in integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

# --------------------------------------------------------------------------- blocks of runs


def run_blocks(runs: np.ndarray, block_size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of ``runs (R',)`` of at most ``block_size`` runs, in order."""
    runs = np.asarray(runs, dtype=np.int64)
    for start in range(0, runs.size, max(1, int(block_size))):
        yield runs[start : start + block_size]


def doubling_sizes(n: int, start: int = 1) -> list[int]:
    """``start, 2 start, 4 start, ...`` below ``n``, then ``n`` itself (empty when ``n < 1``)."""
    sizes, size = [], max(1, int(start))
    while size < n:
        sizes.append(size)
        size *= 2
    return sizes + [int(n)] if n >= 1 else []


# ------------------------------------------------------------------------------ moments


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _is_zero(shift) -> bool:
    return isinstance(shift, (int, float)) and shift == 0


def _copy(x):
    if _is_torch(x):
        return x.clone()
    return x.copy() if isinstance(x, np.ndarray) else x


def _float64(x):
    if isinstance(x, (int, float)):
        return float(x)
    return x.double() if _is_torch(x) else np.asarray(x, dtype=np.float64)


def mean_and_variance(total, total_sq, count, shift=0.0):
    """Mean and sample variance (``ddof = 1``) from sums of ``x - shift`` and of its squares.

    ``count`` may be a scalar or an array; the mean is NaN where ``count = 0`` and the variance
    NaN where ``count < 2`` (numpy), or an error below 2 (torch, scalar counts only). The
    variance is clipped at 0 (rounding can make it slightly negative)."""
    if _is_torch(total):
        import torch

        n = count
        if isinstance(n, torch.Tensor) or n < 2:
            raise ValueError(f"a variance over runs needs at least 2 runs, got {n}")
        var = (total_sq - total * total / n).clamp_(min=0) / (n - 1)
        return _float64(shift) + total / n if isinstance(shift, torch.Tensor) else shift + total / n, var
    n = np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / n, np.nan)
        var = np.where(n > 1, (total_sq - n * mean * mean) / (n - 1), np.nan)
    return mean + shift, np.maximum(var, 0.0)


@dataclass
class Moments:
    """Elementwise count, sum and sum of squares of values about ``shift``.

    ``count`` is an integer or an integer array (how many values each element's sums hold:
    different where blocks carry NaN or a mask), ``total`` and ``total_sq`` the float64 sums of
    ``x - shift`` and ``(x - shift)^2``. Moments over disjoint runs add (``a + b``, the shift
    changed exactly); ``a - b`` removes runs that ``a`` holds (equal shifts only).
    """

    count: object
    total: object
    total_sq: object
    shift: object = 0.0

    @classmethod
    def zeros(cls, shape, shift=0.0, count_dtype=np.int64) -> "Moments":
        return cls(np.zeros(shape, dtype=count_dtype), np.zeros(shape), np.zeros(shape), shift)

    def add(self, x: np.ndarray, where: np.ndarray | None = None) -> None:
        """Add a block ``x (b, ...)`` along its first axis. ``where (b, ...) bool``: the values
        that count; non-finite values never count. Boolean blocks (about a zero shift) are
        counted exactly in integers; other values are summed in float64."""
        if x.dtype == bool and _is_zero(self.shift):
            hits = column_counts(x if where is None else x & where)
            self.total += hits
            self.total_sq += hits  # 0/1 values are their own squares
            self.count += x.shape[0] if where is None else column_counts(where)
            return
        values = np.asarray(x, dtype=np.float64)
        if not _is_zero(self.shift):
            values = values - self.shift
        keep = np.isfinite(values)
        if where is not None:
            keep &= where
        if not keep.all():
            values = np.where(keep, values, 0.0)
        self.total += values.sum(0)
        self.total_sq += np.square(values).sum(0)
        self.count += keep.sum(0)

    def copy(self) -> "Moments":
        return Moments(*(_copy(x) for x in (self.count, self.total, self.total_sq, self.shift)))

    def moved_to(self, shift) -> "Moments":
        """The same moments about another shift (exact in float64)."""
        delta = _float64(self.shift) - _float64(shift)
        total = self.total + self.count * delta
        total_sq = self.total_sq + 2 * delta * self.total + self.count * delta * delta
        return Moments(self.count, total, total_sq, shift)

    def __add__(self, other: "Moments") -> "Moments":
        if isinstance(other.count, int) and other.count == 0:
            return self.copy()  # a new object: adding to it later leaves the operands alone
        if isinstance(self.count, int) and self.count == 0:
            return other.copy()
        o = other if other.shift is self.shift else other.moved_to(self.shift)
        return Moments(self.count + o.count, self.total + o.total, self.total_sq + o.total_sq, self.shift)

    def __sub__(self, other: "Moments") -> "Moments":
        if other.shift is not self.shift and not (_is_zero(self.shift) and _is_zero(other.shift)):
            raise ValueError("moments about different shifts cannot be subtracted")
        return Moments(self.count - other.count, self.total - other.total, self.total_sq - other.total_sq, self.shift)

    def mean(self):
        return mean_and_variance(self.total, self.total_sq, self.count, self.shift)[0]

    def variance(self):
        """Sample variance (``ddof = 1``)."""
        return mean_and_variance(self.total, self.total_sq, self.count, self.shift)[1]

    def mean_std(self):
        mean, var = mean_and_variance(self.total, self.total_sq, self.count, self.shift)
        return mean, var.sqrt() if _is_torch(var) else np.sqrt(var)

    def sem(self) -> np.ndarray:
        """Standard error of the mean, ``sqrt(variance / count)`` (NaN below 2 values)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.variance() / np.asarray(self.count, dtype=np.float64))


def column_counts(x: np.ndarray) -> np.ndarray:
    """``(N,) int32``: the True entries of each column of ``x (b, N) bool`` (a uint8 reduction,
    about 3x faster than ``np.count_nonzero(x, axis=0)``; exact for ``b < 2**31``)."""
    return np.add.reduce(np.ascontiguousarray(x).view(np.uint8), axis=0, dtype=np.int32)


# --------------------------------------------------------------------------- split halves


def split_halves(cells: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """``(len(runs),) int8``: 0 or 1, the half each run belongs to for split-half stability.

    Within each cell (condition) runs alternate between the halves in order of run index, so
    both halves hold every condition in equal numbers and the split does not depend on the
    order in which runs are read.
    """
    runs = np.asarray(runs)
    cells = np.asarray(cells)
    half = np.zeros(runs.size, dtype=np.int8)
    for c in np.unique(cells):
        members = np.flatnonzero(cells == c)
        ordered = members[np.argsort(runs[members], kind="stable")]
        half[ordered[1::2]] = 1
    return half


class HalfSums:
    """Sums over all runs and over the first of two halves (:func:`split_halves`); the second
    half's sums are the difference, so each block is added twice at most, never three times.

    ``make()`` returns an empty accumulator: an object with ``add(*arrays)`` (arrays with a
    leading run axis) and ``-``. Blocks may come in any order and any size.
    """

    def __init__(self, runs: np.ndarray, cells: np.ndarray, make: Callable[[], object]):
        self.runs = np.asarray(runs, dtype=np.int64)
        self.half = split_halves(cells, self.runs)
        self._position = {int(r): k for k, r in enumerate(self.runs)}
        self.total = make()
        self.first = make()

    @property
    def sizes(self) -> tuple[int, int]:
        """Runs in each half."""
        return int(np.sum(self.half == 0)), int(np.sum(self.half == 1))

    def in_first(self, runs: np.ndarray) -> np.ndarray:
        """``(b,) bool``: which of ``runs`` belong to the first half."""
        return self.half[[self._position[int(r)] for r in runs]] == 0

    def add(self, runs: np.ndarray, *arrays: np.ndarray) -> np.ndarray:
        """Add a block: ``arrays`` have the runs ``runs (b,)`` on their first axis. Returns
        which of the runs are in the first half."""
        first = self.in_first(runs)
        self.total.add(*arrays)
        if first.all():
            self.first.add(*arrays)
        elif first.any():
            self.first.add(*(a[first] for a in arrays))
        return first

    @property
    def second(self):
        return self.total - self.first


# --------------------------------------------------------------------------------- top-k


def _grouped_topk(values, k: int, chunk: int | None = None):
    """Exact top ``k`` values per row of ``values (Nq, M)`` (indices of tied values arbitrary).

    Column ``i < m * chunk`` belongs to group ``i % m`` (``m = M // chunk`` groups). The ``k``
    largest entries of a row lie in its ``k`` groups with the largest maxima (or among the last
    ``M % chunk`` columns), so only those ``k * chunk`` candidates are sorted: one pass of maxima
    over the matrix instead of a selection over every row."""
    import torch

    Nq, M = values.shape
    chunk = chunk or max(1, int(math.sqrt(M / max(k, 1))))
    m = M // chunk
    if m < 4 * k or chunk < 2:
        return values.topk(k, dim=1)
    main = values[:, : m * chunk].view(Nq, chunk, m)
    _, groups = main.amax(dim=1).topk(k, dim=1)  # (Nq, k)
    candidates = main.gather(2, groups[:, None, :].expand(Nq, chunk, k)).reshape(Nq, chunk * k)
    tail = M - m * chunk
    if tail:
        candidates = torch.cat([candidates, values[:, m * chunk :]], dim=1)
    top, where = candidates.topk(k, dim=1)
    in_groups = where < chunk * k
    offset, slot = torch.div(where, k, rounding_mode="floor"), where % k
    index = torch.where(in_groups, offset * m + groups.gather(1, slot.clamp(max=k - 1)), where - chunk * k + m * chunk)
    return top, index


def _canonical_order(value, index):
    """Rows of ``(value, index)`` sorted by value (larger first), then by index (lower first);
    index -1 (no entry) last among equals."""
    import torch

    order = torch.argsort(index.masked_fill(index < 0, torch.iinfo(torch.int64).max), dim=1, stable=True)
    value, index = value.gather(1, order), index.gather(1, order)
    best = torch.sort(value, dim=1, descending=True, stable=True).indices
    return value.gather(1, best), index.gather(1, best), order.gather(1, best)


def topk(x, k: int, chunk: int | None = None, ordered: bool = True):
    """The ``k`` largest entries of each row of ``x (t, W)`` (a torch tensor), larger first and
    equal values by lower column first. Returns ``(values, columns)``, both ``(t, min(k, W))``.
    ``ordered=False``: the same entries, but equal values in no particular order (for callers
    that merge them into a :class:`TopK`, which orders them anyway).

    One more than ``k`` is selected: a tie at the boundary shows as equal ``k``-th and
    ``(k+1)``-th values, and only those rows are resolved over the whole row."""
    import torch

    t, W = x.shape
    if k >= W:
        columns = torch.arange(W, device=x.device).expand(t, W)
        if not ordered:
            return x, columns
        value, index, _ = _canonical_order(x, columns)
        return value, index
    value, where = _grouped_topk(x, k + 1, chunk)
    tied_rows = torch.nonzero(value[:, k - 1] == value[:, k]).view(-1)
    value, where = value[:, :k], where[:, :k]
    if tied_rows.numel():
        # everything above the k-th value, then the lowest columns at it: rank by a key that
        # is +inf above, minus the column at the k-th value, -inf below
        value, where = value.clone(), where.clone()
        sub = x[tied_rows]
        bound = value[tied_rows, k - 1 :]
        key = torch.where(sub == bound, -torch.arange(W, dtype=x.dtype, device=x.device), float("-inf"))
        key.masked_fill_(sub > bound, float("inf"))
        cols = torch.topk(key, k, dim=1).indices
        where[tied_rows] = cols
        value[tied_rows] = sub.gather(1, cols)
    if ordered:
        value, where, _ = _canonical_order(value, where)
    return value, where


class TopK:
    """The ``k`` largest entries of each row seen so far (:func:`topk`'s tie rule), with
    ``aux`` extra values carried along with each entry.

    ``value (T, k) float32`` (-inf where fewer than ``k`` candidates), ``index (T, k) int64``
    (-1 there), ``aux (T, k, a) float32``. Candidates may arrive in any order and in tiles of
    any width: the result is the same.
    """

    def __init__(self, rows: int, k: int, aux: int = 0, device="cpu"):
        import torch

        self.k = k
        self.value = torch.full((rows, k), float("-inf"), device=device)
        self.index = torch.full((rows, k), -1, dtype=torch.int64, device=device)
        self.aux = torch.zeros(rows, k, aux, device=device)

    def merge(self, rows, value, index, aux=None) -> None:
        """Merge candidates ``value (t, c)``, ``index (t, c)`` (and ``aux (t, c, a)``) into
        ``rows`` (a slice or ``(t,)`` row indices)."""
        import torch

        v = torch.cat([self.value[rows], value.to(self.value.dtype)], 1)
        i = torch.cat([self.index[rows], index], 1)
        v, i, order = _canonical_order(v, i)
        self.value[rows] = v[:, : self.k]
        self.index[rows] = i[:, : self.k]
        if self.aux.shape[-1]:
            a = torch.cat([self.aux[rows], aux.to(self.aux.dtype)], 1)
            self.aux[rows] = a.gather(1, order[:, : self.k, None].expand(-1, -1, a.shape[-1]))


# ----------------------------------------------------------------------------------- JSON


def json_float(x) -> float | None:
    """``x`` as a float, or None when it is missing, NaN or infinite (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def json_safe(obj):
    """``obj`` (dicts, lists and tuples of numbers, strings, numpy values and arrays) with
    numpy values as Python values and non-finite floats as None, which JSON writes as ``null``."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.floating, float)):
        return json_float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


__all__ = [
    "HalfSums",
    "Moments",
    "TopK",
    "column_counts",
    "doubling_sizes",
    "json_float",
    "json_safe",
    "mean_and_variance",
    "run_blocks",
    "split_halves",
    "topk",
]
