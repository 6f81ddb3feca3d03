"""Reading and validating a Small CNN Zoo directory (weights.npy, metrics.csv.gz, layout.csv)
without writing anything."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...recipe import ACTIVATIONS, DATASETS, INITS
from .layout import (
    LAYOUT_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    ZOO_DATASET_NAMES,
    ZOO_INIT_NAMES,
    Architecture,
    ZooFormatError,
    ZooTensor,
    _key,
    architecture_of,
    read_layout,
)

METRIC_COLUMNS = ("test_accuracy", "test_loss", "train_accuracy", "train_loss")
REQUIRED_CONFIG = ("activation", "dropout", "init_std", "l2reg", "learning_rate", "optimizer", "train_fraction", "w_init")

# the release's (or our) name, normalized by _key -> our name
_INITS_IN = {_key(ours): ours for ours in INITS} | {_key(zoo): ours for ours, zoo in ZOO_INIT_NAMES.items()}
_INITS_IN["randomnormal"] = "normal"
_ACTIVATIONS_IN = {_key(a): a for a in ACTIVATIONS}
_OPTIMIZERS_IN = {"sgd": "sgd", "adam": "adam", "adamw": "adamw", "rmsprop": "rmsprop"}
_BIAS_INITS_IN = {"zeros": "zeros", "zero": "zeros", "default": "default"}


@dataclass
class _Zoo:
    """A checked zoo directory, ready to be written into a store."""

    weights: np.ndarray  # (rows, P) float32, memory-mapped
    tensors: list[ZooTensor]
    arch: Architecture
    dataset: str  # our name
    networks: list[str]  # modeldir per network, in order of first appearance
    steps: list[int]  # checkpoint epochs (ascending)
    row_of: np.ndarray  # (R, K) int64: row of network r's checkpoint k, -1 where missing
    metrics: np.ndarray  # (rows, 4) float64: METRIC_COLUMNS of the release per row
    first_row: np.ndarray  # (R,) int64: the first row of each network (its config)
    config: pd.DataFrame  # the rows' config.* columns, as read
    values: dict[str, np.ndarray]  # per row, our hyperparameters (activation, init, ...)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (so that messages print ``0``, not ``np.int64(0)``)."""
    return value.item() if isinstance(value, np.generic) else value


def _row_label(table: pd.DataFrame, i: int) -> str:
    return f"row {i + 1} (modeldir {_plain(table['modeldir'].iloc[i])!r}, step {_plain(table['step'].iloc[i])})"


def _map_names(table: pd.DataFrame, column: str, known: dict[str, str], where: str, choices: list[str]) -> np.ndarray:
    raw = table[column].astype(object).to_numpy()
    out = np.empty(raw.shape, dtype=object)
    cache: dict[Any, str | None] = {}
    for i, value in enumerate(raw):
        if value not in cache:
            cache[value] = known.get(_key(value)) if isinstance(value, str) else None
        mapped = cache[value]
        if mapped is None:
            raise ZooFormatError(f"{where}, {_row_label(table, i)}: unknown {column} {_plain(value)!r}; known: {', '.join(choices)}")
        out[i] = mapped
    return out


def _numbers(table: pd.DataFrame, column: str, where: str, low: float, high: float, low_open: bool, high_open: bool) -> np.ndarray:
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values <= low if low_open else values < low) | (values >= high if high_open else values > high)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        span = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ZooFormatError(f"{where}, {_row_label(table, i)}: {column} = {_plain(table[column].iloc[i])!r} is not a number in {span}")
    return values


def _metric_values(table: pd.DataFrame, where: str) -> np.ndarray:
    """``(rows, 4) float64``: the METRIC_COLUMNS of each row. A missing value (empty, NaN) or
    an infinite loss is kept (a diverged network's); text that is not a number, or an accuracy
    outside [0, 1], is an error naming the row and column."""
    out = np.empty((len(table), len(METRIC_COLUMNS)), dtype=np.float64)
    for j, column in enumerate(METRIC_COLUMNS):
        raw = table[column]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        unreadable = np.isnan(values) & raw.notna().to_numpy()
        if unreadable.any():
            i = int(np.flatnonzero(unreadable)[0])
            raise ZooFormatError(f"{where}, {_row_label(table, i)}: {column} = {_plain(raw.iloc[i])!r} is not a number")
        if column.endswith("accuracy"):
            outside = ~np.isnan(values) & ((values < 0) | (values > 1))
            if outside.any():
                i = int(np.flatnonzero(outside)[0])
                raise ZooFormatError(f"{where}, {_row_label(table, i)}: {column} = {_plain(raw.iloc[i])} is not an accuracy in [0, 1] (a fraction, not a percentage)")
        out[:, j] = values
    return out


def _check_row_counts(table: pd.DataFrame, num_weight_rows: int, where: str, weights_where: str) -> None:
    """metrics.csv.gz (``table``) and weights.npy must have as many rows; an error names the
    first row (counted from 1) of the longer file that has no partner in the shorter."""
    if len(table) == num_weight_rows:
        return
    counts = f"{where} has {len(table)} rows but {weights_where} has {num_weight_rows}; they must match row for row (one per network and checkpoint)"
    if len(table) > num_weight_rows:
        unmatched = f"{where}, {_row_label(table, num_weight_rows)} has no row of weights"
    else:
        unmatched = f"{weights_where}, row {len(table) + 1} has no row of metrics"
    raise ZooFormatError(f"{counts}: {unmatched}")


def read_zoo(zoo_dir: str | os.PathLike, dataset: str | None = None) -> _Zoo:
    """Read and check a zoo directory without writing anything. ``dataset`` (our name)
    overrides ``config.dataset``."""
    folder = Path(zoo_dir)
    paths = {name: folder / name for name in (WEIGHTS_FILE, METRICS_FILE, LAYOUT_FILE)}
    if not paths[METRICS_FILE].is_file() and (folder / "metrics.csv").is_file():
        paths[METRICS_FILE] = folder / "metrics.csv"
    missing = [name for name, p in paths.items() if not p.is_file()]
    if missing:
        raise ZooFormatError(f"{folder}: missing {', '.join(missing)} (a zoo directory holds {WEIGHTS_FILE}, {METRICS_FILE} and {LAYOUT_FILE})")
    wpath, mpath = paths[WEIGHTS_FILE], paths[METRICS_FILE]
    try:
        weights = np.load(wpath, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ZooFormatError(f"{wpath}: not a readable .npy array ({exc})") from None
    if weights.ndim != 2 or weights.dtype.kind != "f":
        raise ZooFormatError(f"{wpath}: expected a 2-D float array (one row per network and checkpoint), got {weights.shape} {weights.dtype}")
    tensors = read_layout(paths[LAYOUT_FILE], weights.shape[1])
    arch = architecture_of(tensors, str(paths[LAYOUT_FILE]))

    try:
        table = pd.read_csv(mpath, low_memory=False)
    except (OSError, ValueError, EOFError, pd.errors.ParserError) as exc:
        raise ZooFormatError(f"{mpath}: cannot be read as CSV ({exc})") from None
    table = table.drop(columns=[c for c in table.columns if str(c).startswith("Unnamed:")])
    where = str(mpath)
    needed = ["modeldir", "step", *METRIC_COLUMNS, *(f"config.{k}" for k in REQUIRED_CONFIG)]
    if dataset is None:
        needed.append("config.dataset")
    absent = [c for c in needed if c not in table.columns]
    if absent:
        raise ZooFormatError(f"{where}: missing column(s) {', '.join(absent)}")
    _check_row_counts(table, weights.shape[0], where, str(wpath))
    if len(table) == 0:
        raise ZooFormatError(f"{where}: no rows")
    table["modeldir"] = table["modeldir"].astype(str)

    step = pd.to_numeric(table["step"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(step) | (step < 0) | (step != np.round(step))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ZooFormatError(f"{where}, {_row_label(table, i)}: step must be a non-negative whole number (the checkpoint's epoch)")
    step = step.astype(np.int64)
    duplicated = table.duplicated(["modeldir", "step"]).to_numpy()
    if duplicated.any():
        i = int(np.flatnonzero(duplicated)[0])
        raise ZooFormatError(f"{where}, {_row_label(table, i)}: a second row for the same network and step")

    codes, networks = pd.factorize(table["modeldir"], sort=False)
    first_row = np.full(len(networks), -1, dtype=np.int64)
    first_row[codes[::-1]] = np.arange(len(codes))[::-1]
    config = table[[c for c in table.columns if str(c).startswith("config.")]]
    for column in config.columns:
        values = config[column].astype(object).to_numpy()
        reference = values[first_row[codes]]
        same = (values == reference) | (pd.isna(values) & pd.isna(reference))
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            raise ZooFormatError(
                f"{where}, {_row_label(table, i)}: {column} = {_plain(values[i])!r} differs from {_plain(reference[i])!r} in the network's row {first_row[codes[i]] + 1}"
            )

    values = {
        "activation": _map_names(table, "config.activation", _ACTIVATIONS_IN, where, list(ACTIVATIONS)),
        "init": _map_names(table, "config.w_init", _INITS_IN, where, sorted(set(ZOO_INIT_NAMES.values()) | set(INITS))),
        "optimizer": _map_names(table, "config.optimizer", _OPTIMIZERS_IN, where, list(_OPTIMIZERS_IN)),
        "lr": _numbers(table, "config.learning_rate", where, 0, math.inf, True, True),
        "weight_decay": 2 * _numbers(table, "config.l2reg", where, 0, math.inf, False, True),
        "init_std": _numbers(table, "config.init_std", where, 0, math.inf, True, True),
        "dropout": _numbers(table, "config.dropout", where, 0, 1, False, True),
        "train_fraction": _numbers(table, "config.train_fraction", where, 0, 1, True, False),
    }
    if "config.b_init" in table.columns:
        _map_names(table, "config.b_init", _BIAS_INITS_IN, where, ["zeros", "default"])
    if dataset is None:
        zoo_names = {_key(v): k for k, v in ZOO_DATASET_NAMES.items() if arch.in_channels == (3 if k in ("cifar10", "svhn") else 1)}
        known = {_key(d): d for d in DATASETS} | zoo_names
        names = _map_names(table, "config.dataset", known, where, sorted(set(DATASETS) | set(ZOO_DATASET_NAMES.values())))
        if len(set(names)) != 1:
            raise ZooFormatError(f"{where}: one zoo holds one dataset; config.dataset names {sorted(set(names))}")
        dataset = str(names[0])
    elif dataset not in DATASETS:
        raise ZooFormatError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    for column, expected in (("config.num_layers", arch.layers), ("config.num_units", arch.channels)):
        if column in table.columns:
            found = pd.to_numeric(table[column], errors="coerce").to_numpy()
            if not (found == expected).all():
                i = int(np.flatnonzero(found != expected)[0])
                raise ZooFormatError(f"{where}, {_row_label(table, i)}: {column} = {_plain(table[column].iloc[i])!r} but {paths[LAYOUT_FILE]} describes {expected}")

    steps = sorted(set(step.tolist()))
    row_of = np.full((len(networks), len(steps)), -1, dtype=np.int64)
    row_of[codes, np.searchsorted(steps, step)] = np.arange(len(table))
    metrics = _metric_values(table, where)
    return _Zoo(weights, tensors, arch, dataset, [str(m) for m in networks], [int(s) for s in steps], row_of, metrics, first_row, config, values)
