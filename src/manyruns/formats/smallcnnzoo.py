"""The Small CNN Zoo release format: export a population of small CNNs, import a published zoo.

A zoo directory holds three files::

    weights.npy      (rows, P) float32   one row per network and checkpoint, flattened parameters
    metrics.csv.gz   one row per row of weights.npy: config.* (the network's hyperparameters),
                     modeldir (which network), step (the checkpoint's epoch), test_accuracy,
                     test_loss, train_accuracy, train_loss
    layout.csv       varname, start_idx, end_idx, shape: which columns of a row hold which tensor
                     (``sequential/conv2d/bias:0``, ..., ``sequential/dense/kernel:0``; the
                     ``sequential/`` scope is optional on import; ``end_idx`` is exclusive)

The release orders each layer's bias before its kernel and stores convolution kernels as
(height, width, in, out) and dense kernels as (in, out); this project flattens each layer as
weight then bias, with convolution weights as (out, in, height, width) and dense weights as
(out, in). :func:`our_order_index` gives the column permutation between the two, built from
the tensors' shapes, so the mapping is the same in both directions.

Hyperparameter names (``config.*`` values) map to recipe fields as follows (case and
underscores in the release's names are ignored on import)::

    config.w_init          he_normal, glorot_normal, orthogonal  -> model.init of the same name
                           RandomNormal                          -> model.init = "normal"
                           TruncatedNormal                       -> model.init = "truncated_normal"
                           (this project's own names are accepted too; "default" is PyTorch's)
    config.activation      relu, tanh, ...                       -> model.activation
    config.optimizer       sgd, adam, rmsprop (adamw)            -> optimizer.name
    config.learning_rate                                         -> optimizer.lr
    config.l2reg           L2 penalty l2 * sum(w^2) in the loss  -> optimizer.weight_decay = 2 * l2reg
    config.init_std, config.dropout                              -> model.init_std, model.dropout
    config.train_fraction                                        -> the run's subset ratio
    config.dataset         mnist, fashion_mnist, cifar10, svhn_cropped (the zoo's grayscale
                           CIFAR-10 and SVHN when the first layer has one input channel)
                           -> mnist, fashion-mnist, cifar10-gs, svhn-gs (our names accepted too)
    config.random_seed                                           -> the run's seed

Any other name is an error that names the file and row. Two differences of substance remain:
Keras applies the L2 penalty to kernels only (``weight_decay`` here applies to every
parameter), and Keras draws ``he_normal`` and ``glorot_normal`` from a truncated normal.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..recipe import ACTIVATIONS, DATASETS, INITS, Recipe

WEIGHTS_FILE = "weights.npy"
METRICS_FILE = "metrics.csv.gz"
LAYOUT_FILE = "layout.csv"
LAYOUT_COLUMNS = ("varname", "start_idx", "end_idx", "shape")
METRIC_COLUMNS = ("test_accuracy", "test_loss", "train_accuracy", "train_loss")
CONFIG_KEYS = (
    "activation",
    "b_init",
    "dataset",
    "dnn_architecture",
    "dropout",
    "epochs",
    "epochs_between_checkpoints",
    "init_std",
    "l2reg",
    "learning_rate",
    "num_layers",
    "num_units",
    "optimizer",
    "random_seed",
    "train_fraction",
    "w_init",
)
REQUIRED_CONFIG = ("activation", "dropout", "init_std", "l2reg", "learning_rate", "optimizer", "train_fraction", "w_init")

# our name -> the release's name
ZOO_INIT_NAMES = {
    "he_normal": "he_normal",
    "glorot_normal": "glorot_normal",
    "orthogonal": "orthogonal",
    "normal": "RandomNormal",
    "truncated_normal": "TruncatedNormal",
    "default": "default",
}
ZOO_DATASET_NAMES = {"mnist": "mnist", "fashion-mnist": "fashion_mnist", "cifar10": "cifar10", "cifar10-gs": "cifar10", "svhn": "svhn_cropped", "svhn-gs": "svhn_cropped"}
INPUT_SIZES = {"digits": 8, "mnist": 28, "fashion-mnist": 28, "cifar10": 32, "cifar10-gs": 32, "cifar100": 32, "svhn": 32, "svhn-gs": 32}
BATCH_SIZE = 512  # the release's batch size; an imported store's recipe records it for information
LAYER_SCOPE = "sequential"  # the release's varnames: sequential/conv2d/bias:0, ...
LAYER_NAME = re.compile(rf"(?:{LAYER_SCOPE}(?:_\d+)?/)?(conv2d|dense)(?:_(\d+))?")


def _key(name: Any) -> str:
    return str(name).strip().lower().replace("_", "").replace("-", "")


# the release's (or our) name, normalized by _key -> our name
_INITS_IN = {_key(ours): ours for ours in INITS} | {_key(zoo): ours for ours, zoo in ZOO_INIT_NAMES.items()}
_INITS_IN["randomnormal"] = "normal"
_ACTIVATIONS_IN = {_key(a): a for a in ACTIVATIONS}
_OPTIMIZERS_IN = {"sgd": "sgd", "adam": "adam", "adamw": "adamw", "rmsprop": "rmsprop"}
_BIAS_INITS_IN = {"zeros": "zeros", "zero": "zeros", "default": "default"}


class ZooFormatError(ValueError):
    """A zoo directory that cannot be read (the message names the file and row), or a
    population that cannot be written in the zoo's layout."""


# ------------------------------------------------------------------------------ layouts


@dataclass(frozen=True)
class ZooTensor:
    """One row of layout.csv: the tensor ``varname`` occupies columns ``[start, end)``."""

    varname: str
    start: int
    end: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Architecture:
    """A small CNN: ``layers`` 3x3 convolutions of ``channels`` channels, then a dense layer."""

    in_channels: int
    channels: int
    layers: int
    num_classes: int


def _our_layers(params: list[dict]) -> list[tuple[str, dict, dict]]:
    """``(kind, weight, bias)`` per layer of a small CNN's flattened layout, in our order."""
    by_name = {p["name"]: p for p in params}
    layers, i = [], 0
    while f"convs.{i}.weight" in by_name:
        layers.append(("conv", by_name[f"convs.{i}.weight"], by_name[f"convs.{i}.bias"]))
        i += 1
    if "out.weight" not in by_name or not layers or len(by_name) != 2 * len(layers) + 2:
        names = ", ".join(sorted(by_name))
        raise ZooFormatError(f"not a small CNN parameter layout (convs.<i>.weight/bias and out.weight/bias); got {names}")
    layers.append(("dense", by_name["out.weight"], by_name["out.bias"]))
    return layers


def zoo_tensors_for(params: list[dict]) -> list[ZooTensor]:
    """The release's layout for a small CNN whose flattened layout (ours) is ``params``
    (``pop.layout["params"]``): per layer bias then kernel, kernels HWIO / (in, out), named
    as the release names them (``sequential/conv2d/bias:0``, ..., ``sequential/dense/kernel:0``)."""
    out: list[ZooTensor] = []
    start, conv = 0, 0
    for kind, weight, bias in _our_layers(params):
        if kind == "conv":
            name = "conv2d" if conv == 0 else f"conv2d_{conv}"
            o, i, h, w = weight["shape"]
            kernel = (h, w, i, o)
            conv += 1
        else:
            name = "dense"
            kernel = tuple(reversed(weight["shape"]))
        for varname, shape in ((f"{LAYER_SCOPE}/{name}/bias:0", tuple(bias["shape"])), (f"{LAYER_SCOPE}/{name}/kernel:0", kernel)):
            size = math.prod(shape)
            out.append(ZooTensor(varname, start, start + size, tuple(int(s) for s in shape)))
            start += size
    return out


def _group_tensors(tensors: list[ZooTensor], where: str) -> dict[str, dict[str, tuple[int, ZooTensor]]]:
    """Layout rows by layer name (the varname before ``/kernel:0`` or ``/bias:0``):
    ``{layer: {"kernel" | "bias": (row counted from 1, tensor)}}``."""
    groups: dict[str, dict[str, tuple[int, ZooTensor]]] = {}
    for row, t in enumerate(tensors, start=1):
        prefix, _, leaf = t.varname.rpartition("/")
        kind = "kernel" if leaf.endswith("kernel:0") else "bias" if leaf.endswith("bias:0") else None
        if kind is None:
            raise ZooFormatError(f"{where}, row {row}: varname {t.varname!r} ends in neither 'kernel:0' nor 'bias:0'")
        group = groups.setdefault(prefix or leaf, {})
        if kind in group:
            raise ZooFormatError(f"{where}, row {row}: a second {kind} for layer {prefix!r}")
        group[kind] = (row, t)
    return groups


def _name_order(layer: str, kind: str, row: int, where: str) -> tuple[int, int]:
    """Where a layer's name puts it: ``(0, i)`` for ``conv2d`` (i = 0) and ``conv2d_<i>``,
    ``(1, i)`` for ``dense`` and ``dense_<i>``, each optionally under ``sequential/``."""
    match = LAYER_NAME.fullmatch(layer)
    if match is None:
        raise ZooFormatError(f"{where}, row {row}: layer name {layer!r} is not conv2d, conv2d_<i> or dense (optionally under sequential/)")
    base, index = match.group(1), int(match.group(2) or 0)
    if (base == "conv2d") != (kind == "conv"):
        raise ZooFormatError(f"{where}, row {row}: layer {layer!r} has a {'4-D convolution' if kind == 'conv' else '2-D dense'} kernel")
    return (0 if base == "conv2d" else 1, index)


def _zoo_layers(tensors: list[ZooTensor], where: str) -> list[tuple[str, ZooTensor, ZooTensor]]:
    """Group layout rows into ``(kind, kernel, bias)`` layers in the order of their columns
    (``start_idx``), which must agree with the order of their names (conv2d, conv2d_1, ...,
    dense); the order of the rows in the file does not matter."""
    groups = _group_tensors(tensors, where)
    layers, previous = [], None
    for prefix, group in sorted(groups.items(), key=lambda kv: min(t.start for _, t in kv[1].values())):
        row = min(r for r, _ in group.values())
        if set(group) != {"kernel", "bias"}:
            missing = ({"kernel", "bias"} - set(group)).pop()
            raise ZooFormatError(f"{where}, row {row}: layer {prefix!r} has no {missing}")
        (krow, kernel), (_, bias) = group["kernel"], group["bias"]
        if len(kernel.shape) == 4:
            kind = "conv"
        elif len(kernel.shape) == 2:
            kind = "dense"
        else:
            raise ZooFormatError(f"{where}, row {krow}: kernel {kernel.varname!r} has shape {kernel.shape}; expected (h, w, in, out) or (in, out)")
        if bias.shape != (kernel.shape[-1],):
            raise ZooFormatError(f"{where}, row {krow}: bias shape {bias.shape} does not match kernel {kernel.varname!r} with {kernel.shape[-1]} outputs")
        order = _name_order(prefix, kind, row, where)
        if previous is not None and order <= previous[0]:
            start = min(t.start for _, t in group.values())
            raise ZooFormatError(
                f"{where}, row {row}: layer {prefix!r} (from column {start}) follows layer {previous[1]!r} in the columns "
                f"but not in name order (conv2d, conv2d_1, conv2d_2, ..., dense)"
            )
        previous = (order, prefix)
        layers.append((kind, kernel, bias))
    return layers


def architecture_of(tensors: list[ZooTensor], where: str = LAYOUT_FILE) -> Architecture:
    """The small CNN a zoo layout describes; anything else is an error naming ``where`` and a row."""
    layers = _zoo_layers(tensors, where)
    row_of = {t.varname: i for i, t in enumerate(tensors, start=1)}
    kinds = [k for k, _, _ in layers]
    if kinds.count("dense") != 1 or kinds[-1] != "dense" or len(kinds) < 2:
        raise ZooFormatError(f"{where}: expected 3x3 convolution layers followed by one dense layer; found layers {kinds}")
    convs = [kernel for kind, kernel, _ in layers if kind == "conv"]
    dense = layers[-1][1]
    channels = convs[0].shape[3]
    in_channels = convs[0].shape[2]
    previous = in_channels
    for kernel in convs:
        h, w, i, o = kernel.shape
        if (h, w) != (3, 3) or i != previous or o != channels:
            raise ZooFormatError(
                f"{where}, row {row_of[kernel.varname]}: kernel {kernel.varname!r} has shape {kernel.shape}; "
                f"the small CNN needs (3, 3, {previous}, {channels})"
            )
        previous = o
    if dense.shape[0] != channels:
        raise ZooFormatError(f"{where}, row {row_of[dense.varname]}: dense kernel {dense.shape} does not take the {channels} pooled channels")
    return Architecture(int(in_channels), int(channels), len(convs), int(dense.shape[1]))


def our_layout(arch: Architecture) -> list[dict]:
    """Our flattened layout (name, shape, start, end) of the small CNN ``arch``."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    previous = arch.in_channels
    for i in range(arch.layers):
        shapes += [(f"convs.{i}.weight", (arch.channels, previous, 3, 3)), (f"convs.{i}.bias", (arch.channels,))]
        previous = arch.channels
    shapes += [("out.weight", (arch.num_classes, arch.channels)), ("out.bias", (arch.num_classes,))]
    layout, start = [], 0
    for name, shape in shapes:
        size = math.prod(shape)
        layout.append({"name": name, "shape": list(shape), "start": start, "end": start + size})
        start += size
    return layout


def our_order_index(tensors: list[ZooTensor], params: list[dict], where: str = LAYOUT_FILE) -> np.ndarray:
    """``(P,) int64`` column indices such that ``ours = zoo_row[index]`` (and ``zoo_row[index] = ours``
    writes the other way). ``tensors``: the zoo layout; ``params``: our layout of the same network."""
    zoo = _zoo_layers(tensors, where)
    ours = _our_layers(params)
    if [k for k, _, _ in zoo] != [k for k, _, _ in ours]:
        raise ZooFormatError(f"{where}: layers {[k for k, _, _ in zoo]} do not match the network's {[k for k, _, _ in ours]}")
    mapped: dict[str, np.ndarray] = {}
    for (kind, kernel, bias), (_, weight, our_bias) in zip(zoo, ours):
        columns = np.arange(kernel.start, kernel.end).reshape(kernel.shape)
        mapped[weight["name"]] = columns.transpose(3, 2, 0, 1) if kind == "conv" else columns.T
        mapped[our_bias["name"]] = np.arange(bias.start, bias.end)
    parts = []
    for p in params:
        cols = mapped[p["name"]]
        if list(cols.shape) != list(p["shape"]):
            raise ZooFormatError(f"{where}: tensor for {p['name']} has shape {list(cols.shape)}, the network's is {p['shape']}")
        parts.append(cols.reshape(-1))
    index = np.concatenate(parts).astype(np.int64)
    if not np.array_equal(np.sort(index), np.arange(index.size)):
        raise ZooFormatError(f"{where}: the tensors do not cover columns 0..{index.size - 1} exactly once")
    return index


def read_layout(path: Path, num_columns: int) -> list[ZooTensor]:
    """Parse and check layout.csv: every row well formed, ranges contiguous from 0 and covering
    exactly the ``num_columns`` columns of weights.npy."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ZooFormatError(f"{path}: cannot be read as CSV ({exc})") from None
    missing = [c for c in LAYOUT_COLUMNS if c not in table.columns]
    if missing:
        raise ZooFormatError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(LAYOUT_COLUMNS)}")
    tensors = []
    for row, rec in enumerate(table[list(LAYOUT_COLUMNS)].itertuples(index=False), start=1):
        varname, start, end, shape_text = rec
        try:
            start, end = int(start), int(end)
        except ValueError:
            raise ZooFormatError(f"{path}, row {row}: start_idx {start!r} and end_idx {end!r} must be integers") from None
        shape = tuple(int(s) for s in re.findall(r"\d+", str(shape_text)))
        if not shape:
            raise ZooFormatError(f"{path}, row {row}: cannot read a shape from {shape_text!r}")
        if end - start != math.prod(shape):
            raise ZooFormatError(f"{path}, row {row} ({varname}): columns [{start}, {end}) hold {end - start} values but shape {shape} has {math.prod(shape)}")
        tensors.append(ZooTensor(str(varname), start, end, shape))
    if not tensors:
        raise ZooFormatError(f"{path}: no rows")
    _check_coverage(tensors, num_columns, path)
    return tensors


def _check_coverage(tensors: list[ZooTensor], num_columns: int, path: Path) -> None:
    """The ranges of ``tensors``, taken by ``start_idx``, must be contiguous from 0 and end at
    ``num_columns``; an error names the row (counted from 1) where they stop doing so."""
    position, last = 0, None
    for row, t in sorted(enumerate(tensors, start=1), key=lambda rt: rt[1].start):
        if t.start != position:
            what = "overlaps the previous range" if t.start < position else f"leaves columns {position}..{t.start - 1} unassigned"
            raise ZooFormatError(f"{path}, row {row} ({t.varname}): start_idx {t.start} {what}")
        if t.end > num_columns:
            raise ZooFormatError(f"{path}, row {row} ({t.varname}): end_idx {t.end} runs past the {num_columns} columns of the rows of {WEIGHTS_FILE}")
        position, last = t.end, (row, t)
    if position != num_columns:
        row, t = last
        raise ZooFormatError(
            f"{path}, row {row} ({t.varname}): the last range ends at end_idx {t.end}, so the ranges cover columns 0..{position - 1} "
            f"but the rows of {WEIGHTS_FILE} have {num_columns} columns"
        )


def write_layout(tensors: list[ZooTensor], path: Path) -> None:
    table = pd.DataFrame(
        {
            "varname": [t.varname for t in tensors],
            "start_idx": [t.start for t in tensors],
            "end_idx": [t.end for t in tensors],
            "shape": [str(tuple(t.shape)) for t in tensors],
        }
    )
    table.to_csv(path, index=False)


# ------------------------------------------------------------------------------- export


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

    ``runs``: 'committed' (default: every run with results, diverged ones included and left as
    they are), 'ok', or explicit indices. Rows are network-major: network ``i``'s checkpoints
    (ascending epochs) are rows ``i * K .. i * K + K - 1``. Stores imported from a zoo write
    back their original ``config.*`` values and ``modeldir`` names. Returns a summary.
    """
    from ..population import Population
    from ..population import open as open_population

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
    run_idx = pop.run_indices(runs) if isinstance(runs, str) else np.asarray(runs, dtype=np.int64)
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
        "networks": n,
        "checkpoints": epochs,
        "rows": n * K,
        "num_params": P,
        "diverged": int((status == "diverged").sum()),
        "files": [str(p) for p in targets],
    }


# ------------------------------------------------------------------------------- import


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
    from .. import store as store_mod
    from ..data import DatasetNotFoundError, load_dataset, resolve_data_root
    from ..store import METRIC_COLUMNS as STORE_METRICS

    store_path = Path(store_path)
    if store_path.exists() and (not store_path.is_dir() or any(store_path.iterdir())):
        raise store_mod.StoreError(f"{store_path} exists and is not empty")
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
    levels = sorted(set(fractions.tolist()))
    seeds = (
        pd.to_numeric(zoo.config["config.random_seed"], errors="coerce").fillna(0).astype(np.int64).to_numpy()[first]
        if "config.random_seed" in zoo.config.columns
        else np.zeros(R, dtype=np.int64)
    )
    config_epochs = pd.to_numeric(zoo.config.get("config.epochs", pd.Series([0])), errors="coerce").max()
    epochs = int(max(max(zoo.steps), 1, 0 if pd.isna(config_epochs) else int(config_epochs)))
    columns: dict[str, list] = {
        "seed": [int(s) for s in seeds],
        "cell": [levels.index(f) for f in fractions.tolist()],
        "subset": [float(f) for f in fractions],
        "label_noise": [0.0] * R,
        "inputs": ["none"] * R,
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
    recipe = Recipe.from_dict(
        {
            "name": f"imported Small CNN Zoo ({zoo.dataset})",
            "description": f"imported from {Path(zoo_dir).resolve()}",
            "data": {"dataset": zoo.dataset, "normalize": "symmetric"},
            "model": {"kind": "small-cnn", "channels": arch.channels, "layers": arch.layers},
            "training": {"epochs": epochs, "batch_size": BATCH_SIZE},
            "population": {"runs": R, "subset": levels if len(levels) > 1 else levels[0]},
            "record": {"logits": [], "metrics": True, "train_metrics": "eval", "weights": zoo.steps},
        }
    )
    source = {"format": "smallcnnzoo", "path": str(Path(zoo_dir).resolve()), "networks": R, "checkpoints": zoo.steps}
    arrays = {f"weights/epoch_{s}": ((len(index),), "float32", np.nan) for s in zoo.steps}
    arrays["metrics"] = ((epochs + 1, len(STORE_METRICS)), "float32", np.nan)

    created = not store_path.exists()
    try:
        store = store_mod.create_imported(store_path, zoo.dataset, fingerprint, targets, R, arrays, source, arch.num_classes, input_shape)
        meta = dict(store.meta)
        meta["recipe"] = recipe.to_dict()
        meta["recipe_text"] = f"# imported from a Small CNN Zoo directory: {source['path']}\n"
        meta["layout"] = {**meta["layout"], "num_params": len(index), "num_features": arch.channels, "params": params}
        meta["runs"] = columns
        store._set_meta(meta)  # the importer completes what create_imported began
        _write_networks(store, zoo, index, block_size)
    except BaseException:
        if created:
            shutil.rmtree(store_path, ignore_errors=True)
        else:
            for child in store_path.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    from ..population import Population

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
            store.array(f"weights/epoch_{step}")[start:stop] = block
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
        store.array("metrics")[start:stop] = metrics
        store.array("summary")[start:stop] = summary
        store.array("status")[start:stop] = np.where(diverged, 2, 1).astype(np.int8)
        store.array("committed")[start:stop] = True
