"""Predicting a network's accuracy from its weights (model zoos).

A population whose recipe records weights at several epochs (``[record] weights``) is a zoo:
every run is a network and every recorded epoch a checkpoint. A *sample* is one checkpoint of
one network; its features come from that checkpoint's weights (or the network's
hyperparameters) and its target is a test accuracy:

* ``target = "checkpoint"`` (the published task): the test accuracy of the same checkpoint
  whose weights are given, ``metrics[r, e, test_acc]``;
* ``target = "final"``: the test accuracy at the end of training, ``metrics[r, E, test_acc]``
  (``E = training.epochs``), predicted from the weights of an earlier checkpoint.

Feature sets:

* ``stats``: for every tensor of the flattened layout (``pop.layout["params"]``), its mean,
  variance and 0, 25, 50, 75 and 100% quantiles (7 per tensor; 56 for the 3-layer small CNN);
* ``weights``: the flattened parameters themselves;
* ``hyper``: the run's hyperparameters (activation, initialization and optimizer one-hot;
  log10 of learning rate, weight decay and init_std; dropout; train fraction; label noise),
  constant columns dropped;
* ``stats+hyper``: both.

Networks, never checkpoints, are split into train, validation and test sets, so all
checkpoints of one network fall on the same side. The split is a seeded permutation of the
selected runs (``runs``; every ok run by default, ``"committed"`` to keep diverged networks'
finite checkpoints as the published zoo does), so it does not depend on the feature set, the
model or the checkpoints chosen.
Samples whose features or target are not finite (diverged networks, checkpoints a network
never reached) are left out and counted; the networks stay in the store, flagged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import NotApplicableError, OptionError, check_choice, check_number
from ..population import Population
from ..selection import RunSelection
from .contract import Options, Result, options_of
from .zoo_predictors import GBM_BACKENDS, MODELS, fit_predictor

FEATURE_SETS = ("stats", "weights", "hyper", "stats+hyper")
TARGETS = ("checkpoint", "final")
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
STAT_NAMES = ("mean", "var", "q0", "q25", "q50", "q75", "q100")
SPLIT_NAMES = ("train", "val", "test")
TEST_ACC = 3  # column of METRIC_COLUMNS
HYPER_CATEGORICAL = ("model.activation", "model.init", "optimizer.name")
HYPER_LOG = ("optimizer.lr", "optimizer.weight_decay", "model.init_std")
HYPER_LINEAR = ("model.dropout",)
LOG_FLOOR = 1e-12  # log10 of a zero weight decay


# ------------------------------------------------------------------------------ features


def checkpoint_epochs(pop: Population) -> list[int]:
    """Epochs at which the store keeps weights, ascending (0 = initialization)."""
    return sorted(int(name.rsplit("_", 1)[1]) for name in pop.arrays if name.startswith("weights/epoch_"))


def stats_feature_names(params: list[dict]) -> list[str]:
    return [f"{p['name']}.{s}" for p in params for s in STAT_NAMES]


def tensor_statistics(weights: np.ndarray, params: list[dict]) -> np.ndarray:
    """Per-tensor statistics of flattened weights ``(b, P)`` -> ``(b, 7 T)`` float64: for each
    of the ``T`` tensors in ``params`` (name, shape, start, end), the mean, the variance
    (population, ``ddof = 0``) and the 0/25/50/75/100% quantiles (linear interpolation)."""
    w = np.asarray(weights, dtype=np.float64)
    out = np.empty((w.shape[0], len(STAT_NAMES) * len(params)), dtype=np.float64)
    for t, p in enumerate(params):
        x = w[:, p["start"] : p["end"]]
        cols = slice(len(STAT_NAMES) * t, len(STAT_NAMES) * (t + 1))
        out[:, cols] = np.column_stack([x.mean(1), x.var(1), np.quantile(x, QUANTILES, axis=1).T])
    return out


def hyperparameter_table(pop: Population, runs: np.ndarray | None = None) -> pd.DataFrame:
    """One row per run (index: run): each run's activation, initialization, optimizer,
    learning rate, weight decay, init_std, dropout (swept values where swept, else the
    recipe's), train fraction (its subset ratio) and label noise."""
    recipe = pop.recipe
    table = pop.runs
    if runs is not None:
        table = table.loc[np.asarray(runs)]
    out = pd.DataFrame(index=table.index)
    for key in (*HYPER_CATEGORICAL, *HYPER_LOG, *HYPER_LINEAR):
        section, name = key.split(".", 1)
        if f"sweep.{key}" in table.columns:
            out[key] = table[f"sweep.{key}"].to_numpy()
        else:
            out[key] = [getattr(getattr(recipe, section), name)] * len(table)
    out["train_fraction"] = table["subset"].to_numpy(dtype=np.float64)
    out["label_noise"] = table["label_noise"].to_numpy(dtype=np.float64)
    return out


def encode_hyperparameters(table: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Numeric features ``(n, H)`` from :func:`hyperparameter_table`: one-hot categories,
    log10 of the scale parameters, the rest as they are; columns constant over ``table`` are
    dropped."""
    columns, names = [], []
    for key in HYPER_CATEGORICAL:
        values = table[key].astype(str).to_numpy()
        for level in sorted(set(values)):
            columns.append((values == level).astype(np.float64))
            names.append(f"{key}={level}")
    for key in HYPER_LOG:
        columns.append(np.log10(np.maximum(table[key].to_numpy(dtype=np.float64), LOG_FLOOR)))
        names.append(f"log10({key})")
    for key in (*HYPER_LINEAR, "train_fraction", "label_noise"):
        columns.append(table[key].to_numpy(dtype=np.float64))
        names.append(key)
    X = np.column_stack(columns) if columns else np.zeros((len(table), 0))
    varying = [j for j in range(X.shape[1]) if np.ptp(X[:, j]) > 0] if len(table) else []
    return X[:, varying], [names[j] for j in varying]


@dataclass
class ZooSamples:
    """Samples for a predictor: ``runs (n,)`` network of each sample, ``checkpoints (n,)`` epoch
    of its weights, ``X (n, F)`` features, ``y (n,)`` target accuracy; ``excluded`` counts the
    samples left out for non-finite features or targets."""

    runs: np.ndarray
    checkpoints: np.ndarray
    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    excluded: int = 0


def _resolve_checkpoints(pop: Population, checkpoints) -> list[int]:
    recorded = checkpoint_epochs(pop)
    if not recorded:
        raise NotApplicableError(f"{pop.path}: this store records no weights; a zoo recipe needs [record] weights = [0, ...]")
    if checkpoints is None:
        return [recorded[-1]]
    if isinstance(checkpoints, str):
        if checkpoints == "all":
            return recorded
        checkpoints = [int(c) for c in checkpoints.split(",") if c.strip()]
    elif isinstance(checkpoints, (int, np.integer)):
        checkpoints = [int(checkpoints)]
    missing = [c for c in checkpoints if c not in recorded]
    if missing:
        raise OptionError("checkpoints", f"{{param}}: no weights recorded at epoch(s) {missing} in {pop.path}; recorded: {recorded}")
    return sorted(set(int(c) for c in checkpoints))


def zoo_samples(
    pop: Population, features: str = "stats", checkpoints=None, target: str = "checkpoint", runs: RunSelection = "ok", block_size: int = 256
) -> ZooSamples:
    """Features and targets of every (network, checkpoint) sample of the selected runs, read
    block by block of runs.

    ``checkpoints``: None (the last recorded epoch), an epoch, a list, "e1,e2" or "all".
    """
    check_choice("features", features, FEATURE_SETS)
    check_choice("target", target, TARGETS)
    epochs = _resolve_checkpoints(pop, checkpoints)
    run_idx = pop.select(runs)
    params = pop.layout["params"]
    position = {int(r): i for i, r in enumerate(run_idx)}
    n, K = len(run_idx), len(epochs)

    targets = np.full((n, K), np.nan)
    final_epoch = pop.recipe.training.epochs
    if pop.store.has("metrics"):
        for block, values in pop.blocks("metrics", run_idx, block_size):
            rows = [position[int(r)] for r in block]
            if target == "checkpoint":
                targets[rows] = values[:, epochs, TEST_ACC]
            else:
                targets[rows] = values[:, [final_epoch] * K, TEST_ACC]
    elif target == "final" or epochs == [final_epoch]:
        test_acc = pop.runs["test_acc"].to_numpy(dtype=np.float64)[run_idx]
        targets[:] = test_acc[:, None]
    else:
        raise OptionError("target", f"{{param}} checkpoint: this store records no per-epoch metrics, so only the final accuracy can be a target ({pop.path})")

    blocks: list[np.ndarray] = []
    names: list[str] = []
    if features in ("stats", "stats+hyper", "weights"):
        width = len(STAT_NAMES) * len(params) if features != "weights" else int(pop.layout["num_params"])
        weight_features = np.full((n, K, width), np.nan, dtype=np.float32 if features == "weights" else np.float64)
        for k, epoch in enumerate(epochs):
            for block, values in pop.blocks(f"weights/epoch_{epoch}", run_idx, block_size):
                rows = [position[int(r)] for r in block]
                weight_features[rows, k] = values if features == "weights" else tensor_statistics(values, params)
        blocks.append(weight_features)
        names += [f"w{j}" for j in range(width)] if features == "weights" else stats_feature_names(params)
    if features in ("hyper", "stats+hyper"):
        H, hyper_names = encode_hyperparameters(hyperparameter_table(pop, run_idx))
        blocks.append(np.broadcast_to(H[:, None, :], (n, K, H.shape[1])))
        names += hyper_names

    X = np.concatenate([b.reshape(n * K, -1) for b in blocks], axis=1) if len(blocks) > 1 else blocks[0].reshape(n * K, -1)
    y = targets.reshape(-1)
    sample_runs = np.repeat(run_idx, K)
    sample_epochs = np.tile(np.asarray(epochs, dtype=np.int64), n)
    keep = np.isfinite(y) & np.isfinite(X).all(axis=1)
    return ZooSamples(sample_runs[keep], sample_epochs[keep], X[keep], y[keep], names, int((~keep).sum()))


# ------------------------------------------------------------------------ splits, scores


def split_networks(runs: np.ndarray, seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1) -> dict[int, int]:
    """Assign each network (run index) to a split: 0 train, 1 validation, 2 test.

    A seeded permutation of the sorted run indices: the first ``round(test_fraction * n)``
    go to test, the next ``round(val_fraction * n)`` to validation (each at least one network
    when there are three or more), the rest to training.
    """
    check_number("test_fraction", test_fraction, 0, 1, low_open=True, high_open=True)
    check_number("val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)
    if test_fraction + val_fraction >= 1:
        raise OptionError("val_fraction", f"{{param:test_fraction}} and {{param}} must sum to less than 1, got {test_fraction} and {val_fraction}")
    ids = np.unique(np.asarray(runs, dtype=np.int64))
    order = ids[np.random.default_rng(seed).permutation(ids.size)]
    n = ids.size
    n_test = max(1, round(test_fraction * n)) if n >= 3 else 0
    n_val = max(1, round(val_fraction * n)) if n >= 3 else 0
    split = {int(r): 0 for r in order}
    for r in order[:n_test]:
        split[int(r)] = 2
    for r in order[n_test : n_test + n_val]:
        split[int(r)] = 1
    return split


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination ``1 - sum (y - p)^2 / sum (y - mean y)^2``."""
    y, p = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    total = np.sum((y - y.mean()) ** 2)
    return float(1.0 - np.sum((y - p) ** 2) / total) if total > 0 else float("nan")


def kendall_tau(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Kendall's rank correlation (tau-b, which accounts for ties)."""
    from scipy.stats import kendalltau

    if len(y_true) < 2:
        return float("nan")
    return float(kendalltau(y_true, y_pred).statistic)


# ------------------------------------------------------------------------------ predict


@dataclass(frozen=True, kw_only=True)
class ZooPredictOptions(Options):
    """``features``: :data:`FEATURE_SETS`; ``model``: linear (ridge), gbm (gradient boosting)
    or dnn (MLP); ``checkpoints``: epochs whose weights are the input (None: the last recorded;
    'all'; an epoch; a list or 'e1,e2'); ``target``: :data:`TARGETS`; ``seed``: of the network
    split and of the predictor; ``test_fraction``, ``val_fraction``: shares of networks in the
    test and validation splits; ``gbm_backend``: auto (LightGBM when installed, else
    scikit-learn), lightgbm or sklearn; ``block_size``: runs read at a time."""

    features: str = "stats"
    model: str = "gbm"
    checkpoints: str | int | tuple[int, ...] | None = None
    target: str = "checkpoint"
    seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    gbm_backend: str = "auto"
    block_size: int = 256

    def validate(self) -> None:
        check_choice("features", self.features, FEATURE_SETS)
        check_choice("model", self.model, MODELS)
        check_choice("target", self.target, TARGETS)
        check_choice("gbm_backend", self.gbm_backend, GBM_BACKENDS)
        check_number("seed", self.seed, 0, integer=True)
        check_number("block_size", self.block_size, 1, integer=True)
        split_networks(np.arange(3), self.seed, self.test_fraction, self.val_fraction)  # checks the fractions
        c = self.checkpoints
        if c is None or c == "all":
            return
        try:
            epochs = [c] if isinstance(c, (int, np.integer)) else c.split(",") if isinstance(c, str) else list(c)
            epochs = tuple(int(str(e).strip()) for e in epochs if str(e).strip())
        except (TypeError, ValueError):
            epochs = ()
        if not epochs or min(epochs) < 0 or isinstance(c, bool):
            raise OptionError("checkpoints", f"must be 'all', an epoch or epochs such as 1,3; got {c!r}")
        object.__setattr__(self, "checkpoints", epochs)


@dataclass(kw_only=True)
class ZooPrediction(Result):
    """Result of :func:`predict_accuracy`: ``metrics`` (test-split scores and counts) and, per
    usable sample, its network (``sample_runs``), checkpoint, split (0 train, 1 val, 2 test),
    target and prediction. ``runs``: the networks selected."""

    name = "zoo-predict"
    metrics: dict
    sample_runs: np.ndarray
    checkpoints: np.ndarray
    split: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray

    @property
    def store_name(self) -> str:
        o = self.options
        return analysis_name(o.features, o.model, o.target)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "run": self.sample_runs,
                "checkpoint": self.checkpoints,
                "split": np.asarray(SPLIT_NAMES, dtype=object)[self.split],
                "true_accuracy": self.y_true,
                "predicted_accuracy": self.y_pred,
            }
        )

    def _summary(self) -> dict:
        return dict(self.metrics)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "sample_runs": self.sample_runs.astype(np.int64),
            "checkpoints": self.checkpoints.astype(np.int64),
            "split": self.split,
            "y_true": self.y_true.astype(np.float64),
            "y_pred": self.y_pred,
        }


def analysis_name(features: str, model: str, target: str = "checkpoint") -> str:
    return f"zoo-predict-{features.replace('+', '-')}-{model}" + ("" if target == "checkpoint" else f"-{target}")


def predict_accuracy(pop: Population, options: ZooPredictOptions | None = None, **fields) -> ZooPrediction:
    """Fit predictor ``model`` of test accuracy from ``features`` on the training networks,
    choose its settings and stop it early on the validation networks, and score it on the test
    networks: R^2 and Kendall's tau (with MSE and MAE). The selected runs are the networks,
    split by :func:`split_networks`."""
    o = options_of(ZooPredictOptions, options, fields)
    o = o.replace(checkpoints=tuple(_resolve_checkpoints(pop, o.checkpoints)))  # recorded as used
    t0 = time.perf_counter()
    samples = zoo_samples(pop, o.features, o.checkpoints, o.target, runs=o.runs, block_size=o.block_size)
    split_of = split_networks(pop.select(o.runs), o.seed, o.test_fraction, o.val_fraction)
    split = np.array([split_of[int(r)] for r in samples.runs], dtype=np.int8)
    parts = {name: split == code for code, name in enumerate(SPLIT_NAMES)}
    counts = {name: int(np.unique(samples.runs[m]).size) for name, m in parts.items()}
    for name in SPLIT_NAMES:
        if counts[name] == 0:
            raise NotApplicableError(
                f"{pop.path}: no usable {name} networks ({samples.runs.size} usable samples from "
                f"{np.unique(samples.runs).size} networks; {samples.excluded} samples left out as not finite); a zoo needs more networks"
            )
    t1 = time.perf_counter()
    fitted = fit_predictor(o.model, samples.X[parts["train"]], samples.y[parts["train"]], samples.X[parts["val"]], samples.y[parts["val"]], o.seed, o.gbm_backend)
    t2 = time.perf_counter()
    y_pred = np.clip(np.asarray(fitted.predict(samples.X), dtype=np.float64), 0.0, 1.0)
    test = parts["test"]
    y_test, p_test = samples.y[test], y_pred[test]
    metrics = {
        "r2": r2_score(y_test, p_test),
        "kendall_tau": kendall_tau(y_test, p_test),
        "mse": float(np.mean((y_test - p_test) ** 2)),
        "mae": float(np.mean(np.abs(y_test - p_test))),
        "n_train_networks": counts["train"],
        "n_val_networks": counts["val"],
        "n_test_networks": counts["test"],
        "n_train_samples": int(parts["train"].sum()),
        "n_val_samples": int(parts["val"].sum()),
        "n_test_samples": int(test.sum()),
        "n_excluded_samples": samples.excluded,
        "features": o.features,
        "num_features": int(samples.X.shape[1]),
        "model": o.model,
        "predictor": fitted.info,
        "checkpoints": sorted(set(samples.checkpoints.tolist())),
        "target": o.target,
        "seed": o.seed,
        "seconds_features": round(t1 - t0, 3),
        "seconds_fit": round(t2 - t1, 3),
    }
    return ZooPrediction(
        runs=pop.select(o.runs), options=o, metrics=metrics, sample_runs=samples.runs, checkpoints=samples.checkpoints, split=split,
        y_true=samples.y, y_pred=y_pred,
    )
