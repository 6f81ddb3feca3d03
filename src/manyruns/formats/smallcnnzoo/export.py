"""Export: write a small-CNN population as a Small CNN Zoo directory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .layout import (
    LAYOUT_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    ZOO_DATASET_NAMES,
    ZOO_INIT_NAMES,
    ZooFormatError,
    our_order_index,
    write_layout,
    zoo_tensors_for,
)


def _checkpoint_epochs(arrays: list[str]) -> list[int]:
    return sorted(int(name.rsplit("_", 1)[1]) for name in arrays if name.startswith("weights/epoch_"))


def _derived_config(pop, runs: np.ndarray, epochs: list[int]) -> dict[str, list]:
    """``config.*`` columns (one value per run) from the recipe and each run's plan."""
    recipe = pop.recipe
    table = pop.runs.loc[runs]
    gaps = np.diff(epochs)
    between = int(gaps.max()) if gaps.size else int(recipe.training.epochs)
    zoo_dataset = ZOO_DATASET_NAMES.get(recipe.data.dataset, recipe.data.dataset)

    def column(key: str) -> list:
        section, field = key.split(".", 1)
        if f"sweep.{key}" in table.columns:
            return table[f"sweep.{key}"].tolist()
        return [getattr(getattr(recipe, section), field)] * len(table)

    init = column("model.init")
    n = len(table)
    return {
        "activation": column("model.activation"),
        "b_init": ["default" if i == "default" else "zeros" for i in init],
        "dataset": [zoo_dataset] * n,
        "dnn_architecture": ["cnn"] * n,
        "dropout": [float(v) for v in column("model.dropout")],
        "epochs": [int(v) for v in column("training.epochs")],
        "epochs_between_checkpoints": [between] * n,
        "init_std": [float(v) for v in column("model.init_std")],
        "l2reg": [float(v) / 2 for v in column("optimizer.weight_decay")],
        "learning_rate": [float(v) for v in column("optimizer.lr")],
        "num_layers": [int(v) for v in column("model.layers")],
        "num_units": [int(v) for v in column("model.channels")],
        "optimizer": column("optimizer.name"),
        "random_seed": [int(v) for v in table["seed"]],
        "train_fraction": [float(v) for v in table["subset"]],
        "w_init": [ZOO_INIT_NAMES[i] for i in init],
    }


def export_smallcnnzoo(source, out_dir: str | os.PathLike, runs="committed", block_size: int = 256, overwrite: bool = False) -> dict:
    """Write the runs of a small-CNN population (a store path or a Population) as a zoo directory.

    ``runs``: a selection (:meth:`~manyruns.Population.select`); by default 'committed': every
    run with results, diverged ones included and left as they are. Rows are network-major: network ``i``'s checkpoints
    (ascending epochs) are rows ``i * K .. i * K + K - 1``. Stores imported from a zoo write
    back their original ``config.*`` values and ``modeldir`` names. Returns a summary.
    """
    from ...population import Population
    from ...population import open as open_population

    pop = source if isinstance(source, Population) else open_population(source)
    recipe = pop.recipe
    if recipe.model.kind != "small-cnn":
        raise ZooFormatError(f"{pop.path}: the Small CNN Zoo layout holds small CNNs; this store's model is {recipe.model.kind!r}")
    epochs = _checkpoint_epochs(pop.arrays)
    if not epochs:
        raise ZooFormatError(f"{pop.path}: this store records no weights (set [record] weights = [0, ...] in the recipe)")
    params = pop.layout["params"]
    tensors = zoo_tensors_for(params)
    index = our_order_index(tensors, params, where="the store's layout")
    run_idx = pop.select(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = [out / WEIGHTS_FILE, out / METRICS_FILE, out / LAYOUT_FILE]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise ZooFormatError(f"{existing[0]} exists; choose another directory or pass overwrite (--force)")

    n, K, P = len(run_idx), len(epochs), int(pop.layout["num_params"])
    position = {int(r): i for i, r in enumerate(run_idx)}
    tmp_weights = out / f".{WEIGHTS_FILE}.{os.getpid()}.tmp"
    table = np.lib.format.open_memmap(tmp_weights, mode="w+", dtype=np.float32, shape=(n * K, P))
    try:
        for k, epoch in enumerate(epochs):
            for block, values in pop.blocks(f"weights/epoch_{epoch}", run_idx, block_size):
                rows = np.array([position[int(r)] for r in block]) * K + k
                zoo_rows = np.empty_like(values, dtype=np.float32)
                zoo_rows[:, index] = values
                table[rows] = zoo_rows
        table.flush()
        del table
        metrics = np.full((n, K, 4), np.nan, dtype=np.float32)  # per checkpoint: METRIC_COLUMNS of the store
        if pop.store.has("metrics"):
            for block, values in pop.blocks("metrics", run_idx, block_size):
                rows = np.array([position[int(r)] for r in block])
                usable = [e for e in epochs if e < values.shape[1]]
                metrics[rows[:, None], [epochs.index(e) for e in usable]] = values[:, usable]

        config = _derived_config(pop, run_idx, epochs)
        plan = pop.store.meta["runs"]
        for key in list(plan):
            if key.startswith("config."):  # imported from a zoo: its own values, unchanged
                config[key[len("config.") :]] = [plan[key][int(r)] for r in run_idx]
        names = plan["modeldir"] if "modeldir" in plan else [f"run_{r:06d}" for r in range(pop.num_runs)]
        frame = {f"config.{key}": np.repeat(np.asarray(config[key], dtype=object), K) for key in sorted(config)}
        frame["modeldir"] = np.repeat(np.asarray([names[int(r)] for r in run_idx], dtype=object), K)
        frame["step"] = np.tile(np.asarray(epochs, dtype=np.int64), n)
        flat = metrics.reshape(n * K, 4).astype(np.float64)
        frame["test_accuracy"], frame["test_loss"] = flat[:, 3], flat[:, 2]
        frame["train_accuracy"], frame["train_loss"] = flat[:, 1], flat[:, 0]
        tmp_metrics = out / f".{METRICS_FILE}.{os.getpid()}.tmp"
        pd.DataFrame(frame).to_csv(tmp_metrics, index=False, compression={"method": "gzip", "mtime": 0})
        tmp_layout = out / f".{LAYOUT_FILE}.{os.getpid()}.tmp"
        write_layout(tensors, tmp_layout)
        os.replace(tmp_weights, out / WEIGHTS_FILE)
        os.replace(tmp_metrics, out / METRICS_FILE)
        os.replace(tmp_layout, out / LAYOUT_FILE)
    finally:
        for tmp in out.glob(".*.tmp"):
            if str(os.getpid()) in tmp.name:
                tmp.unlink(missing_ok=True)
    status = pop.runs["status"].to_numpy()[run_idx] if n else np.array([])
    return {
        "out_dir": str(out),
        "runs": [int(r) for r in run_idx],
        "networks": n,
        "checkpoints": epochs,
        "rows": n * K,
        "num_params": P,
        "diverged": int((status == "diverged").sum()),
        "files": [str(p) for p in targets],
    }
