"""The RBF kernel computed block by block, never more than :data:`BLOCK_BYTES` of it at a time.

``K(x, y) = exp(-bandwidth * ||x - y||^2)`` on pixels scaled to [0, 1] (see :func:`pixels`).
Each block is ``exp(-bandwidth * (|a|^2 + |b|^2 - 2 a.b))``, the squared distance clipped at 0
against rounding. Where the matrix is symmetric, only the blocks on and above the diagonal are
computed, each used for both of its mirror images, so it is exactly symmetric (with ones on its
diagonal) at half the cost.

Blocks are computed in ``dtype``, float64 by default: a float32 kernel matrix of MNIST images
has errors of up to about 2e-6 per entry, which at N = 60,000 is estimated to reach the order
of its smallest eigenvalues.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK_BYTES = 128 * 2**20
"""Size of the temporary kernel blocks computed at a time (rows x columns)."""


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


def kernel_flops(n: int, dim: int) -> int:
    """Floating-point operations to build the ``n x n`` kernel matrix of ``dim``-pixel points:
    ``n^2 / 2`` distances (one triangle) at ``2 dim`` each."""
    return n * n * dim
