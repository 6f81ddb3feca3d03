"""One triangle of the kernel matrix in packed form: LAPACK's rectangular full packed layout.

A symmetric ``(N, N)`` kernel matrix kept as one triangle, ``N (N + 1) / 2`` numbers (the
matrix ``cg`` keeps when it fits in memory), computed block by block straight into packed
form; its product with ``v`` reads each stored number once.
"""

from __future__ import annotations

import numpy as np

from .kernel_blocks import BLOCK_BYTES, _rows_per_block, kernel_block


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
