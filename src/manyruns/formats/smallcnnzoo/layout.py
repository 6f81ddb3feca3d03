"""Tensor naming and ordering: the Small CNN Zoo's layout (layout.csv, bias before kernel,
HWIO kernels) against this project's flattened-parameter layout, the zoo's file names and the
hyperparameter names shared by export and import."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...errors import InputError

WEIGHTS_FILE = "weights.npy"
METRICS_FILE = "metrics.csv.gz"
LAYOUT_FILE = "layout.csv"
LAYOUT_COLUMNS = ("varname", "start_idx", "end_idx", "shape")
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
LAYER_SCOPE = "sequential"  # the release's varnames: sequential/conv2d/bias:0, ...
LAYER_NAME = re.compile(rf"(?:{LAYER_SCOPE}(?:_\d+)?/)?(conv2d|dense)(?:_(\d+))?")


def _key(name: Any) -> str:
    return str(name).strip().lower().replace("_", "").replace("-", "")


class ZooFormatError(InputError):
    """A zoo directory that cannot be read (the message names the file and row), or a
    population that cannot be written in the zoo's layout."""


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
