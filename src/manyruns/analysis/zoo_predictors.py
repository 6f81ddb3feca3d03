"""Regressors that predict a network's accuracy from features of its weights.

Each ``fit_*`` takes a training split and a validation split (``X (n, F)``, ``y (n,)``; targets
are accuracies in [0, 1]) and returns a :class:`FittedPredictor`. The validation split does
the early stopping and picks among a few settings; the test split is never seen here.

* linear: ridge regression on standardized features, with an identity or a logit link
  (``y = sigmoid(X w + b)`` fitted on ``logit(y)``); the penalty and the link are chosen on
  the validation split.
* gbm: gradient-boosted trees, LightGBM when it is installed (the ``zoo`` extra), else
  scikit-learn's ``HistGradientBoostingRegressor``; the number of trees is chosen by early
  stopping on the validation split, the number of leaves by validation error.
* dnn: a multi-layer perceptron (torch) with a sigmoid output and squared error, Adam,
  stopped early on the validation split (the best epoch's weights are kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import OptionError

MODELS = ("linear", "gbm", "dnn")
GBM_BACKENDS = ("auto", "lightgbm", "sklearn")
RIDGE_PENALTIES = tuple(10.0**k for k in range(-3, 5))
LOGIT_CLIP = 1e-4
GBM_LEARNING_RATE = 0.1


@dataclass
class FittedPredictor:
    """A fitted model: ``predict(X (n, F)) -> (n,)`` and what was chosen (``info``)."""

    model: str
    predict: Callable[[np.ndarray], np.ndarray]
    info: dict = field(default_factory=dict)


class Standardizer:
    """Feature-wise ``(x - mean) / std`` with the training split's statistics (constant
    features map to 0)."""

    def __init__(self, X: np.ndarray):
        self.mean = X.mean(0)
        std = X.std(0)
        self.scale = np.where(std > 1e-12, std, 1.0)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.scale


def _mse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(y, np.float64) - np.asarray(p, np.float64)) ** 2))


def _logit(y: np.ndarray) -> np.ndarray:
    y = np.clip(y, LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(y) - np.log1p(-y)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def ridge_path(X: np.ndarray, y: np.ndarray, penalties) -> list[tuple[np.ndarray, float]]:
    """Ridge coefficients and intercept for each penalty ``a``: minimizers of
    ``|y - X w - b|^2 + a |w|^2``, from one SVD of the centred ``X (n, F)``."""
    x_mean, y_mean = X.mean(0), y.mean()
    U, s, Vt = np.linalg.svd(X - x_mean, full_matrices=False)
    Uty = U.T @ (y - y_mean)
    out = []
    for a in penalties:
        w = Vt.T @ (s / (s**2 + a) * Uty)
        out.append((w, float(y_mean - x_mean @ w)))
    return out


def fit_linear(X_train, y_train, X_val, y_val, seed: int = 0, **_) -> FittedPredictor:
    scaler = Standardizer(X_train)
    Xt, Xv = scaler(X_train), scaler(X_val)
    best = None
    for link in ("identity", "logit"):
        target = y_train if link == "identity" else _logit(y_train)
        for a, (w, b) in zip(RIDGE_PENALTIES, ridge_path(Xt, target, RIDGE_PENALTIES)):
            z = Xv @ w + b
            err = _mse(y_val, z if link == "identity" else _sigmoid(z))
            if best is None or err < best[0]:
                best = (err, link, a, w, b)
    err, link, a, w, b = best

    def predict(X: np.ndarray) -> np.ndarray:
        z = scaler(X) @ w + b
        return z if link == "identity" else _sigmoid(z)

    return FittedPredictor("linear", predict, {"link": link, "penalty": a, "val_mse": err})


def lightgbm_available() -> bool:
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        return False
    return True


def fit_gbm(X_train, y_train, X_val, y_val, seed: int = 0, backend: str = "auto", max_trees: int = 1000, patience: int = 50, **_) -> FittedPredictor:
    if backend not in GBM_BACKENDS:
        raise ValueError(f"gbm backend must be one of {', '.join(GBM_BACKENDS)}, got {backend!r}")
    if backend == "lightgbm" and not lightgbm_available():
        raise OptionError("gbm_backend", "{param} lightgbm asked for but lightgbm is not installed (pip install 'manyruns[zoo]')")
    use_lightgbm = backend == "lightgbm" or (backend == "auto" and lightgbm_available())
    fit = _fit_lightgbm if use_lightgbm else _fit_sklearn_gbm
    best = None
    for leaves in (15, 63):
        candidate = fit(X_train, y_train, X_val, y_val, seed, leaves, max_trees, patience)
        if best is None or candidate.info["val_mse"] < best.info["val_mse"]:
            best = candidate
    return best


def _fit_lightgbm(X_train, y_train, X_val, y_val, seed, leaves, max_trees, patience) -> FittedPredictor:
    import lightgbm as lgb

    model = lgb.LGBMRegressor(
        n_estimators=max_trees,
        learning_rate=GBM_LEARNING_RATE,
        num_leaves=leaves,
        min_child_samples=5,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        random_state=seed,
        n_jobs=1,
        verbose=-1,
    )
    import inspect

    stop = [lgb.early_stopping(patience, verbose=False)]
    if "eval_X" in inspect.signature(model.fit).parameters:  # lightgbm >= 4.7
        model.fit(X_train, y_train, eval_X=(X_val,), eval_y=(y_val,), eval_metric="l2", callbacks=stop)
    else:
        model.fit(X_train, y_train, eval_set=[(X_val, y_val)], eval_metric="l2", callbacks=stop)
    trees = int(model.best_iteration_ or max_trees)

    def predict(X: np.ndarray) -> np.ndarray:
        return model.predict(X, num_iteration=trees)

    return FittedPredictor("gbm", predict, {"backend": "lightgbm", "leaves": leaves, "trees": trees, "val_mse": _mse(y_val, predict(X_val))})


def _fit_sklearn_gbm(X_train, y_train, X_val, y_val, seed, leaves, max_trees, patience) -> FittedPredictor:
    import inspect

    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(
        learning_rate=GBM_LEARNING_RATE,
        max_iter=max_trees,
        max_leaf_nodes=leaves,
        min_samples_leaf=5,
        early_stopping=True,
        scoring="loss",
        n_iter_no_change=patience,
        tol=0.0,
        random_state=seed,
    )
    if "X_val" in inspect.signature(model.fit).parameters:  # scikit-learn >= 1.6: stop on our validation split
        model.fit(X_train, y_train, X_val=X_val, y_val=y_val)
    else:  # older: stop on an internal split of the training networks
        model.fit(X_train, y_train)
    # the fitted ensemble runs ``patience`` trees past its best: keep the best prefix
    errors = [_mse(y_val, p) for p in model.staged_predict(X_val)]
    chosen = int(np.argmin(errors)) + 1

    def predict(X: np.ndarray) -> np.ndarray:
        for t, p in enumerate(model.staged_predict(X), start=1):
            if t == chosen:
                return p
        raise AssertionError("unreachable: the chosen prefix is at most the trees fitted")

    return FittedPredictor("gbm", predict, {"backend": "sklearn", "leaves": leaves, "trees": chosen, "val_mse": errors[chosen - 1]})


def fit_dnn(
    X_train, y_train, X_val, y_val, seed: int = 0, max_epochs: int = 300, patience: int = 20, batch_size: int = 128, **_
) -> FittedPredictor:
    import torch
    from torch import nn

    scaler = Standardizer(X_train)
    xt = torch.as_tensor(scaler(X_train), dtype=torch.float32)
    xv = torch.as_tensor(scaler(X_val), dtype=torch.float32)
    yt = torch.as_tensor(y_train, dtype=torch.float32)
    yv = torch.as_tensor(y_val, dtype=torch.float32)
    best = None
    for width, decay in ((256, 0.0), (512, 1e-4)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = nn.Sequential(nn.Linear(xt.shape[1], width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))
            opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=decay)
            order = torch.Generator().manual_seed(seed)
            best_err, best_state, best_epoch = np.inf, None, 0
            for epoch in range(1, max_epochs + 1):
                net.train()
                perm = torch.randperm(xt.shape[0], generator=order)
                for i in range(0, xt.shape[0], batch_size):
                    idx = perm[i : i + batch_size]
                    loss = ((torch.sigmoid(net(xt[idx]).squeeze(1)) - yt[idx]) ** 2).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                net.eval()
                with torch.no_grad():
                    err = float(((torch.sigmoid(net(xv).squeeze(1)) - yv) ** 2).mean())
                if err < best_err:
                    best_err, best_epoch = err, epoch
                    best_state = {k: v.clone() for k, v in net.state_dict().items()}
                elif epoch - best_epoch >= patience:
                    break
        net.load_state_dict(best_state)
        if best is None or best_err < best[0]:
            best = (best_err, net, {"width": width, "weight_decay": decay, "epochs": best_epoch})
    err, net, info = best
    net.eval()

    def predict(X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(scaler(X), dtype=torch.float32)
            return torch.sigmoid(net(x).squeeze(1)).double().numpy()

    return FittedPredictor("dnn", predict, {**info, "val_mse": err})


FITTERS = {"linear": fit_linear, "gbm": fit_gbm, "dnn": fit_dnn}


def fit_predictor(model: str, X_train, y_train, X_val, y_val, seed: int = 0, gbm_backend: str = "auto") -> FittedPredictor:
    """Fit predictor ``model`` ('linear', 'gbm' or 'dnn') on the training split, choosing its
    settings on the validation split."""
    if model not in FITTERS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    if len(y_train) == 0 or len(y_val) == 0:
        raise ValueError(f"fitting a predictor needs training and validation samples (got {len(y_train)} and {len(y_val)})")
    X_train, X_val = np.asarray(X_train, np.float64), np.asarray(X_val, np.float64)
    y_train, y_val = np.asarray(y_train, np.float64), np.asarray(y_val, np.float64)
    return FITTERS[model](X_train, y_train, X_val, y_val, seed=seed, backend=gbm_backend)
