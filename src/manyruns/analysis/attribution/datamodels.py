"""Datamodels: per test example, a linear model of a run's output on its training subset.

For fit runs ``r = 1..R`` with subset masks ``m_r (N,)`` (1: trained on the example) and
outputs ``f_r (T,)`` (:mod:`.outputs`), the score of training example ``i`` for test example
``z`` is ``tau_i(z)`` in ``f_r(z) ~ b(z) + sum_i tau_i(z) m_r(i)``:

* ``diffmeans``: ``tau_i(z) = mean_{r: m_r(i)=1} f_r(z) - mean_{r: m_r(i)=0} f_r(z)``, the
  held-out influence estimator for any output (NaN where ``i`` was always or never in). One
  pass over the runs: ``sum_r m_r f_r^T`` by a product per block, in float32 about a shift
  (the first block's mean), so memory is the ``(N, T)`` sums, whatever ``R``; the scores are
  computed in place of the sums (2.4 GB at 60,000 x 10,000, measured peak 2.6 GB).
* ``ridge``: ridge regression with an intercept, ``min ||Y - 1 b - X W||^2 + lambda ||W||^2``
  over the centered masks ``X (R, N)`` and outputs ``Y (R, T)``, solved in the dual form
  ``W = X^T (X X^T + lambda I)^{-1} Y`` (runs are fewer than training examples) through one
  eigendecomposition of the ``(R, R)`` Gram matrix, which gives every penalty at once.
  ``lambda = a * trace(X X^T) / R`` with ``a`` from ``alphas``, chosen by the squared error on
  the last ``holdout`` share of the fit runs, then refitted on all of them. Memory: ``X`` in
  float32 (``4 R N`` bytes), the Gram matrix and the ``(N, T)`` float32 scores.
* ``ridge`` with ``neighbours``: each test example's ridge on its ``k`` nearest training
  examples by the ensemble kernel of the same fit runs only, ``k`` chosen per test example with
  the penalty (:mod:`.neighbours`); far fewer weights for the same runs.
* ``lasso``: per test example an L1-penalized fit, the penalty a fraction of the one that zeros
  every weight, chosen on held-out fit runs (:mod:`.lasso`); with ``neighbours`` on the largest
  number of kernel neighbours given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ...errors import InputError, OptionError, check_choice, check_number
from ...population import Population
from ...streaming import run_blocks
from ..contract import Options, Result, options_of
from .lasso import MAX_COLUMNS, fit_lasso
from .neighbours import fit_neighbour_ridge
from .outputs import OUTPUTS, masks_and_outputs, model_output

ESTIMATORS = ("ridge", "diffmeans", "lasso")
RIDGE_ALPHAS = (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)  # relative to the mean squared norm of a centered mask
LASSO_ALPHAS = (0.8, 0.65, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02)  # fractions of the penalty that zeros every weight


@dataclass(frozen=True, kw_only=True)
class DatamodelOptions(Options):
    """``output``: margin, neg_loss or prob (:mod:`.outputs`); ``estimator``: ridge, diffmeans
    or lasso; ``alphas``: the penalties tried (default: ``RIDGE_ALPHAS``, relative to the mean
    squared norm of a centered mask; for lasso ``LASSO_ALPHAS``, fractions in (0, 1] of the
    penalty that zeros every weight); ``holdout``: share of the fit runs that choose the
    penalty; ``neighbours``: with ridge, the numbers of kernel neighbours tried per test example,
    with lasso the largest is used (empty: every training example); ``block_size``: runs read at
    a time; ``runs``: the fit runs."""

    output: str = "margin"
    estimator: str = "ridge"
    alphas: tuple[float, ...] | None = None
    holdout: float = 0.1
    neighbours: tuple[int, ...] = ()
    block_size: int = 64

    def validate(self) -> None:
        super().validate()
        check_choice("output", self.output, OUTPUTS)
        check_choice("estimator", self.estimator, ESTIMATORS)
        lasso = self.estimator == "lasso"
        default = LASSO_ALPHAS if lasso else RIDGE_ALPHAS
        object.__setattr__(self, "alphas", tuple(float(a) for a in (default if self.alphas is None else self.alphas)))
        if not self.alphas:
            raise OptionError("alphas", "give at least one penalty")
        for a in self.alphas:
            check_number("alphas", a, 0, 1 if lasso else None, low_open=True)
        check_number("holdout", self.holdout, 0, 0.5, low_open=True)
        object.__setattr__(self, "neighbours", tuple(self.neighbours))
        for k in self.neighbours:
            check_number("neighbours", k, 1, integer=True)
        if self.neighbours and self.estimator == "diffmeans":
            raise OptionError("neighbours", "apply to the ridge and lasso estimators, not diffmeans")
        check_number("block_size", self.block_size, 1, integer=True)


@dataclass(kw_only=True)
class DatamodelResult(Result):
    """``scores (T, N) float32``: ``tau_i(z)``; ``intercept (T,)``; ``alpha``: the chosen
    relative penalty (ridge) and ``validation`` its held-out error per alpha; with neighbours,
    ``neighbours (T,)`` and ``alphas (T,)``: the size and penalty chosen per test example
    (``alpha`` their median)."""

    name = "datamodels"
    scores: np.ndarray
    intercept: np.ndarray
    alpha: float | None = None
    validation: dict = field(default_factory=dict)
    neighbours: np.ndarray | None = None
    alphas: np.ndarray | None = None
    options: DatamodelOptions = field(default_factory=DatamodelOptions)

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, values)``, each ``(T, k)``: the ``k`` largest scores per test example."""
        s = np.where(np.isfinite(self.scores), self.scores, -np.inf)
        idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return idx, np.take_along_axis(self.scores, idx, 1)

    def table(self) -> pd.DataFrame:
        idx, val = self.top(min(10, self.scores.shape[1]))
        T, k = idx.shape
        return pd.DataFrame({"test_index": np.repeat(np.arange(T), k), "rank": np.tile(np.arange(1, k + 1), T), "train_index": idx.ravel(), "score": val.ravel()})

    def _summary(self) -> dict:
        out = {"output": self.options.output, "estimator": self.options.estimator, "shape": list(self.scores.shape), "alpha": self.alpha, "validation": self.validation}
        if self.neighbours is not None:
            out["neighbours"] = {"tried": list(self.options.neighbours), "median": float(np.median(self.neighbours)),
                                 "chosen": {str(k): int(c) for k, c in zip(*np.unique(self.neighbours, return_counts=True))}}
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {"scores": self.scores, "intercept": self.intercept}


def fit_diffmeans(masks: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (T, N), intercept (T,))`` from masks ``(R, N)`` and outputs ``(R, T)`` held in memory."""
    acc = DiffMeans(masks.shape[1], outputs.shape[1])
    acc.add(masks, outputs)
    return acc.finish()


class DiffMeans:
    """The streaming difference of means (see the module): ``add`` blocks, then ``finish``."""

    def __init__(self, n: int, t: int):
        self.sum_in = np.zeros((n, t), dtype=np.float32)
        self.n_in = np.zeros(n, dtype=np.int64)
        self.total = np.zeros(t)
        self.runs = 0
        self.shift: np.ndarray | None = None

    def add(self, masks: np.ndarray, outputs: np.ndarray) -> None:
        if self.shift is None:
            self.shift = outputs.mean(0)
        m = masks.astype(np.float32)
        centered = outputs - self.shift
        c32 = centered.astype(np.float32)
        for rows in _row_blocks(self.sum_in):  # product temporaries of ROWS x T, not N x T
            self.sum_in[rows] += m[:, rows].T @ c32
        self.n_in += masks.sum(0).astype(np.int64)
        self.total += centered.sum(0)
        self.runs += masks.shape[0]

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (T, N), intercept (T,))``; the scores overwrite the sums in place (a
        transposed view of them), so the peak stays at the sums' size."""
        n_out = self.runs - self.n_in
        total = self.total.astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            inv_in = (1.0 / self.n_in).astype(np.float32)[:, None]
            inv_out = (1.0 / n_out).astype(np.float32)[:, None]
            for rows in _row_blocks(self.sum_in):
                s = self.sum_in[rows]
                # mean_in - mean_out = s / n_in - (total - s) / n_out
                s *= inv_in[rows] + inv_out[rows]
                s -= total[None, :] * inv_out[rows]
        self.sum_in[(self.n_in == 0) | (n_out == 0)] = np.nan
        return self.sum_in.T, (self.total / max(self.runs, 1) + (0 if self.shift is None else self.shift))


def _row_blocks(a: np.ndarray, elements: int = 1 << 24):
    """Row slices of ``a`` holding about ``elements`` entries each (64 MB of float32)."""
    step = max(1, elements // max(1, a.shape[1]))
    for start in range(0, a.shape[0], step):
        yield slice(start, start + step)


def fit_ridge(masks: np.ndarray, outputs: np.ndarray, alphas: tuple[float, ...], holdout: float) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """``(scores (T, N), intercept (T,), alpha, validation error per alpha)`` (see the module)."""
    R = masks.shape[0]
    n_val = max(1, int(round(holdout * R))) if R >= 4 else 0
    errors = {}
    if n_val and len(alphas) > 1:
        Xa, Ya = masks[: R - n_val], outputs[: R - n_val]
        mx, my = Xa.mean(0), Ya.mean(0)
        X = (Xa - mx).astype(np.float32)
        G = (X @ X.T).astype(np.float64)
        s, U = np.linalg.eigh(G)
        UtY = U.T @ (Ya - my)
        Xv = (masks[R - n_val :] - mx).astype(np.float32)
        K = (Xv @ X.T).astype(np.float64) @ U  # (n_val, R')
        scale = np.trace(G) / G.shape[0]
        for a in alphas:
            pred = my + K @ (UtY / (s + a * scale)[:, None])
            errors[a] = float(np.mean((outputs[R - n_val :] - pred) ** 2))
        alpha = min(errors, key=errors.get)
    else:
        alpha = alphas[0] if len(alphas) == 1 else 1.0
    mx, my = masks.mean(0), outputs.mean(0)
    X = (masks - mx).astype(np.float32)
    G = (X @ X.T).astype(np.float64)
    lam = alpha * np.trace(G) / R
    dual = np.linalg.solve(G + lam * np.eye(R), outputs - my)  # (R, T)
    W = X.T @ dual.astype(np.float32)  # (N, T) float32, the one array of that size
    intercept = my - (mx.astype(np.float32) @ W).astype(np.float64)
    return W.T, intercept, float(alpha), {str(a): e for a, e in errors.items()}


def _varied(pop: Population, runs: np.ndarray, options: DatamodelOptions) -> tuple[np.ndarray, np.ndarray]:
    """The runs' masks and outputs, refused when every run trained on the same examples."""
    masks, outs = masks_and_outputs(pop, runs, options.output, options.block_size)
    if not (masks != masks[:1]).any():
        raise OptionError("runs", f"selects {runs.size} runs that all trained on the same examples; ridge needs runs on different subsets")
    return masks, outs


def datamodels(pop: Population, options: DatamodelOptions | None = None, **fields) -> DatamodelResult:
    """Fit the datamodels of every test example of ``pop`` on the selected runs (see the module)."""
    options = options_of(DatamodelOptions, options, fields)
    runs = pop.select(options.runs)
    if "mask/train" not in pop.arrays or "logits/test" not in pop.arrays:
        raise InputError(f"{pop.path}: datamodels need mask/train and logits/test (runs on random subsets that record test logits)")
    labels = pop.targets("test")
    if runs.size < 2:
        raise OptionError("runs", f"selects {runs.size} run; datamodels need at least 2 runs on different subsets")
    alpha, validation, chosen = None, {}, {}
    if options.neighbours:
        n_train = int(pop.layout["n_train"])
        if max(options.neighbours) > n_train:
            raise OptionError("neighbours", f"must be at most the {n_train:,} training examples, got {max(options.neighbours)}")
        from ..kernel import PopulationLogits, kernel_topk

        masks, outs = _varied(pop, runs, options)
        near = kernel_topk(PopulationLogits(pop, runs, ("train", "test")), max(options.neighbours), "test").indices
        if options.estimator == "lasso":
            scores, intercept, alphas = fit_lasso(masks, outs, near, options.alphas, options.holdout)
            sizes = np.full(alphas.size, near.shape[1])
        else:
            scores, intercept, sizes, alphas = fit_neighbour_ridge(masks, outs, near, options.neighbours, options.alphas, options.holdout)
        alpha, chosen = float(np.median(alphas)), {"neighbours": sizes, "alphas": alphas}
    elif options.estimator == "diffmeans":
        acc = DiffMeans(int(pop.layout["n_train"]), labels.size)
        for block in run_blocks(runs, options.block_size):
            acc.add(pop.read("mask/train", block).astype(bool), model_output(pop.read("logits/test", block), labels, options.output))
        scores, intercept = acc.finish()
    elif options.estimator == "lasso":
        n_train = int(pop.layout["n_train"])
        if n_train > MAX_COLUMNS:
            raise OptionError("neighbours", f"are needed for lasso on {n_train:,} training examples (all of them would take a Gram matrix of {8 * n_train**2 / 1e9:.0f} GB)")
        masks, outs = _varied(pop, runs, options)
        scores, intercept, alphas = fit_lasso(masks, outs, None, options.alphas, options.holdout)
        alpha, chosen = float(np.median(alphas)), {"alphas": alphas}
    else:
        masks, outs = _varied(pop, runs, options)
        scores, intercept, alpha, validation = fit_ridge(masks.astype(np.float32), outs, options.alphas, options.holdout)
    return DatamodelResult(scores=scores, intercept=intercept, alpha=alpha, validation=validation, runs=runs, options=options, **chosen)
