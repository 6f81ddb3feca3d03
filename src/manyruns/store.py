"""The population store: a zarr (v3) group on disk, its layout and its commit protocol.

Layout (``R`` runs, ``N`` training and ``T`` test examples, ``C`` classes, ``E`` epochs)::

    zarr.json                 attributes: recipe, dataset fingerprint, version, weight layout, run plan
    logits/train   (R, N, C) float16    final logits on every training example
    logits/test    (R, T, C) float16
    logits_tta/{train,test} (R, ., C) float16  test-time-augmented logits (record.tta)
    mask/train     (R, N)    bool       which training examples the run trained on
    labels/train   (R, N)    int16      the labels the run saw (after label noise)
    metrics        (R, E+1, 4) float32  after epoch e (row 0: at initialization, if recorded):
                                        train_loss, train_acc, test_loss, test_acc
    features/{train,test} (R, N, F) float16  penultimate-layer features (first record.features runs)
    weights/epoch_<e> (R, P) float32    flattened parameters after epoch e (0: initialization)
    trueprob/train (R, E, N) float16    per-epoch probability of the run's label (NaN: not trained on)
    summary        (R, 6)    float32    train_acc, heldout_acc, test_acc, train_loss, test_loss, seconds
    status         (R,)      int8       1 ok, 2 diverged
    dataset/y_train (N,), dataset/y_test (T,) int16  the dataset's own labels (written once, by plan)
    committed      (R,)      bool       the commit marker
    analysis/<name>/...                 results of analyses, with their parameters as attributes
    claims/<r>, failures/<r>.json       plain files: who is training run r, why run r last failed

Every per-run array is chunked one run per chunk along ``R`` and unsharded, so concurrent
workers never touch the same chunk file. A worker writes all chunks of a run and then its
``committed`` chunk; chunk writes are atomic (temporary file, then rename). A run whose marker
is not set does not exist for readers and is trained again by the next ``train``. Only the
planner creates or resizes arrays.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import DamagedChunkError, StoreError, StoreNotFoundError
from .recipe import Recipe
from .storage import Location, open_location
from .version import __version__

FORMAT_VERSION = 1
METRIC_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc")
SUMMARY_COLUMNS = ("train_acc", "heldout_acc", "test_acc", "train_loss", "test_loss", "seconds")
STATUS_NAMES = {0: "pending", 1: "ok", 2: "diverged"}
STATUS_CODES = {v: k for k, v in STATUS_NAMES.items()}
RUN_COLUMNS = {"seed": 0, "cell": 0, "subset": 1.0, "label_noise": 0.0, "inputs": "none"}
"""The run table's columns that every store has, with the value a run gets when its source says
nothing (imported runs). Recipes add ``sweep.<field>`` columns; importers may add their own."""


@dataclass
class RunRecord:
    """Everything one run writes. Arrays are numpy, shapes per run (no leading ``R``)."""

    index: int
    status: str
    mask: np.ndarray  # (N,) bool
    labels: np.ndarray  # (N,) int
    summary: np.ndarray  # (6,) float32, SUMMARY_COLUMNS
    metrics: np.ndarray | None = None  # (E+1, 4) float32, row 0 at initialization
    logits_train: np.ndarray | None = None  # (N, C)
    logits_test: np.ndarray | None = None  # (T, C)
    logits_tta_train: np.ndarray | None = None  # (N, C), test-time augmented
    logits_tta_test: np.ndarray | None = None  # (T, C)
    weights: dict[int, np.ndarray] | None = None  # epoch -> (P,)
    true_prob: np.ndarray | None = None  # (E, N)
    features_train: np.ndarray | None = None  # (N, F)
    features_test: np.ndarray | None = None  # (T, F)


def array_specs(
    recipe: Recipe, n_train: int, n_test: int, num_classes: int, num_params: int, num_features: int = 0
) -> dict[str, tuple[tuple[int, ...], str, Any]]:
    """Per-run shape, dtype and fill value of every array the recipe records."""
    E = recipe.training.epochs
    specs: dict[str, tuple[tuple[int, ...], str, Any]] = {
        "mask/train": ((n_train,), "bool", False),
        "labels/train": ((n_train,), "int16", -1),
        "summary": ((len(SUMMARY_COLUMNS),), "float32", np.nan),
        "status": ((), "int8", 0),
        "committed": ((), "bool", False),
    }
    if recipe.record.metrics:
        specs["metrics"] = ((E + 1, len(METRIC_COLUMNS)), "float32", np.nan)
    for split in recipe.record.logits:
        n = n_train if split == "train" else n_test
        specs[f"logits/{split}"] = ((n, num_classes), "float16", np.nan)
        if recipe.record.tta != "none":
            specs[f"logits_tta/{split}"] = ((n, num_classes), "float16", np.nan)
    for e in sorted(set(recipe.record.weights)):
        specs[f"weights/epoch_{e}"] = ((num_params,), "float32", np.nan)
    if recipe.record.true_prob:
        specs["trueprob/train"] = ((E, n_train), "float16", np.nan)
    if recipe.record.features:
        specs["features/train"] = ((n_train, num_features), "float16", np.nan)
        specs["features/test"] = ((n_test, num_features), "float16", np.nan)
    return specs


def chunk_compressors() -> tuple:
    """The codecs after the bytes of every chunk of a new store: zstd (level 0, as zarr's
    default) and a CRC32C checksum, so that a truncated or altered chunk is detected when read
    (stores made before checksums were added are read as they are)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return (ZstdCodec(level=0, checksum=False), Crc32cCodec())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def recipe_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted paths (with both values) where two recipe dicts differ."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += recipe_differences(a, b, path + ".")
        elif a != b:
            out.append(f"{path} (store: {a!r}, recipe: {b!r})")
    return out


CLAIM_TTL = 5 * 60
"""Seconds after which a claim from another host that was not refreshed is stale (its holder is
gone); a training driver refreshes its claims every :data:`CLAIM_REFRESH` seconds."""
CLAIM_REFRESH = 60.0
_OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Store:
    """A population store in a local folder or an object store. Use :func:`create` or :meth:`open`."""

    def __init__(self, location: Location, group: zarr.Group):
        self.location = location
        self.group = group
        self._arrays: dict[str, zarr.Array] = {}
        self._prefix = f"{group.path}/" if group.path else ""

    @property
    def path(self) -> Path | str:
        """The local folder (a ``Path``), or the URL of an object-store location."""
        return self.location.path

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike | Location, mode: str = "r+") -> "Store":
        location = open_location(path)
        if not location.exists("zarr.json"):
            empty = location.is_empty()
            hint = " (nothing is there)" if empty else " (it holds no manyruns store)"
            raise StoreNotFoundError(f"no population store at {location}{hint}; create one with `manyruns plan RECIPE {location}`")
        group = zarr.open_group(location.zarr_store(read_only=mode == "r"), mode=mode, zarr_format=3)
        if "manyruns" not in group.attrs:
            raise StoreNotFoundError(f"{location} is a zarr group but not a manyruns store")
        store = cls(location, group)
        fmt = store.meta.get("format")
        if fmt != FORMAT_VERSION:
            raise StoreError(f"{location}: store format {fmt} is not supported by this manyruns (format {FORMAT_VERSION})")
        return store
    @property
    def meta(self) -> dict:
        return self.group.attrs["manyruns"]

    def _set_meta(self, meta: dict) -> None:
        self.group.attrs["manyruns"] = meta

    @property
    def recipe(self) -> Recipe:
        return Recipe.from_dict(self.meta["recipe"])

    @property
    def recipe_text(self) -> str:
        return self.meta["recipe_text"]

    @property
    def num_runs(self) -> int:
        return int(self.meta["recipe"]["population"]["runs"])

    @property
    def fingerprint(self) -> dict:
        return self.meta["dataset"]

    def array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            try:
                self._arrays[name] = self.group[name]
            except KeyError:
                raise StoreError(f"{self.path}: this store records no '{name}' (see the recipe's [record] section)") from None
        return self._arrays[name]

    def has(self, name: str) -> bool:
        return name in self.meta["arrays"]

    # -- reading state -----------------------------------------------------------------------

    def committed(self) -> np.ndarray:
        """``(R,) bool``: the commit markers.

        A marker chunk exists exactly when it is True (zarr does not store chunks equal to the
        fill value, and deletes them when overwritten with it), so listing the chunk keys
        answers without reading one file per run (0.25 ms each).
        """
        from zarr.core.sync import sync

        async def keys() -> list[str]:
            return [k async for k in self.group.store.list_prefix(f"{self._prefix}committed/c/")]

        marks = np.zeros(self.num_runs, dtype=bool)
        try:
            found = [int(k.rsplit("/", 1)[1]) for k in sync(keys())]
        except (ValueError, NotImplementedError):  # an unexpected key layout: read the array
            return np.asarray(self.array("committed")[:], dtype=bool)
        found = [r for r in found if r < self.num_runs]
        marks[found] = True
        return marks

    def read_rows(self, name: str, runs: np.ndarray) -> np.ndarray:
        """Rows ``runs`` of array ``name``, ``(len(runs), ...)``. A chunk that cannot be decoded
        (its checksum fails, it is truncated) raises :class:`DamagedChunkError` naming the run."""
        arr = self.array(name)
        runs = np.asarray(runs, dtype=np.int64)
        try:
            if runs.size and np.all(np.diff(runs) == 1):
                return np.asarray(arr[int(runs[0]) : int(runs[-1]) + 1])
            return np.asarray(arr.oindex[runs])
        except (ValueError, RuntimeError) as exc:
            for r in runs:  # which run's chunk is it?
                try:
                    arr[int(r)]
                except (ValueError, RuntimeError) as inner:
                    raise DamagedChunkError(
                        f"{self.path}: run {int(r)}, array {name}: the stored chunk cannot be read ({_first_line(inner)}); "
                        f"`manyruns verify {self.path} --repair` uncommits the damaged runs so that `manyruns train` redoes them",
                        int(r), name,
                    ) from None
            raise exc

    def _committed_rows(self, name: str, fill, committed: np.ndarray | None = None) -> np.ndarray:
        """Array ``name`` with the rows of committed runs read and ``fill`` elsewhere."""
        committed = self.committed() if committed is None else committed
        arr = self.array(name)
        out = np.full((self.num_runs, *arr.shape[1:]), fill, dtype=arr.dtype)
        idx = np.flatnonzero(committed)
        if idx.size:
            out[idx] = self.read_rows(name, idx)
        return out

    def status_codes(self, committed: np.ndarray | None = None) -> np.ndarray:
        """``(R,) int8``: 0 pending, 1 ok, 2 diverged."""
        return self._committed_rows("status", 0, committed).astype(np.int8)

    def summary(self, committed: np.ndarray | None = None) -> np.ndarray:
        """``(R, 6) float32`` (SUMMARY_COLUMNS); NaN rows for runs not committed."""
        return self._committed_rows("summary", np.nan, committed).astype(np.float32)

    # -- writing a run ------------------------------------------------------------------------

    def write_run(self, rec: RunRecord) -> None:
        """Write every array of one run, then its commit marker (last).

        Every row's shape is checked against its array before anything is written: zarr would
        otherwise crop or broadcast a mismatched row without a word."""
        r = rec.index
        if not 0 <= r < self.num_runs:
            raise StoreError(f"run {r} is outside this store's {self.num_runs} runs")
        rows = self._rows_of(rec)
        for name, value in rows.items():
            expected = tuple(self.array(name).shape[1:])
            if value.shape != expected:
                raise StoreError(f"run {r}: '{name}' has shape {value.shape}, the store expects {expected}")
        for name, value in rows.items():
            self.array(name)[r] = value
        self.array("status")[r] = STATUS_CODES[rec.status]
        self.array("committed")[r] = True
        self.clear_failure(r)

    def _rows_of(self, rec: RunRecord) -> dict[str, np.ndarray]:
        """The rows that ``rec`` writes, by array name, in the store's dtypes."""
        arrays = self.meta["arrays"]
        rows = {
            "mask/train": np.asarray(rec.mask, dtype=bool),
            "labels/train": rec.labels.astype(np.int16),
            "summary": rec.summary.astype(np.float32),
        }
        if "metrics" in arrays and rec.metrics is not None:
            rows["metrics"] = rec.metrics.astype(np.float32)
        if "logits/train" in arrays:
            rows["logits/train"] = rec.logits_train.astype(np.float16)
        if "logits/test" in arrays:
            rows["logits/test"] = rec.logits_test.astype(np.float16)
        for split in ("train", "test"):
            if f"logits_tta/{split}" in arrays:
                rows[f"logits_tta/{split}"] = getattr(rec, f"logits_tta_{split}").astype(np.float16)
        for name in arrays:
            if name.startswith("weights/epoch_"):
                rows[name] = rec.weights[int(name.rsplit("_", 1)[1])].astype(np.float32)
        if "trueprob/train" in arrays:
            rows["trueprob/train"] = rec.true_prob.astype(np.float16)
        if "features/train" in arrays and rec.features_train is not None:
            rows["features/train"] = rec.features_train.astype(np.float16)
            rows["features/test"] = rec.features_test.astype(np.float16)
        return rows

    def write_runs(self, start: int, rows: dict[str, np.ndarray], status: np.ndarray) -> None:
        """Write consecutive runs ``start .. start + b - 1`` (imported runs): every array of
        ``rows`` (``(b, ...)`` blocks, in the store's dtypes), then ``status (b,)`` ('ok' 1,
        'diverged' 2), then their commit markers (last)."""
        b = int(np.asarray(status).shape[0])
        if start < 0 or start + b > self.num_runs:
            raise StoreError(f"runs {start}..{start + b - 1} are outside this store's {self.num_runs} runs")
        for name, value in rows.items():
            expected = (b, *self.array(name).shape[1:])
            if np.shape(value) != expected:
                raise StoreError(f"runs {start}..{start + b - 1}: '{name}' has shape {np.shape(value)}, the store expects {expected}")
        for name, value in rows.items():
            self.array(name)[start : start + b] = value
        self.array("status")[start : start + b] = np.asarray(status, dtype=np.int8)
        self.array("committed")[start : start + b] = np.ones(b, dtype=bool)

    def record_source(self, source: dict, data_dir: str | None = None) -> None:
        """Record what an imported store's runs came from (and the data root that holds its
        dataset, where the images are found later)."""
        meta = dict(self.meta)
        meta["source"] = source
        if data_dir is not None:
            meta["data_dir"] = data_dir
        self._set_meta(meta)

    def uncommit(self, runs: list[int] | np.ndarray) -> None:
        """Remove the commit markers of ``runs`` so that the next ``train`` redoes them."""
        marker = self.array("committed")
        for r in runs:
            marker[int(r)] = False

    # -- claims: which process is training which run ------------------------------------------------
    #
    # A claim is a small object claims/<r> created only if absent (who wins a race is known).
    # It is stale when its holder is gone: a dead process on this host, or, from another host,
    # no refresh for CLAIM_TTL seconds; a stale claim is taken over by compare-and-swap, so two
    # takers cannot both win.

    @staticmethod
    def _claim_key(r: int) -> str:
        return f"claims/{r:08d}"

    @staticmethod
    def _claim_body() -> bytes:
        return json.dumps({"owner": _OWNER, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}).encode()

    def try_claim(self, r: int) -> bool:
        """Claim run ``r`` for this process; False if a live holder has it."""
        key = self._claim_key(r)
        if self.location.create(key, self._claim_body()):
            return True
        found = self.location.read(key)
        if found is None:  # released in between
            return self.location.create(key, self._claim_body())
        data, token = found
        if not self._claim_is_stale(key, data):
            return False
        return self.location.replace(key, self._claim_body(), token)

    def _claim_is_stale(self, key: str, data: bytes) -> bool:
        try:
            info = json.loads(data or b"{}")
        except (ValueError, UnicodeDecodeError):
            info = {}
        if not info:  # being written right now, or torn: stale only once old enough
            age = self.location.age(key)
            return age is None or age > 60
        if info.get("host") == socket.gethostname():
            return not _pid_alive(int(info.get("pid", -1)))
        age = self.location.age(key)
        return age is None or age > CLAIM_TTL

    def refresh_claims(self, runs) -> None:
        """Rewrite this process's claims on ``runs`` (a heartbeat for other hosts)."""
        for r in runs:
            key = self._claim_key(int(r))
            found = self.location.read(key)
            if found is not None and _owner(found[0]) == _OWNER:
                self.location.replace(key, self._claim_body(), found[1])

    def release(self, r: int) -> None:
        key = self._claim_key(r)
        found = self.location.read(key)
        if found is not None and _owner(found[0]) == _OWNER:
            self.location.delete(key)

    def claimed_by_others(self) -> set[int]:
        out = set()
        for name in self.location.list("claims"):
            if not name.isdigit():
                continue
            key = f"claims/{name}"
            found = self.location.read(key)
            if found is not None and _owner(found[0]) != _OWNER and not self._claim_is_stale(key, found[0]):
                out.add(int(name))
        return out

    # -- failures ---------------------------------------------------------------------------

    def record_failure(self, r: int, message: str) -> None:
        self.location.write(f"failures/{r:08d}.json", json.dumps({"run": r, "error": message, "time": time.time()}).encode())

    def clear_failure(self, r: int) -> None:
        self.location.delete(f"failures/{r:08d}.json")

    def failures(self) -> dict[int, str]:
        out = {}
        for name in self.location.list("failures"):
            if not name.endswith(".json"):
                continue
            found = self.location.read(f"failures/{name}")
            try:
                info = json.loads(found[0]) if found else None
            except (ValueError, UnicodeDecodeError):
                continue
            if info:
                out[int(info["run"])] = info["error"]
        return dict(sorted(out.items()))

    # -- analysis results ----------------------------------------------------------------------

    def analysis_group(self, name: str, params: dict, overwrite: bool = True) -> zarr.Group:
        """A fresh ``analysis/<name>`` group whose attributes hold ``params``."""
        path = f"analysis/{name}"
        if path in self.group and overwrite:
            del self.group[path]
        g = self.group.require_group(path)
        g.attrs["params"] = params
        g.attrs["created"] = time.time()
        return g


def _owner(data: bytes) -> str | None:
    try:
        return json.loads(data).get("owner")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def create(
    path: str | os.PathLike,
    recipe: Recipe,
    recipe_text: str,
    fingerprint: dict,
    layout: dict,
    plan_columns: dict[str, list],
    targets: tuple[np.ndarray, np.ndarray],
    data_dir: str | None = None,
) -> Store:
    """Create a new store sized for ``recipe.population.runs`` runs.

    ``layout``: ``{"n_train", "n_test", "num_classes", "input_shape", "num_params", "num_features", "params"}``
    where ``params`` is the flattened-weight layout (name, shape, start, end per tensor).
    ``targets``: the dataset's train and test labels, ``(N,)`` and ``(T,)``.
    """
    location = open_location(path)
    if not location.is_empty():
        raise StoreError(f"{location} exists and is not empty")
    R = recipe.population.runs
    specs = array_specs(
        recipe, layout["n_train"], layout["n_test"], layout["num_classes"], layout["num_params"], layout.get("num_features", 0)
    )
    group = zarr.open_group(location.zarr_store(), mode="w", zarr_format=3)
    for name, (shape, dtype, fill) in specs.items():
        group.create_array(name, shape=(R, *shape), chunks=(1, *shape), dtype=dtype, fill_value=fill, compressors=chunk_compressors())
    for split, y in zip(("train", "test"), targets):
        group.create_array(f"dataset/y_{split}", data=np.asarray(y, dtype=np.int16), compressors=chunk_compressors())
    group.attrs["manyruns"] = {
        "format": FORMAT_VERSION,
        "version": __version__,
        "created": time.time(),
        "recipe_text": recipe_text,
        "recipe": recipe.to_dict(),
        "dataset": fingerprint,
        "data_dir": data_dir,
        "layout": layout,
        "arrays": sorted(specs),
        "runs": plan_columns,
    }
    return Store(location, group)


def grow(store: Store, recipe: Recipe, recipe_text: str, plan_columns: dict[str, list]) -> None:
    """Resize every per-run array to ``recipe.population.runs`` and record the extended plan."""
    R = recipe.population.runs
    for name in store.meta["arrays"]:
        arr = store.array(name)
        arr.resize((R, *arr.shape[1:]))
    meta = dict(store.meta)
    meta.update(recipe_text=recipe_text, recipe=recipe.to_dict(), runs=plan_columns)
    store._set_meta(meta)


# Importers' helpers live in importing.py; they are part of this module's interface.
from .importing import ImportSpec, append_runs, create_imported, open_imported  # noqa: E402,F401
