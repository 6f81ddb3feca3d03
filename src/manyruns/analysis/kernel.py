"""The ensemble correlation kernel: how alike a population of runs finds two examples.

For runs ``r = 1..R`` with logits on a query example ``a`` and a train example ``b`` over the
classes ``c = 1..C``::

    x_r(a, c) = log_softmax(logits_r(a))_c               (the raw logits with log_softmax=False)
    z_r(a, c) = (x_r(a, c) - mean_r x(a, c)) / std_r x(a, c)   (std with Bessel's correction)
    K(a, b)   = 1/C  sum_c  1/R  sum_r  z_r(a, c) z_r(b, c)

so ``K = (R - 1) / R`` times the Pearson correlation across runs, averaged over the classes.
The log-softmax is always taken over all classes; ``classes`` then selects the columns that
enter the average (one class: the per-class kernel).

A column ``(a, c)`` whose value is the same in every run (its standard deviation is zero, or
below float32 resolution: at most ``ZERO_STD_RELATIVE`` times its mean) has no correlation to
speak of: its ``z`` is set to 0, so it adds nothing to ``K(a, .)``, and the average still
divides by all ``C`` selected classes. (The formula itself would divide by zero.)

Computation, streaming over blocks of runs (memory never grows with ``R``):

* pass 1 (:class:`ColumnMoments`): per-(example, class) run counts, sums and sums of squares,
  float64 (each block's sums are taken in float32 about a per-column shift, then added);
* pass 2: each block of ``b`` runs is standardized into ``(b*C, N)`` matrices and the
  products ``(Nq, b*C) x (b*C, Nt)`` are accumulated into an ``(Nq, Nt)`` float32 matrix
  (optionally with bfloat16 operands). When that matrix would exceed the memory budget, the
  train examples are taken in tiles of columns, each tile a pass 2 of its own, and a running
  top-k per query is kept.

Everything runs in torch on the CPU or a CUDA device. Top-k neighbours follow the tie rule of
:func:`manyruns.streaming.topk` (equal kernel values: the lower train index first), so they do
not depend on tiles or blocks. The analysis over a population (options, result, store) is
:mod:`.neighbours`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Iterator, NamedTuple, Protocol, Sequence

import numpy as np
import torch

from ..errors import NotApplicableError, OptionError, check_choice, check_number
from ..population import Population
from ..selection import RunSelection
from ..streaming import Moments, TopK, run_blocks, topk
from .contract import Options

ZERO_STD_RELATIVE = 4 * float(np.finfo(np.float32).eps)
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
QUERY_SPLITS = ("test", "train")


# ------------------------------------------------------------------------------ sources


class LogitSource(Protocol):
    """Logits of one set of runs on the train and test examples, read block by block of runs."""

    num_runs: int
    num_classes: int

    def size(self, split: str) -> int:
        """Number of examples in ``split``."""

    def blocks(self, split: str, block_runs: int) -> Iterator[np.ndarray]:
        """Yield ``(b, N, C)`` arrays of consecutive runs, in the same run order for both splits."""


class PopulationLogits:
    """The stored ``logits/{train,test}`` of the runs ``runs`` selects (:meth:`Population.select`)."""

    def __init__(self, pop: Population, runs: RunSelection = "ok", splits: Sequence[str] = ("train", "test")):
        missing = [f"logits/{s}" for s in splits if not pop.store.has(f"logits/{s}")]
        if missing:
            raise NotApplicableError(f"{pop.path}: the kernel needs {' and '.join(missing)}, which this store does not record")
        self.pop = pop
        self.runs = pop.select(runs)
        self.num_runs = int(self.runs.size)
        self.num_classes = pop.classes

    def size(self, split: str) -> int:
        return int(self.pop.array(f"logits/{split}").shape[1])

    def blocks(self, split: str, block_runs: int) -> Iterator[np.ndarray]:
        for block in run_blocks(self.runs, block_runs):
            yield self.pop.read(f"logits/{split}", block)


class ArrayLogits:
    """Logits held in memory: ``train (R, N, C)`` and ``test (R, T, C)`` (any float dtype)."""

    def __init__(self, train: np.ndarray, test: np.ndarray | None = None):
        if train.ndim != 3 or (test is not None and (test.ndim != 3 or test.shape[::2] != train.shape[::2])):
            raise ValueError(f"logits must be (R, N, C) and (R, T, C) with equal R and C, got {train.shape} and {None if test is None else test.shape}")
        self.arrays = {"train": train, "test": test}
        self.num_runs, _, self.num_classes = train.shape

    def size(self, split: str) -> int:
        return int(self.arrays[split].shape[1])

    def blocks(self, split: str, block_runs: int) -> Iterator[np.ndarray]:
        values = self.arrays[split]
        for block in run_blocks(np.arange(self.num_runs), block_runs):
            yield np.asarray(values[block[0] : block[-1] + 1])


# ------------------------------------------------------------------------------- options


@dataclass(frozen=True, kw_only=True)
class KernelOptions(Options):
    """How to compute a kernel (and, as every analysis' options, from which ``runs``).

    ``log_softmax``: correlate log-softmax outputs (False: raw logits). ``classes``: class
    indices whose columns enter the average (None: all). ``precision``: operands of the pass-2
    products, float32 or bfloat16 (the sums stay float32). ``device``: cpu, cuda or cuda:N.
    ``memory_gib``: budget for the accumulator and the blocks of runs in memory.
    ``block_runs``, ``tile``: runs per block and train examples per tile (default: from the
    budget).
    """

    log_softmax: bool = True
    classes: tuple[int, ...] | None = None
    precision: str = "float32"
    device: str = "cpu"
    memory_gib: float = 4.0
    block_runs: int | None = None
    tile: int | None = None

    def validate(self) -> None:
        check_choice("log_softmax", self.log_softmax, (True, False))
        check_choice("precision", self.precision, PRECISIONS)
        if self.device not in ("cpu", "cuda") and not (self.device.startswith("cuda:") and self.device[5:].isdigit()):
            raise OptionError("device", f"must be cpu, cuda or cuda:N, got {self.device!r}")
        check_number("memory_gib", self.memory_gib, 0, low_open=True)
        for name in ("block_runs", "tile"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), 1, integer=True)
        if self.classes is not None:
            try:
                classes = tuple(int(c) for c in self.classes)
            except (TypeError, ValueError):
                raise OptionError("classes", f"must be class indices, got {self.classes!r}") from None
            object.__setattr__(self, "classes", classes)
            if not classes or len(set(classes)) != len(classes) or min(classes) < 0:
                raise OptionError("classes", f"must be distinct class indices, got {list(classes)}")

    def class_index(self, num_classes: int) -> list[int] | None:
        if self.classes is None:
            return None
        bad = [c for c in self.classes if not 0 <= c < num_classes]
        if bad:
            raise OptionError("classes", f"{{param}} {bad} are outside 0..{num_classes - 1}")
        return list(self.classes)

    def kernel_fields(self) -> dict:
        """These options' kernel fields (those of :class:`KernelOptions` but ``runs``), to make
        other kernel options from them."""
        return {f.name: getattr(self, f.name) for f in fields(KernelOptions) if f.name != "runs"}

    def kernel_params(self) -> dict:
        """The options that change the kernel's values (whether stored neighbours can be reused)."""
        return {"log_softmax": self.log_softmax, "classes": None if self.classes is None else list(self.classes), "precision": self.precision}


# ------------------------------------------------------------------------------ pass 1


class Workspace:
    """Float32 buffers kept from block to block and from one kernel to the next: fresh large
    allocations are paid for in page faults each time (about a second per 2 GB here). Pass one
    workspace to successive kernel computations to reuse the accumulator as well."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self._buffers: dict[str, torch.Tensor] = {}

    def buffer(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A contiguous float32 tensor of ``shape`` on the kept storage named ``key``."""
        numel = math.prod(shape)
        kept = self._buffers.get(key)
        if kept is None or kept.numel() < numel:
            self._buffers.pop(key, None)
            kept = self._buffers[key] = torch.empty(numel, dtype=torch.float32, device=self.device)
        return kept[:numel].view(shape)

    def release(self) -> None:
        self._buffers.clear()


def transform(block: np.ndarray, options: KernelOptions, workspace: Workspace | None = None, key: str = "x") -> torch.Tensor:
    """``(b, N, C)`` logits -> ``(b, C', N)`` float32 log-softmax values (or raw logits) of the
    selected classes, laid out so that one run's classes are rows of the product operands."""
    ws = workspace or Workspace(options.device)
    x = torch.from_numpy(np.asarray(block)).to(ws.device)
    b, n, C = x.shape
    out = ws.buffer(key + "/raw", (b, C, n))
    out.copy_(x.transpose(1, 2))
    if options.log_softmax:
        out = torch.log_softmax(out, 1, out=ws.buffer(key + "/lsm", (b, C, n)))
    classes = options.class_index(C)
    if classes is not None:
        index = torch.tensor(classes, device=ws.device)
        out = torch.index_select(out, 1, index, out=ws.buffer(key + "/sel", (b, len(classes), n)))
    return out


class ColumnMoments(Moments):
    """Run count and per-column moments ``(C', N)`` of the transformed logits: a float32 shift
    (the first block's mean) and float64 sums of ``x - shift`` and ``(x - shift)^2``
    (:class:`~manyruns.streaming.Moments`, which merges two accumulators over disjoint runs with
    ``+`` and gives the mean and Bessel-corrected standard deviation). Sums about a shift near
    the mean keep the variance free of cancellation."""

    def __init__(self):
        super().__init__(0, None, None, None)

    def update(self, x: torch.Tensor, scratch: torch.Tensor | None = None) -> None:
        """Add a block ``x (b, C', N)`` float32 (``scratch``: a buffer of its shape to use)."""
        if self.shift is None:
            self.shift = x.mean(0)
            self.total = torch.zeros(x.shape[1:], dtype=torch.float64, device=x.device)
            self.total_sq = torch.zeros_like(self.total)
        d = torch.sub(x, self.shift, out=scratch) if scratch is not None else x - self.shift
        self.total += d.sum(0).double()
        self.total_sq += d.square_().sum(0).double()
        self.count += x.shape[0]

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets of runs (expressed about this accumulator's shift)."""
        return self + other

    def standardizer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, inverse std)`` as float32 ``(C', N)``; the inverse is 0 for constant columns."""
        mean, std = self.mean_std()
        constant = std <= ZERO_STD_RELATIVE * mean.abs()
        inv = torch.where(constant, torch.zeros_like(std), 1.0 / std)
        return mean.float(), inv.float()


def column_moments(source: LogitSource, split: str, options: KernelOptions = KernelOptions(), block_runs: int = 64, workspace: Workspace | None = None) -> ColumnMoments:
    """Pass 1 over ``split``: the moments of every (class, example) column across the runs."""
    ws = workspace or Workspace(options.device)
    moments = ColumnMoments()
    for block in source.blocks(split, block_runs):
        x = transform(block, options, ws, split)
        moments.update(x, ws.buffer(split + "/scratch", tuple(x.shape)))
    return moments


# ------------------------------------------------------------------------------ pass 2


@dataclass
class Plan:
    """Runs per block and train examples per tile for one kernel computation."""

    block_runs: int
    tile: int
    query_chunk: int


def plan_memory(num_runs: int, n_query: int, n_train: int, num_classes: int, used_classes: int, options: KernelOptions, same_split: bool) -> Plan:
    """Choose the tile of train examples (the ``(Nq, tile)`` accumulator gets up to half the
    budget) and the runs per block (the rest: raw float16 blocks and float32 work arrays)."""
    budget = options.memory_gib * 2**30
    query_chunk = min(n_query, 4096) if options.precision == "bfloat16" else 0
    per_column = 4 * n_query + 2 * query_chunk  # accumulator, plus the bfloat16 product
    tile = options.tile or max(1, min(n_train, int(budget / 2 // per_column)))
    tile = min(tile, n_train)
    raw = 2 * num_classes * (n_train + (0 if same_split else n_query))
    work = 4 * num_classes * (n_train + (0 if same_split else n_query)) * 3
    left = max(budget - per_column * tile, budget / 4)
    block_runs = options.block_runs or max(1, min(num_runs, 1024, int(left // (raw + work))))
    return Plan(block_runs=min(block_runs, max(num_runs, 1)), tile=tile, query_chunk=query_chunk)


class _Accumulator:
    """The ``(Nq, tile)`` float32 sums of standardized cross products, one block at a time."""

    def __init__(self, values: torch.Tensor, dtype: torch.dtype, query_chunk: int):
        self.values = values
        self.dtype, self.query_chunk, self.empty = dtype, query_chunk, True

    def add(self, zq: torch.Tensor, zt: torch.Tensor) -> None:
        """``zq (K, Nq)``, ``zt (K, width)``: add ``zq.T @ zt``."""
        a, t = zq.to(self.dtype), zt.to(self.dtype)
        if self.dtype == torch.float32:
            if self.empty:  # the first product writes the sums: no separate zeroing pass
                torch.mm(a.T, t, out=self.values)
            else:
                self.values.addmm_(a.T, t)
        else:  # bfloat16 products come back in bfloat16: add them to the float32 sums
            if self.empty:
                self.values.zero_()
            for q0 in range(0, a.shape[1], self.query_chunk):
                q1 = min(a.shape[1], q0 + self.query_chunk)
                self.values[q0:q1] += a[:, q0:q1].T @ t
        self.empty = False


def kernel_tiles(source: LogitSource, queries: str = "test", options: KernelOptions = KernelOptions(), workspace: Workspace | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(start, stop, K[:, start:stop])`` for tiles of train examples: ``(Nq, stop - start)``
    float32 kernel values between every query example and train examples ``start..stop-1``.

    ``queries``: 'test' (the default) or 'train' (then queries and train examples coincide;
    the diagonal is left in: :func:`kernel_topk` excludes it). A yielded tile is overwritten
    by the next one (and lives in ``workspace``): copy it to keep it.
    """
    if queries not in QUERY_SPLITS:
        raise OptionError("queries", f"must be test or train, got {queries!r}")
    R = source.num_runs
    if R < 2:
        raise OptionError("runs", f"{{param}}: the kernel needs at least 2 runs with logits, got {R} (it standardizes across runs)")
    ws = workspace or Workspace(options.device)
    class_index = options.class_index(source.num_classes)
    used = len(class_index) if class_index else source.num_classes
    dtype = PRECISIONS[options.precision]
    same = queries == "train"
    n_query, n_train = source.size(queries), source.size("train")
    plan = plan_memory(R, n_query, n_train, source.num_classes, used, options, same)
    scale = 1.0 / (R * used)

    if plan.block_runs >= R and plan.tile >= n_train:
        # Every run fits in one block: transform each split once, standardize in place.
        zt = transform(next(source.blocks("train", R)), options, ws, "train")
        moments = ColumnMoments()
        moments.update(zt, ws.buffer("train/scratch", tuple(zt.shape)))
        mean, inv = moments.standardizer()
        zt.sub_(mean).mul_(inv)
        if same:
            zq = zt
        else:
            zq = transform(next(source.blocks(queries, R)), options, ws, queries)
            moments = ColumnMoments()
            moments.update(zq, ws.buffer(queries + "/scratch", tuple(zq.shape)))
            mean, inv = moments.standardizer()
            zq.sub_(mean).mul_(inv)
        acc = _Accumulator(ws.buffer("kernel", (n_query, n_train)), dtype, plan.query_chunk)
        acc.add(zq.reshape(R * used, n_query), zt.reshape(R * used, n_train))
        yield 0, n_train, acc.values.mul_(scale)
        return

    train_mean, train_inv = column_moments(source, "train", options, plan.block_runs, ws).standardizer()
    if same:
        query_mean, query_inv = train_mean, train_inv
    else:
        query_mean, query_inv = column_moments(source, queries, options, plan.block_runs, ws).standardizer()

    for start in range(0, n_train, plan.tile):
        stop = min(n_train, start + plan.tile)
        acc = _Accumulator(ws.buffer("kernel", (n_query, stop - start)), dtype, plan.query_chunk)
        query_blocks = source.blocks(queries, plan.block_runs)
        train_blocks = query_blocks if same else source.blocks("train", plan.block_runs)
        seen = 0
        for query_block in query_blocks:
            zq = transform(query_block, options, ws, queries).sub_(query_mean).mul_(query_inv)
            b = zq.shape[0]
            if same:
                zt = zq.reshape(b * used, n_query)[:, start:stop]  # a view: rows of the query operand
            else:
                zt = transform(next(train_blocks)[:, start:stop], options, ws, "train")
                zt = zt.sub_(train_mean[:, start:stop]).mul_(train_inv[:, start:stop]).reshape(b * used, stop - start)
            acc.add(zq.reshape(b * used, n_query), zt)
            seen += b
        if seen != R:
            raise RuntimeError(f"pass 2 read {seen} runs, pass 1 read {R}")
        yield start, stop, acc.values.mul_(scale)


def kernel_matrix(source: LogitSource, queries: str = "test", options: KernelOptions = KernelOptions(), workspace: Workspace | None = None) -> np.ndarray:
    """The whole kernel, ``(Nq, Nt)`` float32 (for populations whose kernel fits in memory)."""
    parts = [tile.cpu().numpy().copy() for _, _, tile in kernel_tiles(source, queries, options, workspace)]
    return np.concatenate(parts, axis=1)


class Top(NamedTuple):
    """The ``k`` most similar train examples of every query: ``indices (Nq, k) int64`` (train
    indices, most similar first) and ``values (Nq, k) float32`` (their kernel values)."""

    indices: np.ndarray
    values: np.ndarray


def kernel_topk(source: LogitSource, k: int, queries: str = "test", options: KernelOptions = KernelOptions(), workspace: Workspace | None = None) -> Top:
    """The top-``k`` train examples of every query by kernel value, tile by tile of train
    examples (memory ``O(Nq x tile)``). With ``queries='train'`` an example is never its own
    neighbour. Equal kernel values: the lower train index first."""
    n_train = source.size("train")
    candidates = n_train - (1 if queries == "train" else 0)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= candidates:
        raise OptionError("k", f"must lie in 1..{candidates} (the train examples available as neighbours), got {k!r}")
    best = None
    for start, stop, tile in kernel_tiles(source, queries, options, workspace):
        if queries == "train":
            rows = torch.arange(start, stop, device=tile.device)
            tile[rows, rows - start] = -math.inf
        if best is None:
            best = TopK(tile.shape[0], k, device=tile.device)
        values, indices = topk(tile, min(k, stop - start), ordered=False)
        best.merge(slice(None), values, indices + start)
        del tile
    return Top(best.index.cpu().numpy().astype(np.int64), best.value.cpu().numpy().astype(np.float32))


__all__ = [
    "ArrayLogits",
    "ColumnMoments",
    "KernelOptions",
    "LogitSource",
    "PopulationLogits",
    "Top",
    "Workspace",
    "column_moments",
    "kernel_matrix",
    "kernel_tiles",
    "kernel_topk",
    "plan_memory",
]
