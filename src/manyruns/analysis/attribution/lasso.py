"""LASSO datamodels: per test example, an L1-penalized linear model of the output on the mask.

For test example ``z``, with the centered masks ``X (R, K)`` of its candidate training examples
(all ``N``, or with ``neighbours`` its ``K`` nearest by the ensemble kernel of the fit runs)
and the centered outputs ``y (R,)``::

    min_w  1 / (2 R) ||y - X w||^2 + alpha ||w||_1,     alpha = a * alpha_max,
    alpha_max = max_j |X_j^T y| / R     (the smallest alpha at which every weight is zero)

``a`` is chosen per test example among ``alphas`` by the squared error on the last ``holdout``
share of the fit runs (one path, fitted on the runs before, warm-started from the largest
penalty), then the model is refitted on all runs at that ``a``; the intercept is the mean
output less the weighted mean mask. Most training examples get exactly zero: the datamodel
names the few that move the output.

Solver: scikit-learn's coordinate descent (``lasso_path``) on the precomputed ``(K, K)`` Gram
matrix, in float64, to a duality gap of ``tol`` times ``||y||^2`` or ``max_iter`` sweeps.
Memory: the masks, one ``(R, K)`` float64 gather and the Gram per test example (computed once
for all of them without neighbours: ``8 N^2`` bytes, so :func:`.datamodels.datamodels` asks for
neighbours above ``MAX_COLUMNS`` training examples), and the ``(T, N)`` float32 scores. Time:
each coordinate sweep costs ``K^2`` per test example, so on thousands of training examples
prefer neighbours (``K`` of a few hundred).
"""

from __future__ import annotations

import warnings

import numpy as np

MAX_COLUMNS = 10_000  # without neighbours: a Gram matrix of 8 N^2 bytes (0.8 GB at this size)


def fit_lasso(masks: np.ndarray, outputs: np.ndarray, columns: np.ndarray | None, alphas: tuple[float, ...], holdout: float,
              max_iter: int = 10000, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scores (T, N) float32, intercept (T,), chosen a (T,))`` from masks ``(R, N)``, outputs
    ``(R, T)`` and each test example's candidate columns ``(T, K)`` (``None``: all ``N``); see
    the module. With fewer than 4 runs nothing is held out and the smallest ``a`` is used."""
    R, N = masks.shape
    T = outputs.shape[1]
    fractions = tuple(sorted({float(a) for a in alphas}, reverse=True))
    n_val = max(1, int(round(holdout * R))) if R >= 4 else 0
    n_fit = R - n_val
    scores = np.zeros((T, N), dtype=np.float32)
    intercept = np.zeros(T)
    chosen = np.full(T, fractions[-1])
    choose = bool(n_val) and len(fractions) > 1

    def designs(X: np.ndarray) -> tuple[tuple | None, tuple]:
        return (_centered(X[:n_fit]) if choose else None), _centered(X)

    X_all = masks.astype(np.float64) if columns is None else None
    shared = designs(X_all) if columns is None else None  # one candidate set for every test example: centered once
    for z in range(T):
        cols = np.arange(N) if columns is None else columns[z]
        X = X_all if columns is None else masks[:, cols].astype(np.float64)
        fit_part, full = shared if shared is not None else designs(X)
        y = np.asarray(outputs[:, z], dtype=np.float64)
        if choose:
            w, b = _path(fit_part, y[:n_fit], fractions, max_iter, tol)
            errors = ((y[n_fit:, None] - X[n_fit:] @ w - b) ** 2).mean(0)
            chosen[z] = fractions[int(np.argmin(errors))]
        w, b = _path(full, y, (chosen[z],), max_iter, tol)
        scores[z, cols] = w[:, 0]
        intercept[z] = b[0]
    return scores, intercept, chosen


def _centered(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X - mean, mean, Gram of the centered X)``: what every path on these columns needs."""
    mean = X.mean(0)
    Xc = X - mean
    return Xc, mean, Xc.T @ Xc


def _path(design: tuple[np.ndarray, np.ndarray, np.ndarray], y: np.ndarray, fractions: tuple[float, ...], max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``(K, A)`` and intercepts ``(A,)`` at ``a * alpha_max`` for each ``a`` of
    ``fractions`` (largest first), on the centered columns ``design`` (:func:`_centered`)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import lasso_path

    Xc, mx, gram = design
    my = y.mean()
    yc = y - my
    xy = Xc.T @ yc
    alpha_max = float(np.abs(xy).max()) / Xc.shape[0]
    if alpha_max == 0.0:  # the candidates never varied, or the output did not: nothing to fit
        return np.zeros((Xc.shape[1], len(fractions))), np.full(len(fractions), my)
    with warnings.catch_warnings():  # near-collinear candidates may stop at max_iter sweeps, a duality gap near tol
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, coefs, _ = lasso_path(Xc, yc, alphas=alpha_max * np.asarray(fractions), precompute=gram, Xy=xy, max_iter=max_iter, tol=tol)
    return coefs, my - mx @ coefs
