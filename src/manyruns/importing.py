"""Helpers for importers: stores made from runs trained elsewhere (published populations), with
the same protocol as trained stores. ``create_imported`` makes the store an :class:`ImportSpec`
describes, ``open_imported`` finds the one an importer made before (to grow), ``append_runs`` is
the planner step (grow every array and the run table); workers then write with
:meth:`~manyruns.store.Store.write_runs`. Re-exported by :mod:`manyruns.store`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from .errors import StoreError
from .recipe import Recipe
from .storage import open_location
from .store import FORMAT_VERSION, RUN_COLUMNS, SUMMARY_COLUMNS, Store, chunk_compressors
from .version import __version__


@dataclass
class ImportSpec:
    """What a store of runs trained elsewhere holds, before any run is added.

    ``dataset``: its name; ``fingerprint`` and ``targets`` (train and test labels) as from
    :class:`~manyruns.data.Dataset` (an empty fingerprint and labels when the data is not at
    hand); ``arrays``: per-run shape, dtype and fill value of each array (``committed``,
    ``status`` and ``summary`` are always added); ``source``: what was imported (format, files,
    anything worth keeping); ``recipe``: fields of the recipe to record beyond the dataset
    (default: none); ``layout``: entries of the store layout beyond the data shapes (e.g. the
    flattened-weight layout).
    """

    dataset: str
    fingerprint: dict
    targets: tuple[np.ndarray, np.ndarray]
    num_classes: int
    input_shape: tuple[int, ...]
    arrays: dict[str, tuple[tuple[int, ...], str, Any]]
    source: dict
    recipe: dict | None = None
    layout: dict | None = None
    recipe_text: str | None = None


def create_imported(path: str | os.PathLike, spec: ImportSpec) -> Store:
    """A store for runs trained elsewhere (published populations), holding no run yet: add runs
    with :func:`append_runs`, then write and commit them like a worker does
    (:meth:`Store.write_runs`)."""
    location = open_location(path)
    if not location.is_empty():
        raise StoreError(f"{location} exists and is not empty")
    recipe = Recipe.from_dict(
        {
            "name": f"imported {spec.source.get('format', 'population')}",
            "record": {"logits": [], "metrics": False},
            **(spec.recipe or {}),
            "data": {**(spec.recipe or {}).get("data", {}), "dataset": spec.dataset},
            "population": {"runs": 1},
        }
    )
    specs = {
        "summary": ((len(SUMMARY_COLUMNS),), "float32", np.nan),
        "status": ((), "int8", 0),
        "committed": ((), "bool", False),
        **spec.arrays,
    }
    group = zarr.open_group(location.zarr_store(), mode="w", zarr_format=3)
    for name, (shape, dtype, fill) in specs.items():
        group.create_array(name, shape=(0, *shape), chunks=(1, *shape), dtype=dtype, fill_value=fill, compressors=chunk_compressors())
    for split, y in zip(("train", "test"), spec.targets):
        group.create_array(f"dataset/y_{split}", data=np.asarray(y, dtype=np.int16), compressors=chunk_compressors())
    n_train, n_test = len(spec.targets[0]), len(spec.targets[1])
    recipe_dict = recipe.to_dict()
    recipe_dict["population"]["runs"] = 0
    group.attrs["manyruns"] = {
        "format": FORMAT_VERSION,
        "version": __version__,
        "created": time.time(),
        "recipe_text": spec.recipe_text or f"# imported: {json.dumps(spec.source)[:2000]}\n",
        "recipe": recipe_dict,
        "dataset": spec.fingerprint,
        "data_dir": None,
        "layout": {
            "n_train": n_train, "n_test": n_test, "num_classes": spec.num_classes, "input_shape": list(spec.input_shape),
            "num_params": 0, "params": [], **(spec.layout or {}),
        },
        "arrays": sorted(specs),
        "runs": {k: [] for k in RUN_COLUMNS},
        "source": spec.source,
    }
    return Store(location, group)


def open_imported(path: str | os.PathLike, fmt: str, what: str) -> Store | None:
    """The store at ``path`` that an importer of format ``fmt`` (``what`` it holds, in words)
    made, to grow; None where there is nothing yet. Anything else at ``path`` is refused."""
    location = open_location(path)
    if not location.exists("zarr.json"):
        if not location.is_empty():
            raise StoreError(f"{location} exists, is not empty and holds no manyruns store")
        return None
    store = Store.open(location)
    source = store.meta.get("source") or {}
    if source.get("format") != fmt:
        raise StoreError(f"{path} holds no imported {what} (its runs come from {source.get('format') or 'a recipe'}); import into a new store")
    return store


def append_runs(store: Store, rows: dict[str, list]) -> range:
    """Add runs to an imported store: every per-run array grows, and the run table gets
    ``rows`` (one list per column, all of one length). Columns of :data:`RUN_COLUMNS` that
    ``rows`` lacks take their defaults; other columns must be the ones the table has (any
    columns on the first append). The runs' conditions (``cell``) are numbered by their
    (subset, label noise, inputs) in sorted order, and the recorded recipe's run count and
    subset ratios follow. Returns the new run indices; nothing is committed."""
    lengths = {len(v) for v in rows.values()}
    if len(lengths) != 1:
        raise StoreError(f"append_runs: the columns have different lengths {sorted(lengths)}")
    n = lengths.pop()
    meta = dict(store.meta)
    table = {k: list(v) for k, v in meta["runs"].items()}
    first = store.num_runs
    extra = set(rows) - set(RUN_COLUMNS)
    known = set(table) - set(RUN_COLUMNS)
    if first and extra != known:
        raise StoreError(f"{store.path}: the runs to add have columns {sorted(extra)}, the store's run table {sorted(known)}")
    for key in sorted(set(RUN_COLUMNS) | extra):
        table[key] = table.get(key, []) + list(rows.get(key, [RUN_COLUMNS.get(key)] * n))
    conditions = sorted(set(zip(table["subset"], table["label_noise"], table["inputs"])))
    table["cell"] = [conditions.index(c) for c in zip(table["subset"], table["label_noise"], table["inputs"])]
    total = first + n
    for name in meta["arrays"]:
        arr = store.array(name)
        arr.resize((total, *arr.shape[1:]))
    recipe = dict(meta["recipe"])
    ratios = sorted(set(table["subset"]))
    recipe["population"] = {**recipe["population"], "runs": total, "subset": ratios[0] if len(ratios) == 1 else ratios}
    meta.update(recipe=recipe, runs=table)
    store._set_meta(meta)
    return range(first, total)
