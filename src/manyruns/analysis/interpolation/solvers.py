"""The two solvers of ``K(X, X) A = Y``, both sized so that the full MNIST problem (60,000
training images) fits in 24 GB:

* ``exact``: a Cholesky factorization of ``K(X, X)`` that keeps one triangle, in block columns
  (:class:`BlockCholesky`): about ``N (N + 1024) / 2`` numbers, 14.6 GB in float64 for
  N = 60,000, where the full float64 matrix would take 28.8 GB. Float64 is the default
  because the MNIST kernel matrix is expected to be too ill-conditioned for a float32
  factorization at that size (its estimated condition number grows from about 2e5 at
  N = 2,000 to 2e7 at N = 15,000).
* ``cg``: preconditioned conjugate gradients in float64 on the C right-hand sides at once,
  with the kernel matrix kept in packed form (one triangle) when it fits in memory and with kernel blocks recomputed at
  every product otherwise. The preconditioner solves exactly on blocks of nearby training
  points (k-means clusters). It stops at a relative residual of ``tol`` or after ``max_iter``
  products. Its products are float64: a float32 kernel matrix of MNIST images has errors of
  up to about 2e-6 per entry, which at N = 60,000 is estimated to reach the order of its
  smallest eigenvalues.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ...errors import ComputationError

from .kernel_blocks import _symmetrize_unit_diagonal, kernel_block, kernel_matmul, kernel_matrix
from .packed import PackedKernel

PRECISIONS = ("float64", "float32")
EXACT_BLOCK = 1024
"""Columns per block column of the exact solver's factor."""


@dataclass
class SolveInfo:
    """How a solve went: CG iterations and the residual its recursion saw, seconds per phase."""

    iterations: int | None = None
    converged: bool | None = None
    recursive_residual: float | None = None
    matrix_mode: str = ""
    timings: dict[str, float] = field(default_factory=dict)


class NotPositiveDefiniteError(ComputationError):
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
        hint = "; try precision float64 (--precision float64)" if precision == "float32" else "; a larger bandwidth makes it better conditioned"
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
                    "use smaller preconditioner blocks (preconditioner_block, --preconditioner-block) or no preconditioner"
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
    from .memory import memory_plan  # here, not at the top: memory imports this module (for BlockCholesky.storage)

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
