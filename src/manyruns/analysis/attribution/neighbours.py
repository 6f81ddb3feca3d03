"""Ridge datamodels restricted to each test example's kernel neighbours.

Plain ridge (:mod:`.datamodels`) spreads ``R`` noisy runs over all ``N`` training examples,
while most of a test example's attribution sits on the few training examples the runs treat
like it. The ensemble kernel of the same fit runs names those examples, so for test example
``z`` with training examples ``c_1, c_2, ...`` in decreasing kernel value (:func:`kernel_topk`),
fit, for every size ``k`` in ``sizes`` and relative penalty ``a`` in ``alphas``::

    f_r(z) ~ b + sum_{j <= k} w_j m_r(c_j),   min ||y - 1 b - X_k w||^2 + lambda ||w||^2,
    lambda = a * trace(X_k^T X_k) / k          (X_k: the centered masks of c_1..c_k, (R, k))

choose ``(k, a)`` per test example by the squared error on the last ``holdout`` share of the
fit runs, refit on all of them, and set ``tau_{c_j}(z) = w_j`` and ``tau_i(z) = 0`` for every
other ``i``. The penalty is scaled as in :func:`.datamodels.fit_ridge`, per column instead of
per run (``trace(X^T X) = trace(X X^T)``).

Memory: the masks ``(R, N)`` bool, the neighbours ``(T, K)`` int64 (``K = max(sizes)``), per
test example one ``(R, K)`` float32 gather and a ``(K, K)`` float64 Gram; the ``(T, N)`` float32
scores. Time per test example: ``R K^2`` for the Gram (float32, exact for 0/1 masks while
``R < 2^24``) and ``sum_k k^3`` for the eigendecompositions that give every penalty at once.
Solves in float64.
"""

from __future__ import annotations

import numpy as np


def fit_neighbour_ridge(masks: np.ndarray, outputs: np.ndarray, neighbours: np.ndarray, sizes: tuple[int, ...], alphas: tuple[float, ...],
                        holdout: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(scores (T, N) float32, intercept (T,), size (T,), alpha (T,))`` from masks ``(R, N)``,
    outputs ``(R, T)`` and each test example's neighbours ``(T, K)``, most similar first (see
    the module). With fewer than 4 runs nothing is held out: the largest size and the first
    penalty."""
    R, N = masks.shape
    T = outputs.shape[1]
    sizes = tuple(sorted(set(int(k) for k in sizes)))
    n_val = max(1, int(round(holdout * R))) if R >= 4 else 0
    n_fit = R - n_val
    scores = np.zeros((T, N), dtype=np.float32)
    intercept = np.zeros(T)
    chosen_size = np.zeros(T, dtype=np.int64)
    chosen_alpha = np.zeros(T)
    for z in range(T):
        cols = neighbours[z, : sizes[-1]]
        X = masks[:, cols].astype(np.float32)  # (R, K)
        y = np.asarray(outputs[:, z], dtype=np.float64)
        gram_fit = (X[:n_fit].T @ X[:n_fit]).astype(np.float64)  # raw sums, exact in float32
        k, a = sizes[-1], alphas[0]
        if n_val and (len(sizes) > 1 or len(alphas) > 1):
            k, a = _choose(X, y, gram_fit, n_fit, sizes, alphas)
        gram = gram_fit + (X[n_fit:].T @ X[n_fit:]).astype(np.float64)
        w, b = _solve(gram[:k, :k], X[:, :k].sum(0, dtype=np.float64), X[:, :k].T.astype(np.float64) @ y, y.sum(), R, a)
        scores[z, cols[:k]] = w
        intercept[z], chosen_size[z], chosen_alpha[z] = b, k, a
    return scores, intercept, chosen_size, chosen_alpha


def _solve(gram: np.ndarray, col_sums: np.ndarray, xty: np.ndarray, y_sum: float, R: int, a: float) -> tuple[np.ndarray, float]:
    """Ridge with an intercept from raw sums: the centered Gram ``G - s s^T / R`` and
    ``X_c^T y = X^T y - s sum(y) / R``; returns ``(w, b)``."""
    g = gram - np.outer(col_sums, col_sums) / R
    k = g.shape[0]
    if np.trace(g) <= 0:  # the candidates were in every run or in none: nothing to fit
        return np.zeros(k), y_sum / R
    lam = a * np.trace(g) / k
    w = np.linalg.solve(g + lam * np.eye(k), xty - col_sums * y_sum / R)
    return w, y_sum / R - col_sums @ w / R


def _choose(X: np.ndarray, y: np.ndarray, gram_fit: np.ndarray, n_fit: int, sizes: tuple[int, ...], alphas: tuple[float, ...]) -> tuple[int, float]:
    """The ``(size, alpha)`` of least squared error on the runs after ``n_fit``, each size's
    penalties from one eigendecomposition of its centered Gram on the runs before."""
    Xf, yf = X[:n_fit].astype(np.float64), y[:n_fit]
    col_mean, y_mean = Xf.mean(0), yf.mean()
    xty = Xf.T @ (yf - y_mean)
    Xv, yv = X[n_fit:].astype(np.float64) - col_mean, y[n_fit:] - y_mean
    best = (np.inf, sizes[-1], alphas[0])
    for k in sizes:
        g = gram_fit[:k, :k] - n_fit * np.outer(col_mean[:k], col_mean[:k])
        s, U = np.linalg.eigh(g)
        proj, Xv_u = U.T @ xty[:k], Xv[:, :k] @ U
        scale = np.trace(g) / k
        if scale <= 0:
            continue
        for a in alphas:
            err = float(np.mean((yv - Xv_u @ (proj / (s + a * scale))) ** 2))
            if err < best[0]:
                best = (err, k, a)
    return best[1], best[2]
