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

Everything runs in torch on the CPU or a CUDA device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch

from ..population import Population
from ..store import StoreError

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
    """The stored ``logits/{train,test}`` of ``runs`` of a population.

    ``runs``: None (every ok run), an int ``n`` (the first ``n`` ok runs), or run indices.
    """

    def __init__(self, pop: Population, runs=None, splits: Sequence[str] = ("train", "test")):
        missing = [f"logits/{s}" for s in splits if not pop.store.has(f"logits/{s}")]
        if missing:
            raise StoreError(f"{pop.path}: the kernel needs {' and '.join(missing)}, which this store does not record")
        self.pop = pop
        self.runs = select_runs(pop, runs)
        self.num_runs = int(self.runs.size)
        self.num_classes = pop.classes

    def size(self, split: str) -> int:
        return int(self.pop.array(f"logits/{split}").shape[1])

    def blocks(self, split: str, block_runs: int) -> Iterator[np.ndarray]:
        for _, values in self.pop.blocks(f"logits/{split}", self.runs, block_runs):
            yield values


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
        for start in range(0, self.num_runs, block_runs):
            yield np.asarray(values[start : start + block_runs])


def select_runs(pop: Population, runs=None) -> np.ndarray:
    """Run indices: None -> every ok run; int ``n`` -> the first ``n`` ok runs; else as given."""
    if runs is None or isinstance(runs, str):
        return pop.run_indices(runs or "ok")
    if isinstance(runs, (int, np.integer)):
        ok = pop.run_indices("ok")
        if runs < 1 or runs > ok.size:
            raise ValueError(f"{pop.path}: asked for the first {runs} runs, but the store has {ok.size} ok runs")
        return ok[: int(runs)]
    return pop._resolve_runs(runs)


# ------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class KernelOptions:
    """How to compute a kernel.

    ``classes``: class indices whose columns enter the average (None: all).
    ``precision``: operands of the pass-2 products, float32 or bfloat16 (the sums stay float32).
    ``memory_gb``: budget for the accumulator and the blocks of runs in memory.
    ``block_runs``, ``tile``: runs per block and train examples per tile (default: from the budget).
    """

    log_softmax: bool = True
    classes: tuple[int, ...] | None = None
    precision: str = "float32"
    device: str = "cpu"
    memory_gb: float = 4.0
    block_runs: int | None = None
    tile: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.memory_gb <= 0:
            raise ValueError(f"memory_gb must be positive, got {self.memory_gb}")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
            if not self.classes or len(set(self.classes)) != len(self.classes):
                raise ValueError(f"classes must be distinct class indices, got {list(self.classes)}")

    def class_index(self, num_classes: int) -> list[int] | None:
        if self.classes is None:
            return None
        bad = [c for c in self.classes if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"classes {bad} are outside 0..{num_classes - 1}")
        return list(self.classes)

    def params(self) -> dict:
        """The options that change the kernel's values (for the store's records)."""
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


@dataclass
class ColumnMoments:
    """Run count and per-column sums about a shift: ``shift``, ``total``, ``total_sq`` are
    ``(C', N)`` (float32 shift, float64 sums of ``x - shift`` and ``(x - shift)^2``).

    Sums about a shift near the mean keep the variance free of cancellation; two accumulators
    over disjoint runs combine with :meth:`merge` (the shift is changed exactly in float64).
    """

    count: int = 0
    shift: torch.Tensor | None = None
    total: torch.Tensor | None = None
    total_sq: torch.Tensor | None = None

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

    def merge(self, other: "ColumnMoments") -> "ColumnMoments":
        """The moments of both sets of runs (expressed about this accumulator's shift)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        delta = other.shift.double() - self.shift.double()
        total = other.total + other.count * delta
        total_sq = other.total_sq + 2 * delta * other.total + other.count * delta * delta
        return ColumnMoments(self.count + other.count, self.shift, self.total + total, self.total_sq + total_sq)

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and Bessel-corrected standard deviation over runs, ``(C', N)`` float64 each."""
        if self.count < 2:
            raise ValueError(f"a standard deviation over runs needs at least 2 runs, got {self.count}")
        n = self.count
        mean = self.shift.double() + self.total / n
        var = (self.total_sq - self.total * self.total / n).clamp_(min=0) / (n - 1)
        return mean, var.sqrt()

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
    budget = options.memory_gb * 2**30
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
        raise ValueError(f"queries must be 'test' or 'train', got {queries!r}")
    R = source.num_runs
    if R < 2:
        raise ValueError(f"the kernel needs at least 2 runs with logits, got {R}")
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


def row_topk(values: torch.Tensor, k: int, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest ``k`` entries of each row of ``values (Nq, M)``, best first: ``(values, indices)``.

    Column ``i < m * chunk`` belongs to group ``i % m`` (``m = M // chunk`` groups). The ``k``
    largest entries of a row lie in its ``k`` groups with the largest maxima (or among the last
    ``M % chunk`` columns), so only those ``k * chunk`` candidates are sorted: one pass of maxima
    over the matrix instead of a selection over every row.
    """
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
    index = torch.where(in_groups, offset * m + groups.gather(1, slot.clamp_(max=k - 1)), where - chunk * k + m * chunk)
    return top, index


def kernel_matrix(source: LogitSource, queries: str = "test", options: KernelOptions = KernelOptions(), workspace: Workspace | None = None) -> np.ndarray:
    """The whole kernel, ``(Nq, Nt)`` float32 (for populations whose kernel fits in memory)."""
    parts = [tile.cpu().numpy().copy() for _, _, tile in kernel_tiles(source, queries, options, workspace)]
    return np.concatenate(parts, axis=1)


@dataclass
class Neighbours:
    """The ``k`` most similar train examples of every query: ``indices (Nq, k) int64`` (train
    indices, most similar first) and ``values (Nq, k) float32`` (their kernel values)."""

    indices: np.ndarray
    values: np.ndarray
    params: dict = field(default_factory=dict)
    runs: np.ndarray | None = None  # the population's run indices the kernel was computed from

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def head(self, k: int) -> "Neighbours":
        """The first ``k`` neighbours of every query."""
        if k > self.k:
            raise ValueError(f"asked for {k} neighbours, only {self.k} were kept")
        return Neighbours(self.indices[:, :k], self.values[:, :k], {**self.params, "k": k}, self.runs)


def kernel_topk(source: LogitSource, k: int, queries: str = "test", options: KernelOptions = KernelOptions(), workspace: Workspace | None = None) -> Neighbours:
    """The top-``k`` train examples of every query by kernel value, tile by tile of train
    examples (memory ``O(Nq x tile)``). With ``queries='train'`` an example is never its own
    neighbour. Ties come in no particular order."""
    n_train = source.size("train")
    candidates = n_train - (1 if queries == "train" else 0)
    if not 1 <= k <= candidates:
        raise ValueError(f"k must lie in 1..{candidates} (the train examples available as neighbours), got {k}")
    best_values = best_indices = None
    for start, stop, tile in kernel_tiles(source, queries, options, workspace):
        if queries == "train":
            rows = torch.arange(start, stop, device=tile.device)
            tile[rows, rows - start] = -math.inf
        kk = min(k, stop - start)
        values, indices = row_topk(tile, kk)
        indices += start
        if best_values is not None:
            values = torch.cat([best_values, values], dim=1)
            indices = torch.cat([best_indices, indices], dim=1)
            values, order = values.topk(min(k, values.shape[1]), dim=1)
            indices = indices.gather(1, order)
        best_values, best_indices = values, indices
        del tile
    params = {"k": k, "queries": queries, "runs": source.num_runs, **options.params()}
    return Neighbours(best_indices.cpu().numpy().astype(np.int64), best_values.cpu().numpy().astype(np.float32), params)


# --------------------------------------------------------------------- populations and store


def kernel_name(queries: str = "test", log_softmax: bool = True, classes: Sequence[int] | None = None) -> str:
    """Where :func:`save_neighbours` keeps neighbours computed with these options:
    ``analysis/kernel-<queries>[-raw][-class-<c>...]`` (raw: without the log-softmax)."""
    name = f"kernel-{queries}" + ("" if log_softmax else "-raw")
    if classes is not None:
        name += "-class-" + "-".join(str(int(c)) for c in classes)
    return name


def neighbours(
    pop: Population,
    k: int = 50,
    queries: str = "test",
    runs=None,
    log_softmax: bool = True,
    classes: Sequence[int] | None = None,
    precision: str = "float32",
    device: str = "cpu",
    memory_gb: float = 4.0,
    block_runs: int | None = None,
    workspace: Workspace | None = None,
) -> Neighbours:
    """Top-``k`` kernel neighbours among the train examples for every query example of ``pop``.

    ``runs``: None (every ok run), ``n`` (the first ``n`` ok runs) or run indices.
    ``workspace``: buffers to reuse across calls (see :class:`Workspace`).
    """
    source = PopulationLogits(pop, runs, ("train", "test") if queries == "test" else ("train",))
    options = KernelOptions(log_softmax, None if classes is None else tuple(classes), precision, device, memory_gb, block_runs)
    nb = kernel_topk(source, k, queries, options, workspace)
    nb.runs = source.runs
    nb.params["first_runs"] = bool(np.array_equal(source.runs, pop.run_indices("ok")[: source.num_runs]))
    return nb


def save_neighbours(pop: Population, nb: Neighbours, name: str | None = None) -> str:
    """Keep ``nb`` in the store under ``analysis/<name>`` (arrays ``indices``, ``values``;
    the parameters as attributes). Returns the group path."""
    name = name or kernel_name(nb.params.get("queries", "test"), nb.params.get("log_softmax", True), nb.params.get("classes"))
    group = pop.store.analysis_group(name, nb.params)
    group.create_array("indices", data=nb.indices)
    group.create_array("values", data=nb.values)
    if nb.runs is not None:
        group.create_array("runs", data=np.asarray(nb.runs, dtype=np.int64))
    return f"analysis/{name}"


def load_neighbours(pop: Population, name: str = "kernel-test") -> Neighbours:
    path = f"analysis/{name}"
    if path not in pop.store.group:
        raise StoreError(f"{pop.path}: no {path}; compute it with `manyruns kernel {pop.path}`")
    group = pop.store.group[path]
    runs = np.asarray(group["runs"][:]) if "runs" in group else None
    return Neighbours(np.asarray(group["indices"][:]), np.asarray(group["values"][:]), dict(group.attrs["params"]), runs)


def stored_or_computed(pop: Population, k: int, queries: str = "test", runs=None, log_softmax: bool = True, classes: Sequence[int] | None = None, **kwargs) -> Neighbours:
    """Neighbours kept by :func:`save_neighbours` when they were computed from the same runs
    with the same options and at least ``k`` neighbours; otherwise computed (not stored)."""
    name = kernel_name(queries, log_softmax, classes)
    if f"analysis/{name}" in pop.store.group:
        stored = load_neighbours(pop, name)
        if (
            stored.k >= k
            and stored.params.get("precision", "float32") == kwargs.get("precision", "float32")
            and stored.runs is not None
            and np.array_equal(stored.runs, select_runs(pop, runs))
        ):
            return stored.head(k)
    return neighbours(pop, k, queries, runs, log_softmax, classes, **kwargs)


def describe(nb: Neighbours) -> dict:
    """A short JSON-ready summary of a neighbour table."""
    top = nb.values[:, 0]
    return {
        **nb.params,
        "queries_count": int(nb.indices.shape[0]),
        "top1_mean": float(np.mean(top)),
        "top1_max": float(np.max(top)),
        "top1_min": float(np.min(top)),
    }


__all__ = [
    "ArrayLogits",
    "ColumnMoments",
    "KernelOptions",
    "LogitSource",
    "Neighbours",
    "PopulationLogits",
    "column_moments",
    "describe",
    "kernel_matrix",
    "kernel_tiles",
    "kernel_topk",
    "load_neighbours",
    "neighbours",
    "save_neighbours",
    "select_runs",
    "stored_or_computed",
]
