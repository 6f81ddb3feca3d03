"""Import: write a checked Small CNN Zoo directory into a new store."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .layout import LAYOUT_FILE, ZooFormatError, our_layout, our_order_index
from .read import _Zoo, read_zoo

INPUT_SIZES = {"digits": 8, "mnist": 28, "fashion-mnist": 28, "cifar10": 32, "cifar10-gs": 32, "cifar100": 32, "svhn": 32, "svhn-gs": 32}
BATCH_SIZE = 512  # the release's batch size; an imported store's recipe records it for information


def _json_value(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v if isinstance(v, (int, str, bool)) else str(v)


def import_smallcnnzoo(
    zoo_dir: str | os.PathLike,
    store_path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    dataset: str | None = None,
    block_size: int = 256,
):
    """Read a zoo directory into a new store at ``store_path`` and return its Population.

    Every network becomes one run: ``weights/epoch_<step>`` in this project's parameter order,
    ``metrics`` rows at the checkpoint epochs, its hyperparameters as the runs' ``sweep.*``
    columns (recipe names, see the module docstring) next to the original ``config.*`` values
    and ``modeldir``. A network with non-finite weights at any checkpoint, or non-finite
    metrics at its last one, is kept and marked diverged. Everything is checked before the
    store is created; on any error nothing is written. With ``data_dir`` (or
    ``$MANYRUNS_DATA``) holding the dataset, the store records its fingerprint and labels (an
    explicit ``data_dir`` without the dataset's files is an error; the variable is optional).
    """
    from ... import store as store_mod
    from ...data import DatasetNotFoundError, load_dataset, resolve_data_root
    from ...store import METRIC_COLUMNS as STORE_METRICS

    from ...storage import open_location

    location = open_location(store_path)
    if not location.is_empty():
        raise store_mod.StoreError(f"{location} exists and is not empty")
    zoo = read_zoo(zoo_dir, dataset)
    arch, R = zoo.arch, len(zoo.networks)
    params = our_layout(arch)
    index = our_order_index(zoo.tensors, params)

    size = INPUT_SIZES.get(zoo.dataset, 32)
    input_shape = (arch.in_channels, size, size)
    fingerprint: dict = {"name": zoo.dataset}
    targets = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    root = resolve_data_root(data_dir)
    if root is not None or zoo.dataset == "digits":
        try:
            data = load_dataset(zoo.dataset, root)
        except DatasetNotFoundError:
            if data_dir is not None:  # asked for explicitly: say what is missing
                raise
            data = None
        if data is not None:
            fingerprint, targets, input_shape = data.fingerprint(), (data.y_train, data.y_test), data.input_shape
    if input_shape[0] != arch.in_channels:
        raise ZooFormatError(f"{LAYOUT_FILE}: the first layer takes {arch.in_channels} channels but {zoo.dataset} images have {input_shape[0]}")

    first = zoo.first_row
    fractions = zoo.values["train_fraction"][first]
    seeds = (
        pd.to_numeric(zoo.config["config.random_seed"], errors="coerce").fillna(0).astype(np.int64).to_numpy()[first]
        if "config.random_seed" in zoo.config.columns
        else np.zeros(R, dtype=np.int64)
    )
    config_epochs = pd.to_numeric(zoo.config.get("config.epochs", pd.Series([0])), errors="coerce").max()
    epochs = int(max(max(zoo.steps), 1, 0 if pd.isna(config_epochs) else int(config_epochs)))
    columns: dict[str, list] = {
        "seed": [int(s) for s in seeds],
        "subset": [float(f) for f in fractions],
        "sweep.model.activation": [str(v) for v in zoo.values["activation"][first]],
        "sweep.model.dropout": [float(v) for v in zoo.values["dropout"][first]],
        "sweep.model.init": [str(v) for v in zoo.values["init"][first]],
        "sweep.model.init_std": [float(v) for v in zoo.values["init_std"][first]],
        "sweep.optimizer.lr": [float(v) for v in zoo.values["lr"][first]],
        "sweep.optimizer.name": [str(v) for v in zoo.values["optimizer"][first]],
        "sweep.optimizer.weight_decay": [float(v) for v in zoo.values["weight_decay"][first]],
        "modeldir": list(zoo.networks),
    }
    for column in zoo.config.columns:
        columns[str(column)] = [_json_value(v) for v in zoo.config[column].astype(object).to_numpy()[first]]
    recipe = {
        "name": f"imported Small CNN Zoo ({zoo.dataset})",
        "description": f"imported from {Path(zoo_dir).resolve()}",
        "data": {"normalize": "symmetric"},
        "model": {"kind": "small-cnn", "channels": arch.channels, "layers": arch.layers},
        "training": {"epochs": epochs, "batch_size": BATCH_SIZE},
        "record": {"logits": [], "metrics": True, "train_metrics": "eval", "weights": zoo.steps},
    }
    source = {"format": "smallcnnzoo", "path": str(Path(zoo_dir).resolve()), "networks": R, "checkpoints": zoo.steps}
    arrays = {f"weights/epoch_{s}": ((len(index),), "float32", np.nan) for s in zoo.steps}
    arrays["metrics"] = ((epochs + 1, len(STORE_METRICS)), "float32", np.nan)
    spec = store_mod.ImportSpec(
        zoo.dataset, fingerprint, targets, arch.num_classes, input_shape, arrays, source, recipe=recipe,
        layout={"num_params": len(index), "num_features": arch.channels, "params": params},
        recipe_text=f"# imported from a Small CNN Zoo directory: {source['path']}\n",
    )

    created = location.local is not None and not location.local.exists()
    try:
        store = store_mod.create_imported(location, spec)
        store_mod.append_runs(store, columns)
        _write_networks(store, zoo, index, block_size)
    except BaseException:
        if created:
            shutil.rmtree(location.local, ignore_errors=True)
        else:
            location.clear()
        raise
    from ...population import Population

    return Population(store)


def _write_networks(store, zoo: _Zoo, index: np.ndarray, block_size: int) -> None:
    """Write every network's checkpoints, metrics, summary and status, then commit it."""
    R = zoo.row_of.shape[0]
    # the release's (test_acc, test_loss, train_acc, train_loss) -> the store's (train_loss, train_acc, test_loss, test_acc)
    reorder = [3, 2, 1, 0]
    epochs_total = store.array("metrics").shape[1]
    for start in range(0, R, block_size):
        stop = min(R, start + block_size)
        rows = zoo.row_of[start:stop]  # (b, K)
        b = stop - start
        out: dict[str, np.ndarray] = {}
        finite_weights = np.ones(b, dtype=bool)
        for k, step in enumerate(zoo.steps):
            block = np.full((b, len(index)), np.nan, dtype=np.float32)
            have = rows[:, k] >= 0
            if have.any():
                wanted = rows[have, k]
                order = np.argsort(wanted)
                gathered = np.empty((wanted.size, zoo.weights.shape[1]), dtype=np.float32)
                gathered[order] = np.asarray(zoo.weights[wanted[order]], dtype=np.float32)
                block[have] = gathered[:, index]
                finite_weights[have] &= np.isfinite(block[have]).all(axis=1)
            out[f"weights/epoch_{step}"] = block
        metrics = np.full((b, epochs_total, 4), np.nan, dtype=np.float32)
        for k, step in enumerate(zoo.steps):
            have = rows[:, k] >= 0
            metrics[have, step] = zoo.metrics[rows[have, k]][:, reorder]
        last = np.array([r[r >= 0][-1] for r in rows])  # each network's last checkpoint row
        final = zoo.metrics[last]  # (b, 4) release order
        summary = np.full((b, 6), np.nan, dtype=np.float32)
        summary[:, 0], summary[:, 2] = final[:, 2], final[:, 0]  # train_acc, test_acc
        summary[:, 3], summary[:, 4] = final[:, 3], final[:, 1]  # train_loss, test_loss
        diverged = ~finite_weights | ~np.isfinite(final).all(axis=1)
        out.update(metrics=metrics, summary=summary)
        store.write_runs(start, out, np.where(diverged, 2, 1).astype(np.int8))
