"""Minimum-norm interpolation with an RBF kernel: fit the training set exactly, predict by argmax.

With ``K(x, y) = exp(-bandwidth * ||x - y||^2)`` on pixels scaled to [0, 1] and one-hot targets
``Y (N, C)``, the minimum-norm function through every training point is ``f(x) = K(x, X) A``
with ``K(X, X) A = Y``. A test image gets the class of its largest score.

Two solvers, both sized so that the full MNIST problem (60,000 training images) fits in
24 GB:

* ``exact``: a Cholesky factorization of ``K(X, X)`` that keeps one triangle, in block columns
  (:class:`BlockCholesky`): about ``N (N + 1024) / 2`` numbers, 14.6 GB in float64 for
  N = 60,000, where the full float64 matrix would take 28.8 GB. Float64 is the default
  because the MNIST kernel matrix is expected to be too ill-conditioned for a float32
  factorization at that size (its estimated condition number grows from about 2e5 at
  N = 2,000 to 2e7 at N = 15,000).
* ``cg``: preconditioned conjugate gradients in float64 on the C right-hand sides at once,
  with the kernel matrix kept in packed form (one triangle) when it fits in memory and with kernel blocks recomputed at
  every product otherwise (for sets whose matrix does not fit; :func:`interpolate` then warns,
  before any kernel is computed, with what that costs). The preconditioner solves
  exactly on blocks of nearby training points (k-means clusters). It stops at a relative
  residual of ``tol`` or after ``max_iter`` products. Its products are float64: a float32
  kernel matrix of MNIST images has errors of up to about 2e-6 per entry, which at N = 60,000
  is estimated to reach the order of its smallest eigenvalues.

Both report the relative residual ``||Y - K A||_F / ||Y||_F`` from a fresh float64 product
(not from the solver's own recursion), and the training error of ``argmax K A`` (zero for an interpolant).
Everything is checked before any heavy work: a bandwidth that is not positive, a subset larger
than the training set, a problem whose memory exceeds what the machine has available.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

SOLVERS = ("exact", "cg")
PRECISIONS = ("float64", "float32")
MATRIX_MODES = ("auto", "packed", "on-the-fly")
BLOCK_BYTES = 128 * 2**20
"""Size of the temporary kernel blocks computed at a time (rows x columns)."""
EXACT_BLOCK = 1024
"""Columns per block column of the exact solver's factor."""
PROCESS_BYTES = 300 * 2**20
"""Allowance for the interpreter and its libraries in memory estimates."""


# ------------------------------------------------------------------------------- kernel blocks


def pixels(images: np.ndarray, dtype=np.float64) -> np.ndarray:
    """``(N, C, H, W) uint8`` images to ``(N, C*H*W)`` rows with values in [0, 1]."""
    return (np.asarray(images).reshape(len(images), -1).astype(dtype)) / dtype(255)


def kernel_block(a: np.ndarray, sq_a: np.ndarray, b: np.ndarray, sq_b: np.ndarray, bandwidth: float, out: np.ndarray) -> np.ndarray:
    """Fill ``out (n_a, n_b)`` with ``exp(-bandwidth * ||a_i - b_j||^2)``, working in place.

    ``a (n_a, D)``, ``b (n_b, D)`` and ``out`` share one dtype; ``sq_a``, ``sq_b`` are the squared
    row norms. The squared distance is ``|a|^2 + |b|^2 - 2 a.b``, clipped at 0 against rounding.
    """
    dtype = out.dtype.type
    np.matmul(a, b.T, out=out)
    out *= dtype(2 * bandwidth)
    out -= (bandwidth * sq_a).astype(out.dtype)[:, None]
    out -= (bandwidth * sq_b).astype(out.dtype)[None, :]
    np.minimum(out, 0, out=out)
    np.exp(out, out=out)
    return out


def _rows_per_block(n_cols: int, itemsize: int, block_bytes: int = BLOCK_BYTES) -> int:
    return max(1, block_bytes // max(1, n_cols * itemsize))


def _square_block_size(n: int, itemsize: int, block_bytes: int = BLOCK_BYTES) -> int:
    return max(1, min(n, int(math.isqrt(block_bytes // itemsize))))


def kernel_matmul(
    rows: np.ndarray,
    cols: np.ndarray | None,
    v: np.ndarray,
    bandwidth: float,
    dtype=np.float64,
    block_bytes: int = BLOCK_BYTES,
) -> np.ndarray:
    """``K(rows, cols) @ v`` without forming the whole matrix: ``rows (n, D)``, ``cols (m, D)``,
    ``v (m, C)`` -> ``(n, C)`` float64, computed in ``dtype``.

    ``cols = None`` means ``cols = rows``: then only the blocks on and above the diagonal are
    computed, each used for both of its mirror images, so the product is with an exactly
    symmetric matrix (whose diagonal is exactly 1), at half the cost.
    """
    rows = np.asarray(rows, dtype=dtype)
    v = np.asarray(v, dtype=dtype)
    sq_r = np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
    itemsize = np.dtype(dtype).itemsize
    out = np.zeros((rows.shape[0], v.shape[1]), dtype=np.float64)
    if cols is None:
        n = rows.shape[0]
        b = _square_block_size(n, itemsize, block_bytes)
        buf = np.empty((b, b), dtype=dtype)
        for i in range(0, n, b):
            i1 = min(i + b, n)
            for j in range(i, n, b):
                j1 = min(j + b, n)
                blk = kernel_block(rows[i:i1], sq_r[i:i1], rows[j:j1], sq_r[j:j1], bandwidth, buf[: i1 - i, : j1 - j])
                if i == j:
                    _symmetrize_unit_diagonal(blk)
                    out[i:i1] += blk @ v[i:i1]
                else:
                    out[i:i1] += blk @ v[j:j1]
                    out[j:j1] += blk.T @ v[i:i1]
        return out
    cols = np.asarray(cols, dtype=dtype)
    sq_c = np.einsum("ij,ij->i", cols, cols, dtype=np.float64)
    step = _rows_per_block(cols.shape[0], itemsize, block_bytes)
    buf = np.empty((min(step, rows.shape[0]), cols.shape[0]), dtype=dtype)
    for i in range(0, rows.shape[0], step):
        j = min(i + step, rows.shape[0])
        out[i:j] = kernel_block(rows[i:j], sq_r[i:j], cols, sq_c, bandwidth, buf[: j - i]) @ v
    return out


def _symmetrize_unit_diagonal(square: np.ndarray) -> None:
    """Make a diagonal block of a kernel matrix exactly symmetric with ones on its diagonal
    (rounding in the products can differ between ``(i, j)`` and ``(j, i)``)."""
    n, strip = square.shape[0], 256
    for i in range(0, n, strip):
        i1 = min(i + strip, n)
        square[i:i1, :i] = square[:i, i:i1].T
        diagonal = square[i:i1, i:i1]
        below = np.tril_indices(i1 - i, -1)
        diagonal[below] = diagonal.T[below]
    np.fill_diagonal(square, 1)


def kernel_matrix(x: np.ndarray, bandwidth: float, dtype=np.float64, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """The full, exactly symmetric ``(N, N)`` kernel matrix of ``x (N, D)`` in ``dtype``: blocks
    on and above the diagonal are computed in place and mirrored below it."""
    x = np.asarray(x, dtype=dtype)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    n = x.shape[0]
    k = np.empty((n, n), dtype=dtype)
    b = _square_block_size(n, k.itemsize, block_bytes)
    for i in range(0, n, b):
        i1 = min(i + b, n)
        for j in range(i, n, b):
            j1 = min(j + b, n)
            blk = kernel_block(x[i:i1], sq[i:i1], x[j:j1], sq[j:j1], bandwidth, k[i:i1, j:j1])
            if i == j:
                _symmetrize_unit_diagonal(blk)
            else:
                k[j:j1, i:i1] = blk.T
    return k


# ------------------------------------------------------------------- rectangular full packed


def rfp_shape(n: int) -> tuple[int, int]:
    """Shape ``(k, ld)`` of the C-ordered array whose memory is LAPACK's rectangular full packed
    form (TRANSR = 'N', UPLO = 'L') of an ``n x n`` symmetric matrix: ``k * ld = n (n + 1) / 2``."""
    return (n // 2, n + 1) if n % 2 == 0 else ((n + 1) // 2, n)


class PackedKernel:
    """A symmetric ``(N, N)`` kernel matrix kept as one triangle, ``N (N + 1) / 2`` numbers, in
    LAPACK's rectangular full packed layout (TRANSR = 'N', UPLO = 'L').

    With ``h = ceil(N / 2)`` leading and ``t = N - h`` trailing points, the C-ordered ``(k, ld)``
    grid (see :func:`rfp_shape`) is made of three views, ``s = 1`` for even ``N`` and 0 for odd:

    * ``grid[:h, s:s+h]``: on and above its diagonal, ``K[:h, :h]`` (leading block);
    * ``grid[1-s : 1-s+t, :t]``: on and below its diagonal, ``K[h:, h:]`` (trailing block);
    * ``grid[:h, s+h : s+N]``: ``K[:h, h:]`` whole.

    (Read column-major, the grid is LAPACK's ``(ld, k)`` array.)
    """

    def __init__(self, data: np.ndarray, n: int):
        if data.ndim != 1 or data.size != n * (n + 1) // 2:
            raise ValueError(f"a packed {n} x {n} matrix holds {n * (n + 1) // 2} numbers, got shape {data.shape}")
        self.data = data
        self.n = n
        self.head = (n + 1) // 2
        self.tail = n - self.head
        self.shift = 1 if n % 2 == 0 else 0

    @property
    def grid(self) -> np.ndarray:
        return self.data.reshape(rfp_shape(self.n))

    @property
    def leading(self) -> np.ndarray:
        """``(h, h)``; its upper triangle is ``K[:h, :h]``'s."""
        return self.grid[: self.head, self.shift : self.shift + self.head]

    @property
    def trailing(self) -> np.ndarray:
        """``(t, t)``; its lower triangle is ``K[h:, h:]``'s."""
        first = 1 - self.shift
        return self.grid[first : first + self.tail, : self.tail]

    @property
    def cross(self) -> np.ndarray:
        """``K[:h, h:]``, ``(h, t)``."""
        start = self.shift + self.head
        return self.grid[: self.head, start : start + self.tail]

    @classmethod
    def build(cls, x: np.ndarray, bandwidth: float, dtype=np.float64, block_bytes: int = BLOCK_BYTES) -> "PackedKernel":
        """The kernel matrix of ``x (N, D)``, computed block by block straight into packed form."""
        x = np.asarray(x, dtype=dtype)
        n = x.shape[0]
        sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        packed = cls(np.empty(n * (n + 1) // 2, dtype=dtype), n)
        h, s = packed.head, packed.shift
        grid = packed.grid
        step = _rows_per_block(n, grid.itemsize, block_bytes)
        # Rows of K[:h, :] in place (row c at grid[c, s:s+N]). Their parts left of the diagonal
        # fall where the trailing triangle goes and are overwritten next.
        for i in range(0, h, step):
            j = min(i + step, h)
            kernel_block(x[i:j], sq[i:j], x, sq, bandwidth, grid[i:j, s : s + n])
        np.fill_diagonal(packed.leading, 1)
        trailing, t = packed.trailing, packed.tail
        xt, sqt = x[h:], sq[h:]
        buf = np.empty((min(step, max(t, 1)), t), dtype=dtype)
        for i in range(0, t, step):
            j = min(i + step, t)
            blk = kernel_block(xt[i:j], sqt[i:j], xt[:j], sqt[:j], bandwidth, buf[: j - i, :j])
            for r in range(i, j):
                trailing[r, : r + 1] = blk[r - i, : r + 1]
        np.fill_diagonal(trailing, 1)
        return packed

    def matmul(self, v: np.ndarray, leaf: int = 256) -> np.ndarray:
        """``K @ v`` for ``v (N, C)``, ``(N, C)`` float64, reading each stored number once."""
        v = np.asarray(v, dtype=self.data.dtype)
        h = self.head
        out = np.zeros((self.n, v.shape[1]), dtype=np.float64)
        _triangle_matmul(self.leading, True, v[:h], out[:h], leaf)
        _triangle_matmul(self.trailing, False, v[h:], out[h:], leaf)
        if self.tail:
            out[:h] += self.cross @ v[h:]
            out[h:] += self.cross.T @ v[:h]
        return out

    def to_dense(self) -> np.ndarray:
        """The whole ``(N, N)`` matrix (for small N)."""
        h = self.head
        dense = np.empty((self.n, self.n), dtype=self.data.dtype)
        lead = np.triu(self.leading)
        dense[:h, :h] = lead + np.triu(lead, 1).T
        trail = np.tril(self.trailing)
        dense[h:, h:] = trail + np.tril(trail, -1).T
        dense[:h, h:] = self.cross
        dense[h:, :h] = self.cross.T
        return dense


def _triangle_matmul(tri: np.ndarray, upper: bool, v: np.ndarray, out: np.ndarray, leaf: int = 256) -> None:
    """``out += S @ v`` for the symmetric ``S`` whose upper (or lower) triangle is ``tri``'s.

    Halves recursively: the off-diagonal quarter is a plain rectangle (used for both of its
    mirror images), and only diagonal pieces of at most ``leaf`` rows are copied to be
    symmetrized, so each stored number is read about once.
    """
    m = tri.shape[0]
    if m <= leaf:
        square = np.triu(tri) if upper else np.tril(tri)
        square += (np.triu(square, 1) if upper else np.tril(square, -1)).T
        out += square @ v
        return
    h = m // 2
    _triangle_matmul(tri[:h, :h], upper, v[:h], out[:h], leaf)
    _triangle_matmul(tri[h:, h:], upper, v[h:], out[h:], leaf)
    strip = tri[:h, h:] if upper else tri[h:, :h].T  # S[:h, h:]
    out[:h] += strip @ v[h:]
    out[h:] += strip.T @ v[:h]


# ----------------------------------------------------------------------------------- memory


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (``MemAvailable``; physical memory
    where the kernel does not say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 2**62


def peak_memory() -> int:
    """Peak resident memory of this process so far, in bytes (``VmHWM``; where the kernel does
    not say, ``ru_maxrss``, which Linux carries over from the parent across ``exec``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


@dataclass(frozen=True)
class MemoryPlan:
    """What a solve will hold in memory, in bytes, and where the CG products come from."""

    matrix: int
    """The kernel matrix: one triangle in block columns (``exact``) or packed (``cg`` when kept);
    0 when CG recomputes it at every product."""
    preconditioner: int
    """The inverses of the preconditioner blocks (``cg``)."""
    data: int
    """Pixels (train and test, float64), targets, solutions and CG's vectors."""
    blocks: int
    """Temporary kernel blocks, plus the update of one block column (``exact``) or the forming of
    one preconditioner block's inverse (``cg``)."""
    matrix_mode: str
    """block-columns (``exact``), packed (the matrix is kept) or on-the-fly (recomputed block by
    block at every product)."""
    available: int
    """The memory limit the plan was made for."""
    process: int = PROCESS_BYTES
    """The fixed allowance for the interpreter and its libraries."""

    @property
    def total(self) -> int:
        return self.matrix + self.preconditioner + self.data + self.blocks + self.process


def packed_bytes(n: int) -> int:
    """Bytes of one float64 triangle of an ``n x n`` matrix, ``n (n + 1) / 2`` numbers."""
    return n * (n + 1) // 2 * 8


def memory_plan(
    n_train: int,
    n_test: int,
    dim: int,
    classes: int,
    solver: str,
    precision: str = "float64",
    matrix: str = "auto",
    block_size: int = 4000,
    available: int | None = None,
    preconditioner: str = "block-jacobi",
) -> MemoryPlan:
    """Bytes a solve needs. For ``cg`` with ``matrix = 'auto'``: the packed float64 matrix is
    kept when everything fits in ``available`` (default: what the machine has now), and
    recomputed at every product otherwise. Temporary kernel blocks take at most
    :data:`BLOCK_BYTES` each, less when the whole ``n_train x max(n_train, n_test)`` product is smaller."""
    room = available_memory() if available is None else int(available)
    data = (n_train + n_test) * dim * 8 + 8 * n_train * classes * 8
    blocks = 3 * min(BLOCK_BYTES, 8 * n_train * max(n_train, n_test))
    if solver == "exact":
        itemsize = np.dtype(precision).itemsize
        update = n_train * min(EXACT_BLOCK, n_train) * itemsize  # the product subtracted from one block column
        return MemoryPlan(BlockCholesky.storage(n_train, EXACT_BLOCK, itemsize), 0, data, blocks + update, "block-columns", room)
    precond = 0
    if preconditioner == "block-jacobi":
        size = min(block_size, n_train)
        precond = math.ceil(n_train / size) * size * size * 8
        blocks += 2 * size * size * 8  # forming one block's inverse
    packed = packed_bytes(n_train)
    if matrix == "auto":
        matrix = "packed" if packed + precond + data + blocks + PROCESS_BYTES <= room else "on-the-fly"
    return MemoryPlan(packed if matrix == "packed" else 0, precond, data, blocks, matrix, room)


def describe_plan(plan: MemoryPlan, precision: str = "float64") -> str:
    """The parts of ``plan.total``, named, on one line."""
    if plan.matrix_mode == "block-columns":
        parts = [f"the {precision} kernel matrix (one triangle, in block columns) {format_bytes(plan.matrix)}"]
    elif plan.matrix_mode == "packed":
        parts = [f"the packed float64 kernel matrix {format_bytes(plan.matrix)}"]
    else:
        parts = ["no kernel matrix (recomputed at every product)"]
    if plan.preconditioner:
        parts.append(f"preconditioner blocks {format_bytes(plan.preconditioner)}")
    parts.append(f"temporary blocks {format_bytes(plan.blocks)}")
    parts.append(f"pixels and targets {format_bytes(plan.data)}")
    parts.append(f"a fixed {format_bytes(plan.process)} for the interpreter and its libraries")
    return ", ".join(parts)


def kernel_flops(n: int, dim: int) -> int:
    """Floating-point operations to build the ``n x n`` kernel matrix of ``dim``-pixel points:
    ``n^2 / 2`` distances (one triangle) at ``2 dim`` each."""
    return n * n * dim


def on_the_fly_warning(plan: MemoryPlan, n_train: int, dim: int, classes: int, max_iter: int) -> str:
    """One line for a CG solve whose matrix does not fit: every product recomputes the kernel
    blocks (the work of building the matrix, ``n^2 dim``, plus ``2 n^2 classes`` for the product)."""
    build = kernel_flops(n_train, dim)
    product = build + 2 * n_train * n_train * classes
    return (
        f"warning: the packed float64 kernel matrix of {n_train:,} training examples ({format_bytes(packed_bytes(n_train))}) "
        f"does not fit in the memory limit ({format_bytes(plan.available)}) beside the {format_bytes(plan.total)} the rest "
        f"of the solve holds, so every CG product recomputes kernel blocks, each about as costly as building the matrix "
        f"({build:.1e} FLOPs): up to {max_iter:,} products x {product:.1e} FLOPs = {max_iter * product:.1e} FLOPs; "
        "to keep the matrix, use --subset N or run with more memory"
    )


# ---------------------------------------------------------------------------------- solvers


@dataclass
class SolveInfo:
    """How a solve went: CG iterations and the residual its recursion saw, seconds per phase."""

    iterations: int | None = None
    converged: bool | None = None
    recursive_residual: float | None = None
    matrix_mode: str = ""
    timings: dict[str, float] = field(default_factory=dict)


class NotPositiveDefiniteError(ValueError):
    """A factorization met a non-positive pivot: the matrix is singular to working precision."""


class BlockCholesky:
    """The lower Cholesky factor ``L`` of a kernel matrix ``K = L L^T``, kept as block columns.

    Block column ``j`` holds rows ``s_j ..`` of columns ``s_j .. s_j + w_j`` (``s_j = j * block``):
    an ``(N - s_j, w_j)`` array whose top ``(w_j, w_j)`` square is the diagonal block. Together
    they hold one triangle plus half a block per column, about ``N (N + block) / 2`` numbers:
    14.6 GB in float64 for N = 60,000 where the full matrix would take 28.8 GB. The matrix is
    computed straight into this layout and factored in place, right-looking: each block
    column is factored (a small Cholesky and a triangular solve), then subtracted from the
    columns to its right with one matrix product per block column.
    """

    def __init__(self, columns: list[np.ndarray], block: int):
        self.columns = columns
        self.block = block
        self.n = columns[0].shape[0] if columns else 0

    @staticmethod
    def storage(n: int, block: int, itemsize: int = 8) -> int:
        """Bytes of the block columns of an ``n x n`` matrix."""
        return sum((n - s) * min(block, n - s) for s in range(0, n, block)) * itemsize

    @classmethod
    def factor_kernel(cls, x: np.ndarray, bandwidth: float, dtype=np.float64, block: int = 1024) -> "BlockCholesky":
        """Compute the kernel matrix of ``x (N, D)`` block column by block column and factor it.
        Raises :class:`NotPositiveDefiniteError`."""
        factor = cls.kernel(x, bandwidth, dtype, block)
        factor.factor()
        return factor

    @classmethod
    def kernel(cls, x: np.ndarray, bandwidth: float, dtype=np.float64, block: int = 1024) -> "BlockCholesky":
        """The (unfactored) kernel matrix of ``x (N, D)`` in block columns."""
        x = np.asarray(x, dtype=dtype)
        n = x.shape[0]
        sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        columns = []
        for s in range(0, n, block):
            e = min(s + block, n)
            column = kernel_block(x[s:], sq[s:], x[s:e], sq[s:e], bandwidth, np.empty((n - s, e - s), dtype=dtype))
            _symmetrize_unit_diagonal(column[: e - s])
            columns.append(column)
        return cls(columns, block)

    def to_dense(self) -> np.ndarray:
        """The lower triangle as a full ``(N, N)`` array (for small N)."""
        dense = np.zeros((self.n, self.n), dtype=self.columns[0].dtype if self.columns else np.float64)
        for j, column in enumerate(self.columns):
            s = j * self.block
            dense[s:, s : s + column.shape[1]] = column
        return np.tril(dense)

    def factor(self) -> None:
        from scipy.linalg import LinAlgError, cholesky, solve_triangular

        for j, column in enumerate(self.columns):
            w = column.shape[1]
            try:
                diagonal = cholesky(column[:w], lower=True, check_finite=False)
            except LinAlgError:
                raise NotPositiveDefiniteError(
                    f"the {self.n:,} x {self.n:,} kernel matrix is not positive definite in {column.dtype} "
                    f"(in the diagonal block at row {j * self.block:,}): near-duplicate training points make it "
                    "singular to working precision"
                ) from None
            column[:w] = diagonal
            below = column[w:]
            if not below.size:
                continue
            # below <- below L^-T, solved in place on its transpose (Fortran order, no copy)
            below[...] = solve_triangular(diagonal, below.T, lower=True, overwrite_b=True, check_finite=False).T
            offset = w
            for later in self.columns[j + 1 :]:
                width = later.shape[1]
                later -= below[offset - w :] @ below[offset - w : offset - w + width].T
                offset += width

    def solve(self, y: np.ndarray) -> np.ndarray:
        """``K^-1 y`` for ``y (N, C)``, by forward and back substitution; ``(N, C)`` float64."""
        from scipy.linalg import solve_triangular

        dtype = self.columns[0].dtype
        z = np.array(y, dtype=dtype, copy=True)
        for j, column in enumerate(self.columns):  # L z = y
            s, w = j * self.block, column.shape[1]
            z[s : s + w] = solve_triangular(column[:w], z[s : s + w], lower=True, check_finite=False)
            z[s + w :] -= column[w:] @ z[s : s + w]
        for j in reversed(range(len(self.columns))):  # L^T a = z
            column = self.columns[j]
            s, w = j * self.block, column.shape[1]
            rhs = z[s : s + w] - column[w:].T @ z[s + w :]
            z[s : s + w] = solve_triangular(column[:w], rhs, lower=True, trans="T", check_finite=False)
        return z.astype(np.float64)


def solve_exact(x: np.ndarray, targets: np.ndarray, bandwidth: float, precision: str = "float64", block: int = 1024) -> tuple[np.ndarray, SolveInfo]:
    """Solve ``K(x, x) A = targets`` by a Cholesky factorization held in block columns
    (see :class:`BlockCholesky`).

    ``x (N, D)`` pixels, ``targets (N, C)``; returns ``A (N, C)`` float64. The matrix is built
    and factored in place: the peak is about ``N (N + block) / 2`` numbers of ``precision``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    info = SolveInfo(matrix_mode="block-columns")
    t0 = time.perf_counter()
    factor = BlockCholesky.kernel(x, bandwidth, np.dtype(precision), block)
    info.timings["kernel"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        factor.factor()
    except NotPositiveDefiniteError as exc:
        hint = "; try --precision float64" if precision == "float32" else "; a larger bandwidth makes it better conditioned"
        raise NotPositiveDefiniteError(str(exc) + hint) from None
    info.timings["factor"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    solution = factor.solve(targets)
    info.timings["solve"] = time.perf_counter() - t0
    return solution, info


def cluster_blocks(x: np.ndarray, block_size: int, seed: int = 0) -> list[np.ndarray]:
    """Partition the rows of ``x (N, D)`` into blocks of at most ``block_size`` nearby points:
    k-means clusters, each cut into consecutive pieces when larger than ``block_size``."""
    n = x.shape[0]
    if n <= block_size:
        return [np.arange(n)]
    from sklearn.cluster import KMeans

    clusters = math.ceil(n / block_size)
    assign = KMeans(clusters, n_init=1, max_iter=20, random_state=seed).fit_predict(np.asarray(x, dtype=np.float32))
    blocks = []
    for c in range(clusters):
        members = np.flatnonzero(assign == c)
        blocks += [members[i : i + block_size] for i in range(0, members.size, block_size)]
    return [b for b in blocks if b.size]


class BlockJacobi:
    """The preconditioner ``M^-1 = blockdiag(K[b, b]^-1)`` over blocks ``b`` of training points.

    Near-duplicate points are what make ``K`` ill-conditioned; blocks of nearby points (see
    :func:`cluster_blocks`) hold most such pairs, so ``M`` removes most of the trouble. Each
    block's inverse is formed once, in float64, so applying ``M^-1`` is one product per block.
    """

    def __init__(self, x: np.ndarray, bandwidth: float, blocks: list[np.ndarray]):
        from scipy.linalg import lapack

        self.blocks = blocks
        self.inverses = []
        for idx in blocks:
            factor, status = lapack.dpotrf(kernel_matrix(x[idx], bandwidth, np.float64), lower=1, clean=1, overwrite_a=1)
            if status == 0:
                inverse, status = lapack.dpotri(factor, lower=1, overwrite_c=1)
            if status != 0:
                raise NotPositiveDefiniteError(
                    f"a preconditioner block of {idx.size} points is singular in float64; "
                    "use a smaller --block-size or --preconditioner none"
                )
            lower = np.tril(inverse)
            self.inverses.append(lower + np.tril(lower, -1).T)

    def __call__(self, r: np.ndarray) -> np.ndarray:
        z = np.empty_like(r)
        for idx, inverse in zip(self.blocks, self.inverses):
            z[idx] = inverse @ r[idx]
        return z


def conjugate_gradients(product, y: np.ndarray, precondition, tol: float, max_iter: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Preconditioned CG for ``K a = y``, one recursion per column of ``y (N, C)``, all advanced
    together. ``product(p)`` is ``K @ p``; ``precondition(r)`` is ``M^-1 r``. Stops when every
    column's ``||r|| / ||y||`` is at most ``tol`` or after ``max_iter`` products. Returns the
    solution, the iterations and the per-column relative residuals of the recursion."""
    y_norm = np.linalg.norm(y, axis=0)
    y_norm[y_norm == 0] = 1.0
    a = np.zeros_like(y)
    r = y.copy()
    z = precondition(r)
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    residual = np.linalg.norm(r, axis=0) / y_norm
    iterations = 0
    while iterations < max_iter and residual.max() > tol:
        q = product(p)
        pq = np.einsum("ij,ij->j", p, q)
        step = np.divide(rz, pq, out=np.zeros_like(rz), where=pq > 0)
        a += step * p
        r -= step * q
        iterations += 1
        residual = np.linalg.norm(r, axis=0) / y_norm
        z = precondition(r)
        rz_next = np.einsum("ij,ij->j", r, z)
        p = z + np.divide(rz_next, rz, out=np.zeros_like(rz), where=rz > 0) * p
        rz = rz_next
    return a, iterations, residual


def solve_cg(
    x: np.ndarray,
    targets: np.ndarray,
    bandwidth: float,
    tol: float = 1e-4,
    max_iter: int = 500,
    preconditioner: str = "block-jacobi",
    block_size: int = 4000,
    matrix: str = "auto",
) -> tuple[np.ndarray, SolveInfo]:
    """Solve ``K(x, x) A = targets`` (``x (N, D)``, ``targets (N, C)``) by conjugate gradients
    in float64. ``matrix``: 'packed' keeps the matrix (one triangle, as for ``exact``),
    'on-the-fly' recomputes it block by block at every product, 'auto' keeps it when it fits.
    ``preconditioner``: 'block-jacobi' (see :class:`BlockJacobi`) or 'none'."""
    if preconditioner not in ("block-jacobi", "none"):
        raise ValueError(f"preconditioner must be 'block-jacobi' or 'none', got {preconditioner!r}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    mode = memory_plan(x.shape[0], 0, x.shape[1], y.shape[1], "cg", matrix=matrix, block_size=block_size, preconditioner=preconditioner).matrix_mode
    info = SolveInfo(matrix_mode=mode)
    t0 = time.perf_counter()
    if mode == "packed":
        product = PackedKernel.build(x, bandwidth).matmul
    else:
        def product(p: np.ndarray) -> np.ndarray:
            return kernel_matmul(x, None, p, bandwidth)
    info.timings["kernel"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    precondition = BlockJacobi(x, bandwidth, cluster_blocks(x, block_size)) if preconditioner == "block-jacobi" else np.copy
    info.timings["preconditioner"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    a, info.iterations, residual = conjugate_gradients(product, y, precondition, tol, max_iter)
    info.timings["iterate"] = time.perf_counter() - t0
    info.converged = bool(residual.max() <= tol)
    y_norm = np.linalg.norm(y, axis=0)
    info.recursive_residual = float(np.linalg.norm(residual * y_norm) / np.linalg.norm(y))
    return a, info


# ---------------------------------------------------------------------------- the whole run


@dataclass
class InterpolationResult:
    """Outcome of one min-norm interpolation. Errors are fractions; memory in bytes."""

    dataset: str
    n_train: int
    n_test: int
    bandwidth: float
    solver: str
    precision: str
    test_error: float
    train_error: float
    """Error of ``argmax K A`` on the training set: 0 for an interpolant."""
    residual: float
    """``||Y - K A||_F / ||Y||_F``, from a fresh float64 product with the kernel matrix."""
    seconds: float
    peak_memory_bytes: int
    """Peak resident memory of the process (data loading included)."""
    memory_needed_bytes: int
    matrix_mode: str
    iterations: int | None = None
    converged: bool | None = None
    recursive_residual: float | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["test_error_percent"] = 100 * self.test_error
        out["peak_memory_gb"] = self.peak_memory_bytes / 1e9
        return out


def check_options(
    bandwidth: float,
    solver: str,
    precision: str = "float64",
    matrix: str = "auto",
    tol: float = 1e-4,
    max_iter: int = 500,
    preconditioner: str = "block-jacobi",
    block_size: int = 4000,
    memory_limit: int | None = None,
    subset: int | None = None,
) -> None:
    """Refuse bad options that need no data (ValueError naming the option)."""
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not math.isfinite(bandwidth) or bandwidth <= 0:
        raise ValueError(f"--bandwidth must be a positive number, got {bandwidth!r}")
    if solver not in SOLVERS:
        raise ValueError(f"--solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if matrix not in MATRIX_MODES:
        raise ValueError(f"--matrix must be one of {', '.join(MATRIX_MODES)}, got {matrix!r}")
    if preconditioner not in ("block-jacobi", "none"):
        raise ValueError(f"--preconditioner must be block-jacobi or none, got {preconditioner!r}")
    if not tol > 0:
        raise ValueError(f"--tol must be positive, got {tol!r}")
    if max_iter < 1:
        raise ValueError(f"--max-iter must be at least 1, got {max_iter!r}")
    if block_size < 1:
        raise ValueError(f"--block-size must be at least 1, got {block_size!r}")
    if memory_limit is not None and not memory_limit > 0:
        raise ValueError(f"--memory-limit must be positive, got {memory_limit!r} bytes")
    if subset is not None and subset < 1:
        raise ValueError(f"--subset must be at least 1, got {subset}")


def _refusal_hint(plan: MemoryPlan, solver: str, precision: str) -> str:
    if solver == "exact":
        return "use --subset N" + (", --precision float32" if precision == "float64" else "") + " or --solver cg"
    options = ["--subset N"]
    if plan.matrix_mode == "packed":
        options.append("--matrix on-the-fly (every product then recomputes the kernel)")
    if plan.preconditioner:
        options += ["a smaller --block-size", "--preconditioner none"]
    return "use " + (", ".join(options[:-1]) + " or " + options[-1] if len(options) > 1 else options[0])


def check_request(
    n_train: int,
    n_test: int,
    dim: int,
    classes: int,
    bandwidth: float,
    solver: str,
    precision: str = "float64",
    matrix: str = "auto",
    tol: float = 1e-4,
    max_iter: int = 500,
    preconditioner: str = "block-jacobi",
    block_size: int = 4000,
    memory_limit: int | None = None,
) -> MemoryPlan:
    """Refuse bad input before any heavy work (ValueError naming the option); returns what the
    solve will hold in memory. ``memory_limit``: bytes allowed (default: available now)."""
    check_options(bandwidth, solver, precision, matrix, tol, max_iter, preconditioner, block_size, memory_limit)
    if n_train < 1:
        raise ValueError("there must be at least one training example")
    plan = memory_plan(n_train, n_test, dim, classes, solver, precision, matrix, block_size, memory_limit, preconditioner)
    if plan.total > plan.available:
        raise ValueError(
            f"the {solver} solve on {n_train:,} training examples needs about {format_bytes(plan.total)} "
            f"({describe_plan(plan, precision)}) but {format_bytes(plan.available)} is available; {_refusal_hint(plan, solver, precision)}"
        )
    return plan


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def interpolate(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    bandwidth: float,
    solver: str = "exact",
    classes: int | None = None,
    precision: str = "float64",
    tol: float = 1e-4,
    max_iter: int = 500,
    preconditioner: str = "block-jacobi",
    block_size: int = 4000,
    matrix: str = "auto",
    memory_limit: int | None = None,
    dataset: str = "",
    warn: Callable[[str], None] = _to_stderr,
) -> InterpolationResult:
    """Min-norm RBF interpolation of one-hot ``y_train``, and its errors.

    ``x_train (N, D)``, ``x_test (T, D)``: pixels in [0, 1] (see :func:`pixels`); ``y_train (N,)``,
    ``y_test (T,)``: class indices. Options as in :func:`check_request`, :func:`solve_exact`
    and :func:`solve_cg`. ``warn`` gets one line, before any kernel is computed, when ``cg``
    with ``matrix = 'auto'`` has to recompute the kernel at every product (see
    :func:`on_the_fly_warning`); by default it goes to stderr.
    """
    t_start = time.perf_counter()
    n, dim = x_train.shape
    if classes is None:
        classes = int(max(np.max(y_train), np.max(y_test) if len(y_test) else 0)) + 1
    plan = check_request(n, len(x_test), dim, classes, bandwidth, solver, precision, matrix, tol, max_iter, preconditioner, block_size, memory_limit)
    if solver == "cg" and matrix == "auto" and plan.matrix_mode == "on-the-fly":
        warn(on_the_fly_warning(plan, n, dim, classes, max_iter))
    x_train = np.ascontiguousarray(x_train, dtype=np.float64)
    y_train = np.asarray(y_train, dtype=np.int64)
    targets = np.eye(classes)[y_train]
    if solver == "exact":
        alpha, info = solve_exact(x_train, targets, bandwidth, precision)
    else:
        alpha, info = solve_cg(x_train, targets, bandwidth, tol, max_iter, preconditioner, block_size, plan.matrix_mode)
    t0 = time.perf_counter()
    train_scores = kernel_matmul(x_train, None, alpha, bandwidth)
    info.timings["residual"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    test_scores = kernel_matmul(np.asarray(x_test, dtype=np.float64), x_train, alpha, bandwidth)
    info.timings["predict"] = time.perf_counter() - t0
    return InterpolationResult(
        dataset=dataset,
        n_train=n,
        n_test=len(x_test),
        bandwidth=float(bandwidth),
        solver=solver,
        precision=precision if solver == "exact" else "float64",
        test_error=float(np.mean(test_scores.argmax(1) != np.asarray(y_test))) if len(y_test) else float("nan"),
        train_error=float(np.mean(train_scores.argmax(1) != y_train)),
        residual=float(np.linalg.norm(targets - train_scores) / np.linalg.norm(targets)),
        seconds=time.perf_counter() - t_start,
        peak_memory_bytes=peak_memory(),
        memory_needed_bytes=plan.total,
        matrix_mode=info.matrix_mode,
        iterations=info.iterations,
        converged=info.converged,
        recursive_residual=info.recursive_residual,
        timings={k: round(v, 3) for k, v in info.timings.items()},
    )


def interpolate_dataset(
    name: str,
    bandwidth: float,
    solver: str = "exact",
    subset: int | None = None,
    data_dir: str | os.PathLike | None = None,
    **options,
) -> InterpolationResult:
    """:func:`interpolate` on a named dataset (``digits``, ``mnist``, ...): the first ``subset``
    training images (default: all) and every test image. Options that need no data are
    checked before the dataset is loaded, the rest before the pixels are converted or any
    kernel computed."""
    from ..data import load_dataset

    checked = {k: options[k] for k in ("precision", "matrix", "tol", "max_iter", "preconditioner", "block_size", "memory_limit") if k in options}
    check_options(bandwidth, solver, subset=subset, **checked)
    data = load_dataset(name, data_dir)
    if subset is not None and subset > data.n_train:
        raise ValueError(f"--subset {subset:,} exceeds the {data.n_train:,} training examples of {name}")
    n = data.n_train if subset is None else subset
    check_request(n, data.n_test, int(np.prod(data.input_shape)), data.num_classes, bandwidth, solver, **checked)
    return interpolate(
        pixels(data.x_train[:n]),
        data.y_train[:n],
        pixels(data.x_test),
        data.y_test,
        bandwidth,
        solver,
        classes=data.num_classes,
        dataset=name,
        **options,
    )
